//! The layout of tracer's additions to pcapng: the section header's metadata, each packet
//! block's, and the record blocks for findings and the summary. The values are the model's
//! own types, serialised as JSON lines serialise them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::packet::PortFilter;
use crate::schema::{
    finding::{Finding, Unconfirmed},
    packet::{DropLine, TracedPacket},
    summary::Summary,
};

/// Option code of tracer's JSON metadata in a section header or packet block. The top
/// bit marks a local-use code (pcapng, "Options").
pub(crate) const META_OPTION: u16 = 0x8A11;
/// Block type of tracer's findings and summary. The top bit marks a local-use type.
pub(crate) const RECORD_BLOCK: u32 = 0x8A11_0001;
/// Names the metadata's layout; a reader refuses a layout it does not know.
pub(crate) const FORMAT: &str = "tracer-capture/2";
/// `shb_userappl` of files tracer writes starts with this.
pub(crate) const USER_APPLICATION: &str = "tracer ";

/// Written once, in the section header: how the watch was run and the node settings
/// findings cite, as they were when it started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CaptureMeta {
    pub format: String,
    pub tracer_version: String,
    pub hostname: Option<String>,
    pub port: PortFilter,
    pub snaplen: u32,
    pub dns_timeout_ns: u64,
    /// Ports besides 53 whose payloads the watch read as DNS (`--dns-port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_ports: Vec<u16>,
    /// Sysctl name → value (null: the file did not exist).
    pub sysctls: BTreeMap<String, Option<String>>,
}

/// Per-packet metadata: the line the watch printed for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum BlockMeta {
    Packet {
        line: Box<TracedPacket>,
        /// Node settings a finding made at this packet cited, as read then.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sysctls: BTreeMap<String, Option<String>>,
    },
    Drop {
        line: Box<DropLine>,
    },
}

/// The body of a [`RECORD_BLOCK`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum RecordMeta {
    Finding {
        finding: Box<Finding>,
    },
    /// A finding the watch did not state because records it rests on may have been lost.
    Unconfirmed(Unconfirmed),
    Summary {
        summary: Summary,
        /// Kernel monotonic clock when the watch ended: queries still unanswered then and
        /// older than the timeout are the last `dns_timeout`s.
        end_timestamp_ns: u64,
    },
}
