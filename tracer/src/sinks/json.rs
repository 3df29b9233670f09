//! JSON Lines output. Every line is a model value serialised as it is (`TracedPacket`,
//! `DropLine`, `Finding`, `Summary`): the fields README documents are those types' serde
//! form, which captures keep and read back too.

use std::io::{self, Write};

use serde::Serialize;

use crate::schema::{
    finding::Finding,
    packet::{DropLine, TracedPacket},
    sink::Sink,
    summary::Summary,
};

pub(crate) struct JsonOutput<W: Write> {
    out: W,
}

impl<W: Write> JsonOutput<W> {
    pub(crate) fn new(out: W) -> Self {
        JsonOutput { out }
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonOutput<W> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        self.line(packet)
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        self.line(line)
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        self.line(finding)
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(summary)?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn a_netfilter_finding_carries_its_owner_and_reads_back() {
        let finding = crate::findings::netfilter::tests::kube_proxy_finding();
        let mut out = Vec::new();
        JsonOutput::new(&mut out).finding(&finding).expect("in memory");
        let line: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            line["owner"],
            json!({
                "manager": "kube-proxy",
                "service": "kube-system/kube-dns:dns",
                "policy": null,
                "zone": null,
                "evidence": "chain KUBE-SERVICES and its comment \"kube-system/kube-dns:dns has no endpoints\"",
            })
        );
        let back: Finding = serde_json::from_value(line).expect("reads back");
        let crate::schema::finding::Evidence::Netfilter(nf) = back.evidence else { panic!("netfilter evidence") };
        assert_eq!(nf.owner.map(|o| o.service), Some(Some("kube-system/kube-dns:dns".to_string())));
    }
}
