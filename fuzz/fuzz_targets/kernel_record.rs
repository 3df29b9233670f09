//! Ring buffer records: their packet bytes, offsets and steps describe whatever the kernel saw.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracer::fuzzing::kernel_record(data));
