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
