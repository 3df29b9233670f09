//! `tracer report` reads capture files handed over from other machines and tools.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracer::fuzzing::capture(data, 10_000));
