//! A DNS message as tracer shows it, and the names of its codes.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The parts of a DNS message tracer shows. Serialised with codes and types by name, as
/// lines show them, and read back from them where a capture holds no bytes of the stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DnsMessage {
    pub id: u16,
    /// false: query, true: response.
    pub qr: bool,
    pub opcode: u8,
    /// The 4-bit header RCODE (an EDNS extended RCODE is not folded in).
    #[serde(serialize_with = "rcode_by_name", deserialize_with = "rcode_from_name")]
    pub rcode: u8,
    /// TC: the answer did not fit the transport (512 bytes over UDP without EDNS, else the
    /// size the client advertised) and was cut; the client is to ask again over TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The first question's name in presentation form ("example.test.", root is "."), or None when the
    /// message has no question or the name is cut off or malformed.
    pub qname: Option<String>,
    #[serde(with = "qtype_form")]
    pub qtype: Option<u16>,
    /// ANCOUNT from the header, even when the answers themselves were not captured.
    #[serde(rename = "answers")]
    pub answer_count: u16,
    #[serde(serialize_with = "answer_in_words", deserialize_with = "answer_from_words")]
    pub first_answer: Option<DnsAnswer>,
}

fn rcode_by_name<S: Serializer>(rcode: &u8, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(rcode_name(*rcode))
}

fn rcode_from_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let name = String::deserialize(deserializer)?;
    (0..16u8)
        .find(|code| rcode_name(*code) == name)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown RCODE {name}")))
}

/// An answer as `answer_in_words` wrote it: an address, a name (they end in a dot), or a
/// record type.
fn answer_from_words<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DnsAnswer>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.map(|words| {
        if let Ok(addr) = words.parse::<IpAddr>() {
            DnsAnswer::Address(addr)
        } else if words.ends_with('.') {
            DnsAnswer::Name(words)
        } else {
            qtype_number(&words).map_or(DnsAnswer::Name(words), DnsAnswer::Other)
        }
    }))
}

/// A record type by its mnemonic (`"A"`, `"TYPE999"`) in lines, and back.
pub(crate) mod qtype_form {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{qtype_name, qtype_number};

    pub(crate) fn serialize<S: Serializer>(qtype: &Option<u16>, serializer: S) -> Result<S::Ok, S::Error> {
        match qtype {
            Some(qtype) => serializer.serialize_str(&qtype_name(*qtype)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.and_then(|name| qtype_number(&name)))
    }
}

fn answer_in_words<S: Serializer>(answer: &Option<DnsAnswer>, serializer: S) -> Result<S::Ok, S::Error> {
    match answer {
        Some(answer) => serializer.collect_str(answer),
        None => serializer.serialize_none(),
    }
}

/// The data of the first answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DnsAnswer {
    /// An A or AAAA record.
    Address(IpAddr),
    /// A CNAME, PTR or NS record: the target name in presentation form.
    Name(String),
    /// Any other record type.
    Other(u16),
}

impl std::fmt::Display for DnsAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsAnswer::Address(addr) => write!(f, "{addr}"),
            DnsAnswer::Name(name) => f.write_str(name),
            DnsAnswer::Other(rtype) => f.write_str(&qtype_name(*rtype)),
        }
    }
}

/// The mnemonic of a header RCODE (RFC 1035, RFC 2136, RFC 8490). The header field has 4 bits;
/// unassigned values read "RCODE<n>".
pub(crate) fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        12 => "RCODE12",
        13 => "RCODE13",
        14 => "RCODE14",
        15 => "RCODE15",
        // Only reachable by callers passing something other than the 4-bit header field.
        _ => "RCODE?",
    }
}

/// The record type a mnemonic (or "TYPE<n>") names.
pub(crate) fn qtype_number(name: &str) -> Option<u16> {
    if let Some(number) = name.strip_prefix("TYPE").and_then(|n| n.parse().ok()) {
        return Some(number);
    }
    QTYPE_NAMES.iter().find(|(_, known)| *known == name).map(|(number, _)| *number)
}

/// Record types with a mnemonic here (RFC 1035 and later), in number order.
const QTYPE_NAMES: [(u16, &str); 30] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (13, "HINFO"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (29, "LOC"),
    (33, "SRV"),
    (35, "NAPTR"),
    (39, "DNAME"),
    (41, "OPT"),
    (43, "DS"),
    (44, "SSHFP"),
    (46, "RRSIG"),
    (47, "NSEC"),
    (48, "DNSKEY"),
    (50, "NSEC3"),
    (51, "NSEC3PARAM"),
    (52, "TLSA"),
    (59, "CDS"),
    (60, "CDNSKEY"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
    (257, "CAA"),
];

/// The mnemonic of a record type, or "TYPE<n>" (the RFC 3597 form) for types without one here.
pub(crate) fn qtype_name(qtype: u16) -> Cow<'static, str> {
    match QTYPE_NAMES.iter().find(|(number, _)| *number == qtype) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(format!("TYPE{qtype}")),
    }
}
