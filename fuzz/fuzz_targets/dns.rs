//! DNS payloads come straight off the network, truncated at any length by the kernel copy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracer::fuzzing::dns(data));
