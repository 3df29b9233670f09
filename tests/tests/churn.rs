//! End-to-end: pods come and go while tracer watches (README, "Safety"). Pods created and
//! deleted during a watch are traced under their own interface names, also when a new pod's veth
//! reuses a deleted one's ifindex, and tracer does not complain. Needs root and a built tracer.

use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

#[test]
fn pods_created_and_deleted_during_a_watch_are_followed() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, done, (index, dig_a, dig_b, dig_c)) = Scenario::settled(&lab).run_finished(|| {
        let first = LabPod::create(&lab, "pa", "veth-pa", "10.244.0.9", None)?;
        let index = first.node_ifindex(&lab)?;
        let dig_a = first.dig()?;
        // Let tracer print the first pod's records before its ifindex gets a new owner.
        thread::sleep(Duration::from_millis(500));
        first.delete(&lab)?;
        thread::sleep(Duration::from_millis(300));

        let second = LabPod::create(&lab, "pb", "veth-pb", "10.244.0.11", Some(index))?;
        ensure!(second.node_ifindex(&lab)? == index, "the second pod's veth did not get ifindex {index}");
        let dig_b = second.dig()?;
        thread::sleep(Duration::from_millis(300));
        second.delete(&lab)?;
        thread::sleep(Duration::from_millis(300));
        // And the lab's own client still works after the churn.
        let dig_c = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
        Ok((index, dig_a, dig_b, dig_c))
    })?;

    for (who, dig) in [("pod A", &dig_a), ("pod B", &dig_b), ("client", &dig_c)] {
        dig.expect_answered().with_context(|| format!("{who}'s query"))?;
    }
    let complaints: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("warning") || l.contains("panicked")
        })
        .collect();
    ensure!(complaints.is_empty(), "tracer complained about the churn:\n{}", done.stderr);
    for (who, dig, veth, ip) in
        [("pod A", &dig_a, "veth-pa", "10.244.0.9"), ("pod B", &dig_b, "veth-pb", "10.244.0.11")]
    {
        let id = dig.query_id().with_context(|| format!("{who}'s dig"))?;
        let query = pod_dns(&w, "bridge-in", id, false, ip)
            .with_context(|| format!("{who}'s query entering the bridge on {veth}"))?;
        expect_str(query, "/ifname", veth)?;
        expect_u64(query, "/ifindex", index.into())?;
        let reply = pod_dns(&w, "bridge-out", id, true, ip)
            .with_context(|| format!("{who}'s reply leaving the bridge on {veth}"))?;
        expect_str(reply, "/ifname", veth)?;
    }
    w.query_from_client(dig_c.query_id()?)?;
    w.check_summary()
}

/// The record at `stage` of DNS message `id` that pod `ip` sent (`reply` false) or was sent.
fn pod_dns<'a>(w: &'a WatchJson, stage: &str, id: u16, reply: bool, ip: &str) -> Result<&'a Value> {
    let pod_end = if reply { "/dst" } else { "/src" };
    w.find_one(&format!("DNS message {id} of {ip} at {stage}"), |p| {
        str_at(p, "/stage") == Some(stage) && dns_is(p, id, reply) && str_at(p, pod_end).and_then(ip_of) == Some(ip)
    })
}
