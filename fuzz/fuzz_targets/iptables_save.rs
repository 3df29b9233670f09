//! iptables-save output is whatever the node's rulesets hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracer::fuzzing::iptables_save(&String::from_utf8_lossy(data)));
