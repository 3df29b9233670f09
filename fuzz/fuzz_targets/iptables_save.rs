//! iptables-save output is whatever the node's rulesets hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::firewall::{parse_iptables_save, Backend, Family};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_iptables_save(&text, Backend::IptablesNft, Family::Ipv4);
    let _ = parse_iptables_save(&text, Backend::IptablesLegacy, Family::Ipv6);
});
