//! Developer tasks for tracer, run as `cargo xtask <task>` from anywhere in the checkout.
//!
//! - `setup`: install what a fresh machine lacks (nightly toolchain with rust-src, rustfmt and
//!   clippy, bpf-linker in /opt/tracer-toolchain, the Debian packages the lab uses). Idempotent;
//!   quick when all is there.
//! - `lint`: the formatting, clippy with warnings denied (userspace crates on the host, the kernel
//!   programs for their BPF target) and the layering of tracer/src; `test` runs it first.
//! - `test [ARGS...]`: setup, lint, build tracer, run the workspace tests with `TRACER_BIN` pointing
//!   at the build (needs root). ARGS go to `cargo test`, e.g. `cargo xtask test -- healthy`.
//!   `--kernels 6.1,6.12` runs the end-to-end core inside each of those kernels instead.
//! - `demo`: setup, build tracer in release mode, and show it watching DNS in a lab (needs root).
//! - `image [--out FILE]`: setup, build tracer in release mode and its OCI image archive
//!   (target/image/tracer.tar), which containerd imports and deploy/daemonset.yaml runs.
//! - `bench [--smoke] [--tracer PATH]`: setup, build tracer in release mode (or take PATH), and
//!   measure what it costs per packet against no tracer and against iptables TRACE in a lab; writes
//!   target/bench/results.json (root). `--smoke` is one short round of everything, for
//!   `cargo xtask test`.
//! - `vm --kernel 6.1|6.12|host [--memory 2G] [--timeout SECS] [--verbose] -- COMMAND...`: run
//!   COMMAND as root in the current directory on another kernel (a Debian kernel package booted
//!   under QEMU with virtme-ng), exiting with its exit code (root; needs `setup` first).
//!
//! `TRACER_TOOLCHAIN_PREFIX` moves the bpf-linker installation away from /opt/tracer-toolchain; it
//! exists to exercise the bpf-linker build without touching a working installation.

mod bench;
mod cmd;
mod demo;
mod image;
mod lint;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task>
  setup           install the nightly rust-src component, rustfmt and clippy, bpf-linker and the
                  lab's Debian packages
  lint            cargo fmt --check, clippy -D warnings on the userspace crates and (nightly, BPF
                  target) on tracer-ebpf, and the layering of tracer/src (xtask/src/lint/layers.rs)
  test [ARGS...]  setup, lint, build tracer, run all tests as root (ARGS are passed to cargo test)
  test --kernels 6.1,6.12
                  the end-to-end core inside each of those kernels (booted by `vm`) instead
  demo            setup, build tracer --release, and show it watching DNS in a namespace lab (root)
  image [--out FILE]
                  setup, build tracer --release and its OCI image archive (default
                  target/image/tracer.tar) for `ctr images import` and deploy/daemonset.yaml
  bench [--smoke] [--tracer PATH]
                  setup, build tracer --release (or use PATH), measure its cost per packet in a
                  namespace lab (root); writes target/bench/results.json (--smoke: seconds,
                  results-smoke.json)
  vm --kernel 6.1|6.12|host [--memory 2G] [--timeout SECS] [--verbose] -- COMMAND [ARGS...]
                  run COMMAND as root, in the current directory, on Debian's newest 6.1 or 6.12
                  kernel booted under QEMU (no KVM, 20-30 s to boot) with this machine's root
                  file system and the checkout shared read-write; exits with COMMAND's exit code.
                  The kernel package is downloaded once into /var/lib/tracer-kernels. `host`
                  runs COMMAND directly on this machine's kernel (it cannot be booted in a VM).
                  --memory: guest RAM (default 2G); --timeout: kill the guest after SECS seconds
                  (default 1200); --verbose: show the guest kernel's console. Needs root and
                  `cargo xtask setup`";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match task {
        "setup" if rest.is_empty() => setup::run().map(|()| ExitCode::SUCCESS),
        "lint" if rest.is_empty() => lint::run().map(|()| ExitCode::SUCCESS),
        "test" => test::run(rest),
        "demo" if rest.is_empty() => demo::run(),
        "bench" => bench::run(rest),
        "vm" => vm::task(rest),
        "image" => image::run(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("xtask: unknown arguments: {}\n{USAGE}", args.join(" "));
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask {task}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
