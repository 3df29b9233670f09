//! End-to-end: tracer runs as root on production nodes, so it must be safe against what it finds
//! there (needs root and a built tracer). The tools it runs come from fixed system directories,
//! with a clean environment, whatever PATH says; a capture never lands in someone else's file and
//! never destroys an earlier one; output errors are errors, a closed pipe is not; the release
//! build carries none of the test build's fault injection; and missing privileges are named.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::{run_tracer, tracer_bin};

const REJECT_DNS: &str = "-A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited";

/// Fake `iptables-save`, `nft`, `sysctl`, `conntrack`... in `dir`: each leaves `marker` and prints
/// an empty ruleset, so a tracer that ran one would both be caught and name no rule.
fn plant_fake_tools(dir: &Path, marker: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for tool in [
        "iptables-save",
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "ip6tables-save",
        "nft",
        "sysctl",
        "conntrack",
        "ip",
    ] {
        let script = format!("#!/bin/sh\necho {tool} >> '{}'\necho '{{\"nftables\": []}}'\n", marker.display());
        let path = dir.join(tool);
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// `tracer ARGS` in the node namespace with a hostile PATH (the fake tools first, then `.` and
/// an empty entry, started in the fakes' directory) and an environment that would make a real
/// iptables-save load its extensions from there.
fn hostile_env_command(lab: &Lab, fakes: &Path, args: &[&str]) -> Result<Command> {
    let tracer = tracer_bin()?;
    let path = format!("PATH={}:.::/usr/sbin:/usr/bin:/sbin:/bin", fakes.display());
    let libdir = format!("XTABLES_LIBDIR={}", fakes.display());
    let mut argv = vec!["env", &path, &libdir, tracer.to_str().context("non-UTF-8 tracer path")?];
    argv.extend_from_slice(args);
    let mut cmd = lab.command(Ns::Node, &argv);
    cmd.current_dir(fakes);
    Ok(cmd)
}

#[test]
fn a_hostile_path_changes_nothing_and_the_rule_is_still_named() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables(REJECT_DNS)?;
    let fakes = lab.dir().join("fakebin");
    let marker = lab.dir().join("a-fake-tool-ran");
    plant_fake_tools(&fakes, &marker)?;

    let cmd = hostile_env_command(&lab, &fakes, &["watch", "--port", "53", "--output", "json", "--duration", "4"])?;
    let mut watch = Process::start(&lab, cmd, "tracer watch with a hostile PATH", StdoutMode::Capture)?;
    watch.wait_until_watching()?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    ensure!(dig.output.contains("host unreachable"), "the REJECT should answer dig:\n{}", dig.output);
    let done = watch.finish(std::time::Duration::from_secs(20))?;
    let w = WatchJson::from_finished(&done)?;
    let reject = w
        .findings_of("netfilter_reject")
        .next()
        .with_context(|| format!("the REJECT should be named from the real tools:\n{}", done.describe()))?;
    expect_str(reject, "/backend", "iptables-nft")?;
    expect_str(reject, "/chain", "FORWARD")?;
    ensure!(u64_at(reject, "/rule") == Some(1), "rule 1 of FORWARD: {reject}");
    ensure!(!marker.exists(), "tracer ran a tool from PATH: {}", fs::read_to_string(&marker).unwrap_or_default());

    // triage reads the firewall of every namespace too.
    let out = hostile_env_command(&lab, &fakes, &["triage", "--duration", "1", "--output", "json"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("running tracer triage")?;
    expect_exit(&out, Exit::Code(1), "the REJECT is a finding (exit 1)")?;
    let t = WatchJson::parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| describe_output(&out))?;
    ensure!(
        t.findings_of("netfilter_reject").next().is_some(),
        "triage should name the REJECT:\n{}",
        describe_output(&out)
    );
    ensure!(!marker.exists(), "triage ran a tool from PATH: {}", fs::read_to_string(&marker).unwrap_or_default());
    Ok(())
}

/// `tracer watch --write FILE [EXTRA] --duration SECS` in the node namespace, with `env`.
fn watch_writing(lab: &Lab, file: &Path, extra: &[&str], secs: &str, env: &[(&str, &str)]) -> Result<Output> {
    let file = file.to_str().context("non-UTF-8 path")?;
    let mut argv = vec!["watch", "--port", "53", "--write", file];
    argv.extend_from_slice(extra);
    argv.extend_from_slice(&["--duration", secs]);
    lab.tracer_command(&argv, env)?.output().context("running tracer watch --write")
}

/// One line on stderr, saying `says`; nothing on stdout; a non-zero exit.
fn refused(out: &Output, says: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        !out.status.success() && lines.len() == 1 && lines[0].starts_with("tracer: error:") && lines[0].contains(says),
        "expected one error line saying {says:?}:\n{}",
        describe_output(out)
    );
    Ok(())
}

#[test]
fn write_refuses_foreign_files_hard_links_fifos_and_links() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let dir = lab.dir();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;

    let foreign = dir.join("foreign.pcapng");
    fs::write(&foreign, b"someone else's data")?;
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534))?;
    let hard = dir.join("hard.pcapng");
    fs::write(&hard, b"data with two names")?;
    fs::hard_link(&hard, dir.join("other-name"))?;
    let fifo = dir.join("fifo.pcapng");
    ensure!(Command::new("mkfifo").arg(&fifo).status()?.success(), "mkfifo");
    let link = dir.join("link.pcapng");
    std::os::unix::fs::symlink(&hard, &link)?;

    for (file, forced_says) in [
        (&foreign, "belongs to uid 65534"),
        (&hard, "hard links"),
        (&fifo, "not a regular file"),
        (&link, "symbolic link"),
    ] {
        let before = fs::symlink_metadata(file)?;
        let content = if before.is_file() { fs::read(file)? } else { Vec::new() };
        refused(&watch_writing(&lab, file, &[], "1", &[])?, "already exists")?;
        refused(&watch_writing(&lab, file, &["--force"], "1", &[])?, forced_says)?;
        let after = fs::symlink_metadata(file)?;
        ensure!(
            (after.ino(), after.mode(), after.uid(), after.nlink())
                == (before.ino(), before.mode(), before.uid(), before.nlink()),
            "{} changed",
            file.display()
        );
        if before.is_file() {
            ensure!(fs::read(file)? == content, "{} was written", file.display());
        }
    }
    ensure!(no_partial_files(dir)?.is_empty(), "temporary files left: {:?}", no_partial_files(dir)?);
    Ok(())
}

fn no_partial_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect())
}

#[test]
fn force_replaces_an_own_capture_but_a_failed_attach_keeps_it() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let file = lab.dir().join("dns.pcapng");
    let first = watch_writing(&lab, &file, &[], "1", &[])?;
    expect_exit(&first, Exit::Success, "the first capture")?;
    let old = fs::read(&file)?;

    // The test build fails half-way through attaching on request: the old capture must stay.
    let failed = watch_writing(&lab, &file, &["--force"], "1", &[("TRACER_FAULT", "error-mid-attach")])?;
    expect_exit_saying(
        &failed,
        Exit::Failure,
        "injected fault",
        "the watch should fail half-way through attaching (is TRACER_BIN a test build, with --features fault-injection?)",
    )?;
    ensure!(fs::read(&file)? == old, "a failed attach destroyed the earlier capture");
    ensure!(no_partial_files(lab.dir())?.is_empty(), "temporary files left: {:?}", no_partial_files(lab.dir())?);

    let replaced = watch_writing(&lab, &file, &["--force"], "2", &[])?;
    expect_exit(&replaced, Exit::Success, "--force over one's own capture")?;
    let new = fs::read(&file)?;
    ensure!(new != old, "the capture was not replaced");
    ensure!(fs::metadata(&file)?.mode() & 0o777 == 0o600, "mode 0600");
    let report = run_tracer(&["report", "--output", "json", file.to_str().context("non-UTF-8 path")?])?;
    expect_exit(&report, Exit::Success, "the new capture must read back")?;
    ensure!(no_partial_files(lab.dir())?.is_empty(), "temporary files left");
    Ok(())
}

#[test]
fn output_to_a_full_device_is_an_error() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let full = fs::OpenOptions::new().write(true).open("/dev/full").context("/dev/full")?;
    let out = lab
        .tracer_command(&["watch", "--output", "json", "--duration", "1"], &[])?
        .stdout(full)
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.lines().any(|l| l.starts_with("tracer: error:") && l.contains("No space left on device")),
        "a watch whose output cannot be written must fail saying so:\n{}",
        describe_output(&out)
    );
    Ok(())
}

#[test]
fn a_release_build_has_no_fault_injection() -> Result<()> {
    let release = match std::env::var_os("TRACER_RELEASE_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => tracer_tests::workspace_root().join("target/release/tracer"),
    };
    let bytes = fs::read(&release).with_context(|| {
        format!(
            "reading {} (build it with `cargo build --release -p tracer`; cargo xtask test does)",
            release.display()
        )
    })?;
    let needle = b"TRACER_FAULT";
    let contains = |haystack: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    ensure!(contains(&fs::read(tracer_bin()?)?), "control: the test build should carry the fault switch");
    ensure!(!contains(&bytes), "{} contains the fault-injection switch", release.display());

    // And it ignores the switch: it attaches and watches.
    let lab = Lab::new(LabConfig::healthy())?;
    let out = lab
        .command(Ns::Node, &[release.to_str().context("path")?, "watch", "--duration", "1"])
        .env("TRACER_FAULT", "error-mid-attach")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    expect_exit_saying(&out, Exit::Success, TRACER_READY, "the release build must ignore TRACER_FAULT")
}

#[test]
fn in_a_user_namespace_the_error_says_so() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let tracer = tracer_bin()?;
    let out = lab
        .command(
            Ns::Node,
            &["unshare", "--user", "--map-root-user", tracer.to_str().context("path")?, "watch", "--duration", "1"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    refused(&out, "user namespace")
}

#[test]
fn netns_takes_only_namespace_files_and_never_blocks() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let dir = lab.dir();
    // A FIFO nobody writes to: opened as it was, it would hang the start for good.
    let fifo = dir.join("netns.fifo");
    ensure!(Command::new("mkfifo").arg(&fifo).status()?.success(), "mkfifo");
    let file = dir.join("netns.file");
    fs::write(&file, b"not a namespace")?;
    let mount_namespace = "/proc/self/ns/mnt".to_string();
    for (target, says) in [
        (fifo.to_string_lossy().into_owned(), "is not a namespace file"),
        (file.to_string_lossy().into_owned(), "is not a namespace file"),
        (dir.to_string_lossy().into_owned(), "is not a namespace file"),
        (mount_namespace, "is not a network namespace"),
        ("999999999".to_string(), "no process 999999999"),
    ] {
        let started = std::time::Instant::now();
        // `timeout` ends a tracer that blocked (exit 124), which `refused` then rejects.
        let out = Command::new("timeout")
            .args(["10", tracer_bin()?.to_str().context("tracer path")?, "watch", "--netns", &target])
            .args(["--duration", "1"])
            .output()?;
        refused(&out, says).with_context(|| format!("--netns {target}"))?;
        ensure!(out.status.code() == Some(2), "--netns {target}: exit 2: {}", describe_output(&out));
        ensure!(started.elapsed() < std::time::Duration::from_secs(5), "--netns {target} took {:?}", started.elapsed());
    }
    // The lab's node namespace, by name and by the PID of a process inside it, is entered.
    let out = run_tracer(&["watch", "--netns", lab.netns(Ns::Node), "--duration", "1", "--output", "json"])?;
    ensure!(out.status.success(), "--netns by name: {}", describe_output(&out));
    Ok(())
}
