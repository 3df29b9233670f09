//! A watch's packet line: a frame at a bridge stage, the names of its devices, and the
//! netfilter hooks it passed since its previous line.

use serde::{Deserialize, Serialize};

use super::{
    netfilter::HookPass,
    packet::{PacketEvent, Verdict},
    pod::EndpointPods,
    serde_forms,
};

/// Interface names for one event, resolved in the watched network namespace when
/// the event arrived (so a later rename or an ifindex reused after deletion does not
/// rewrite history).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InterfaceNames {
    pub ifname: Option<String>,
    pub in_ifname: Option<String>,
    pub bridge: Option<String>,
}

/// One line of a watch: a frame at a bridge stage, with the netfilter hooks it passed
/// since its previous line. Serialised, it is the JSON `"type": "packet"` line and the
/// metadata a capture keeps with the frame's bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename = "packet")]
pub struct TracedPacket {
    /// Nanoseconds since the Unix epoch.
    #[serde(rename = "time", with = "serde_forms::wall_time")]
    pub wall_time_ns: u64,
    #[serde(flatten)]
    pub event: PacketEvent,
    #[serde(flatten)]
    pub names: InterfaceNames,
    /// The pods holding the source and destination addresses, named by the runtime.
    #[serde(flatten)]
    pub pods: EndpointPods,
    /// The netfilter hooks the packet passed since it was last on the bridge path.
    pub hooks: Vec<HookPass>,
    /// `accept` when it passed hooks (it came out of them).
    pub verdict: Option<Verdict>,
}

impl TracedPacket {
    /// Gives the packet the hooks it passed since its previous line.
    pub fn with_hooks(mut self, hooks: Vec<HookPass>) -> TracedPacket {
        self.verdict = (!hooks.is_empty()).then_some(Verdict::Accept);
        self.hooks = hooks;
        self
    }
}
