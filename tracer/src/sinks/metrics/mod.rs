//! `--metrics ADDR:PORT`: what a watch sees, as Prometheus metrics on `/metrics`, for the
//! monitoring a cluster already has. A [`Sink`] in front of the others counts packets,
//! every occurrence of a finding (repeats too, which the lines only count in the summary),
//! unconfirmed findings and lost records; a thread reads the node checks now and then into
//! gauges; another serves them over HTTP (`server`).
//!
//! Labels are few and bounded: a finding's kind, and where they apply its bridge, hook,
//! rule and the rule's owner (the manager's name, one of a fixed few: never the Service or
//! policy, which are as many as a cluster has); past [`MAX_FINDING_SERIES`] label sets,
//! further ones are counted under `rule="other"` with the other labels empty. Pods and
//! addresses are never labels.

pub(crate) mod node_checks;
pub(crate) mod server;

use std::{
    collections::HashSet,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry},
};
use tracer_common::Stage;

use crate::{
    findings::netfilter::short_label,
    model::{firewall::Owner, packet::stage_name},
    schema::{
        blind_spot::BlindSpot,
        finding::{Evidence, Finding, FindingKind, Unconfirmed},
        packet::{DropLine, TracedPacket},
        sink::Sink,
        summary::{Evictions, Summary},
    },
};

/// Distinct label sets of `tracer_findings_total` at most.
pub(crate) const MAX_FINDING_SERIES: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FindingLabels {
    pub kind: String,
    pub bridge: String,
    pub hook: String,
    pub rule: String,
    /// The manager that owns the rule or policy (`kube-proxy`, `calico`, ..., `unknown`).
    pub owner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CheckLabels {
    pub check: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UnavailableLabels {
    pub kind: String,
    /// What the run cannot see (`netfilter_verdicts`, `drop_reasons`, ...).
    pub missing: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EvictedLabels {
    /// What was let go of: `dns_queries`, `journeys`, `findings`, `finding_series`.
    pub what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VersionLabels {
    pub version: String,
}

/// The metrics of one watch: the registry the server encodes, and handles to its series.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub registry: Arc<Registry>,
    packets: Family<StageLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    unconfirmed: Family<KindLabels, Counter>,
    lost: Counter,
    pub node_checks: Family<CheckLabels, Gauge>,
    pub node_findings: Family<KindLabels, Gauge>,
    pub node_checks_read: Gauge<f64, AtomicU64>,
    unavailable: Family<UnavailableLabels, Gauge>,
    /// Connections to the metrics server closed unanswered because it served its most at once.
    pub refused_connections: Counter,
    evicted: Family<EvictedLabels, Counter>,
    /// When the watch last served its outputs (milliseconds since `started`), 0 before it
    /// watched: what the health endpoints judge the watch by.
    pub last_served_ms: Arc<AtomicU64>,
    pub started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let packets: Family<StageLabels, Counter> = registered(
            &mut registry,
            "tracer_packets",
            "Traced packets by stage (bridge-in, bridge-out, to-host, from-host, dropped)",
        );
        let findings: Family<FindingLabels, Counter> = registered(
            &mut registry,
            "tracer_findings",
            "Occurrences of findings (repeats included) by kind, and the bridge, netfilter hook, rule and the rule's owner where they apply",
        );
        let unconfirmed: Family<KindLabels, Counter> = registered(
            &mut registry,
            "tracer_unconfirmed_findings",
            "Findings not stated because records they rest on may have been lost, by kind",
        );
        let lost: Counter = registered(
            &mut registry,
            "tracer_lost_records",
            "Records the kernel could not queue because the ring buffer was full",
        );
        let node_checks: Family<CheckLabels, Gauge> = registered(
            &mut registry,
            "tracer_node_check",
            "Node checks of the watched network namespace: 1 for the check's current status (ok, note, finding), 0 for the others",
        );
        let node_findings: Family<KindLabels, Gauge> = registered(
            &mut registry,
            "tracer_node_check_findings",
            "Findings the node checks make now, by kind (0 once mended)",
        );
        let node_checks_read: Gauge<f64, AtomicU64> = registered(
            &mut registry,
            "tracer_node_checks_read_timestamp_seconds",
            "When the node checks were last read (Unix time)",
        );
        let unavailable: Family<UnavailableLabels, Gauge> = registered(
            &mut registry,
            "tracer_finding_unavailable",
            "1 for each kind of finding this agent cannot state, by what its kernel (or its mode) does not let it see",
        );
        let refused_connections: Counter = registered(
            &mut registry,
            "tracer_metrics_refused_connections",
            "Connections to this metrics server closed unanswered because it was serving its most at once",
        );
        let evicted: Family<EvictedLabels, Counter> = registered(
            &mut registry,
            "tracer_evicted",
            "What the watch let go of to keep its memory bounded: DNS queries no longer tracked (dns_queries), packet journeys that never ended (journeys), findings forgotten and stated again if they recur (findings), occurrences counted under rule=\"other\" past the bound of finding label sets (finding_series)",
        );
        for what in ["dns_queries", "journeys", "findings", "finding_series"] {
            let _ = evicted.get_or_create(&EvictedLabels { what: what.to_string() });
        }
        let build: Family<VersionLabels, Gauge> =
            registered(&mut registry, "tracer_build_info", "The running tracer's version");
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION").to_string() }).set(1);
        Metrics {
            registry: Arc::new(registry),
            packets,
            findings,
            unconfirmed,
            lost,
            node_checks,
            node_findings,
            node_checks_read,
            unavailable,
            refused_connections,
            evicted,
            last_served_ms: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    /// The registry as Prometheus text (format 0.0.4).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// A new metric, registered under `name` (counters get `_total` added) with `help`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Counts what passes on its way to `inner`.
pub(crate) struct MetricsOutput<'a> {
    inner: Box<dyn Sink + 'a>,
    metrics: Metrics,
    /// The counters of the four stages and of dropped lines, looked up once.
    by_stage: [Counter; 5],
    dropped: usize,
    finding_series: HashSet<FindingLabels>,
    lost_total: u64,
    evicted_so_far: Evictions,
}

impl<'a> MetricsOutput<'a> {
    pub(crate) fn new(inner: Box<dyn Sink + 'a>, metrics: Metrics) -> MetricsOutput<'a> {
        let counter = |stage: &str| metrics.packets.get_or_create_owned(&StageLabels { stage: stage.to_string() });
        let by_stage = [
            counter(stage_name(Stage::BridgeIn)),
            counter(stage_name(Stage::BridgeOut)),
            counter(stage_name(Stage::ToHost)),
            counter(stage_name(Stage::FromHost)),
            counter("dropped"),
        ];
        MetricsOutput {
            inner,
            metrics,
            by_stage,
            dropped: 4,
            finding_series: HashSet::new(),
            lost_total: 0,
            evicted_so_far: Evictions::default(),
        }
    }

    fn occurred(&mut self, finding: &Finding, times: u64) {
        let labels = finding_labels(finding);
        let labels = if self.finding_series.contains(&labels) || self.finding_series.len() < MAX_FINDING_SERIES {
            self.finding_series.insert(labels.clone());
            labels
        } else {
            self.count_evicted("finding_series", 1);
            FindingLabels {
                kind: finding.kind.name().to_string(),
                bridge: String::new(),
                hook: String::new(),
                rule: "other".to_string(),
                owner: String::new(),
            }
        };
        self.metrics.findings.get_or_create(&labels).inc_by(times);
    }

    fn count_evicted(&self, what: &str, by: u64) {
        if by > 0 {
            self.metrics.evicted.get_or_create(&EvictedLabels { what: what.to_string() }).inc_by(by);
        }
    }

    fn evicted_so_far(&mut self, now: &Evictions) {
        let before = self.evicted_so_far;
        self.count_evicted("dns_queries", now.dns_queries.saturating_sub(before.dns_queries));
        self.count_evicted("journeys", now.journeys.saturating_sub(before.journeys));
        self.count_evicted("findings", now.findings.saturating_sub(before.findings));
        self.evicted_so_far = Evictions {
            dns_queries: before.dns_queries.max(now.dns_queries),
            journeys: before.journeys.max(now.journeys),
            findings: before.findings.max(now.findings),
        };
    }

    fn lost_so_far(&mut self, total: u64) {
        if total > self.lost_total {
            self.metrics.lost.inc_by(total - self.lost_total);
            self.lost_total = total;
        }
    }
}

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::BridgeIn => 0,
        Stage::BridgeOut => 1,
        Stage::ToHost => 2,
        Stage::FromHost => 3,
    }
}

/// A finding's labels: its kind, and its bridge (DNS findings), hook and rule (netfilter),
/// and the owner of the rule or policy (netfilter and triage's node findings).
pub(crate) fn finding_labels(finding: &Finding) -> FindingLabels {
    let kind = finding.kind.name().to_string();
    let owner = |owner: &Option<Owner>| owner.as_ref().map(|o| o.manager.name().to_string()).unwrap_or_default();
    match &finding.evidence {
        Evidence::Dns(dns) => FindingLabels {
            kind,
            bridge: dns.bridge.clone().unwrap_or_default(),
            hook: String::new(),
            rule: String::new(),
            owner: String::new(),
        },
        Evidence::Netfilter(nf) => FindingLabels {
            kind,
            bridge: String::new(),
            hook: nf.hook.name().to_string(),
            rule: short_label(finding).unwrap_or_default(),
            owner: owner(&nf.owner),
        },
        Evidence::Node(node) => FindingLabels {
            kind,
            bridge: node.bridges.join(","),
            hook: String::new(),
            rule: String::new(),
            owner: owner(&node.owner),
        },
    }
}

impl Sink for MetricsOutput<'_> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        self.by_stage[stage_index(packet.event.stage)].inc_by(packet.event.occurrences.0);
        self.inner.packet(packet)
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        self.by_stage[self.dropped].inc_by(line.drop.occurrences.0);
        self.inner.dropped(line)
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        self.occurred(finding, 1);
        self.inner.finding(finding)
    }

    fn repeated(&mut self, finding: &Finding, times: u64) -> io::Result<()> {
        self.occurred(finding, times);
        self.inner.repeated(finding, times)
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        self.metrics.unconfirmed.get_or_create(&KindLabels { kind: unconfirmed.kind.name().to_string() }).inc();
        self.inner.unconfirmed(unconfirmed)
    }

    fn lost(&mut self, total: u64) {
        self.lost_so_far(total);
        self.inner.lost(total);
    }

    fn evictions(&mut self, so_far: &Evictions) {
        self.evicted_so_far(so_far);
        self.inner.evictions(so_far);
    }

    fn blind_spots(&mut self, spots: &[BlindSpot]) {
        for spot in spots {
            for kind in &spot.unavailable {
                let labels = UnavailableLabels { kind: kind.name().to_string(), missing: spot.missing.clone() };
                self.metrics.unavailable.get_or_create(&labels).set(1);
            }
        }
        self.inner.blind_spots(spots);
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.lost_so_far(summary.lost);
        self.evicted_so_far(&Evictions {
            dns_queries: summary.evicted_flows,
            journeys: summary.evicted_paths,
            findings: summary.findings_forgotten,
        });
        self.inner.summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        let served = u64::try_from(self.metrics.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.metrics.last_served_ms.store(served, Ordering::Relaxed);
        self.inner.flush()
    }
}

/// Kinds the node checks can find, for gauges that read 0 once a finding is mended.
pub(crate) const NODE_FINDING_KINDS: [FindingKind; 6] = [
    FindingKind::ConntrackSkip,
    FindingKind::IpForwardOff,
    FindingKind::ConntrackTableFull,
    FindingKind::ConntrackInsertRace,
    FindingKind::NetfilterReject,
    FindingKind::NetfilterDrop,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::text::SummaryOnly;
    use strum::VariantNames;

    #[test]
    fn every_finding_kind_has_an_alert_on_the_series_it_is_counted_in() {
        let alerts = include_str!("../../../../deploy/alerts.yaml");
        for kind in FindingKind::VARIANTS {
            let selector = format!("tracer_findings_total{{kind=\"{kind}\"}}");
            assert!(alerts.contains(&selector), "deploy/alerts.yaml has no alert on {selector}");
        }
        for series in ["tracer_lost_records_total", "tracer_build_info", "tracer_node_checks_read_timestamp_seconds"] {
            assert!(alerts.contains(series), "deploy/alerts.yaml has no alert on {series}");
        }
    }

    #[test]
    fn evictions_are_counted_by_what_was_let_go_of() {
        let metrics = Metrics::new();
        let mut output = MetricsOutput::new(Box::new(SummaryOnly::new(std::io::sink())), metrics.clone());
        let line = |what: &str, n: u64| format!("tracer_evicted_total{{what=\"{what}\"}} {n}");
        assert!(metrics.encode().contains(&line("findings", 0)), "every series exists from the start");
        output.evictions(&Evictions { dns_queries: 3, journeys: 1, findings: 0 });
        output.evictions(&Evictions { dns_queries: 5, journeys: 1, findings: 2 });
        let summary = Summary { evicted_flows: 6, evicted_paths: 1, findings_forgotten: 2, ..Summary::default() };
        output.summary(&summary).unwrap();
        let text = metrics.encode();
        for expected in [line("dns_queries", 6), line("journeys", 1), line("findings", 2), line("finding_series", 0)] {
            assert!(text.contains(&expected), "no `{expected}` in\n{text}");
        }
    }

    #[test]
    fn a_netfilter_finding_is_labelled_with_the_manager_not_the_service() {
        let finding = crate::findings::netfilter::tests::kube_proxy_finding();
        let labels = finding_labels(&finding);
        assert_eq!((labels.rule.as_str(), labels.owner.as_str()), ("filter/KUBE-SERVICES #1", "kube-proxy"));
    }

    #[test]
    fn each_unavailable_finding_is_a_series() {
        let metrics = Metrics::new();
        let mut output = MetricsOutput::new(Box::new(SummaryOnly::new(std::io::sink())), metrics.clone());
        output.blind_spots(&[BlindSpot {
            missing: "netfilter_verdicts".into(),
            why: "none".into(),
            unavailable: vec![FindingKind::NetfilterReject, FindingKind::NetfilterDrop],
            instead: String::new(),
        }]);
        let text = metrics.encode();
        for kind in ["netfilter_reject", "netfilter_drop"] {
            let line = format!("tracer_finding_unavailable{{kind=\"{kind}\",missing=\"netfilter_verdicts\"}} 1");
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
