//! tracer: live network diagnostics for Linux nodes.
//!
//! The crate is a program: [`main`] is the `tracer` binary. Its modules are private to it
//! (see README.md, "Architecture", for their layers); the library exports only what the fuzz
//! targets drive, in [`fuzzing`].

/// A line on standard error that is lost, not a panic, when standard error is gone (closed,
/// or a pipe whose reader exited): `eprintln!` panics then, and a worker thread that panics
/// dies silently. tracer's notes and warnings must never end or maim a watch.
macro_rules! note_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use note_line;

mod analysis;
mod commands;
mod engine;
mod findings;
mod firewall;
mod kernel;
mod model;
mod node;
mod pipeline;
mod schema;
mod sinks;
mod system;

#[cfg(test)]
mod capture_round_trip;

pub use commands::main;

/// The parsers of untrusted input, as the fuzz targets (`fuzz/`) drive them: each takes the
/// fuzzer's bytes and must neither panic nor hang, whatever they are. Nothing else of the
/// crate is exported, so none of its types are.
pub mod fuzzing {
    use crate::{
        engine::replay::reader::CaptureReader,
        firewall::{parse_iptables_save, parse_nft_json, Backend, Family},
        kernel::{btf::Btf, records::Decoder},
        pipeline::dns_parse,
    };

    /// Kernel BTF (read from the running kernel and the module files beside it).
    pub fn btf(data: &[u8]) {
        if let Ok(btf) = Btf::parse(data) {
            let _ = btf.member("sk_buff", "network_header");
            let _ = btf.member("nf_conn", "tuplehash[1].tuple");
            let _ = btf.type_size("net_device");
            let _ = btf.enum_variants("skb_drop_reason");
            let _ = Btf::parse_split(data, &btf);
        }
    }

    /// A capture file, record by record, at most `max_records`: a reader that never ends
    /// would hang the fuzzer, and that is a bug too.
    pub fn capture(data: &[u8], max_records: usize) {
        let Ok(mut reader) = CaptureReader::from_reader("fuzz", std::io::Cursor::new(data.to_vec())) else { return };
        for _ in 0..max_records {
            match reader.next_record() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// A DNS message, as UDP and as TCP carry it.
    pub fn dns(data: &[u8]) {
        let _ = dns_parse::parse(data, false);
        let _ = dns_parse::parse(data, true);
    }

    /// One record of the kernel programs' ring buffer.
    pub fn kernel_record(data: &[u8]) {
        let _ = Decoder::default().decode(data);
    }

    /// `iptables-save -c` output, of either backend and family.
    pub fn iptables_save(text: &str) {
        let _ = parse_iptables_save(text, Backend::IptablesNft, Family::Ipv4);
        let _ = parse_iptables_save(text, Backend::IptablesLegacy, Family::Ipv6);
    }

    /// `nft -j list ruleset` output.
    pub fn nft_json(text: &str) {
        let _ = parse_nft_json(text);
    }
}
