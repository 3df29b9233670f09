//! The UDP load: calibration (records per packet), time to the first event, interleaved
//! rounds per mode, the highest rate traced without loss, and the xtables-monitor probe.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use tracer_tests::lab::{Ns, TRACER_READY, TRACER_READY_TIMEOUT};

use super::{
    check_interrupted,
    observer::TraceRules,
    procs::{cpu_seconds, last_json, peak_rss_kib, Pipeline, Proc, Stdout},
    results::{AttachTrial, Calibration, UdpRun, XtablesProbe},
    runner::Bench,
    stats::{self, Summary},
    table::print_udp_run,
    Mode, Plan, LOAD_PORT, TRICKLE_PPS,
};

impl Bench<'_> {
    pub(super) fn calibrate(&self, packets: u64) -> Result<Calibration> {
        check_interrupted()?;
        let receiver = self.receiver(LOAD_PORT)?;
        // Until the node has resolved the server's address, the first DNATed packets go up
        // through its IP stack (extra `from-host` stages); warm the path so calibration sees the
        // steady state every later run is in.
        self.send(Some(1000), None, Some(20))?;
        thread::sleep(Duration::from_millis(100));
        // A few thousand lines: read them here, whole, to see what each packet produced.
        let mut tracer =
            Proc::spawn(self.watch_command(LOAD_PORT, &[]), "tracer watch (calibration)", Stdout::Capture)?;
        tracer.wait_stderr(TRACER_READY_TIMEOUT, TRACER_READY)?;
        let drops_before = self.pre_bridge_drops()?;
        let sent = self.send(Some(TRICKLE_PPS), None, Some(packets))?;
        thread::sleep(Duration::from_millis(300));
        let drops_after = self.pre_bridge_drops()?;
        receiver.stop()?;
        let ended = tracer.stop()?;

        let mut cal = Calibration {
            packets: sent.sent,
            bridged: sent.sent.saturating_sub(drops_after.saturating_sub(drops_before)),
            lines: 0,
            stages: Vec::new(),
            hook_passes: 0,
            hooks: Vec::new(),
            other_lines: 0,
            summary: Summary::default(),
            exact: false,
        };
        let bump = |list: &mut Vec<(String, u64)>, key: &str| match list.iter_mut().find(|(k, _)| k == key) {
            Some((_, n)) => *n += 1,
            None => list.push((key.to_string(), 1)),
        };
        let mut summary = None;
        for line in &ended.out {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                cal.other_lines += 1;
                continue;
            };
            match v["type"].as_str() {
                Some("packet") => {
                    cal.lines += 1;
                    bump(&mut cal.stages, v["stage"].as_str().unwrap_or("?"));
                    for pass in v["hooks"].as_array().into_iter().flatten() {
                        cal.hook_passes += 1;
                        bump(&mut cal.hooks, pass["hook"].as_str().unwrap_or("?"));
                    }
                }
                Some("summary") => summary = stats::parse_summary(line),
                _ => cal.other_lines += 1,
            }
        }
        cal.summary = summary
            .ok_or_else(|| anyhow!("calibration: tracer printed no summary ({}): {}", ended.status, ended.err))?;
        if cal.packets == 0 || cal.summary.records == 0 {
            bail!(
                "calibration: {} packets sent, {} records received; tracer said: {}",
                cal.packets,
                cal.summary.records,
                ended.err
            );
        }
        // The model every later run is checked against: one journey per bridged packet, read or
        // lost, and the same whole number of lines for each journey read.
        cal.exact =
            cal.summary.records + cal.summary.lost == cal.bridged && cal.lines.is_multiple_of(cal.summary.records);
        Ok(cal)
    }

    pub(super) fn attach_trial(&self) -> Result<AttachTrial> {
        check_interrupted()?;
        let receiver = self.receiver(LOAD_PORT)?;
        let trickle = self.sender(Some(TRICKLE_PPS), Some(30.0), None)?;
        thread::sleep(Duration::from_millis(50));
        let (pipeline, ready_ns) = self.tracer_pipeline(LOAD_PORT, &[])?;
        let first = pipeline.first_line_ns(Duration::from_secs(10));
        let ms = |ns: u64| ns.saturating_sub(pipeline.spawned_ns) as f64 / 1e6;
        let trial = AttachTrial { ready_ms: ms(ready_ns), first_event_ms: first.map(ms) };
        pipeline.finish()?;
        trickle.stop()?;
        receiver.stop()?;
        Ok(trial)
    }

    pub(super) fn udp_run(&self, mode: Mode, rate: Option<u64>, secs: f64) -> Result<UdpRun> {
        check_interrupted()?;
        let observer = self.observe(mode, LOAD_PORT)?;
        let receiver = self.receiver(LOAD_PORT)?;
        let drops_before = self.pre_bridge_drops()?;
        let pid = observer.pid();
        let cpu_before = pid.and_then(cpu_seconds);
        let t0 = Instant::now();
        let sent = self.send(rate, Some(secs), None)?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu_after = pid.and_then(cpu_seconds);
        let rss_kib = pid.and_then(peak_rss_kib);
        // Datagrams still queued in the server's socket were delivered in time; let the
        // receiver take them before it is stopped.
        thread::sleep(Duration::from_millis(100));
        let received = last_json(&receiver.stop()?, "loadgen recv")?;
        let drops_after = self.pre_bridge_drops()?;
        let observed = observer.observed(cpu_before, cpu_after, wall, rss_kib)?;
        Ok(UdpRun {
            mode,
            round: 0,
            rate_limit: rate,
            sent: sent.sent,
            send_errors: sent.errors,
            secs: sent.secs,
            received: received["received"].as_u64().unwrap_or(0),
            rcvbuf_errors: received["rcvbuf_errors"].as_u64(),
            pre_bridge_drops: drops_after.saturating_sub(drops_before),
            observed,
            accounting: None,
        })
    }

    /// Traced runs at fixed rates: halving from half the baseline rate until nothing is lost,
    /// then bisecting towards the lowest rate that lost records.
    pub(super) fn lossless(&self, max_pps: f64, plan: &Plan) -> Result<Vec<UdpRun>> {
        let mut runs = Vec::new();
        let mut clean: Option<u64> = None;
        let mut lossy = max_pps as u64;
        let mut rate = (max_pps / 2.0) as u64;
        for _ in 0..plan.lossless_steps {
            if rate < 100 {
                break;
            }
            let mut run = self.udp_run(Mode::Traced, Some(rate), plan.load_secs)?;
            run.accounting = self.account(&run);
            print_udp_run(&run);
            let ok = run.accounting.as_ref().is_some_and(stats::lossless);
            if ok {
                clean = Some(clean.map_or(rate, |c| c.max(rate)));
            } else {
                lossy = lossy.min(rate);
            }
            runs.push(run);
            rate = match clean {
                None => rate / 2,
                Some(c) => {
                    if lossy.saturating_sub(c) * 10 < lossy {
                        break;
                    }
                    (c + lossy) / 2
                }
            };
        }
        Ok(runs)
    }

    /// The manual workflow as documented for iptables-nft: a TRACE rule and
    /// `xtables-monitor --trace`, under the same load. Records whether and when the reader quits.
    pub(super) fn xtables_monitor_probe(&self, secs: f64) -> Result<XtablesProbe> {
        check_interrupted()?;
        let _rules = TraceRules::add(self.lab, LOAD_PORT)?;
        let cmd = self.lab.command(Ns::Node, &["xtables-monitor", "--trace"]);
        let mut monitor = Pipeline::spawn(cmd, "xtables-monitor --trace", Path::new(&self.loadgen), None)?;
        thread::sleep(Duration::from_millis(300));
        let receiver = self.receiver(LOAD_PORT)?;
        let mut sender = self.sender(None, Some(secs), None)?;
        let start = Instant::now();
        let mut exited_after_ms = None;
        let deadline = start + Duration::from_secs_f64(secs + 15.0);
        while sender.running() && Instant::now() < deadline {
            if exited_after_ms.is_none() && !monitor.producer.running() {
                exited_after_ms = Some(start.elapsed().as_secs_f64() * 1e3);
            }
            thread::sleep(Duration::from_millis(2));
        }
        let sent = last_json(&sender.finish(Duration::from_secs(5))?, "loadgen send")?;
        thread::sleep(Duration::from_millis(100));
        let received = last_json(&receiver.stop()?, "loadgen recv")?;
        let end = monitor.finish()?;
        Ok(XtablesProbe {
            sent: sent["sent"].as_u64().unwrap_or(0),
            secs: sent["secs"].as_f64().unwrap_or(0.0),
            received: received["received"].as_u64().unwrap_or(0),
            lines: end.counted.lines,
            exited_after_ms,
            stderr: end.producer_stderr.trim_start_matches("xtables-monitor --trace: ").trim().to_string(),
        })
    }
}
