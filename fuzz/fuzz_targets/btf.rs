//! BTF is read from the running kernel (and module files beside it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = tracer::kernel::btf::Btf::parse(data) {
        let _ = btf.member("sk_buff", "network_header");
        let _ = btf.member("nf_conn", "tuplehash[1].tuple");
        let _ = btf.type_size("net_device");
        let _ = btf.enum_variants("skb_drop_reason");
        let _ = tracer::kernel::btf::Btf::parse_split(data, &btf);
    }
});
