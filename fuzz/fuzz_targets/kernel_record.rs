//! Ring buffer records: their packet bytes and offsets describe whatever the kernel saw.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracer::kernel::records::decode_record(data);
});
