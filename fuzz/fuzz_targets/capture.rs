//! `tracer report` reads capture files handed over from other machines and tools.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::capture::reader::CaptureReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CaptureReader::from_reader("fuzz", std::io::Cursor::new(data.to_vec())) else { return };
    // Bounded: a reader that never ends would hang the fuzzer, and that is a bug too.
    for _ in 0..10_000 {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
