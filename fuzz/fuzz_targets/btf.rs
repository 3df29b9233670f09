//! BTF is read from the running kernel (and module files beside it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracer::fuzzing::btf(data));
