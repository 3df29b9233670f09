//! End-to-end: `tracer watch --write FILE.pcapng` and `tracer report FILE` (README, "Capture and
//! offline analysis"). The lab tests need root, a built tracer and tshark (`cargo xtask setup`
//! installs it); the file-only tests need neither root nor a lab.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::run_tracer;
use tracer_tests::scenario::{Scenario, RECORDS_PRINTED};

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 path")
}

/// `tracer report FILE ARGS`, which must never panic on any input file: no panic message, not
/// a panic's exit code.
fn run_report(file: &Path, args: &[&str]) -> Result<Output> {
    let mut argv = vec!["report", path_str(file)?];
    argv.extend_from_slice(args);
    let out = run_tracer(&argv)?;
    ensure!(out.status.code() != Some(101), "tracer panicked:\n{}", describe_output(&out));
    no_panic(&String::from_utf8_lossy(&out.stderr))?;
    Ok(out)
}

/// A JSON watch that also writes what it sees to `file`.
fn writing_to<'lab>(lab: &'lab Lab, file: &Path) -> Result<Scenario<'lab>> {
    Ok(Scenario::new(lab).args(&["--write", path_str(file)?]))
}

/// `tracer report FILE --output json`, which must exit 0 without a panic: what it printed, and
/// its output for the tests that read its stderr too.
fn report_json(file: &Path) -> Result<(WatchJson, Output)> {
    let out = run_report(file, &["--output", "json"])?;
    expect_exit(&out, Exit::Success, "tracer report failed")?;
    let report = WatchJson::parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok((report, out))
}

/// `tshark -r FILE -T fields` with the fields given, one line per frame, fields tab-separated.
fn tshark_fields(file: &Path, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r", path_str(file)?, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let out = cmd.output().context("running tshark (Debian package tshark; `cargo xtask setup` installs it)")?;
    expect_exit(&out, Exit::Success, "tshark failed")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.to_lowercase().contains("appears to be damaged") && !stderr.contains("cut short"),
        "tshark found the file damaged:\n{}",
        describe_output(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect())
}

/// Copies of `file` cut off anywhere, written to `dir`: each gives a clear error, what came
/// before, and never a panic.
fn cut_copies_fail_clearly(file: &Path, dir: &Path) -> Result<()> {
    let bytes = fs::read(file)?;
    for len in [0, 10, 27, bytes.len() / 3, bytes.len() / 2, bytes.len() - 5] {
        let cut = dir.join(format!("cut-{len}.pcapng"));
        fs::write(&cut, &bytes[..len])?;
        let out = run_report(&cut, &["--output", "json"])?;
        expect_exit_saying(
            &out,
            Exit::Failure,
            "tracer: error:",
            &format!("a file cut at {len} of {} bytes should fail clearly", bytes.len()),
        )?;
        if len > 0 {
            expect_stderr(&out, "cut off", "the error should say the file is cut off")?;
        }
    }
    Ok(())
}

#[test]
fn conntrack_skip_capture_reads_in_tshark_and_report() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let file = lab.dir().join("skip.pcapng");
    let (live, dig) = writing_to(&lab, &file)?.run(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_timed_out()?;
    let id = dig.query_id()?;
    ensure!(
        live.findings_of("conntrack_skip").count() == 1,
        "the live watch should find conntrack_skip:\n{}",
        live.describe()
    );

    // Packets are sensitive: only the owner may read the file.
    let mode = fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "capture mode is {mode:o}, not 600");

    // tshark reads it, sees the query and the reply, and shows tracer's comments.
    let frames = tshark_fields(
        &file,
        &["frame.number", "dns.id", "dns.flags.response", "ip.src", "frame.interface_name", "frame.comment"],
    )?;
    let id_hex = format!("0x{id:04x}");
    let dns_frames: Vec<&Vec<String>> = frames.iter().filter(|f| f.get(1) == Some(&id_hex)).collect();
    let listing = frames.iter().map(|f| f.join("  ")).collect::<Vec<_>>().join("\n");
    ensure!(
        dns_frames.iter().any(|f| f[2] == "0") && dns_frames.iter().any(|f| f[2] == "1"),
        "tshark should show the query and the reply with id {id_hex}:\n{listing}"
    );
    ensure!(
        frames.len() == live.packets.len(),
        "tshark shows {} frames, the watch printed {} packet lines:\n{listing}",
        frames.len(),
        live.packets.len()
    );
    ensure!(
        frames.iter().all(|f| f[5].starts_with("tracer: ")),
        "every frame should carry tracer's comment:\n{listing}"
    );
    ensure!(
        dns_frames.iter().any(|f| f[5].contains("bridge-in on veth-client") && f[4] == CLIENT_VETH),
        "the query's comment should name its stage and port:\n{listing}"
    );
    ensure!(
        dns_frames.iter().any(|f| f[2] == "1" && f[3] == SERVER_IP && f[5].contains("FINDING conntrack_skip")),
        "the reply that skipped conntrack should name the finding in its comment:\n{listing}"
    );

    // The file alone gives the same packet lines and the conntrack_skip finding.
    let (report, _) = report_json(&file)?;
    ensure!(
        report.packets == live.packets,
        "report packet lines differ from the watch's:\n--- watch ---\n{}\n--- report ---\n{}",
        live.describe(),
        report.describe()
    );
    ensure!(
        report.findings == live.findings,
        "report findings differ from the watch's:\n--- watch ---\n{:#?}\n--- report ---\n{:#?}",
        live.findings,
        report.findings
    );
    for field in ["/packets", "/findings", "/lost", "/evicted_flows"] {
        ensure!(
            report.summary.pointer(field) == live.summary.pointer(field),
            "summary {field} differs: watch {}, report {}",
            live.summary,
            report.summary
        );
    }
    let finding = report.findings_of("conntrack_skip").next().context("no conntrack_skip from the file")?;
    expect_str(finding, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(finding, "/actual_source", &format!("{SERVER_IP}:53"))?;
    expect_str(finding, "/sysctls/net.bridge.bridge-nf-call-iptables", "0")?;

    // Text, as the watch prints it.
    let text = run_tracer(&["report", path_str(&file)?])?;
    ensure!(
        text.status.success() && String::from_utf8_lossy(&text.stdout).contains("FINDING conntrack_skip"),
        "text report should show the finding block:\n{}",
        describe_output(&text)
    );

    cut_copies_fail_clearly(&file, lab.dir())
}

#[test]
fn json_output_and_write_together_and_a_foreign_capture_lists_plainly() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let file = lab.dir().join("healthy.pcapng");
    let (live, dig) =
        writing_to(&lab, &file)?.settle(RECORDS_PRINTED).run(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_answered()?;
    live.check_summary()?;

    // The hook paths and conntrack survive the round trip (healthy node: every hop NATed).
    let (report, _) = report_json(&file)?;
    ensure!(
        report.packets == live.packets && report.findings.is_empty(),
        "report differs from the watch:\n--- watch ---\n{}\n--- report ---\n{}",
        live.describe(),
        report.describe()
    );

    // tcpdump's own capture of the same traffic is not tracer's: a plain listing.
    let pcap = lab.dir().join("tcpdump.pcap");
    let tcpdump =
        lab.start_tcpdump(Ns::Client, &["--immediate-mode", "-U", "-w", path_str(&pcap)?, "udp", "port", "53"])?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    dig.expect_answered()?;
    thread::sleep(Duration::from_millis(300));
    let tcpdump = tcpdump.stop()?;
    let out = run_report(&pcap, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success()
            && stderr.contains("without stages")
            && stdout.contains("DNS query")
            && stdout.contains("DNS reply"),
        "a tcpdump capture should get a plain listing with the DNS lines:\n{}\n{}",
        describe_output(&out),
        tcpdump.describe()
    );
    Ok(())
}

#[test]
fn a_killed_watch_leaves_a_capture_readable_to_its_last_block() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let file = lab.dir().join("killed.pcapng");
    // No chance to finish: what each batch flushed must already be complete blocks.
    let (_, dig) =
        writing_to(&lab, &file)?.stop_with(libc::SIGKILL).run_text(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_timed_out()?;
    let (report, out) = report_json(&file).context("the report of a killed watch's capture")?;
    ensure!(
        report.findings_of("conntrack_skip").count() == 1,
        "the finding should be made from what was written:\n{}",
        report.describe()
    );
    expect_stderr(&out, "no summary", "report should say the watch did not end normally")
}

#[test]
fn full_disk_stops_the_capture_with_one_warning_the_watch_goes_on_and_exits_2() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // A filesystem that fills after a few packets.
    let small = lab.dir().join("small");
    fs::create_dir(&small)?;
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tracer-capture-test", path_str(&small)?])
        .output()?;
    expect_exit(&mount, Exit::Success, "mounting a small tmpfs")?;
    let result = (|| -> Result<()> {
        let file = small.join("full.pcapng");
        let (done, _) = writing_to(&lab, &file)?.run_json_any_exit(|| {
            for _ in 0..6 {
                let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
                dig.expect_answered()?;
            }
            Ok(())
        })?;
        let live = WatchJson::parse(&done.stdout)?;
        ensure!(live.packets.len() >= 6 * 4, "the watch should go on printing every packet:\n{}", live.describe());
        let warnings = done.stderr.matches("tracer: warning: writing").count();
        ensure!(
            warnings == 1 && done.stderr.contains("No space left on device"),
            "expected exactly one warning naming the full disk:\n{}",
            done.describe()
        );
        // The watch ran to its end, and its exit says the capture is not whole.
        ensure!(
            done.status.code() == Some(2)
                && done.stderr.lines().any(|l| l.starts_with("tracer: error: writing the capture")
                    && l.contains("it holds what was written before")),
            "a capture that stopped early is an error at exit:\n{}",
            done.describe()
        );
        // What was written before the disk filled is still a capture tshark and report read.
        let out = run_report(&file, &["--output", "json"])?;
        ensure!(
            out.status.code() == Some(0) || String::from_utf8_lossy(&out.stderr).contains("cut off"),
            "report of the partial capture:\n{}",
            describe_output(&out)
        );
        Ok(())
    })();
    let umount = Command::new("umount").arg(&small).output();
    result?;
    ensure!(umount?.status.success(), "unmounting the small tmpfs");
    Ok(())
}

#[test]
fn garbage_and_missing_files_fail_clearly_without_a_lab() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tracer-capture-files-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        // Random bytes, and random bytes behind a valid pcapng magic.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let garbage = dir.join("garbage.pcapng");
        fs::write(&garbage, noise(4096))?;
        let out = run_report(&garbage, &[])?;
        expect_exit_saying(&out, Exit::Code(2), "not a pcapng or pcap file", "garbage should be refused in one line")?;
        let mut fake = vec![0x0a, 0x0d, 0x0d, 0x0a];
        fake.extend(noise(4096));
        let fake_file = dir.join("fake.pcapng");
        fs::write(&fake_file, &fake)?;
        let out = run_report(&fake_file, &["--output", "json"])?;
        expect_exit_saying(&out, Exit::Failure, "tracer: error:", "a damaged header should fail clearly")?;
        let missing = dir.join("missing.pcapng");
        let out = run_tracer(&["report", path_str(&missing)?])?;
        expect_exit_saying(&out, Exit::Code(2), "No such file", "a missing file should be named")?;
        // --write to a place that cannot be written fails before anything is attached.
        let out = run_tracer(&["watch", "--write", "/nonexistent-dir/x.pcapng", "--duration", "1"])?;
        expect_exit_saying(
            &out,
            Exit::Code(2),
            "cannot create /nonexistent-dir/x.pcapng",
            "an unwritable --write path should fail at once",
        )?;
        Ok(())
    })();
    fs::remove_dir_all(&dir).ok();
    result
}

#[test]
fn names_in_a_capture_cannot_drive_the_terminal() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let file = lab.dir().join("names.pcapng");
    let (_, dig) = writing_to(&lab, &file)?.run(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_answered()?;
    // A capture whose interface name holds an escape sequence that would turn a terminal
    // red: in tracer's JSON metadata as a JSON escape, elsewhere (the interface block, the
    // comments) as the raw byte; each the same length, so the file stays well formed.
    let bytes = fs::read(&file)?;
    let quoted = format!("\"{CLIENT_VETH}\"");
    let (bytes, in_json) = replace_all(&bytes, quoted.as_bytes(), b"\"\\u001b[31mX\"")?;
    let (patched, raw) = replace_all(&bytes, CLIENT_VETH.as_bytes(), b"\x1b[31mclient")?;
    ensure!(in_json > 0 && raw > 0, "the capture names {CLIENT_VETH} in metadata ({in_json}) and elsewhere ({raw})");
    let hostile_file = lab.dir().join("hostile.pcapng");
    fs::write(&hostile_file, &patched)?;

    let out = run_report(&hostile_file, &[])?;
    expect_exit(&out, Exit::Success, "tracer report of the patched capture")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
        "no raw escape reaches the terminal:\n{stdout}"
    );
    ensure!(stdout.contains("\\x1b[31m"), "the name is shown escaped:\n{stdout}");
    Ok(())
}

/// `bytes` with every `from` replaced by `to` (of the same length), and how many there were.
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Result<(Vec<u8>, usize)> {
    ensure!(from.len() == to.len(), "a replacement of another length would break the file");
    let mut out = Vec::with_capacity(bytes.len());
    let (mut at, mut count) = (0, 0);
    while at < bytes.len() {
        if bytes[at..].starts_with(from) {
            out.extend_from_slice(to);
            at += from.len();
            count += 1;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    Ok((out, count))
}
