//! Pod names on what a run reports: an [`Sink`] in front of the others that puts the
//! pod of each address beside it (packet lines, dropped lines, findings), and keeps to
//! the pods the user chose (`--pod`, `--namespace`). Live, pods come from the node's
//! container runtime; replaying a capture, from the pods its packets recorded, so a
//! finding made again from them names the same pods the watch named.

use std::{collections::HashMap, io, net::IpAddr};

use crate::{
    model::pod::{EndpointPods, PodFilter, PodRef},
    node::pods::Pods,
    schema::{
        finding::{Evidence, Finding, Unconfirmed},
        packet::{DropLine, TracedPacket},
        sink::Sink,
        summary::Summary,
    },
};

/// Where the names come from.
pub(crate) enum PodSource {
    /// The node's container runtime (a live watch).
    Runtime(Pods),
    /// The pods packets already carry (a capture read back), learned as they pass.
    Recorded(HashMap<IpAddr, PodRef>),
}

impl PodSource {
    fn pod_of(&mut self, ip: IpAddr) -> Option<PodRef> {
        match self {
            PodSource::Runtime(pods) => pods.pod_of(ip).cloned(),
            PodSource::Recorded(known) => known.get(&ip).cloned(),
        }
    }

    fn ends(&mut self, src: IpAddr, dst: IpAddr) -> EndpointPods {
        EndpointPods { src_pod: self.pod_of(src), dst_pod: self.pod_of(dst) }
    }
}

/// Names pods on everything passed to `inner`, and passes on only what the filter shows.
pub(crate) struct PodNames<'a> {
    inner: Box<dyn Sink + 'a>,
    source: PodSource,
    filter: PodFilter,
}

impl<'a> PodNames<'a> {
    pub(crate) fn new(inner: Box<dyn Sink + 'a>, source: PodSource, filter: PodFilter) -> PodNames<'a> {
        PodNames { inner, source, filter }
    }

    /// For a capture read back: names come from its packets.
    pub(crate) fn recorded(inner: Box<dyn Sink + 'a>) -> PodNames<'a> {
        PodNames::new(inner, PodSource::Recorded(HashMap::new()), PodFilter::default())
    }

    /// The finding with the pods of its addresses filled in where they were not yet.
    fn named(&mut self, finding: &Finding) -> Finding {
        let mut finding = finding.clone();
        let source = &mut self.source;
        match &mut finding.evidence {
            Evidence::Dns(dns) => {
                let pods = &mut dns.pods;
                pods.client_pod = pods.client_pod.take().or_else(|| source.pod_of(dns.client.ip()));
                pods.expected_source_pod =
                    pods.expected_source_pod.take().or_else(|| source.pod_of(dns.expected_source.ip()));
                pods.actual_source_pod = pods
                    .actual_source_pod
                    .take()
                    .or_else(|| dns.actual_source.and_then(|actual| source.pod_of(actual.ip())));
            }
            Evidence::Netfilter(nf) => {
                let pods = &mut nf.pods;
                pods.src_pod = pods.src_pod.take().or_else(|| source.pod_of(nf.src.ip()));
                pods.dst_pod = pods.dst_pod.take().or_else(|| source.pod_of(nf.dst.ip()));
            }
            Evidence::Node(_) => {}
        }
        finding
    }
}

/// Every pod a finding names.
pub(crate) fn finding_pods(finding: &Finding) -> Vec<&PodRef> {
    match &finding.evidence {
        Evidence::Dns(dns) => {
            let pods = &dns.pods;
            [&pods.client_pod, &pods.expected_source_pod, &pods.actual_source_pod].into_iter().flatten().collect()
        }
        Evidence::Netfilter(nf) => nf.pods.any().collect(),
        Evidence::Node(_) => Vec::new(),
    }
}

impl Sink for PodNames<'_> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        let event = &packet.event;
        if let PodSource::Recorded(known) = &mut self.source {
            for (address, pod) in [(event.src.ip(), &packet.pods.src_pod), (event.dst.ip(), &packet.pods.dst_pod)] {
                if let Some(pod) = pod {
                    known.insert(address, pod.clone());
                }
            }
            return self.inner.packet(packet);
        }
        let pods = self.source.ends(event.src.ip(), event.dst.ip());
        if !self.filter.shows(pods.any()) {
            return Ok(());
        }
        if pods.is_empty() {
            return self.inner.packet(packet);
        }
        let mut named = packet.clone();
        named.pods = pods;
        self.inner.packet(&named)
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        if let PodSource::Recorded(_) = self.source {
            return self.inner.dropped(line);
        }
        let drop = &line.drop;
        let pods = self.source.ends(drop.src.ip(), drop.dst.ip());
        if !self.filter.shows(pods.any()) {
            return Ok(());
        }
        let mut named = line.clone();
        named.pods = pods;
        self.inner.dropped(&named)
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        let named = self.named(finding);
        if !self.filter.shows(finding_pods(&named).into_iter()) {
            return Ok(());
        }
        self.inner.finding(&named)
    }

    fn repeated(&mut self, finding: &Finding, times: u64) -> io::Result<()> {
        if self.filter.is_empty() {
            return self.inner.repeated(finding, times);
        }
        let named = self.named(finding);
        if !self.filter.shows(finding_pods(&named).into_iter()) {
            return Ok(());
        }
        self.inner.repeated(&named, times)
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        self.inner.unconfirmed(unconfirmed)
    }

    fn lost(&mut self, total: u64) {
        self.inner.lost(total);
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.inner.summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
