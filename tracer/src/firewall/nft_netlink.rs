//! Reads single nf_tables chains straight from the kernel, as the items `nft -j -a list chain`
//! prints for them, so that [`parse_nft_items`](super::nft::parse_nft_items) reads both alike.
//!
//! Why not nft: before nft 1.0.6 lists one chain it fetches the elements of every set of the
//! chain's table, one request per set. kube-proxy's nftables table at 5 000 Services holds
//! about 5 000 anonymous maps, which makes every `nft list chain` there cost a second of
//! system time. The kernel itself dumps the rules of one chain (a rule dump filtered by
//! table and chain), and the few sets those rules use are asked for by name.
//!
//! Only tables of the `ip` and `ip6` families (kube-proxy's) and only the expressions whose
//! nft rendering is known here are decoded. Anything else, like an expression of another kind,
//! an attribute not expected, or a set of intervals, makes the chain [`Listing::Undecoded`],
//! and the caller asks nft. A rule is never rendered by guess.

use std::collections::HashMap;
use std::time::Duration;

use netlink_packet_core::{NetlinkBuffer, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use serde_json::{json, Value};

use super::eval::ChainId;
use crate::system::netlink::{set_receive_timeout, split_messages};

/// How long one answer of the kernel may take before the reading gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Dumps the kernel flags as interrupted (the ruleset changed meanwhile) are read again this
/// many times before the chain is left to nft.
const DUMP_ATTEMPTS: usize = 3;

// linux/netfilter/nfnetlink.h and nf_tables.h: message types and attributes.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Each GET message is answered with the NEW message numbered one below it.
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
const NLMSG_HEADER_LEN: usize = 16;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_HANDLE: u16 = 2;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_OBJECT: u32 = 0x40;

/// nft's user data of rules and chains: type-length-value, type 0 is the comment.
const UDATA_COMMENT: u8 = 0;

/// Verdict codes (linux/netfilter.h, nf_tables.h).
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_CONTINUE: i32 = -1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// NAT range flags (linux/netfilter/nf_nat.h).
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_NAT_RANGE_PROTO_RANDOM: u32 = 4;
const NF_NAT_RANGE_PERSISTENT: u32 = 8;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;

/// What reading one chain gave.
#[derive(Debug)]
pub(super) enum Listing {
    /// The chain's item and its rules' items, as `nft -j -a list chain` has them.
    Read(Vec<Value>),
    /// The chain (or its table) does not exist (any more).
    Gone,
    /// Something in it is not decoded here: nft has to list it.
    Undecoded,
}

/// Reads `chain` and its rules, with the anonymous sets the rules use inlined as nft does.
/// Named sets, maps and counters stay references, as in nft's listing of a chain.
pub(super) fn list_chain(chain: &ChainId) -> Listing {
    match read_chain(chain) {
        Ok(items) => Listing::Read(items),
        Err(Failure::Gone) => Listing::Gone,
        Err(Failure::Undecoded(_)) => Listing::Undecoded,
    }
}

fn read_chain(chain: &ChainId) -> Result<Vec<Value>, Failure> {
    let Some(family) = family_number(&chain.family) else {
        return undecoded(format!("family {}", chain.family));
    };
    let mut reader = Reader::open().map_err(|e| Failure::Undecoded(format!("netlink: {e}")))?;
    reader.chain(family, chain)
}

#[derive(Debug)]
enum Failure {
    Gone,
    /// What was not decoded: the tests say it when they fail.
    Undecoded(#[cfg_attr(not(test), allow(dead_code))] String),
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure::Undecoded(why)
    }
}

fn undecoded<T>(why: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Undecoded(why.into()))
}

fn family_number(family: &str) -> Option<u8> {
    match family {
        "ip" => Some(libc::NFPROTO_IPV4 as u8),
        "ip6" => Some(libc::NFPROTO_IPV6 as u8),
        _ => None,
    }
}

/// One nf_tables netlink socket and the requests on it.
struct Reader {
    socket: Socket,
    sequence: u32,
}

impl Reader {
    fn open() -> std::io::Result<Reader> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        set_receive_timeout(&socket, ANSWER_TIMEOUT)?;
        Ok(Reader { socket, sequence: 0 })
    }

    fn chain(&mut self, family: u8, id: &ChainId) -> Result<Vec<Value>, Failure> {
        let names = [(NFTA_CHAIN_TABLE, id.table.as_str()), (NFTA_CHAIN_NAME, id.name.as_str())];
        let chain = match self.ask(NFT_MSG_GETCHAIN, family, false, &names)?.as_slice() {
            [only] => chain_item(id, only)?,
            _ => return undecoded("the kernel did not answer with one chain"),
        };
        let names = [(NFTA_RULE_TABLE, id.table.as_str()), (NFTA_RULE_CHAIN, id.name.as_str())];
        let rules = self.ask(NFT_MSG_GETRULE, family, true, &names)?;
        let mut rules = rules.iter().map(|message| RawRule::parse(message)).collect::<Result<Vec<_>, String>>()?;
        // A kernel that dumps more than it was asked for (filters came in over the years).
        rules.retain(|rule| rule.table == id.table && rule.chain == id.name);
        let mut sets: HashMap<String, SetInfo> = HashMap::new();
        for rule in &rules {
            for expr in &rule.exprs {
                if let Expr::Lookup { set, .. } = expr {
                    if !sets.contains_key(set) {
                        let info = self.set(family, &id.table, set)?;
                        sets.insert(set.clone(), info);
                    }
                }
            }
        }
        let mut items = vec![chain];
        for rule in rules {
            items.push(Translation::new(id, &sets).rule(rule)?);
        }
        Ok(items)
    }

    /// A set's flags, key length and, for an anonymous one, its elements.
    fn set(&mut self, family: u8, table: &str, name: &str) -> Result<SetInfo, Failure> {
        let names = [(NFTA_SET_TABLE, table), (NFTA_SET_NAME, name)];
        let [message] = self
            .ask(NFT_MSG_GETSET, family, false, &names)?
            .try_into()
            .map_err(|_| Failure::Undecoded(format!("the kernel did not answer with one set for {name}")))?;
        let attrs = Attrs::parse(&message)?;
        let flags = attrs.u32(NFTA_SET_FLAGS)?.unwrap_or(0);
        let key_len = attrs.u32(NFTA_SET_KEY_LEN)?.unwrap_or(0);
        let mut info = SetInfo { name: name.to_string(), flags, key_len, elements: Vec::new() };
        if flags & NFT_SET_ANONYMOUS != 0 {
            if flags & (NFT_SET_INTERVAL | NFT_SET_OBJECT) != 0 {
                return undecoded(format!("anonymous set {name} of intervals or objects"));
            }
            let names = [(NFTA_SET_ELEM_LIST_TABLE, table), (NFTA_SET_ELEM_LIST_SET, name)];
            for message in self.ask(NFT_MSG_GETSETELEM, family, true, &names)? {
                let attrs = Attrs::parse(&message)?;
                let Some(list) = attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS) else { continue };
                for element in Attrs::parse(list)?.all(NFTA_LIST_ELEM) {
                    info.elements.push(RawElement::parse(element)?);
                }
            }
        }
        Ok(info)
    }

    /// Sends one request and returns the payloads (after nfgenmsg) of the answers of the
    /// expected kind; a dump the kernel marks as interrupted is asked again.
    fn ask(&mut self, message: u16, family: u8, dump: bool, names: &[(u16, &str)]) -> Result<Vec<Vec<u8>>, Failure> {
        for _ in 0..DUMP_ATTEMPTS {
            match self.ask_once(message, family, dump, names)? {
                Some(answers) => return Ok(answers),
                None => continue,
            }
        }
        undecoded("the ruleset kept changing during the dump")
    }

    fn ask_once(
        &mut self,
        message: u16,
        family: u8,
        dump: bool,
        names: &[(u16, &str)],
    ) -> Result<Option<Vec<Vec<u8>>>, Failure> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        let request = request(message, family, flags, sequence, names);
        self.socket
            .send_to(&request, &SocketAddr::new(0, 0), 0)
            .map_err(|e| Failure::Undecoded(format!("sending a request: {e}")))?;
        // What the kernel answers: the new-object kind of the same request.
        let answer_kind = (NFNL_SUBSYS_NFTABLES << 8) | (message - 1);
        let mut answers = Vec::new();
        let mut interrupted = false;
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| Failure::Undecoded(format!("reading the kernel's answer: {e}")))?;
            for raw in split_messages(&datagram) {
                let Ok(header) = NetlinkBuffer::new_checked(raw) else { continue };
                if header.sequence_number() != sequence {
                    continue;
                }
                if header.flags() & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match header.message_type() {
                    NLMSG_DONE => return Ok((!interrupted).then_some(answers)),
                    NLMSG_ERROR => {
                        let code = raw
                            .get(NLMSG_HEADER_LEN..NLMSG_HEADER_LEN + 4)
                            .and_then(|b| b.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .unwrap_or(-libc::EIO);
                        return match code {
                            // The acknowledgement that ends a request that was not a dump.
                            0 if !dump => Ok((!interrupted).then_some(answers)),
                            0 => continue,
                            code if -code == libc::ENOENT => Err(Failure::Gone),
                            code => {
                                undecoded(format!("the kernel refused: {}", std::io::Error::from_raw_os_error(-code)))
                            }
                        };
                    }
                    kind if kind == answer_kind => {
                        if let Some(payload) = raw.get(NLMSG_HEADER_LEN + NFGENMSG_LEN..) {
                            answers.push(payload.to_vec());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn request(message: u16, family: u8, flags: u16, sequence: u32, names: &[(u16, &str)]) -> Vec<u8> {
    let mut bytes = vec![0; NLMSG_HEADER_LEN];
    bytes.extend_from_slice(&[family, 0, 0, 0]);
    for (kind, name) in names {
        let len = 4 + name.len() + 1;
        bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        while !bytes.len().is_multiple_of(4) {
            bytes.push(0);
        }
    }
    let len = bytes.len() as u32;
    bytes[0..4].copy_from_slice(&len.to_ne_bytes());
    bytes[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | message).to_ne_bytes());
    bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
    bytes[8..12].copy_from_slice(&sequence.to_ne_bytes());
    bytes
}

/// The attributes at one level of a message, by kind (nested and byte-order flags masked).
struct Attrs<'a> {
    all: Vec<(u16, &'a [u8])>,
}

impl<'a> Attrs<'a> {
    fn parse(mut bytes: &'a [u8]) -> Result<Attrs<'a>, String> {
        let mut all = Vec::new();
        while bytes.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
            let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
            let value = bytes.get(4..len).ok_or("an attribute runs past its message")?;
            all.push((kind, value));
            let next = (len + 3) & !3;
            bytes = bytes.get(next..).unwrap_or(&[]);
        }
        Ok(Attrs { all })
    }

    fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.all.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
    }

    fn all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.all.iter().filter(move |(k, _)| *k == kind).map(|(_, v)| *v)
    }

    fn kinds(&self) -> impl Iterator<Item = u16> + '_ {
        self.all.iter().map(|(k, _)| *k)
    }

    /// A big-endian 32-bit attribute, as nf_tables sends them.
    fn u32(&self, kind: u16) -> Result<Option<u32>, String> {
        self.get(kind)
            .map(|v| v.try_into().map(u32::from_be_bytes).map_err(|_| format!("attribute {kind} is not 32 bits")))
            .transpose()
    }

    fn u64(&self, kind: u16) -> Result<Option<u64>, String> {
        self.get(kind)
            .map(|v| v.try_into().map(u64::from_be_bytes).map_err(|_| format!("attribute {kind} is not 64 bits")))
            .transpose()
    }

    fn string(&self, kind: u16) -> Result<Option<String>, String> {
        self.get(kind).map(c_string).transpose()
    }

    /// Fails on any attribute outside `known`: its meaning would be lost.
    fn only(&self, what: &str, known: &[u16]) -> Result<(), String> {
        match self.kinds().find(|kind| !known.contains(kind)) {
            Some(kind) => Err(format!("{what} with attribute {kind}")),
            None => Ok(()),
        }
    }
}

fn c_string(bytes: &[u8]) -> Result<String, String> {
    let text = bytes.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8(text.to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
}

/// The comment in nft's user data (rules, set elements, chains).
fn udata_comment(mut bytes: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = bytes {
        let value = rest.get(..usize::from(*len))?;
        if *kind == UDATA_COMMENT {
            return c_string(value).ok();
        }
        bytes = &rest[usize::from(*len)..];
    }
    None
}

fn chain_item(id: &ChainId, message: &[u8]) -> Result<Value, String> {
    let attrs = Attrs::parse(message)?;
    let mut chain = json!({
        "family": id.family,
        "table": id.table,
        "name": id.name,
        "handle": attrs.u64(NFTA_CHAIN_HANDLE)?,
    });
    if let Some(hook) = attrs.get(NFTA_CHAIN_HOOK) {
        let hook = Attrs::parse(hook)?;
        let number = hook.u32(NFTA_HOOK_HOOKNUM)?.ok_or("a base chain without its hook")?;
        let name = ["prerouting", "input", "forward", "output", "postrouting"]
            .get(number as usize)
            .ok_or_else(|| format!("hook {number}"))?;
        let priority = hook.u32(NFTA_HOOK_PRIORITY)?.map(|p| p as i32).unwrap_or(0);
        let policy = match attrs.u32(NFTA_CHAIN_POLICY)?.map(|p| p as i32) {
            Some(NF_ACCEPT) | None => "accept",
            Some(NF_DROP) => "drop",
            Some(other) => return Err(format!("policy {other}")),
        };
        let object = chain.as_object_mut().ok_or("not an object")?;
        object.insert("type".into(), json!(attrs.string(NFTA_CHAIN_TYPE)?.unwrap_or_else(|| "filter".into())));
        object.insert("hook".into(), json!(name));
        object.insert("prio".into(), json!(priority));
        object.insert("policy".into(), json!(policy));
    }
    Ok(json!({ "chain": chain }))
}

/// A set a rule looks up, as the kernel has it.
struct SetInfo {
    name: String,
    flags: u32,
    key_len: u32,
    /// Anonymous sets only: nft shows them inside the rule.
    elements: Vec<RawElement>,
}

struct RawElement {
    key: Vec<u8>,
    data: Option<Data>,
}

impl RawElement {
    fn parse(bytes: &[u8]) -> Result<RawElement, String> {
        let attrs = Attrs::parse(bytes)?;
        attrs.only("a set element", &[NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS])?;
        if attrs.u32(NFTA_SET_ELEM_FLAGS)?.unwrap_or(0) != 0 {
            return Err("a set element with flags".to_string());
        }
        let key = match Data::parse(attrs.get(NFTA_SET_ELEM_KEY).ok_or("a set element without key")?)? {
            Data::Value(key) => key,
            Data::Verdict { .. } => return Err("a verdict as a set key".to_string()),
        };
        let data = attrs.get(NFTA_SET_ELEM_DATA).map(Data::parse).transpose()?;
        Ok(RawElement { key, data })
    }
}

#[derive(Clone, Debug)]
enum Data {
    Value(Vec<u8>),
    Verdict { code: i32, chain: Option<String> },
}

impl Data {
    fn parse(bytes: &[u8]) -> Result<Data, String> {
        let attrs = Attrs::parse(bytes)?;
        if let Some(value) = attrs.get(NFTA_DATA_VALUE) {
            return Ok(Data::Value(value.to_vec()));
        }
        let verdict = Attrs::parse(attrs.get(NFTA_DATA_VERDICT).ok_or("data that is neither value nor verdict")?)?;
        Ok(Data::Verdict {
            code: verdict.u32(NFTA_VERDICT_CODE)?.ok_or("a verdict without code")? as i32,
            chain: verdict.string(NFTA_VERDICT_CHAIN)?,
        })
    }

    fn verdict_json(&self) -> Result<Value, String> {
        let Data::Verdict { code, chain } = self else { return Err("a value where a verdict was expected".into()) };
        Ok(match (*code, chain) {
            (NF_ACCEPT, _) => json!({ "accept": null }),
            (NF_DROP, _) => json!({ "drop": null }),
            (NFT_CONTINUE, _) => json!({ "continue": null }),
            (NFT_RETURN, _) => json!({ "return": null }),
            (NFT_JUMP, Some(target)) => json!({ "jump": { "target": target } }),
            (NFT_GOTO, Some(target)) => json!({ "goto": { "target": target } }),
            (code, _) => return Err(format!("verdict {code}")),
        })
    }
}

/// One rule as the kernel has it.
struct RawRule {
    table: String,
    chain: String,
    handle: Option<u64>,
    comment: Option<String>,
    exprs: Vec<Expr>,
}

/// The expressions decoded here; `Other` stops the chain's decoding at translation.
#[derive(Debug)]
enum Expr {
    Payload { dreg: u32, base: u32, offset: u32, len: u32 },
    Meta { dreg: u32, key: u32 },
    MetaSet { sreg: u32, key: u32 },
    Ct { dreg: u32, key: u32 },
    Bitwise { sreg: u32, dreg: u32, mask: Vec<u8>, xor: Vec<u8> },
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    Range { sreg: u32, op: u32, from: Vec<u8>, to: Vec<u8> },
    Lookup { sreg: u32, dreg: Option<u32>, set: String, inverted: bool },
    Immediate { dreg: u32, data: Data },
    Counter { packets: u64, bytes: u64 },
    Reject { kind: u32, code: u8 },
    Numgen { dreg: u32, modulus: u32, random: bool, offset: u32 },
    Nat { dnat: bool, family: u32, addr: Option<u32>, port: Option<u32> },
    Masquerade { flags: u32 },
    Other(String),
}

impl RawRule {
    fn parse(message: &[u8]) -> Result<RawRule, String> {
        let attrs = Attrs::parse(message)?;
        let mut exprs = Vec::new();
        if let Some(list) = attrs.get(NFTA_RULE_EXPRESSIONS) {
            for element in Attrs::parse(list)?.all(NFTA_LIST_ELEM) {
                let element = Attrs::parse(element)?;
                let name = element.string(NFTA_EXPR_NAME)?.ok_or("an expression without name")?;
                let data = Attrs::parse(element.get(NFTA_EXPR_DATA).unwrap_or(&[]))?;
                exprs.push(Expr::parse(&name, &data)?);
            }
        }
        Ok(RawRule {
            table: attrs.string(NFTA_RULE_TABLE)?.unwrap_or_default(),
            chain: attrs.string(NFTA_RULE_CHAIN)?.unwrap_or_default(),
            handle: attrs.u64(NFTA_RULE_HANDLE)?,
            comment: attrs.get(NFTA_RULE_USERDATA).and_then(udata_comment),
            exprs,
        })
    }
}

impl Expr {
    fn parse(name: &str, a: &Attrs) -> Result<Expr, String> {
        let need = |kind: u16| a.u32(kind).and_then(|v| v.ok_or(format!("{name} without attribute {kind}")));
        let value = |kind: u16| -> Result<Vec<u8>, String> {
            match Data::parse(a.get(kind).ok_or(format!("{name} without attribute {kind}"))?)? {
                Data::Value(value) => Ok(value),
                Data::Verdict { .. } => Err(format!("{name} with a verdict")),
            }
        };
        // The attribute numbers of each kind, from nf_tables.h.
        Ok(match name {
            "payload" => {
                a.only(name, &[1, 2, 3, 4])?;
                Expr::Payload { dreg: need(1)?, base: need(2)?, offset: need(3)?, len: need(4)? }
            }
            "meta" if a.get(1).is_some() => {
                a.only(name, &[1, 2])?;
                Expr::Meta { dreg: need(1)?, key: need(2)? }
            }
            "meta" => {
                a.only(name, &[2, 3])?;
                Expr::MetaSet { sreg: need(3)?, key: need(2)? }
            }
            "ct" => {
                a.only(name, &[1, 2])?;
                Expr::Ct { dreg: need(1)?, key: need(2)? }
            }
            "bitwise" => {
                a.only(name, &[1, 2, 3, 4, 5, 6])?;
                if a.u32(6)?.unwrap_or(0) != 0 {
                    return Ok(Expr::Other("a bitwise shift".into()));
                }
                Expr::Bitwise { sreg: need(1)?, dreg: need(2)?, mask: value(4)?, xor: value(5)? }
            }
            "cmp" => {
                a.only(name, &[1, 2, 3])?;
                Expr::Cmp { sreg: need(1)?, op: need(2)?, data: value(3)? }
            }
            "range" => {
                a.only(name, &[1, 2, 3, 4])?;
                Expr::Range { sreg: need(1)?, op: need(2)?, from: value(3)?, to: value(4)? }
            }
            "lookup" => {
                a.only(name, &[1, 2, 3, 4, 5])?;
                Expr::Lookup {
                    sreg: need(2)?,
                    dreg: a.u32(3)?,
                    set: a.string(1)?.ok_or("a lookup without its set")?,
                    inverted: a.u32(5)?.unwrap_or(0) & 1 != 0,
                }
            }
            "immediate" => {
                a.only(name, &[1, 2])?;
                Expr::Immediate { dreg: need(1)?, data: Data::parse(a.get(2).ok_or("immediate without data")?)? }
            }
            "counter" => {
                a.only(name, &[1, 2, 3])?;
                Expr::Counter { bytes: a.u64(1)?.unwrap_or(0), packets: a.u64(2)?.unwrap_or(0) }
            }
            "reject" => {
                a.only(name, &[1, 2])?;
                let code = a.get(2).and_then(|c| c.first().copied()).unwrap_or(0);
                Expr::Reject { kind: need(1)?, code }
            }
            "numgen" => {
                a.only(name, &[1, 2, 3, 4])?;
                let random = match need(3)? {
                    0 => false,
                    1 => true,
                    other => return Ok(Expr::Other(format!("numgen type {other}"))),
                };
                Expr::Numgen { dreg: need(1)?, modulus: need(2)?, random, offset: a.u32(4)?.unwrap_or(0) }
            }
            "nat" => {
                a.only(name, &[1, 2, 3, 4, 5, 6, 7])?;
                let flags = a.u32(7)?.unwrap_or(0);
                let (addr, addr_max) = (a.u32(3)?, a.u32(4)?);
                let (port, port_max) = (a.u32(5)?, a.u32(6)?);
                if flags & !(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED) != 0
                    || (addr_max.is_some() && addr_max != addr)
                    || (port_max.is_some() && port_max != port)
                {
                    return Ok(Expr::Other("nat with flags or ranges".into()));
                }
                Expr::Nat { dnat: need(1)? == 1, family: need(2)?, addr, port }
            }
            "masq" => {
                a.only(name, &[1])?;
                Expr::Masquerade { flags: a.u32(1)?.unwrap_or(0) }
            }
            other => Expr::Other(other.to_string()),
        })
    }
}

/// nf_tables registers in 4-byte slots: NFT_REG_1..4 are 16 bytes each, NFT_REG32_00..15
/// 4 bytes each, over the same storage.
fn slot(register: u32) -> Result<u32, String> {
    match register {
        1..=4 => Ok((register - 1) * 4),
        8..=23 => Ok(register - 8),
        other => Err(format!("register {other}")),
    }
}

fn slots(len: u32) -> u32 {
    len.div_ceil(4)
}

/// What a value means, which decides how nft prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ipv4,
    Ipv6,
    L4Proto,
    Port,
    /// Host byte order: marks, numgen.
    Integer,
    CtState,
    Ifname,
    /// An immediate, shaped by whoever reads it.
    Raw,
}

/// What a register holds.
#[derive(Clone, Debug)]
struct Loaded {
    expr: Value,
    kind: Kind,
    /// Bytes loaded.
    len: u32,
    /// The whole field's length, where a shorter load is a prefix of it (addresses).
    field_len: u32,
    bytes: Vec<u8>,
    /// After a bitwise operation.
    mask: Option<Vec<u8>>,
    xor: Option<Vec<u8>>,
    /// `meta l4proto` loaded: a match on it names the transport fields after it.
    is_l4proto: bool,
}

/// The rules of one chain turned into nft's JSON.
struct Translation<'a> {
    chain: &'a ChainId,
    sets: &'a HashMap<String, SetInfo>,
}

impl<'a> Translation<'a> {
    fn new(chain: &'a ChainId, sets: &'a HashMap<String, SetInfo>) -> Translation<'a> {
        Translation { chain, sets }
    }

    fn rule(&self, rule: RawRule) -> Result<Value, String> {
        let mut state = RuleState::default();
        let mut exprs = rule.exprs.into_iter().peekable();
        while let Some(expr) = exprs.next() {
            // `tcp dport 1000-2000` is a pair of comparisons on one register.
            if let Expr::Cmp { sreg, op: 5, data: from } = &expr {
                if let Some(Expr::Cmp { sreg: to_reg, op: 3, data: to }) = exprs.peek() {
                    if to_reg == sreg {
                        let (sreg, from, to) = (*sreg, from.clone(), to.clone());
                        exprs.next();
                        self.range(&mut state, sreg, 0, &from, &to)?;
                        continue;
                    }
                }
            }
            self.expr(&mut state, expr)?;
        }
        let mut item = json!({
            "family": self.chain.family,
            "table": self.chain.table,
            "chain": self.chain.name,
            "handle": rule.handle,
        });
        let object = item.as_object_mut().ok_or("not an object")?;
        if let Some(comment) = rule.comment {
            object.insert("comment".into(), json!(comment));
        }
        object.insert("expr".into(), Value::Array(state.statements.into_iter().flatten().collect()));
        Ok(json!({ "rule": item }))
    }

    fn expr(&self, state: &mut RuleState, expr: Expr) -> Result<(), String> {
        match expr {
            Expr::Payload { dreg, base, offset, len } => {
                let loaded = self.payload(state, base, offset, len)?;
                state.load(dreg, loaded)?;
            }
            Expr::Meta { dreg, key } => {
                let (name, kind, len) = match key {
                    3 => ("mark", Kind::Integer, 4),
                    6 => ("iifname", Kind::Ifname, 16),
                    7 => ("oifname", Kind::Ifname, 16),
                    16 => ("l4proto", Kind::L4Proto, 1),
                    other => return Err(format!("meta key {other}")),
                };
                let mut loaded = Loaded::new(json!({ "meta": { "key": name } }), kind, len);
                loaded.is_l4proto = key == 16;
                state.load(dreg, loaded)?;
            }
            Expr::Ct { dreg, key: 0 } => {
                state.load(dreg, Loaded::new(json!({ "ct": { "key": "state" } }), Kind::CtState, 4))?
            }
            Expr::Ct { key, .. } => return Err(format!("ct key {key}")),
            Expr::Numgen { dreg, modulus, random, offset } => {
                let mode = if random { "random" } else { "inc" };
                let expr = json!({ "numgen": { "mode": mode, "mod": modulus, "offset": offset } });
                state.load(dreg, Loaded::new(expr, Kind::Integer, 4))?;
            }
            Expr::Immediate { dreg: 0, data } => state.statements.push(Some(data.verdict_json()?)),
            Expr::Immediate { dreg, data: Data::Value(bytes) } => {
                let mut loaded = Loaded::new(Value::Null, Kind::Raw, bytes.len() as u32);
                loaded.bytes = bytes;
                state.load(dreg, loaded)?;
            }
            Expr::Immediate { .. } => return Err("a verdict into a data register".into()),
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                let mut loaded = state.read(sreg)?.clone();
                if loaded.mask.is_some() || loaded.kind == Kind::Raw {
                    return Err("bitwise on a computed value".into());
                }
                loaded.mask = Some(mask);
                loaded.xor = Some(xor);
                state.load(dreg, loaded)?;
            }
            Expr::Cmp { sreg, op, data } => self.compare(state, sreg, op, &data)?,
            Expr::Range { sreg, op, from, to } => self.range(state, sreg, op, &from, &to)?,
            Expr::Lookup { sreg, dreg, set, inverted } => self.lookup(state, sreg, dreg, &set, inverted)?,
            Expr::Counter { packets, bytes } => {
                state.statements.push(Some(json!({ "counter": { "packets": packets, "bytes": bytes } })))
            }
            Expr::Reject { kind, code } => {
                let (kind, name) = match (kind, self.chain.family.as_str()) {
                    (0, "ip") => ("icmp", icmp_code_name(code)),
                    (0, "ip6") => ("icmpv6", icmpv6_code_name(code)),
                    (kind, _) => return Err(format!("reject type {kind}")),
                };
                let name = name.ok_or_else(|| format!("reject code {code}"))?;
                state.statements.push(Some(json!({ "reject": { "type": kind, "expr": name } })));
            }
            Expr::MetaSet { sreg, key: 3 } => {
                let source = state.read(sreg)?;
                let value = match (source.kind, &source.mask, &source.xor) {
                    (Kind::Raw, None, None) => json!(host_u32(&source.bytes)?),
                    (Kind::Integer, Some(mask), Some(xor)) if source.expr == json!({ "meta": { "key": "mark" } }) => {
                        let (mask, xor) = (host_u32(mask)?, host_u32(xor)?);
                        let mark = source.expr.clone();
                        if mask == u32::MAX {
                            json!({ "^": [mark, xor] })
                        } else if xor == 0 {
                            json!({ "&": [mark, mask] })
                        } else if mask == !xor {
                            json!({ "|": [mark, xor] })
                        } else {
                            return Err("a mark set from mask and xor".into());
                        }
                    }
                    _ => return Err("a mark set from a computed value".into()),
                };
                state
                    .statements
                    .push(Some(json!({ "mangle": { "key": { "meta": { "key": "mark" } }, "value": value } })));
            }
            Expr::MetaSet { key, .. } => return Err(format!("meta set key {key}")),
            Expr::Nat { dnat, family, addr, port } => {
                let own = family_number(&self.chain.family).map(u32::from);
                if own != Some(family) {
                    return Err(format!("nat of family {family}"));
                }
                let mut nat = serde_json::Map::new();
                if let Some(register) = addr {
                    let source = state.read(register)?;
                    let kind = if self.chain.family == "ip" { Kind::Ipv4 } else { Kind::Ipv6 };
                    nat.insert("addr".into(), value_json(kind, raw_bytes(source)?)?);
                }
                if let Some(register) = port {
                    let source = state.read(register)?;
                    nat.insert(
                        "port".into(),
                        value_json(Kind::Port, raw_bytes(source)?.get(..2).ok_or("short port")?)?,
                    );
                }
                let name = if dnat { "dnat" } else { "snat" };
                state.statements.push(Some(json!({ name: nat })));
            }
            Expr::Masquerade { flags } => {
                let names: Vec<&str> = [
                    (NF_NAT_RANGE_PROTO_RANDOM, "random"),
                    (NF_NAT_RANGE_PROTO_RANDOM_FULLY, "fully-random"),
                    (NF_NAT_RANGE_PERSISTENT, "persistent"),
                ]
                .into_iter()
                .filter(|(bit, _)| flags & bit != 0)
                .map(|(_, name)| name)
                .collect();
                let known = NF_NAT_RANGE_PROTO_RANDOM | NF_NAT_RANGE_PROTO_RANDOM_FULLY | NF_NAT_RANGE_PERSISTENT;
                if flags & !known != 0 {
                    return Err(format!("masquerade flags {flags:#x}"));
                }
                let value = match names.as_slice() {
                    [] => Value::Null,
                    [one] => json!({ "flags": one }),
                    many => json!({ "flags": many }),
                };
                state.statements.push(Some(json!({ "masquerade": value })));
            }
            Expr::Other(what) => return Err(what),
        }
        Ok(())
    }

    /// A header field; a transport one is named after the protocol an earlier `meta l4proto`
    /// match fixed (nft then drops that match from what it prints), else `th`.
    fn payload(&self, state: &mut RuleState, base: u32, offset: u32, len: u32) -> Result<Loaded, String> {
        match base {
            // Network header.
            1 => {
                let (protocol, fields): (&str, &[(u32, u32, &str, Kind)]) = match self.chain.family.as_str() {
                    "ip" => (
                        "ip",
                        &[
                            (12, 4, "saddr", Kind::Ipv4),
                            (16, 4, "daddr", Kind::Ipv4),
                            (9, 1, "protocol", Kind::L4Proto),
                        ],
                    ),
                    _ => (
                        "ip6",
                        &[
                            (8, 16, "saddr", Kind::Ipv6),
                            (24, 16, "daddr", Kind::Ipv6),
                            (6, 1, "nexthdr", Kind::L4Proto),
                        ],
                    ),
                };
                let &(_, field_len, field, kind) = fields
                    .iter()
                    .find(|(at, field_len, _, _)| *at == offset && len <= *field_len && len > 0)
                    .ok_or_else(|| format!("{protocol} header bytes {offset}+{len}"))?;
                if kind == Kind::L4Proto {
                    state.l4_from_header = true;
                }
                let mut loaded = Loaded::new(json!({ "payload": { "protocol": protocol, "field": field } }), kind, len);
                loaded.field_len = field_len;
                Ok(loaded)
            }
            // Transport header.
            2 => {
                let field = match (offset, len) {
                    (0, 2) => "sport",
                    (2, 2) => "dport",
                    _ => return Err(format!("transport header bytes {offset}+{len}")),
                };
                if state.l4_from_header {
                    return Err("a transport field after a network header protocol match".into());
                }
                let protocol = match state.l4_context {
                    None => "th",
                    Some(6) => "tcp",
                    Some(17) => "udp",
                    Some(132) => "sctp",
                    Some(other) => return Err(format!("transport field of protocol {other}")),
                };
                if let Some(at) = state.l4_dependency.take() {
                    state.statements[at] = None;
                }
                Ok(Loaded::new(json!({ "payload": { "protocol": protocol, "field": field } }), Kind::Port, 2))
            }
            other => Err(format!("payload base {other}")),
        }
    }

    fn compare(&self, state: &mut RuleState, sreg: u32, op: u32, data: &[u8]) -> Result<(), String> {
        let loaded = state.read(sreg)?.clone();
        let op_name = match op {
            0 => "==",
            1 => "!=",
            other => return Err(format!("comparison {other}")),
        };
        let (op_name, left, right) = match (loaded.kind, &loaded.mask, &loaded.xor) {
            (Kind::CtState, Some(mask), Some(xor)) => {
                if !is_zero(xor) || !is_zero(data) {
                    return Err("a ct state test of another shape".into());
                }
                let names = ct_state_names(host_u32(mask)?)?;
                let op_name = if op == 1 { "in" } else { return Err("ct state mask equal to zero".into()) };
                (op_name, loaded.expr.clone(), names)
            }
            (Kind::CtState, None, None) => {
                let names = ct_state_names(host_u32(data)?)?;
                if names.is_array() {
                    return Err("ct state compared with several states".into());
                }
                (op_name, loaded.expr.clone(), names)
            }
            (Kind::Integer, Some(mask), Some(xor)) if loaded.expr == json!({ "meta": { "key": "mark" } }) => {
                if !is_zero(xor) {
                    return Err("a mark test with xor".into());
                }
                (op_name, json!({ "&": [loaded.expr, host_u32(mask)?] }), json!(host_u32(data)?))
            }
            (Kind::Ipv4 | Kind::Ipv6, mask, xor) => {
                if xor.as_ref().is_some_and(|xor| !is_zero(xor)) {
                    return Err("an address test with xor".into());
                }
                (op_name, loaded.expr.clone(), address_json(&loaded, mask.as_deref(), data)?)
            }
            (_, None, None) => {
                let right = match loaded.kind {
                    Kind::Ifname => ifname_json(data, loaded.len)?,
                    kind => value_json(kind, data)?,
                };
                (op_name, loaded.expr.clone(), right)
            }
            _ => return Err("a comparison of a masked value".into()),
        };
        let at = state.statements.len();
        state.statements.push(Some(json!({ "match": { "op": op_name, "left": left, "right": right } })));
        if loaded.is_l4proto && op == 0 {
            state.l4_context = data.first().copied();
            state.l4_dependency = Some(at);
        }
        Ok(())
    }

    fn range(&self, state: &mut RuleState, sreg: u32, op: u32, from: &[u8], to: &[u8]) -> Result<(), String> {
        let loaded = state.read(sreg)?.clone();
        if loaded.mask.is_some() || !matches!(loaded.kind, Kind::Port | Kind::Integer) {
            return Err("a range of another kind".into());
        }
        let op_name = match op {
            0 => "==",
            1 => "!=",
            other => return Err(format!("range comparison {other}")),
        };
        let right = json!({ "range": [value_json(loaded.kind, from)?, value_json(loaded.kind, to)?] });
        state.statements.push(Some(json!({ "match": { "op": op_name, "left": loaded.expr, "right": right } })));
        Ok(())
    }

    fn lookup(
        &self,
        state: &mut RuleState,
        sreg: u32,
        dreg: Option<u32>,
        name: &str,
        inverted: bool,
    ) -> Result<(), String> {
        let set = self.sets.get(name).ok_or_else(|| format!("set {name} not read"))?;
        // The key: the registers from `sreg` on, each part in whole slots, as long as the
        // set's key.
        let mut parts = Vec::new();
        let mut at = slot(sreg)?;
        let mut covered = 0;
        while covered < set.key_len {
            let part = state.slots.get(&at).ok_or_else(|| format!("a key of {name} from an empty register"))?;
            if part.mask.is_some() || part.kind == Kind::Raw {
                return Err(format!("a key of {name} that is computed"));
            }
            if part.field_len > part.len {
                return Err(format!("a key of {name} with a prefix"));
            }
            covered += slots(part.len) * 4;
            at += slots(part.len);
            parts.push(part.clone());
        }
        // A concatenation's parts each fill whole registers; a single value is as long as it is.
        let single = matches!(parts.as_slice(), [one] if one.len == set.key_len);
        if covered != set.key_len && !single {
            return Err(format!("a key of {name} that does not fit its set"));
        }
        let key = match parts.as_slice() {
            [one] => one.expr.clone(),
            many => json!({ "concat": many.iter().map(|p| p.expr.clone()).collect::<Vec<_>>() }),
        };
        let reference =
            if set.flags & NFT_SET_ANONYMOUS != 0 { self.inline_set(set, &parts)? } else { json!(format!("@{name}")) };
        match dreg {
            None => {
                let op = if inverted { "!=" } else { "==" };
                state.statements.push(Some(json!({ "match": { "op": op, "left": key, "right": reference } })));
            }
            Some(0) if set.flags & NFT_SET_MAP != 0 && !inverted => {
                state.statements.push(Some(json!({ "vmap": { "key": key, "data": reference } })));
            }
            Some(_) => return Err(format!("a lookup of {name} into a data register")),
        }
        Ok(())
    }

    /// An anonymous set's elements as nft prints them in the rule, in nft's order (by key).
    fn inline_set(&self, set: &SetInfo, parts: &[Loaded]) -> Result<Value, String> {
        let mut elements: Vec<(Vec<u128>, Value)> = Vec::new();
        for element in &set.elements {
            let mut at = 0usize;
            let mut values = Vec::new();
            let mut order = Vec::new();
            for part in parts {
                let len = part.len as usize;
                let bytes = element.key.get(at..at + len).ok_or("a set element shorter than its key")?;
                values.push(value_json(part.kind, bytes)?);
                order.push(sort_number(part.kind, bytes));
                at += slots(part.len) as usize * 4;
            }
            let key = match values.len() {
                1 => values.remove(0),
                _ => json!({ "concat": values }),
            };
            let value = match &element.data {
                None if set.flags & NFT_SET_MAP == 0 => key,
                Some(data @ Data::Verdict { .. }) if set.flags & NFT_SET_MAP != 0 => json!([key, data.verdict_json()?]),
                _ => return Err(format!("set {} of another shape", set.name)),
            };
            elements.push((order, value));
        }
        elements.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(json!({ "set": elements.into_iter().map(|(_, v)| v).collect::<Vec<_>>() }))
    }
}

#[derive(Default)]
struct RuleState {
    slots: HashMap<u32, Loaded>,
    /// Statements so far; a match nft folds into a later field is taken out (None).
    statements: Vec<Option<Value>>,
    /// The protocol of the last `meta l4proto ==` match, and that match's statement.
    l4_context: Option<u8>,
    l4_dependency: Option<usize>,
    /// `ip protocol` / `ip6 nexthdr` was read: nft's rendering of later transport fields
    /// then depends on rules not decoded here.
    l4_from_header: bool,
}

impl RuleState {
    fn load(&mut self, register: u32, loaded: Loaded) -> Result<(), String> {
        let first = if register == 0 { return Err("data into the verdict register".into()) } else { slot(register)? };
        for at in first..first + slots(loaded.len).max(1) {
            self.slots.remove(&at);
        }
        self.slots.insert(first, loaded);
        Ok(())
    }

    fn read(&self, register: u32) -> Result<&Loaded, String> {
        self.slots.get(&slot(register)?).ok_or_else(|| format!("register {register} read before it was loaded"))
    }
}

impl Loaded {
    fn new(expr: Value, kind: Kind, len: u32) -> Loaded {
        Loaded { expr, kind, len, field_len: len, bytes: Vec::new(), mask: None, xor: None, is_l4proto: false }
    }
}

fn raw_bytes(loaded: &Loaded) -> Result<&[u8], String> {
    match loaded.kind {
        Kind::Raw => Ok(&loaded.bytes),
        _ => Err("a statement reading a loaded field".into()),
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

fn host_u32(bytes: &[u8]) -> Result<u32, String> {
    let bytes: [u8; 4] = bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or("a value shorter than 32 bits")?;
    Ok(u32::from_ne_bytes(bytes))
}

/// nft's names of conntrack states, by bit (nf_conntrack_common.h), in nft's order.
fn ct_state_names(bits: u32) -> Result<Value, String> {
    const STATES: [(u32, &str); 5] =
        [(1, "invalid"), (2, "established"), (4, "related"), (8, "new"), (64, "untracked")];
    if bits == 0 || bits & !STATES.iter().fold(0, |all, (bit, _)| all | bit) != 0 {
        return Err(format!("ct state bits {bits:#x}"));
    }
    let names: Vec<&str> = STATES.iter().filter(|(bit, _)| bits & bit != 0).map(|(_, name)| *name).collect();
    Ok(match names.as_slice() {
        [one] => json!(one),
        many => json!(many),
    })
}

/// An address compared whole, or a prefix of it (a shorter load, or a mask).
fn address_json(loaded: &Loaded, mask: Option<&[u8]>, data: &[u8]) -> Result<Value, String> {
    let field_len = loaded.field_len as usize;
    let mut full = data.to_vec();
    full.resize(field_len, 0);
    let mut prefix = 0u32;
    let mut ended = false;
    for at in 0..field_len {
        let byte = if at < loaded.len as usize { mask.map_or(0xff, |m| m.get(at).copied().unwrap_or(0)) } else { 0 };
        for bit in (0..8).rev() {
            let set = byte & (1 << bit) != 0;
            match (set, ended) {
                (true, false) => prefix += 1,
                (false, _) => ended = true,
                (true, true) => return Err("a mask that is not a prefix".into()),
            }
        }
    }
    let addr = value_json(loaded.kind, &full)?;
    if prefix as usize == field_len * 8 {
        Ok(addr)
    } else {
        Ok(json!({ "prefix": { "addr": addr, "len": prefix } }))
    }
}

fn ifname_json(data: &[u8], loaded_len: u32) -> Result<Value, String> {
    let name = c_string(data)?;
    if data.len() < loaded_len as usize && !data.contains(&0) {
        Ok(json!(format!("{name}*")))
    } else {
        Ok(json!(name))
    }
}

fn value_json(kind: Kind, bytes: &[u8]) -> Result<Value, String> {
    Ok(match kind {
        Kind::Ipv4 => {
            let octets: [u8; 4] = bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or("a short IPv4 address")?;
            json!(std::net::Ipv4Addr::from(octets).to_string())
        }
        Kind::Ipv6 => {
            let octets: [u8; 16] = bytes.get(..16).and_then(|b| b.try_into().ok()).ok_or("a short IPv6 address")?;
            json!(std::net::Ipv6Addr::from(octets).to_string())
        }
        Kind::L4Proto => match bytes.first().ok_or("an empty protocol")? {
            1 => json!("icmp"),
            6 => json!("tcp"),
            17 => json!("udp"),
            132 => json!("sctp"),
            other => return Err(format!("protocol {other}")),
        },
        Kind::Port => {
            let port: [u8; 2] = bytes.get(..2).and_then(|b| b.try_into().ok()).ok_or("a short port")?;
            json!(u16::from_be_bytes(port))
        }
        Kind::Integer => json!(host_u32(bytes)?),
        Kind::CtState | Kind::Ifname | Kind::Raw => return Err("a value of its own shape".into()),
    })
}

/// The number nft sorts an element by.
fn sort_number(kind: Kind, bytes: &[u8]) -> u128 {
    match kind {
        Kind::Integer => u128::from(host_u32(bytes).unwrap_or(0)),
        _ => bytes.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b)),
    }
}

fn icmp_code_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "net-unreachable",
        1 => "host-unreachable",
        2 => "prot-unreachable",
        3 => "port-unreachable",
        9 => "net-prohibited",
        10 => "host-prohibited",
        13 => "admin-prohibited",
        _ => return None,
    })
}

fn icmpv6_code_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "no-route",
        1 => "admin-prohibited",
        3 => "addr-unreachable",
        4 => "port-unreachable",
        5 => "policy-fail",
        6 => "reject-route",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::fixtures::KUBE_PROXY_NFT;
    use crate::firewall::nft::nft_items;
    use crate::system::netns::scratch::Netns;

    /// The statements this reader decodes, in the families it decodes, each in the forms nft
    /// writes them; and chains it must leave to nft.
    const SHAPES: &str = r#"
table ip tr-shapes {
  set s4 { type ipv4_addr; elements = { 10.0.0.1, 10.0.0.3 } }
  map m4 { type ipv4_addr . inet_proto . inet_service : verdict; elements = { 10.0.0.1 . udp . 53 comment "one" : goto c2 } }
  counter named { }
  chain base { type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state != established counter drop
    ct state invalid drop
    ct state new,untracked accept
    ip saddr 10.1.0.0/16 ip daddr != 10.2.3.4 udp dport 53 reject
    ip saddr 10.96.0.0/12 drop comment "twelve bits"
    ip saddr != 10.96.0.0/12 ip daddr 10.0.0.0/8 accept
    ip daddr @s4 reject with icmp host-prohibited
    ip daddr != @s4 accept
    iifname "eth*" oifname "cni0" accept
    meta l4proto udp th dport { 53, 5353 } accept
    tcp sport != 22 mark set 0x10 return
    meta mark & 0xff00 != 0x100 drop
    mark and 0x4000 == 0 return
    meta l4proto { tcp, udp } th dport 53 goto c2
    ip daddr . udp dport { 10.0.0.1 . 53, 10.0.0.2 . 5353 } accept
    udp dport vmap { 53 : accept, 5353 : drop }
    ip daddr . meta l4proto . th dport vmap @m4
    meta l4proto icmp accept
    tcp dport 1000-2000 accept
    tcp dport != 1000-2000 accept
    numgen random mod 3 vmap { 0 : goto c2, 1 : jump c2, 2 : drop }
    numgen inc mod 2 offset 5 vmap { 5 : continue, 6 : return }
    reject with icmp net-prohibited
    meta mark 7 counter
  }
  chain nat { type nat hook prerouting priority -100;
    meta l4proto tcp dnat to 10.0.0.5:80
    ip daddr 10.0.0.6 dnat to 10.0.0.7
  }
  chain post { type nat hook postrouting priority 100; policy accept;
    mark set mark xor 0x4000
    mark set mark or 0x4000
    masquerade random,persistent
    masquerade fully-random
    snat to 10.0.0.9
    masquerade
  }
  chain c2 { comment "a chain's comment"; }
  chain leave-log { log prefix "x" accept; }
  chain leave-interval { ip daddr { 10.0.0.0/8, 192.168.0.0/16 } accept; }
  chain leave-protocol { ip protocol udp udp dport 53 accept; }
  chain leave-named-counter { counter name named; }
  chain leave-reset { tcp dport 1 reject with tcp reset; }
}
table ip6 tr-shapes6 {
  map m6 { type ipv6_addr . inet_proto . inet_service : verdict; elements = { fd00::10 . udp . 53 : drop } }
  chain base { type filter hook input priority 10; policy accept;
    ip6 daddr fd00::1 tcp dport 443 reject
    ip6 saddr fd00::/64 drop
    ip6 saddr != fd00:1::/56 udp sport 53 accept
    reject with icmpv6 admin-prohibited
    ip6 daddr . meta l4proto . th dport vmap @m6
  }
  chain nat6 { type nat hook prerouting priority -100;
    meta l4proto tcp dnat to [fd00::5]:80
  }
  chain nexthdr { ip6 nexthdr udp accept; }
}
table inet tr-inet {
  chain leave-inet { tcp dport 22 accept; }
}
"#;

    /// Each chain of the namespace as nft lists it (its item and its rules' items), and as the
    /// kernel reader does.
    type Readings = Vec<(ChainId, Vec<Value>, Result<Vec<Value>, Failure>)>;

    fn both_readings(ns: &Netns) -> Readings {
        let items = nft_items(&ns.sh("nft -j -a list ruleset")).expect("nft's listing");
        let mut chains: Vec<(ChainId, Vec<Value>)> = Vec::new();
        for item in items {
            let (Some(body), kind) = (item.get("chain").or_else(|| item.get("rule")), item.get("chain").is_some())
            else {
                continue;
            };
            let text = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or_default().to_string();
            let id = ChainId {
                family: text("family"),
                table: text("table"),
                name: text(if kind { "name" } else { "chain" }),
            };
            match chains.iter_mut().find(|(known, _)| *known == id) {
                Some((_, listed)) => listed.push(item),
                None => chains.push((id, vec![item])),
            }
        }
        ns.run(|| {
            chains
                .into_iter()
                .map(|(id, listed)| {
                    let read = read_chain(&id);
                    (id, listed, read)
                })
                .collect()
        })
    }

    #[test]
    fn real_chains_read_from_the_kernel_are_what_nft_lists() {
        let ns = Netns::new();
        ns.nft(SHAPES);
        let mut left_to_nft = Vec::new();
        for (id, listed, read) in both_readings(&ns) {
            match read {
                Ok(items) => {
                    assert_eq!(items.len(), listed.len(), "{}: {items:#?}", id.name);
                    for (ours, nfts) in items.iter().zip(&listed) {
                        assert_eq!(ours, nfts, "{} {}", id.table, id.name);
                    }
                }
                Err(Failure::Undecoded(why)) => left_to_nft.push(format!("{} ({why})", id.name)),
                Err(Failure::Gone) => panic!("{} gone", id.name),
            }
        }
        let names: Vec<&str> = left_to_nft.iter().map(|n| n.split(' ').next().unwrap_or_default()).collect();
        assert_eq!(
            names,
            ["leave-log", "leave-interval", "leave-protocol", "leave-named-counter", "leave-reset", "leave-inet"],
            "{left_to_nft:#?}"
        );
    }

    #[test]
    fn real_kube_proxy_chains_are_all_read_from_the_kernel() {
        let ns = Netns::new();
        ns.nft(KUBE_PROXY_NFT);
        let readings = both_readings(&ns);
        assert!(readings.len() > 10, "{} chains", readings.len());
        for (id, listed, read) in readings {
            match read {
                Ok(items) => assert_eq!(items, listed, "{}", id.name),
                Err(other) => panic!("{}: {other:?}", id.name),
            }
        }
    }

    #[test]
    fn real_a_chain_that_does_not_exist_is_gone() {
        let ns = Netns::new();
        ns.nft("table ip tr-gone {\n chain here {\n }\n}");
        let id = |table: &str, name: &str| ChainId { family: "ip".into(), table: table.into(), name: name.into() };
        ns.run(|| {
            assert!(matches!(list_chain(&id("tr-gone", "here")), Listing::Read(items) if items.len() == 1));
            assert!(matches!(list_chain(&id("tr-gone", "elsewhere")), Listing::Gone));
            assert!(matches!(list_chain(&id("tr-none", "here")), Listing::Gone));
        });
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for bytes in [&[0xffu8; 3][..], &[8, 0, 1, 0][..], &[200, 0, 1, 0, 1, 2][..], &[][..]] {
            let _ = RawRule::parse(bytes);
            let _ = RawElement::parse(bytes);
            let _ = chain_item(&ChainId { family: "ip".into(), table: "t".into(), name: "c".into() }, bytes);
            let _ = udata_comment(bytes);
        }
    }
}
