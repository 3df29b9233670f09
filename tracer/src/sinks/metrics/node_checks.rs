//! The node checks of `tracer triage` as gauges, read in the watched network namespace
//! when the watch starts and again every [`READ_EVERY`], on a thread of its own (reading
//! the rulesets runs the firewall tools): `tracer_node_check{check, status}` is 1 for each
//! check's current status, and `tracer_node_check_findings{kind}` counts what they find.

use std::{
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use super::{CheckLabels, KindLabels, Metrics, NODE_FINDING_KINDS};
use crate::{
    findings::node_config::{self, Status, Traffic},
    model::packet::PortFilter,
    node::checks::{read_namespace, visible_namespaces},
};

/// How often the checks are read again: settings and rules change rarely, and a reading
/// runs the firewall tools.
pub(crate) const READ_EVERY: Duration = Duration::from_secs(60);

const STATUSES: [&str; 3] = ["ok", "note", "finding"];

/// Reads the checks until dropped.
pub(crate) struct NodeChecks {
    _stop: Sender<()>,
}

impl NodeChecks {
    /// Starts reading, in the network namespace of the calling thread, for the traced `port`.
    pub(crate) fn start(metrics: Metrics, port: PortFilter) -> Result<NodeChecks> {
        let (stop, stopped) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("tracer-node-checks".to_string())
            .spawn(move || loop {
                read_into(&metrics, port);
                match stopped.recv_timeout(READ_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .context("starting the thread that reads the node checks")?;
        Ok(NodeChecks { _stop: stop })
    }
}

fn read_into(metrics: &Metrics, port: PortFilter) {
    let (namespaces, _) = visible_namespaces();
    // The first is the namespace watched: the others are triage's to look at.
    let Some(watched) = namespaces.into_iter().next() else { return };
    let state = match read_namespace(&watched) {
        Ok(Some(state)) => state,
        Ok(None) => return,
        Err(err) => {
            crate::note_line!("tracer: warning: reading the node checks for the metrics: {err:#}");
            return;
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let decision =
        node_config::decide(&[state], &[], Traffic::default(), port, u64::try_from(now.as_nanos()).unwrap_or(u64::MAX));
    for checks in decision.namespaces.iter().filter(|ns| ns.netns.current) {
        for check in &checks.checks {
            let current = match check.status {
                Status::Ok => "ok",
                Status::Note => "note",
                Status::Finding(_) => "finding",
            };
            for status in STATUSES {
                let labels = CheckLabels { check: check.name.clone(), status: status.to_string() };
                metrics.node_checks.get_or_create(&labels).set(i64::from(status == current));
            }
        }
    }
    for kind in NODE_FINDING_KINDS {
        let found = decision.findings.iter().filter(|ranked| ranked.finding.kind == kind).count();
        metrics
            .node_findings
            .get_or_create(&KindLabels { kind: kind.name().to_string() })
            .set(i64::try_from(found).unwrap_or(i64::MAX));
    }
    metrics.node_checks_read.set(now.as_secs_f64());
}
