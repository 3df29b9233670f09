//! The findings phase: whether `tracer watch --findings-only` names both findings of a broken node
//! while the node carries the full DNS load.
//!
//! The lab is built with `bridge-nf-call-iptables=0`, so every reply of the load leaves the bridge
//! without conntrack (`conntrack_skip`). A FORWARD REJECT for the DNS port would refuse the load's
//! own queries and leave no reply to skip conntrack, so it is limited to a second address of the
//! client pod, whose queries come a few a second during the load (`netfilter_reject`): a node where
//! one pod's DNS is rejected while the others' is flooding through.

use std::thread;
use std::time::Duration;

use anyhow::Result;
use tracer_tests::lab::{Ns, BRIDGE, CLUSTER_DNS_IP, POD_IF, TEST_NAME};

use super::{check_interrupted, results::FindingsUnderLoad, runner::Bench, Mode, DNS_PORT};
use crate::cmd::phase;

/// The client pod's second address, the one the REJECT refuses.
pub(super) const REJECTED_CLIENT_IP: &str = "10.244.0.6";
/// Between two refused queries: a few a second, next to the load's tens of thousands.
const REJECTED_QUERY_GAP: Duration = Duration::from_millis(200);
/// What dig says when the node answers with ICMP host-prohibited.
const REFUSED: &str = "host unreachable";

impl Bench<'_> {
    pub(super) fn findings_under_load(&self, secs: f64) -> Result<FindingsUnderLoad> {
        check_interrupted()?;
        let port = DNS_PORT.to_string();
        let address = format!("{REJECTED_CLIENT_IP}/24");
        self.lab.run(Ns::Client, &["ip", "addr", "add", &address, "dev", POD_IF])?;
        // The netfilter tests' REJECT, for the second address only.
        self.lab.iptables(&format!(
            "-A FORWARD -s {REJECTED_CLIENT_IP}/32 -p udp --dport {DNS_PORT} \
             -j REJECT --reject-with icmp-host-prohibited"
        ))?;
        // The node forwards the query out of the interface it came in on, so it would send an
        // ICMP redirect first, and the REJECT's answer would fall to the per-host ICMP rate limit.
        for dev in ["all", BRIDGE] {
            let key = format!("net.ipv4.conf.{dev}.send_redirects=0");
            self.lab.run(Ns::Node, &["sysctl", "-qw", &key])?;
        }
        // What the kernel counts of conntrack_skip: the answers the bridge forwards from the
        // responder to the client (the load's queries reach the node's address, not the bridge's
        // forward hook).
        self.lab.count_answers_forwarded(DNS_PORT)?;
        let responder = self.dns_responder()?;
        phase(
            "bench",
            &format!(
                "findings under load: dnsperf for {secs} s with tracer watch --findings-only, \
                 queries from {REJECTED_CLIENT_IP} rejected meanwhile"
            ),
        );
        let (mut rejected_queries, mut refused_seen) = (0, 0);
        let (perf, observed) = self.observed_dnsperf(Mode::FindingsOnly, secs, |elapsed| {
            // dig waits up to 2 s for an answer that does not come: stop asking before the end.
            if elapsed.as_secs_f64() >= secs - 0.5 {
                return Ok(false);
            }
            check_interrupted()?;
            let dig = self.lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["-b", REJECTED_CLIENT_IP, "-p", &port])?;
            rejected_queries += 1;
            refused_seen += u64::from(dig.output.contains(REFUSED));
            thread::sleep(REJECTED_QUERY_GAP);
            Ok(true)
        })?;
        responder.stop()?;
        Ok(FindingsUnderLoad {
            perf,
            rejected_queries,
            refused_seen,
            // The REJECT is rule 1 of FORWARD, the only one.
            rule_packets: self.lab.forward_rule_packets(1)?,
            answers_forwarded: self.lab.answers_forwarded()?,
            observed,
        })
    }
}
