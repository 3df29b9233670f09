//! The bench's lab runs: a `Bench` holds the lab, the binaries and the ClusterIP rules, and
//! runs the load in each mode (the UDP runs in `udp`, the DNS runs in `dns`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tracer_tests::lab::{Lab, Ns, CLIENT_VETH, CLUSTER_DNS_IP, SERVER_IP, TRACER_READY, TRACER_READY_TIMEOUT};

use super::{
    cpus, interleave, measured_names,
    observer::{Observer, Recording, TraceRules},
    procs::{last_json, Pipeline, Proc, Stdout},
    results::{Measured, UdpRun},
    stats::{self, Accounting},
    table::print_udp_run,
    Mode, Plan, BRIDGE_IN_NEEDLE, DNS_PORT, LOAD_PORT, UNRELATED_PORT,
};
use crate::cmd::phase;

/// What `loadgen send` reported.
pub struct Sent {
    pub(super) sent: u64,
    pub(super) errors: u64,
    pub(super) secs: f64,
}

pub struct Bench<'a> {
    pub(super) lab: &'a Lab,
    pub(super) tracer: String,
    pub(super) loadgen: String,
    pub(super) queries: PathBuf,
}

impl<'a> Bench<'a> {
    pub(super) fn new(lab: &'a Lab, tracer: &Path, loadgen: &Path) -> Result<Bench<'a>> {
        let utf8 = |p: &Path| p.to_str().map(str::to_string).ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()));
        // The same ClusterIP indirection as the lab's DNS: every packet is DNATed by the node.
        for port in [LOAD_PORT, DNS_PORT] {
            lab.iptables(&format!(
                "-t nat -A PREROUTING -d {CLUSTER_DNS_IP}/32 -p udp --dport {port} \
                 -j DNAT --to-destination {SERVER_IP}:{port}"
            ))?;
        }
        let queries = lab.dir().join("dnsperf-queries.txt");
        std::fs::write(&queries, "example.test A\n").with_context(|| format!("writing {}", queries.display()))?;
        Ok(Bench { lab, tracer: utf8(tracer)?, loadgen: utf8(loadgen)?, queries })
    }

    pub(super) fn measure(&self, plan: &Plan) -> Result<Measured> {
        phase("bench", "calibration: records and lines per packet");
        let calibration = self.calibrate(plan.calibration_packets)?;
        println!(
            "bench: {} packets ({} bridged) -> {} records, {} lost, {} lines {:?} ({} hook passes {:?}){}",
            calibration.packets,
            calibration.bridged,
            calibration.summary.records,
            calibration.summary.lost,
            calibration.lines,
            calibration.stages,
            calibration.hook_passes,
            calibration.hooks,
            if calibration.exact { "" } else { "  (NOT one record per packet)" }
        );

        phase("bench", "time from start to first event");
        let mut attach = Vec::new();
        for _ in 0..plan.attach_trials {
            let trial = self.attach_trial()?;
            println!(
                "bench: attach: watching after {:.0} ms, first event after {}",
                trial.ready_ms,
                trial.first_event_ms.map_or("(none)".to_string(), |ms| format!("{ms:.0} ms"))
            );
            attach.push(trial);
        }

        phase(
            "bench",
            &format!(
                "UDP load: {} rounds x (baseline + each of {}), {} s each",
                plan.udp_rounds,
                measured_names(),
                plan.load_secs
            ),
        );
        let udp = interleave(plan.udp_rounds, |mode, round| {
            let mut run = self.udp_run(mode, None, plan.load_secs)?;
            run.round = round;
            run.accounting = self.account(&run);
            print_udp_run(&run);
            Ok(run)
        })?;

        let mut lossless = Vec::new();
        if plan.lossless_steps > 0 {
            phase("bench", "traced at lower rates: the highest rate without lost records");
            let baseline: Vec<f64> = udp.iter().filter(|r| r.mode == Mode::Baseline).map(UdpRun::pps).collect();
            let max = stats::median(&baseline).unwrap_or(0.0);
            lossless = self.lossless(max, plan)?;
        }

        let xtables_monitor = if plan.xtables_monitor_probe {
            phase("bench", "the TRACE workflow with xtables-monitor as the reader");
            Some(self.xtables_monitor_probe(plan.load_secs)?)
        } else {
            None
        };

        phase(
            "bench",
            &format!(
                "DNS: dnsperf, {} rounds x (baseline + each of {}), {} s each",
                plan.dns_rounds,
                measured_names(),
                plan.load_secs
            ),
        );
        let dns = self.dns_rounds(plan)?;

        phase("bench", "profiles: each mode's programs (BPF run-time statistics) and the load CPU (perf)");
        let profiles = self.profiles(plan.load_secs).map_err(|e| format!("{e:#}"));
        if let Err(e) = &profiles {
            println!("bench: no profiles: {e}");
        }
        Ok(Measured { calibration, attach, udp, lossless, xtables_monitor, dns, profiles })
    }

    /// Only the `traced` mode sends a record per packet, so only its runs can be held to one.
    pub(super) fn account(&self, run: &UdpRun) -> Option<Accounting> {
        if run.mode != Mode::Traced {
            return None;
        }
        let observed = run.observed.as_ref()?;
        let summary = observed.summary.as_ref()?;
        Some(stats::account(run.sent, run.pre_bridge_drops, observed.matched, summary.records, summary.lost))
    }

    /// `tracer watch --port PORT --output json [FLAGS]` in the node namespace (FLAGS may name
    /// another `--output`).
    pub(super) fn watch_command(&self, port: u16, flags: &[&str]) -> Command {
        let port = port.to_string();
        let mut argv = vec![self.tracer.as_str(), "watch", "--port", &port];
        if !flags.contains(&"--output") {
            argv.extend(["--output", "json"]);
        }
        argv.extend(flags);
        // loadgen's responder is not on port 53, the only one tracer reads as DNS by itself.
        let dns_port = DNS_PORT.to_string();
        if port == dns_port {
            argv.extend(["--dns-port", &dns_port]);
        }
        self.lab.command(Ns::Node, &argv)
    }

    /// [`Bench::watch_command`] piped into the counter; returns once tracer says it is watching,
    /// with the time it said so.
    pub(super) fn tracer_pipeline(&self, port: u16, flags: &[&str]) -> Result<(Pipeline, u64)> {
        let mut pipeline = Pipeline::spawn(
            self.watch_command(port, flags),
            "tracer watch",
            Path::new(&self.loadgen),
            Some(BRIDGE_IN_NEEDLE),
        )?;
        let ready = pipeline.producer.wait_stderr(TRACER_READY_TIMEOUT, TRACER_READY)?;
        Ok((pipeline, ready))
    }

    pub(super) fn observe(&self, mode: Mode, port: u16) -> Result<Observer<'a>> {
        let tracer = |port, flags: &[&str]| -> Result<Observer<'a>> {
            Ok(Observer {
                pipeline: Some(self.tracer_pipeline(port, flags)?.0),
                tracer: true,
                _rules: None,
                recording: None,
            })
        };
        match mode {
            Mode::Baseline => Ok(Observer { pipeline: None, tracer: false, _rules: None, recording: None }),
            Mode::Unrelated => tracer(UNRELATED_PORT, &[]),
            Mode::Traced => tracer(port, &[]),
            Mode::FindingsOnly => tracer(port, &["--findings-only"]),
            Mode::AttachFloor => tracer(UNRELATED_PORT, &["--empty-programs"]),
            Mode::FindingsOnlyFloor => tracer(port, &["--findings-only", "--empty-programs"]),
            Mode::IptablesTrace => {
                let rules = TraceRules::add(self.lab, port)?;
                // `nft monitor trace` rather than `xtables-monitor --trace`: both print the same
                // kernel trace events of the iptables-nft TRACE rule, but xtables-monitor exits at
                // the first overflow of its netlink socket, within milliseconds of this load (see
                // `xtables_monitor` in the results), while nft reports the overflow and goes on.
                let cmd = self.lab.command(Ns::Node, &["nft", "monitor", "trace"]);
                let mut pipeline = Pipeline::spawn(cmd, "nft monitor trace", Path::new(&self.loadgen), None)?;
                // It prints nothing until a traced packet comes; give it time to subscribe.
                thread::sleep(Duration::from_millis(300));
                if !pipeline.producer.running() {
                    bail!("nft monitor trace exited at start: {}", pipeline.producer.err.joined());
                }
                Ok(Observer { pipeline: Some(pipeline), tracer: false, _rules: Some(rules), recording: None })
            }
            Mode::Capture => {
                let file = self.lab.dir().join("bench-capture.pcapng");
                let _ = std::fs::remove_file(&file);
                let path = file.to_str().ok_or_else(|| anyhow!("non-UTF-8 lab directory"))?.to_string();
                let (pipeline, _) = self.tracer_pipeline(port, &["--write", &path, "--output", "none"])?;
                let recording = Recording::Tracer { file, tracer: self.tracer.clone() };
                // Its summary comes from the capture, not from its (empty) output.
                Ok(Observer { pipeline: Some(pipeline), tracer: false, _rules: None, recording: Some(recording) })
            }
            Mode::Tcpdump => {
                let file = self.lab.dir().join("bench-tcpdump.pcap");
                let _ = std::fs::remove_file(&file);
                let path = file.to_str().ok_or_else(|| anyhow!("non-UTF-8 lab directory"))?.to_string();
                let filter = format!("udp port {port}");
                // -Z root: the file is in the lab directory, which only root may write.
                let cmd =
                    self.lab.command(Ns::Node, &["tcpdump", "-i", "any", "-n", "-Z", "root", "-w", &path, &filter]);
                let mut pipeline = Pipeline::spawn(cmd, "tcpdump", Path::new(&self.loadgen), None)?;
                pipeline.producer.wait_stderr(Duration::from_secs(10), "listening on")?;
                let recording = Recording::Tcpdump { file };
                Ok(Observer { pipeline: Some(pipeline), tracer: false, _rules: None, recording: Some(recording) })
            }
        }
    }

    /// `loadgen recv` on the server, ready to count.
    pub(super) fn receiver(&self, port: u16) -> Result<Proc> {
        self.loadgen_server("recv", port)
    }

    /// `loadgen <mode>` bound to `port` on the server, once it says it is ready: a bench that
    /// started sending before would count the server's start-up as loss.
    pub(super) fn loadgen_server(&self, mode: &str, port: u16) -> Result<Proc> {
        let bind = format!("{SERVER_IP}:{port}");
        let cmd = self.lab.command(Ns::Server, &[&self.loadgen, mode, "--bind", &bind]);
        let mut server = Proc::spawn(cmd, &format!("loadgen {mode}"), Stdout::Capture)?;
        server.wait_stdout(Duration::from_secs(10), "ready")?;
        Ok(server)
    }

    /// `loadgen send` to the ClusterIP's load port, as an argument list for the client.
    pub(super) fn send_argv(&self, rate: Option<u64>, secs: Option<f64>, count: Option<u64>) -> Vec<String> {
        let dst = format!("{CLUSTER_DNS_IP}:{LOAD_PORT}");
        let mut argv: Vec<String> = vec![self.loadgen.clone(), "send".into(), "--dst".into(), dst];
        if let Some(rate) = rate {
            argv.extend(["--rate".into(), rate.to_string()]);
        }
        if let Some(secs) = secs {
            argv.extend(["--duration".into(), format!("{secs}")]);
        }
        if let Some(count) = count {
            argv.extend(["--count".into(), count.to_string()]);
        }
        argv
    }

    pub(super) fn sender(&self, rate: Option<u64>, secs: Option<f64>, count: Option<u64>) -> Result<Proc> {
        let argv = self.send_argv(rate, secs, count);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.lab.command(Ns::Client, &argv);
        cpus::on_load_cpu(&mut cmd);
        Proc::spawn(cmd, "loadgen send", Stdout::Capture)
    }

    /// Runs a sender to its end (bounded: its own duration plus a margin).
    pub(super) fn send(&self, rate: Option<u64>, secs: Option<f64>, count: Option<u64>) -> Result<Sent> {
        let limit = match (secs, count, rate) {
            (Some(s), _, _) => s,
            (None, Some(n), Some(r)) => n as f64 / r as f64,
            _ => 10.0,
        };
        let ended = self.sender(rate, secs, count)?.finish(Duration::from_secs_f64(limit + 15.0))?;
        let v = last_json(&ended, "loadgen send")?;
        Ok(Sent {
            sent: v["sent"].as_u64().unwrap_or(0),
            errors: v["errors"].as_u64().unwrap_or(0),
            secs: v["secs"].as_f64().unwrap_or(0.0),
        })
    }

    /// Drops on the client's links and on the bridge port it enters by: packets that never
    /// reached the bridge, so tracer could not have seen them.
    pub(super) fn pre_bridge_drops(&self) -> Result<u64> {
        let client = self.lab.run(Ns::Client, &["ip", "-s", "-j", "link", "show"])?;
        let node = self.lab.run(Ns::Node, &["ip", "-s", "-j", "link", "show"])?;
        let client = stats::link_drops(&client, None)
            .ok_or_else(|| anyhow!("unreadable `ip -s -j link` output in the client"))?;
        let node = stats::link_drops(&node, Some(CLIENT_VETH))
            .ok_or_else(|| anyhow!("unreadable `ip -s -j link` output in the node"))?;
        Ok(client + node)
    }
}
