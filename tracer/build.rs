//! Builds the kernel programs (tracer-ebpf) for the BPF target and places the object
//! in OUT_DIR, where `include_bytes_aligned!` picks it up.

use std::{env, path::Path};

/// Where `cargo xtask setup` installs bpf-linker (built against the nightly
/// toolchain's libLLVM). Put first on PATH so a plain `cargo build` finds it too.
const TOOLCHAIN_BIN: &str = "/opt/tracer-toolchain/bin";

fn main() -> anyhow::Result<()> {
    if Path::new(TOOLCHAIN_BIN).join("bpf-linker").exists() {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![Path::new(TOOLCHAIN_BIN).to_path_buf()];
        dirs.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }
    let metadata_dir = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&metadata_dir).join("../tracer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "tracer-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .map_err(|err| anyhow::anyhow!("building the kernel programs failed ({err}); run `cargo xtask setup` to install the nightly rust-src and bpf-linker"))
}
