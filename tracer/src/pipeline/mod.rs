//! Decoding and correlating packet events: DNS payloads parsed (`dns_parse`) and recognised
//! on their ports and TCP streams (`dns_decode`), interface names put on events (`naming`),
//! which reply answers which query and which query never got one (`queries`), a dropped
//! packet's path (`paths`), and whether a record it rests on may have been lost (`loss`).
//! Bookkeeping only: what a pairing means is for `findings` to decide.

pub(crate) mod bounded;
pub(crate) mod dns_decode;
pub(crate) mod dns_parse;
pub(crate) mod loss;
pub(crate) mod naming;
pub(crate) mod paths;
pub(crate) mod queries;
