//! The evaluator on kube-proxy's nftables layout as nft itself lists it: each ruleset is
//! loaded with `nft -f` into a scratch network namespace and read back with
//! `nft -j -a list ruleset`.

use std::sync::OnceLock;
use std::time::Instant;

use super::eval::{Packet, PacketState, Ruleset, Walk};
use super::fixtures::KUBE_PROXY_NFT;
use super::model::{CtState, Family, Hook, Snapshot, Verdict};
use super::nft::parse_nft_json;
use crate::model::{firewall::MapElement, packet::L4Proto};
use crate::system::netns::scratch::Netns;

/// The ruleset as the real nft lists it.
fn real_json(ruleset: &str) -> String {
    let ns = Netns::new();
    ns.nft(ruleset);
    ns.sh("nft -j -a list ruleset")
}

/// [`KUBE_PROXY_NFT`] as nft lists it, read once for every test here.
fn kube_proxy() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let chains = parse_nft_json(&real_json(KUBE_PROXY_NFT)).expect("nft's own listing parses");
        Snapshot { chains, errors: Vec::new() }
    })
}

/// A packet from a pod (10.244.0.5) on the node's bridge.
fn from_pod(proto: L4Proto, dst: &str, dport: u16) -> Packet<'static> {
    Packet {
        family: Family::Ipv4,
        proto,
        src: Some("10.244.0.5".parse().expect("addr")),
        dst: Some(dst.parse().expect("addr")),
        sport: Some(40000),
        dport: Some(dport),
        in_iface: Some("cni0"),
        out_iface: Some("eth0"),
    }
}

fn only_walk(walks: Vec<Walk>) -> Walk {
    let [walk] = walks.try_into().expect("one base chain on the hook");
    assert!(walk.complete, "every way followed");
    walk
}

/// Chain and position of each rule on the way to `met`.
fn way(ruleset: &Ruleset, walk: &Walk, met: usize) -> Vec<(String, u32)> {
    walk.path(met)
        .into_iter()
        .map(|at| {
            let rule = ruleset.rule(&walk.met[at]);
            (rule.chain.clone(), rule.position)
        })
        .collect()
}

fn steps(steps: &[(&str, u32)]) -> Vec<(String, u32)> {
    steps.iter().map(|(chain, position)| (chain.to_string(), *position)).collect()
}

#[test]
fn real_kube_dns_without_endpoints_is_rejected_by_the_reject_chain_through_its_element() {
    let ruleset = Ruleset::new(kube_proxy());
    let dns = from_pod(L4Proto::Udp, "10.96.0.10", 53);
    let walk = only_walk(ruleset.walk(Hook::Forward, &dns));

    // The conntrack state is not known: a new packet is rejected, any other accepted by the
    // policy. The reject is the only verdict that can stop it.
    let [end] = walk.ends.as_slice() else { panic!("one end: {:?}", walk.ends) };
    assert_eq!(end.verdict, Verdict::Reject { with: Some("icmp port-unreachable".to_string()) });
    assert!(!end.certain, "only a new packet gets there");
    assert!(!walk.decided);
    assert_eq!(
        way(&ruleset, &walk, end.met),
        steps(&[("filter-forward", 1), ("service-endpoints-check", 1), ("reject-chain", 1)])
    );
    let [_, lookup, _] = walk.path(end.met).try_into().expect("three steps");
    assert_eq!(
        walk.met[lookup].element,
        Some(MapElement {
            map: "@no-endpoint-services".to_string(),
            key: "10.96.0.10 . udp . 53".to_string(),
            verdict: Some("goto reject-chain".to_string()),
            comment: Some("kube-system/kube-dns:dns".to_string()),
        })
    );
    // The ClusterIP check's reject is never met: a new packet was rejected before the jump
    // to it, and no other packet jumps there.
    let met: Vec<&str> = walk.met.iter().map(|m| ruleset.chain(m.chain).name.as_str()).collect();
    assert_eq!(met, ["filter-forward", "service-endpoints-check", "reject-chain"]);

    // Known to be new, the reject is certain and the policy out of reach.
    let new = PacketState { conntrack: Some(CtState::New), ..PacketState::default() };
    let walk = only_walk(ruleset.walk_with(Hook::Forward, &dns, &new));
    assert!(walk.decided && walk.ends.len() == 1 && walk.ends[0].certain, "{:?}", walk.ends);

    // DNS over TCP finds its own element.
    let tcp = from_pod(L4Proto::Tcp, "10.96.0.10", 53);
    let walk = only_walk(ruleset.walk(Hook::Forward, &tcp));
    let lookup = walk.met.iter().find_map(|m| m.element.clone()).expect("an element");
    assert_eq!(lookup.comment.as_deref(), Some("kube-system/kube-dns:dns-tcp"));
}

#[test]
fn real_service_with_endpoints_is_dnated_and_never_rejected() {
    let ruleset = Ruleset::new(kube_proxy());

    // Before DNAT: the Service's element sends it to its chain, whose numgen map picks either
    // endpoint.
    let web = from_pod(L4Proto::Tcp, "10.96.0.20", 80);
    let walk = only_walk(ruleset.walk(Hook::PreRouting, &web));
    let ends: Vec<(String, u32, String)> = walk
        .ends
        .iter()
        .map(|end| {
            let rule = ruleset.rule(&walk.met[end.met]);
            (rule.chain.clone(), rule.position, end.verdict.nft_text())
        })
        .collect();
    assert_eq!(
        ends,
        [
            (
                "endpoint-5OJB2KTY-default/web/tcp/http__10.244.0.7/80".to_string(),
                2,
                "dnat to 10.244.0.7:80".to_string()
            ),
            (
                "endpoint-2FO3MZ7Q-default/web/tcp/http__10.244.0.8/80".to_string(),
                2,
                "dnat to 10.244.0.8:80".to_string()
            ),
        ]
    );
    assert!(walk.ends.iter().all(|end| !end.certain), "either endpoint, never both");
    assert!(walk.decided, "the numgen map always finds an endpoint");
    let service = walk.met.iter().find_map(|m| m.element.clone()).expect("the Service's element");
    assert_eq!((service.map.as_str(), service.key.as_str()), ("@service-ips", "10.96.0.20 . tcp . 80"));
    // From a pod outside the pod network range... it is in it: no masquerade mark is asked.
    assert!(walk.met.iter().all(|m| ruleset.chain(m.chain).name != "mark-for-masquerade"));

    // After DNAT, at FORWARD: nothing stops it, and the ClusterIP check's reject is not met.
    let dnated = from_pod(L4Proto::Tcp, "10.244.0.7", 80);
    let walk = only_walk(ruleset.walk(Hook::Forward, &dnated));
    assert!(walk.ends.is_empty(), "{:?}", walk.ends);
    assert!(walk.met.iter().all(|m| ruleset.rule(m).chain != "cluster-ips-check"));

    // Still addressed to the ClusterIP, on a port the Service does not have: that reject.
    let wrong_port = from_pod(L4Proto::Tcp, "10.96.0.20", 81);
    let walk = only_walk(ruleset.walk(Hook::Forward, &wrong_port));
    let [end] = walk.ends.as_slice() else { panic!("one end: {:?}", walk.ends) };
    assert_eq!(way(&ruleset, &walk, end.met), steps(&[("filter-forward", 2), ("cluster-ips-check", 1)]));
}

#[test]
fn real_established_packets_skip_ct_state_new_rules() {
    let ruleset = Ruleset::new(kube_proxy());
    let established = PacketState { conntrack: Some(CtState::Established), ..PacketState::default() };
    let dns = from_pod(L4Proto::Udp, "10.96.0.10", 53);
    let walk = only_walk(ruleset.walk_with(Hook::Forward, &dns, &established));
    assert!(walk.met.is_empty() && walk.ends.is_empty(), "{:?}", walk.met);
    assert!(walk.policy_certain, "the accept policy, for sure");
}

#[test]
fn real_masquerading_follows_the_mark() {
    let ruleset = Ruleset::new(kube_proxy());
    let out = from_pod(L4Proto::Tcp, "10.244.0.7", 80);
    let masquerades = |mark: Option<u32>| {
        let state = PacketState { mark, ..PacketState::default() };
        let walk = only_walk(ruleset.walk_with(Hook::PostRouting, &out, &state));
        walk.ends.iter().map(|end| (end.verdict.nft_text(), end.certain)).collect::<Vec<_>>()
    };
    assert_eq!(masquerades(Some(0x4000)), [("masquerade fully-random".to_string(), true)]);
    assert_eq!(masquerades(Some(0x1)), []);
    // Unknown: masqueraded only if the bit is set, which is not known.
    assert_eq!(masquerades(None), [("masquerade fully-random".to_string(), false)]);
}

/// kube-proxy's layout for `services` Services with two endpoints each, written as one
/// nft file.
fn many_services(services: usize) -> String {
    let cluster_ip = |i: usize| format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let endpoint = |i: usize, which: usize| format!("10.244.{}.{}", i / 100, (i % 100) * 2 + which + 1);
    let mut text = String::from("table ip kube-proxy {\n");
    let ips: Vec<String> = (0..services).map(cluster_ip).collect();
    text.push_str(&format!("  set cluster-ips {{ type ipv4_addr; elements = {{ {} }}; }}\n", ips.join(", ")));
    let elements: Vec<String> =
        (0..services).map(|i| format!("{} . tcp . 80 : goto service-{i}", cluster_ip(i))).collect();
    text.push_str(&format!(
        "  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {} }}; }}\n",
        elements.join(", ")
    ));
    text.push_str("  chain mark-for-masquerade { mark set mark or 0x00004000; }\n");
    for i in 0..services {
        text.push_str(&format!(
            "  chain service-{i} {{ ip daddr {} tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade; \
             numgen random mod 2 vmap {{ 0 : goto endpoint-{i}-0, 1 : goto endpoint-{i}-1 }}; }}\n",
            cluster_ip(i)
        ));
        for which in 0..2 {
            let ip = endpoint(i, which);
            text.push_str(&format!(
                "  chain endpoint-{i}-{which} {{ ip saddr {ip} jump mark-for-masquerade; meta l4proto tcp dnat to {ip}:8080; }}\n"
            ));
        }
    }
    text.push_str("  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }\n");
    text.push_str("  chain nat-prerouting { type nat hook prerouting priority -100; jump services; }\n}\n");
    text
}

/// A node at the scale the agent must hold: over 50 000 rules, in kube-proxy's layout.
#[test]
fn a_50000_rule_listing_is_parsed_within_its_bound_and_looked_up_by_hash() {
    const SERVICES: usize = 8400;
    let json = real_json(&many_services(SERVICES));

    let mib = |bytes: usize| bytes as f64 / 1048576.0;
    let started = Instant::now();
    let (chains, retained, peak) = allocations::measure(|| parse_nft_json(&json).expect("parse"));
    let parse_time = started.elapsed();
    let snapshot = Snapshot { chains, errors: Vec::new() };
    let rules: usize = snapshot.chains.iter().map(|c| c.rules.len()).sum();
    println!(
        "{SERVICES} Services: {:.1} MiB of nft JSON, {} chains, {rules} rules, parsed in {} ms; the parsed ruleset \
         holds {:.1} MiB; parsing peaked at {:.1} MiB",
        mib(json.len()),
        snapshot.chains.len(),
        parse_time.as_millis(),
        mib(retained),
        mib(peak),
    );
    assert!(rules >= 50_000, "{rules} rules");
    // Beyond what the ruleset keeps, reading it needs less than the listing's own text: the
    // items are read one at a time, never as one generic document (which took 22 times the
    // text).
    let transient = peak.saturating_sub(retained);
    assert!(
        transient < json.len(),
        "parsing needed {:.1} MiB beyond the {:.1} MiB it keeps, for {:.1} MiB of text",
        mib(transient),
        mib(retained),
        mib(json.len())
    );

    let ruleset = Ruleset::new(&snapshot);
    let services = snapshot.chains.iter().find(|c| c.name == "services").expect("services chain");
    let map = services.rules[0].vmap.as_ref().expect("the vmap");
    assert_eq!(map.set.0.elements.len(), SERVICES);
    assert!(map.set.0.is_hashed(), "a packet's key is hashed, not compared with every element");

    let started = Instant::now();
    for i in (0..SERVICES).step_by(5) {
        let dst = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let packet = from_pod(L4Proto::Tcp, &dst, 80);
        let walk = only_walk(ruleset.walk(Hook::PreRouting, &packet));
        let service = walk.met.iter().find_map(|m| m.element.clone()).expect("the Service's element");
        assert_eq!(service.key, format!("{dst} . tcp . 80"));
        assert_eq!(walk.ends.len(), 2, "either endpoint of service-{i}");
    }
    let walks = SERVICES / 5;
    println!(
        "{walks} walks through PREROUTING, one per Service: {} µs each",
        started.elapsed().as_micros() / walks as u128
    );
}

/// Counts the bytes the calling thread allocates, to measure what parsing keeps and how
/// much it needs at most.
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn count(bytes: isize) {
        // try_with: the thread's counters may be gone while it exits.
        let _ = LIVE.try_with(|live| {
            let now = live.get() + bytes;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
            let ptr = unsafe { System.alloc(layout) };
            if !ptr.is_null() {
                count(layout.size() as isize);
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: ptr was allocated by System with this layout.
            unsafe { System.dealloc(ptr, layout) };
            count(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as GlobalAlloc::realloc requires, passed on.
            let new = unsafe { System.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                count(new_size as isize - layout.size() as isize);
            }
            new
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Runs `body`; returns its result, the bytes it left allocated (what the result holds)
    /// and the most it had allocated at once.
    pub(super) fn measure<T>(body: impl FnOnce() -> T) -> (T, usize, usize) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let result = body();
        let retained = LIVE.with(Cell::get) - start;
        let peak = PEAK.with(Cell::get) - start;
        (result, usize::try_from(retained).unwrap_or(0), usize::try_from(peak).unwrap_or(0))
    }
}
