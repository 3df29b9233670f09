//! tracer: live network diagnostics for Linux nodes.
//!
//! The crate is a program: [`main`] is the `tracer` binary. Its modules are private to it
//! (see README.md, "Architecture", for their layers); the library exports only what the fuzz
//! targets drive, in [`fuzzing`].

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

pub use commands::main;

/// The parsers of untrusted input that the fuzz targets (`fuzz/`) drive: kernel BTF, the
/// kernel's records, DNS messages, capture files, and the firewall tools' listings.
pub mod fuzzing {
    pub use crate::{
        engine::replay::reader::CaptureReader,
        firewall::{parse_iptables_save, parse_nft_json},
        kernel::{btf::Btf, records::Decoder},
        model::{firewall::Backend, hook::Family},
        pipeline::dns_parse::parse as parse_dns,
    };
}
