//! End-to-end: bad packets do no harm (README, "Safety"). Malformed DNS, IPv4 options, IPv6
//! extension headers, fragments, VLAN tags and broken TCP go through the bridge while tracer
//! watches: it keeps running, stays quiet, still traces a normal query, and never reads past
//! the end of a frame cut inside its headers. The frames are sent raw from the client pod, so no
//! tool is needed to make them. Needs root and a built tracer.

use std::thread;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::packets::*;
use tracer_tests::scenario::Scenario;

/// DNS ids of the well-formed queries hidden in unusual packets.
const ID_IPV4_OPTIONS: u16 = 0x0a01;
const ID_IPV4_LONG_OPTIONS: u16 = 0x0a02;
const ID_IPV6_HOP_BY_HOP: u16 = 0x0a03;
const ID_IPV6_FRAGMENT_HEADER: u16 = 0x0a04;
const ID_IPV4_FRAGMENTS: u16 = 0x0a05;
const ID_VLAN: u16 = 0x0a06;

#[test]
fn malformed_packets_through_the_bridge_do_not_disturb_the_watch() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let client_mac = mac_of(&lab, Ns::Client, POD_IF)?;
    let server_mac = mac_of(&lab, Ns::Server, POD_IF)?;
    let gateway_mac = mac_of(&lab, Ns::Node, BRIDGE)?;
    // Neighbour entries so the server's answers to the valid ones go out without delay.
    lab.dig(SERVER_IP, TEST_NAME, &[])?;

    let mut tracer = Scenario::new(&lab).start()?;

    let frames = malformed_frames(client_mac, server_mac, gateway_mac)?;
    let count = frames.len();
    send_frames(lab.netns(Ns::Client), POD_IF, &frames)?;
    thread::sleep(Duration::from_millis(500));
    ensure!(tracer.running()?, "tracer died on malformed input:\n{}", tracer.stderr_so_far());

    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    thread::sleep(Duration::from_millis(300));
    let done = tracer.stop()?;
    dig.expect_answered().context("the normal query after the malformed ones")?;
    let w = WatchJson::from_finished(&done).with_context(|| format!("after {count} malformed frames"))?;
    no_panic(&done.stderr)?;
    for word in ["malformed", "could not be decoded", "error"] {
        ensure!(!done.stderr.to_lowercase().contains(word), "tracer printed `{word}` on stderr:\n{}", done.stderr);
    }
    w.query_from_client(dig.query_id()?).context("the normal query after the malformed ones")?;
    // A query in an IPv4 packet with options is an ordinary query to port 53.
    for (what, id) in [
        ("the query in an IPv4 packet with options", ID_IPV4_OPTIONS),
        ("the query in an IPv4 packet with a 60-byte header", ID_IPV4_LONG_OPTIONS),
    ] {
        let q = w.query_from_client(id).context(what)?;
        expect_str(q, "/dns/qname", "example.test.")?;
        expect_str(q, "/dst", &format!("{SERVER_IP}:53"))?;
    }
    for (what, id) in [
        ("IPv6 with a hop-by-hop header", ID_IPV6_HOP_BY_HOP),
        ("IPv6 with a fragment header", ID_IPV6_FRAGMENT_HEADER),
        ("IPv4 fragments", ID_IPV4_FRAGMENTS),
        ("802.1Q-tagged", ID_VLAN),
    ] {
        let seen: Vec<String> = w.find(|p| u64_at(p, "/dns/id") == Some(u64::from(id))).map(describe_packet).collect();
        eprintln!("query in {what}: {} records {seen:#?}", seen.len());
    }
    eprintln!("{count} malformed frames; summary {}; {} packet records", w.summary, w.packets.len());
    Ok(())
}

/// A frame that ends inside its IP or UDP header has no ports: the kernel side must not read the
/// missing bytes from beyond the frame (what is there is left over from earlier packets). Each cut
/// frame follows a complete query, whose bytes are the likeliest leftovers.
#[test]
fn frames_cut_inside_their_headers_are_not_read_past_their_end() -> Result<()> {
    // bridge-nf-call-iptables=0: the bridge forwards the broken frames without looking at them.
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let client_mac = mac_of(&lab, Ns::Client, POD_IF)?;
    let server_mac = mac_of(&lab, Ns::Server, POD_IF)?;
    let (cip, sip) = (octets4(CLIENT_IP)?, octets4(SERVER_IP)?);
    let (cip6, sip6) = (octets6(CLIENT_IP6)?, octets6(SERVER_IP6)?);
    // The cut frames come from addresses and ports no complete frame uses.
    let (other, other_dst) = ([10, 9, 9, 9], [10, 8, 8, 8]);
    let (other6, other6_dst) = (
        [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        [0xfd, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8],
    );
    let v4 = ipv4(other, other_dst, PROTO_UDP, &[], 0x500, 0, &udp4(other, other_dst, 1111, 2222, &[0x55; 30]));
    let v6 = ipv6(other6, other6_dst, PROTO_UDP, &udp6(other6, other6_dst, 1111, 2222, &[0x55; 30]));
    let cuts: [(&str, u16, &[u8]); 4] = [
        ("IPv4 header cut at 10 bytes", ETHERTYPE_IPV4, &v4[..10]),
        ("IPv4 header and 2 bytes of UDP", ETHERTYPE_IPV4, &v4[..22]),
        ("IPv6 header cut at 30 bytes", ETHERTYPE_IPV6, &v6[..30]),
        ("IPv6 header and 2 bytes of UDP", ETHERTYPE_IPV6, &v6[..42]),
    ];
    let mut frames = Vec::new();
    for (i, (what, ethertype, cut)) in cuts.iter().enumerate() {
        let i = i as u16;
        let query = dns_query(0x7700 + i, TEST_NAME, 1);
        let complete = if *ethertype == ETHERTYPE_IPV4 {
            ipv4(cip, sip, PROTO_UDP, &[], 0x400 + i, 0, &udp4(cip, sip, 40300 + i, 53, &query))
        } else {
            ipv6(cip6, sip6, PROTO_UDP, &udp6(cip6, sip6, 40300 + i, 53, &query))
        };
        frames.push((format!("complete query {i}"), ether(server_mac, client_mac, *ethertype, &complete)));
        frames.push((what.to_string(), ether(server_mac, client_mac, *ethertype, cut)));
    }

    let (w, done, _) = Scenario::new(&lab).port(0).settle(Duration::from_millis(300)).run_finished(|| {
        // Several rounds: whether leftovers look like a UDP header is up to the allocator.
        for _ in 0..3 {
            send_frames(lab.netns(Ns::Client), POD_IF, &frames)?;
        }
        Ok(())
    })?;
    no_panic(&done.stderr)?;

    // Every record must be one of the complete queries or its reply.
    let complete_flow = |p: &Value| {
        let ports: Vec<Option<u16>> = ["/src", "/dst"].iter().map(|k| str_at(p, k).and_then(port_of)).collect();
        ports.contains(&Some(53)) && ports.iter().flatten().any(|port| (40300..40304).contains(port))
    };
    let phantoms: Vec<String> =
        w.find(|p| !complete_flow(p)).map(|p| format!("{} len={}", describe_packet(p), p["len"])).collect();
    ensure!(
        phantoms.is_empty(),
        "records for frames cut inside their IP/UDP header, with addresses or ports read from \
         beyond the frame's end:\n{}\n(all records:\n{})",
        phantoms.join("\n"),
        w.describe()
    );
    ensure!(
        w.find(|p| stage_is(p, "bridge-in", CLIENT_VETH)).count() == 3 * cuts.len(),
        "expected one bridge-in record per complete query (more: a cut frame was reported with a \
         previous frame's headers):\n{}",
        w.describe()
    );
    Ok(())
}

fn mac_of(lab: &Lab, ns: Ns, ifname: &str) -> Result<[u8; 6]> {
    let links = lab.links(ns, Some(ifname))?;
    let text = links
        .first()
        .and_then(|l| str_at(l, "/address"))
        .with_context(|| format!("no address for {ifname}: {links:?}"))?;
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes.try_into().map_err(|_| anyhow!("MAC {text}"))
}

/// Frames from the client pod: broken DNS to the server (bridged) and to the ClusterIP (routed up
/// to the node and DNATed), and well-formed queries in unusual IP packets.
fn malformed_frames(client: [u8; 6], server: [u8; 6], gateway: [u8; 6]) -> Result<Vec<(String, Vec<u8>)>> {
    let (cip, sip, vip) = (octets4(CLIENT_IP)?, octets4(SERVER_IP)?, octets4(CLUSTER_DNS_IP)?);
    let (cip6, sip6) = (octets6(CLIENT_IP6)?, octets6(SERVER_IP6)?);
    let mut frames = Vec::new();

    let payloads = malformed_dns();
    for (dst_mac, dst_ip, via) in [(server, sip, "bridged"), (gateway, vip, "ClusterIP")] {
        for (i, (what, dns)) in payloads.iter().enumerate() {
            let udp = udp4(cip, dst_ip, 40000 + i as u16, 53, dns);
            let ip = ipv4(cip, dst_ip, PROTO_UDP, &[], 0x100 + i as u16, 0, &udp);
            frames.push((format!("{what} ({via})"), ether(dst_mac, client, ETHERTYPE_IPV4, &ip)));
        }
    }

    // A frame from the client to the server's MAC, named for error messages.
    let to_server =
        |what: &str, ethertype: u16, payload: &[u8]| (what.to_string(), ether(server, client, ethertype, payload));
    let query = |id| dns_query(id, TEST_NAME, 1);
    let v4 = |udp: &[u8], options: &[u8], id: u16| ipv4(cip, sip, PROTO_UDP, options, id, 0, udp);

    // Empty UDP payload; a UDP length longer than the datagram; a UDP length below 8.
    let mut lies = udp4(cip, sip, 40100, 53, &query(0x0b01));
    lies[4..6].copy_from_slice(&400u16.to_be_bytes());
    let mut short = udp4(cip, sip, 40101, 53, &query(0x0b02));
    short[4..6].copy_from_slice(&3u16.to_be_bytes());
    for (what, udp) in [
        ("empty UDP payload", udp4(cip, sip, 40102, 53, &[])),
        ("UDP length longer than the datagram", lies),
        ("UDP length below 8", short),
    ] {
        frames.push(to_server(what, ETHERTYPE_IPV4, &v4(&udp, &[], 0x200)));
    }

    // IPv4 header claims more than the frame holds; IP header cut short; version 6 in 0x0800.
    let udp = udp4(cip, sip, 40103, 53, &query(0x0b03));
    let mut long_total = v4(&udp, &[], 0x201);
    long_total[2..4].copy_from_slice(&1400u16.to_be_bytes());
    fix_ipv4_checksum(&mut long_total);
    frames.push(to_server("IPv4 total length beyond the frame", ETHERTYPE_IPV4, &long_total));
    let cut = v4(&udp, &[], 0x202);
    frames.push(to_server("IPv4 header cut at 10 bytes", ETHERTYPE_IPV4, &cut[..10]));
    frames.push(to_server("IPv4 cut inside the UDP header", ETHERTYPE_IPV4, &cut[..24]));
    let mut wrong_version = v4(&udp, &[], 0x203);
    wrong_version[0] = 0x65;
    frames.push(to_server("IP version 6 in an IPv4 frame", ETHERTYPE_IPV4, &wrong_version));
    let mut ihl_too_big = v4(&udp, &[], 0x204);
    ihl_too_big[0] = 0x4f;
    fix_ipv4_checksum(&mut ihl_too_big);
    frames.push(to_server("IPv4 IHL 15 without the options", ETHERTYPE_IPV4, &ihl_too_big));

    // Well-formed queries in IPv4 packets with options: NOPs + end (24-byte header), and a
    // 60-byte header full of NOPs.
    let udp = udp4(cip, sip, 40104, 53, &query(ID_IPV4_OPTIONS));
    frames.push(to_server("IPv4 with options", ETHERTYPE_IPV4, &v4(&udp, &[1, 1, 1, 0], 0x205)));
    let udp = udp4(cip, sip, 40105, 53, &query(ID_IPV4_LONG_OPTIONS));
    let mut nops = vec![1u8; 39];
    nops.push(0);
    frames.push(to_server("IPv4 with a 60-byte header", ETHERTYPE_IPV4, &v4(&udp, &nops, 0x206)));

    // IPv4 fragments of a query, the ports in the first; then a lone second fragment.
    let udp = udp4(cip, sip, 40106, 53, &query(ID_IPV4_FRAGMENTS));
    let (head, tail) = udp.split_at(16);
    let first = ipv4(cip, sip, PROTO_UDP, &[], 0x300, 0x2000, head);
    let second = ipv4(cip, sip, PROTO_UDP, &[], 0x300, (16 / 8) as u16, tail);
    frames.push(to_server("IPv4 first fragment", ETHERTYPE_IPV4, &first));
    frames.push(to_server("IPv4 second fragment", ETHERTYPE_IPV4, &second));
    let lone = ipv4(cip, sip, PROTO_UDP, &[], 0x301, 0x2000 | 3, &[0u8; 24]);
    frames.push(to_server("IPv4 lone middle fragment", ETHERTYPE_IPV4, &lone));

    // IPv6: a hop-by-hop header (PadN) before UDP; an atomic fragment header before UDP.
    for (what, next_header, extension, sport, id) in [
        ("IPv6 hop-by-hop header", 0, [PROTO_UDP, 0, 1, 4, 0, 0, 0, 0], 40107, ID_IPV6_HOP_BY_HOP),
        ("IPv6 fragment header", 44, [PROTO_UDP, 0, 0, 0, 0, 0, 0x12, 0x34], 40108, ID_IPV6_FRAGMENT_HEADER),
    ] {
        let mut packet = extension.to_vec();
        packet.extend_from_slice(&udp6(cip6, sip6, sport, 53, &query(id)));
        let ip = ipv6(cip6, sip6, next_header, &packet);
        frames.push(to_server(what, ETHERTYPE_IPV6, &ip));
    }
    let udp = udp6(cip6, sip6, 40109, 53, &[0xff; 3]);
    let mut truncated6 = ipv6(cip6, sip6, PROTO_UDP, &udp);
    truncated6.truncate(30);
    frames.push(to_server("IPv6 header cut at 30 bytes", ETHERTYPE_IPV6, &truncated6));

    // An 802.1Q-tagged query (VLAN 100), and a double-tagged one.
    let udp = udp4(cip, sip, 40110, 53, &query(ID_VLAN));
    let ip = v4(&udp, &[], 0x207);
    let mut tagged = vec![0x00, 100];
    tagged.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    tagged.extend_from_slice(&ip);
    frames.push(to_server("802.1Q tagged", ETHERTYPE_VLAN, &tagged));
    let mut double = vec![0x00, 200];
    double.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    double.extend_from_slice(&tagged);
    frames.push(to_server("802.1ad double tagged", ETHERTYPE_QINQ, &double));

    // TCP to port 53: a data offset pointing past the segment, a data offset of 0, and a DNS
    // length prefix longer than the data.
    let mut dns_tcp = 4000u16.to_be_bytes().to_vec();
    dns_tcp.extend_from_slice(&query(0x0b04));
    for (what, doff, payload) in [
        ("TCP data offset past the segment", 15u8, &[][..]),
        ("TCP data offset 0", 0u8, &dns_tcp[..]),
        ("TCP DNS length prefix beyond the data", 5u8, &dns_tcp[..]),
    ] {
        let seg = tcp4(40111, 53, doff, payload);
        frames.push(to_server(what, ETHERTYPE_IPV4, &ipv4(cip, sip, PROTO_TCP, &[], 0x208, 0, &seg)));
    }
    Ok(frames)
}

/// DNS messages that break the rules.
fn malformed_dns() -> Vec<(&'static str, Vec<u8>)> {
    let with = |mut h: Vec<u8>, tail: &[u8]| {
        h.extend_from_slice(tail);
        h
    };
    let mut long_label = vec![64u8];
    long_label.extend(std::iter::repeat_n(b'a', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut long_name = Vec::new();
    for _ in 0..5 {
        long_name.push(63u8);
        long_name.extend(std::iter::repeat_n(b'b', 63));
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut reply_question = qname(TEST_NAME);
    reply_question.extend_from_slice(&[0, 1, 0, 1]);
    let mut cut_answer = reply_question.clone();
    // Answer: pointer to the question's name, A IN, TTL, RDLENGTH 0xffff, two bytes of data.
    cut_answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0xff, 0xff, 192, 0]);
    let mut looping_answer = reply_question.clone();
    let at = 12 + looping_answer.len() as u8;
    looping_answer.extend_from_slice(&[0xc0, at, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, at]);
    vec![
        ("DNS header cut at 5 bytes", vec![0x12, 0x34, 0x01, 0x00, 0x00]),
        ("question cut inside a label", with(dns_header(0x0c01, 0x0100, 1, 0), &[7, b'e', b'x', b'a'])),
        ("question without type and class", with(dns_header(0x0c02, 0x0100, 1, 0), &qname(TEST_NAME))),
        ("compression pointer to itself", with(dns_header(0x0c03, 0x0100, 1, 0), &[0xc0, 12, 0, 1, 0, 1])),
        (
            "two compression pointers in a loop",
            with(dns_header(0x0c04, 0x0100, 1, 0), &[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]),
        ),
        ("compression pointer past the message", with(dns_header(0x0c05, 0x0100, 1, 0), &[0xc0, 0xff, 0, 1, 0, 1])),
        ("label of 64 bytes", with(dns_header(0x0c06, 0x0100, 1, 0), &long_label)),
        ("name over 255 bytes", with(dns_header(0x0c07, 0x0100, 1, 0), &long_name)),
        ("65535 questions", with(dns_header(0x0c08, 0x0100, 0xffff, 0xffff), &reply_question)),
        ("response with a cut answer", with(dns_header(0x0c09, 0x8180, 1, 3), &cut_answer)),
        ("response with a looping CNAME answer", with(dns_header(0x0c0a, 0x8180, 1, 1), &looping_answer)),
        ("all 0xff", vec![0xff; 300]),
    ]
}
