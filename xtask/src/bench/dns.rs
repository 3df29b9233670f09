//! The DNS load: dnsperf against loadgen's responder through the ClusterIP, per mode, and
//! the soak (a long traced DNS load while tracer's memory is sampled).

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tracer_tests::lab::{Ns, CLUSTER_DNS_IP};

use super::{
    check_interrupted, cpus, interleave,
    procs::{cpu_seconds, peak_rss_kib, rss_kib, Ended, Proc, Stdout},
    results::{DnsRun, Observed, SoakRun},
    runner::Bench,
    stats::{self, DnsPerf},
    table::print_dns_run,
    Mode, Plan, DNS_OUTSTANDING, DNS_PORT, SOAK_SAMPLE,
};

impl Bench<'_> {
    /// loadgen's DNS responder on the server, ready to answer.
    pub(super) fn dns_responder(&self) -> Result<Proc> {
        self.loadgen_server("dns", DNS_PORT)
    }

    /// dnsperf in the client against the ClusterIP's DNS port for `secs`.
    pub(super) fn dnsperf(&self, secs: f64) -> Result<std::process::Command> {
        let queries = self.queries.to_str().ok_or_else(|| anyhow!("non-UTF-8 lab directory"))?;
        let port = DNS_PORT.to_string();
        let limit = format!("{secs}");
        let mut cmd = self.lab.command(
            Ns::Client,
            &[
                "dnsperf",
                "-s",
                CLUSTER_DNS_IP,
                "-p",
                &port,
                "-d",
                queries,
                "-l",
                &limit,
                "-c",
                "1",
                "-T",
                "1",
                "-q",
                DNS_OUTSTANDING,
                "-t",
                "1",
            ],
        );
        cpus::on_load_cpu(&mut cmd);
        Ok(cmd)
    }

    pub(super) fn dns_rounds(&self, plan: &Plan) -> Result<Vec<DnsRun>> {
        let responder = self.dns_responder()?;
        let runs = interleave(plan.dns_rounds, |mode, round| {
            let mut run = self.dns_run(mode, plan.load_secs)?;
            run.round = round;
            print_dns_run(&run);
            Ok(run)
        })?;
        responder.stop()?;
        Ok(runs)
    }

    pub(super) fn soak(&self, secs: f64) -> Result<SoakRun> {
        let responder = self.dns_responder()?;
        let observer = self.observe(Mode::Traced, DNS_PORT)?;
        let pid = observer.pid().ok_or_else(|| anyhow!("the soak's tracer did not start"))?;
        let dnsperf = Proc::spawn(self.dnsperf(secs)?, "dnsperf", Stdout::Capture)?;
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed().as_secs_f64() < secs {
            check_interrupted()?;
            thread::sleep(Duration::from_secs(1));
            let at = started.elapsed().as_secs_f64();
            if samples.len() as f64 * SOAK_SAMPLE.as_secs_f64() <= at {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((at, kib));
                }
            }
        }
        let perf = dnsperf_statistics(&dnsperf.finish(Duration::from_secs(30))?)?;
        let summary = observer.finish()?.and_then(|(_, summary, _)| summary);
        responder.stop()?;
        Ok(SoakRun { samples, perf, summary })
    }

    pub(super) fn dns_run(&self, mode: Mode, secs: f64) -> Result<DnsRun> {
        check_interrupted()?;
        let (perf, observed) = self.observed_dnsperf(mode, secs, |_| Ok(false))?;
        Ok(DnsRun { mode, round: 0, perf, observed })
    }

    /// dnsperf for `secs` with `mode`'s observer attached. `meanwhile` is called with the time
    /// since the load started, again and again while it returns true and dnsperf runs.
    pub(super) fn observed_dnsperf(
        &self,
        mode: Mode,
        secs: f64,
        mut meanwhile: impl FnMut(Duration) -> Result<bool>,
    ) -> Result<(DnsPerf, Option<Observed>)> {
        let observer = self.observe(mode, DNS_PORT)?;
        let pid = observer.pid();
        let cpu_before = pid.and_then(cpu_seconds);
        let started = Instant::now();
        let mut dnsperf = Proc::spawn(self.dnsperf(secs)?, "dnsperf", Stdout::Capture)?;
        while dnsperf.running() && meanwhile(started.elapsed())? {}
        let ended = dnsperf.finish(Duration::from_secs_f64(secs + 20.0))?;
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = pid.and_then(cpu_seconds);
        let rss_kib = pid.and_then(peak_rss_kib);
        let perf = dnsperf_statistics(&ended)?;
        let observed = observer.observed(cpu_before, cpu_after, wall, rss_kib)?;
        Ok((perf, observed))
    }
}

fn dnsperf_statistics(ended: &Ended) -> Result<DnsPerf> {
    stats::parse_dnsperf(&ended.out.join("\n")).ok_or_else(|| {
        anyhow!("dnsperf printed no statistics ({}): {}\n{}", ended.status, ended.out.join("\n"), ended.err)
    })
}
