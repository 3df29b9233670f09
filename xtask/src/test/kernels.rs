//! `cargo xtask test --kernels 6.1,6.12`: the end-to-end core, run inside each kernel's VM.
//!
//! The test binaries are built here and run in the guest, which shares this machine's root file
//! system: one guest per kernel, one test at a time (the guest's CPU is emulated, about 20 times
//! slower, and the tests' lab is per test anyway).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, phase};
use crate::vm::{self, quote, Kernel, Vm};

/// The core, in the order it runs: test binary, then the arguments that pick its tests. The lab
/// without br_netfilter comes first, before any other lab loads the module into the fresh guest.
const CORE: &[(&str, &[&str])] = &[
    ("findings", &["--ignored", "--exact", "without_br_netfilter_the_conntrack_skip_names_the_missing_module"]),
    (
        "watch",
        &[
            "healthy_node_shows_query_dnat_and_reverse_natted_reply",
            "bridge_nf_call_iptables_off_shows_reply_from_pod_without_conntrack",
            "other_ports_produce_no_records",
        ],
    ),
    ("findings", &["text_output_shows_the_conntrack_skip_finding"]),
    ("findings_variants", &["healthy_node_with_several_queries_has_no_findings"]),
    (
        "netfilter",
        &[
            "iptables_nft_reject_is_named_by_rule_number",
            "iptables_legacy_reject_is_named_by_rule_number",
            "native_nftables_reject_is_named_by_rule_and_handle",
            "healthy_ruleset_gives_no_finding",
        ],
    ),
    ("capture", &["conntrack_skip_capture_reads_in_tshark_and_report"]),
    // DNS over TCP between pods, read from page fragments where the kernel lists their bases.
    ("truncation", &["a_dns_service_without_its_tcp_port_fails_every_truncated_answer"]),
    (
        "triage",
        &[
            "bridge_nf_call_iptables_off_ranks_conntrack_skip_first_with_both_evidences",
            "reject_rule_is_netfilter_reject_from_traffic_and_ruleset",
            "healthy_lab_exits_0_without_findings",
        ],
    ),
    ("nothing_left_behind", &["nothing_left_behind_after"]),
];

/// `--kernels LIST` out of the test arguments: the kernels, and what is left for `cargo test`.
pub fn split_args(args: &[String]) -> Result<(Vec<Kernel>, Vec<String>)> {
    let mut kernels = Vec::new();
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let list = match arg.strip_prefix("--kernels=") {
            Some(list) => list,
            None if arg == "--kernels" => {
                args.next().map(String::as_str).context("--kernels needs a list, e.g. --kernels 6.1,6.12")?
            }
            None => {
                rest.push(arg.clone());
                continue;
            }
        };
        for name in list.split(',').filter(|n| !n.is_empty()) {
            kernels.push(Kernel::parse(name)?);
        }
    }
    Ok((kernels, rest))
}

/// Runs the core under each kernel; fails if any test failed anywhere. `tracer` and `release`
/// are the test and release builds.
pub fn run(kernels: &[Kernel], tracer: &Path, release: &Path) -> Result<()> {
    phase("test", "cargo test -p tracer-tests --no-run (the binaries the guests run)");
    let binaries = test_binaries()?;
    let mut outcomes = Vec::new();
    for &kernel in kernels {
        phase("test", &format!("the end-to-end core on the {} kernel", kernel.name()));
        let script = write_script(kernel, &binaries, tracer, release)?;
        let started = Instant::now();
        let outcome = vm::run(&Vm::new(kernel), &["sh".to_string(), script.to_string_lossy().into_owned()]);
        let secs = started.elapsed().as_secs_f64();
        let _ = fs::remove_file(&script);
        let passed = match outcome {
            Ok(status) => status.success(),
            Err(err) => {
                eprintln!("test: the {} kernel's run did not finish: {err:#}", kernel.name());
                false
            }
        };
        phase(
            "test",
            &format!(
                "{} kernel: {} ({secs:.0} s, boot included)",
                kernel.name(),
                if passed { "passed" } else { "FAILED" }
            ),
        );
        outcomes.push((kernel, passed));
    }
    let failed: Vec<&str> = outcomes.iter().filter(|(_, passed)| !passed).map(|(k, _)| k.name()).collect();
    if !failed.is_empty() {
        bail!("the end-to-end core failed on the {} kernel(s); their output is above", failed.join(", "));
    }
    Ok(())
}

/// The tracer-tests test binaries by target name, built without running.
fn test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let executables = cmd::cargo_executables(
        cmd::cargo().args(["test", "-p", "tracer-tests", "--no-run"]),
        "`cargo test -p tracer-tests --no-run`",
    )?;
    Ok(executables
        .into_iter()
        .filter(|artifact| artifact.kinds.iter().any(|k| k == "test"))
        .map(|artifact| (artifact.name, artifact.path))
        .collect())
}

/// The guest's script: every part of the core in order, each timed, all run whatever fails.
fn write_script(
    kernel: Kernel,
    binaries: &BTreeMap<String, PathBuf>,
    tracer: &Path,
    release: &Path,
) -> Result<PathBuf> {
    let script = script_text(binaries, tracer, release)?;
    let dir = cmd::workspace_root().join("target/xtask-vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("core-{}-{}.sh", kernel.name(), std::process::id()));
    fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn script_text(binaries: &BTreeMap<String, PathBuf>, tracer: &Path, release: &Path) -> Result<String> {
    let mut script = format!(
        "export TRACER_BIN={} TRACER_RELEASE_BIN={} RUST_BACKTRACE=0\n\
         echo \"core: kernel $(uname -r)\"\nfailed=''\n",
        quote(&tracer.to_string_lossy()),
        quote(&release.to_string_lossy()),
    );
    for (binary, args) in CORE {
        let path =
            binaries.get(*binary).with_context(|| format!("cargo built no test binary `{binary}` of tracer-tests"))?;
        let words: Vec<String> = args.iter().map(|a| quote(a)).collect();
        script.push_str(&format!(
            "start=$(date +%s)\n{path} --test-threads=1 {args} || failed=\"$failed {binary}\"\n\
             echo \"core: {binary} took $(( $(date +%s) - start )) s\"\n",
            path = quote(&path.to_string_lossy()),
            args = words.join(" "),
        ));
    }
    script.push_str("if [ -n \"$failed\" ]; then echo \"core: FAILED:$failed\"; exit 1; fi\necho 'core: all passed'\n");
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn kernels_are_taken_out_of_the_cargo_test_arguments() {
        let (kernels, rest) = split_args(&strings(&["--kernels", "6.1,6.12", "--", "healthy"])).unwrap();
        assert_eq!(kernels, [Kernel::Debian6_1, Kernel::Debian6_12]);
        assert_eq!(rest, strings(&["--", "healthy"]));
        let (kernels, _) = split_args(&strings(&["--kernels=6.12"])).unwrap();
        assert_eq!(kernels, [Kernel::Debian6_12]);
        assert!(split_args(&strings(&["--kernels", "5.4"])).is_err());
        assert!(split_args(&strings(&["--kernels"])).is_err());
    }

    #[test]
    fn the_script_runs_every_part_and_fails_if_one_did() {
        let binaries: BTreeMap<String, PathBuf> =
            CORE.iter().map(|(name, _)| (name.to_string(), PathBuf::from(format!("/t/{name}-0123")))).collect();
        let script = script_text(&binaries, Path::new("/t/checked"), Path::new("/t/release")).unwrap();
        assert!(script.starts_with("export TRACER_BIN='/t/checked' TRACER_RELEASE_BIN='/t/release'"));
        assert!(script.contains("'/t/findings-0123' --test-threads=1 '--ignored' '--exact'"));
        assert_eq!(script.matches("|| failed=").count(), CORE.len());
        assert!(script.contains("exit 1"));
        let missing = BTreeMap::new();
        assert!(script_text(&missing, Path::new("/a"), Path::new("/b")).is_err());
    }
}
