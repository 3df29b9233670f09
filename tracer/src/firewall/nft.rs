//! Parses what `nft -j -a list ruleset` prints into chains of rules with their matches,
//! verdicts and counters, resolving named sets, maps and counters of each table.
//!
//! A kube-proxy node lists tens of thousands of rules. The listing is read item by item into
//! typed heads that borrow from the text; a rule's statements and a set's elements stay
//! unread JSON text until their turn, and each is read and dropped on its own. A generic JSON
//! document of the whole listing would take over twenty times the text.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Context;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::model::{
    protocol_number, AddrRange, Backend, Chain, Condition, CtStates, Family, Hook, IfacePattern, KeyPart, Lookup,
    MarkChange, MarkMatch, PortRange, Rule, RuleMatches, Side, Verdict,
};
use super::nft_text::{nft_reject_with, quote, render_expr, render_statement, str_field, u64_field};
use super::sets::{FieldKind, NftSet, SetRef};

/// Parses `nft -j -a list ruleset`. Every chain of the ip, ip6 and inet families, whoever
/// made it (`reconcile` sorts out the ones iptables-nft owns); an inet chain is listed once
/// per family, as IPv4 and IPv6 packets both traverse it. Other families (arp, bridge,
/// netdev) do not see packets at the IP hooks and are left out.
pub(crate) fn parse_nft_json(json: &str) -> anyhow::Result<Vec<Chain>> {
    Ok(parse_nft(json)?.into_iter().map(|c| c.chain).collect())
}

/// A chain as nft listed it, with what `reconcile` needs to compare it with iptables-nft-save.
pub(super) struct NftChain {
    pub(super) chain: Chain,
    /// `ip`, `ip6` or `inet`.
    pub(super) kernel_family: String,
    pub(super) table_name: String,
    /// Per rule: it has a set or map lookup that did not become a test (`meta mark { 1, 2 }`,
    /// a vmap), which `reconcile` cannot compare with what iptables-nft-save printed.
    pub(super) opaque_lookups: Vec<bool>,
}

/// Named sets, maps and counters of one table, for resolving `@name` and `counter name`.
#[derive(Default)]
struct NftObjects {
    sets: HashMap<(String, String, String), Arc<NftSet>>,
    counters: HashMap<(String, String, String), (u64, u64)>,
}

impl NftObjects {
    fn set(&self, table: &(String, String), reference: &str) -> Option<&Arc<NftSet>> {
        let name = reference.strip_prefix('@')?;
        self.sets.get(&(table.0.clone(), table.1.clone(), name.to_string()))
    }
}

/// An item of a listing, by the one key that names what it is. Tables, elements, flowtables
/// and the rest carry nothing a packet's walk needs.
enum Item<'a> {
    Chain(ChainItem<'a>),
    Rule(RuleItem<'a>),
    Set(SetItem<'a>),
    Counter(CounterItem<'a>),
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ItemKind {
    Chain,
    Rule,
    Set,
    Map,
    Counter,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Item<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor<'a>(PhantomData<Item<'a>>);

        impl<'de: 'a, 'a> Visitor<'de> for ItemVisitor<'a> {
            type Value = Item<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object whose key says what it lists")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Item<'a>, M::Error> {
                let item = match map.next_key::<ItemKind>()? {
                    None => Item::Other,
                    Some(ItemKind::Chain) => Item::Chain(map.next_value()?),
                    Some(ItemKind::Rule) => Item::Rule(map.next_value()?),
                    Some(ItemKind::Set | ItemKind::Map) => Item::Set(map.next_value()?),
                    Some(ItemKind::Counter) => Item::Counter(map.next_value()?),
                    Some(ItemKind::Other) => {
                        map.next_value::<IgnoredAny>()?;
                        Item::Other
                    }
                };
                // nft writes one key per item; anything after it is read past.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(item)
            }

            // Whatever else a future nft might put in the array is not an item to read.
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Item<'a>, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Item::Other)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Item<'a>, E> {
                Ok(Item::Other)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Item<'a>, E> {
                Ok(Item::Other)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Item<'a>, E> {
                Ok(Item::Other)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Item<'a>, E> {
                Ok(Item::Other)
            }

            fn visit_str<E>(self, _: &str) -> Result<Item<'a>, E> {
                Ok(Item::Other)
            }

            fn visit_unit<E>(self) -> Result<Item<'a>, E> {
                Ok(Item::Other)
            }
        }

        deserializer.deserialize_any(ItemVisitor(PhantomData))
    }
}

/// A field of an item as nft's schema types it, or `Other` where a listing holds something
/// else there: one odd field leaves that field unknown instead of failing the whole listing
/// (and with it every nftables rule of the node).
#[derive(Default)]
enum Field<'a> {
    Text(Cow<'a, str>),
    Number(u64),
    #[default]
    Other,
}

impl Field<'_> {
    fn text(&self) -> &str {
        self.some_text().unwrap_or("")
    }

    fn some_text(&self) -> Option<&str> {
        match self {
            Field::Text(text) => Some(text),
            _ => None,
        }
    }

    fn number(&self) -> Option<u64> {
        match self {
            Field::Number(n) => Some(*n),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<'a>(PhantomData<Field<'a>>);

        impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
            type Value = Field<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Owned(text.to_string())))
            }

            fn visit_string<E>(self, text: String) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Owned(text)))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Field<'a>, E> {
                Ok(Field::Number(n))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Field<'a>, E> {
                Ok(Field::Other)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Field<'a>, E> {
                Ok(Field::Other)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Field<'a>, E> {
                Ok(Field::Other)
            }

            fn visit_unit<E>(self) -> Result<Field<'a>, E> {
                Ok(Field::Other)
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Field<'a>, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Field<'a>, M::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }

        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}

/// The table an item belongs to.
#[derive(Deserialize, Default)]
#[serde(default)]
struct InTable<'a> {
    #[serde(borrow)]
    family: Field<'a>,
    #[serde(borrow)]
    table: Field<'a>,
}

impl InTable<'_> {
    /// What names the table's object `name` (a chain, set, map or counter) in the listing.
    fn key_of(&self, name: &Field) -> (String, String, String) {
        (self.family.text().to_string(), self.table.text().to_string(), name.text().to_string())
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChainItem<'a> {
    #[serde(borrow, flatten)]
    at: InTable<'a>,
    #[serde(borrow)]
    name: Field<'a>,
    #[serde(borrow)]
    hook: Field<'a>,
    #[serde(borrow)]
    policy: Field<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RuleItem<'a> {
    #[serde(borrow, flatten)]
    at: InTable<'a>,
    #[serde(borrow)]
    chain: Field<'a>,
    #[serde(borrow)]
    handle: Field<'a>,
    #[serde(borrow)]
    comment: Field<'a>,
    /// Read when the rule's turn comes, once every set and counter is known.
    #[serde(borrow)]
    expr: Option<&'a RawValue>,
}

/// A set or a map.
#[derive(Deserialize, Default)]
#[serde(default)]
struct SetItem<'a> {
    #[serde(borrow, flatten)]
    at: InTable<'a>,
    #[serde(borrow)]
    name: Field<'a>,
    /// A type name, or one per field of a concatenation.
    #[serde(rename = "type")]
    key_type: Option<Value>,
    /// Only maps have one.
    map: Option<IgnoredAny>,
    /// Its elements, each read on its own when the set is: kube-proxy's maps have one per
    /// Service port.
    #[serde(borrow)]
    elem: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CounterItem<'a> {
    #[serde(borrow, flatten)]
    at: InTable<'a>,
    #[serde(borrow)]
    name: Field<'a>,
    #[serde(borrow)]
    packets: Field<'a>,
    #[serde(borrow)]
    bytes: Field<'a>,
}

/// JSON text already checked by the listing's parse, read into a value.
fn read_raw(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// A set or map object: its elements indexed by the key its type declares.
fn parse_set_object(set: &SetItem) -> NftSet {
    let kinds: Vec<FieldKind> = match &set.key_type {
        Some(Value::String(name)) => vec![FieldKind::of_type(name)],
        Some(Value::Array(names)) => names.iter().map(|n| FieldKind::of_type(n.as_str().unwrap_or(""))).collect(),
        _ => vec![FieldKind::Other],
    };
    // Not an array (a future nft's form): no elements known.
    let raw_elements: Vec<&RawValue> =
        set.elem.and_then(|elem| serde_json::from_str(elem.get()).ok()).unwrap_or_default();
    let elements = raw_elements.into_iter().map(read_raw);
    NftSet::from_json(format!("@{}", set.name.text()), elements, &kinds, set.map.is_some())
}

/// The ip, ip6 and inet families see packets at the IP hooks.
fn is_ip_family(family: &str) -> bool {
    matches!(family, "ip" | "ip6" | "inet")
}

pub(super) fn parse_nft(json: &str) -> anyhow::Result<Vec<NftChain>> {
    let mut listing = ListingReader::default();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    ListingSeed { reader: &mut listing, within_array: false }
        .deserialize(&mut deserializer)
        .context("not an nft JSON listing")?;
    deserializer.end().context("not an nft JSON listing")?;
    Ok(listing.finish())
}

/// Takes a listing's `nftables` array to `ListingReader::add`, one item at a time: the
/// listing's object first (`within_array` false), then its array.
struct ListingSeed<'r, 'a> {
    reader: &'r mut ListingReader<'a>,
    within_array: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ListingKey {
    Nftables,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for ListingSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ListingSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.within_array { "an array of nft items" } else { "an object with an \"nftables\" array" })
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        if self.within_array {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        let mut found = false;
        while let Some(key) = map.next_key::<ListingKey>()? {
            match key {
                ListingKey::Nftables => {
                    map.next_value_seed(ListingSeed { reader: &mut *self.reader, within_array: true })?;
                    found = true;
                }
                ListingKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !found {
            return Err(de::Error::missing_field("nftables"));
        }
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut items: S) -> Result<(), S::Error> {
        if !self.within_array {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        while let Some(item) = items.next_element::<Item<'a>>()? {
            self.reader.add(item);
        }
        Ok(())
    }
}

/// The items of one nft JSON listing (tables, chains, rules, sets, ...), in its order: for
/// the short listings of single chains, whose items are merged across listings.
pub(super) fn nft_items(json: &str) -> anyhow::Result<Vec<Value>> {
    #[derive(Deserialize)]
    struct Items {
        nftables: Vec<Value>,
    }
    Ok(serde_json::from_str::<Items>(json).context("not an nft JSON listing")?.nftables)
}

/// Chains from the items of one or more nft listings: a rule's chain and the sets and counters
/// it names may come from different listings, in any order.
pub(super) fn parse_nft_items(items: &[Value]) -> anyhow::Result<Vec<NftChain>> {
    #[derive(Serialize)]
    struct Items<'a> {
        nftables: &'a [Value],
    }
    // One parser for both: these listings are of a few chains, written out again cheaply.
    parse_nft(&serde_json::to_string(&Items { nftables: items })?)
}

/// Chains, sets and counters as a listing's items come; rules wait for the end, as the sets
/// and counters they name may come after them.
#[derive(Default)]
struct ListingReader<'a> {
    objects: NftObjects,
    chains: Vec<NftChain>,
    chain_at: HashMap<(String, String, String), usize>,
    rules: Vec<RuleItem<'a>>,
}

impl<'a> ListingReader<'a> {
    fn add(&mut self, item: Item<'a>) {
        let ListingReader { objects, chains, chain_at, rules } = self;
        match item {
            Item::Set(set) if is_ip_family(set.at.family.text()) => {
                objects.sets.insert(set.at.key_of(&set.name), Arc::new(parse_set_object(&set)));
            }
            Item::Counter(counter) if is_ip_family(counter.at.family.text()) => {
                let counted = (counter.packets.number().unwrap_or(0), counter.bytes.number().unwrap_or(0));
                objects.counters.insert(counter.at.key_of(&counter.name), counted);
            }
            Item::Chain(chain) if is_ip_family(chain.at.family.text()) => {
                let (family, table, name) = (chain.at.family.text(), chain.at.table.text(), chain.name.text());
                chain_at.insert(chain.at.key_of(&chain.name), chains.len());
                let hook = chain.hook.some_text();
                let policy = hook.and(chain.policy.some_text()).map(|p| match p {
                    "accept" => Verdict::Accept,
                    "drop" => Verdict::Drop,
                    other => Verdict::Other(other.to_string()),
                });
                chains.push(NftChain {
                    chain: Chain {
                        backend: Backend::Nftables,
                        family: Family::Ipv4,
                        table: format!("{family} {table}"),
                        name: name.to_string(),
                        hook: hook.and_then(Hook::from_nft),
                        policy,
                        policy_packets: None,
                        rules: Vec::new(),
                    },
                    kernel_family: family.to_string(),
                    table_name: table.to_string(),
                    opaque_lookups: Vec::new(),
                });
            }
            Item::Rule(rule) if is_ip_family(rule.at.family.text()) => rules.push(rule),
            _ => {}
        }
    }

    fn finish(self) -> Vec<NftChain> {
        let ListingReader { objects, mut chains, chain_at, rules } = self;
        let places: Vec<Option<usize>> =
            rules.iter().map(|rule| chain_at.get(&rule.at.key_of(&rule.chain)).copied()).collect();
        drop(chain_at);
        // Each chain's rules in room of their exact size: grown by pushing, the tens of
        // thousands of short chains of a kube-proxy node would hold twice their rules' room.
        let mut counts = vec![0usize; chains.len()];
        for &at in places.iter().flatten() {
            counts[at] += 1;
        }
        for (nft_chain, count) in chains.iter_mut().zip(counts) {
            nft_chain.chain.rules.reserve_exact(count);
            nft_chain.opaque_lookups.reserve_exact(count);
        }
        for (rule, at) in rules.into_iter().zip(places) {
            let Some(at) = at else { continue };
            let table_key = (rule.at.family.text().to_string(), rule.at.table.text().to_string());
            let nft_chain = &mut chains[at];
            let position = u32::try_from(nft_chain.chain.rules.len() + 1).unwrap_or(u32::MAX);
            let statements = match rule.expr.map(read_raw) {
                Some(Value::Array(statements)) => statements,
                _ => Vec::new(),
            };
            let comment = rule.comment.some_text();
            let mut parsed = parse_nft_rule(&statements, comment, rule.at.family.text(), &table_key, &objects);
            // Kept for as long as the snapshot is: without the room grown while reading.
            parsed.matches.tests.shrink_to_fit();
            parsed.matches.unparsed.shrink_to_fit();
            nft_chain.opaque_lookups.push(parsed.opaque_lookup);
            nft_chain.chain.rules.push(Rule {
                backend: Backend::Nftables,
                family: Family::Ipv4,
                table: nft_chain.chain.table.clone(),
                chain: nft_chain.chain.name.clone(),
                position,
                handle: rule.handle.number(),
                text: parsed.text,
                comment: comment.map(str::to_string),
                verdict: parsed.verdict,
                map_verdicts: parsed.map_verdicts,
                vmap: parsed.vmap,
                mark_change: parsed.mark_change,
                matches: parsed.matches,
                packets: parsed.counter.map(|(p, _)| p),
                bytes: parsed.counter.map(|(_, b)| b),
            });
        }

        let inet = chains.iter().filter(|c| c.kernel_family == "inet").count();
        let mut out = Vec::with_capacity(chains.len() + inet);
        for nft_chain in chains {
            let (first, second) = match nft_chain.kernel_family.as_str() {
                "ip" => (Family::Ipv4, None),
                "ip6" => (Family::Ipv6, None),
                _ => (Family::Ipv4, Some(Family::Ipv6)),
            };
            // Only an inet chain is copied, once: a kube-proxy node has thousands of ip chains.
            if let Some(family) = second {
                let copy = NftChain {
                    chain: nft_chain.chain.clone(),
                    kernel_family: nft_chain.kernel_family.clone(),
                    table_name: nft_chain.table_name.clone(),
                    opaque_lookups: nft_chain.opaque_lookups.clone(),
                };
                out.push(with_family(nft_chain, first));
                out.push(with_family(copy, family));
            } else {
                out.push(with_family(nft_chain, first));
            }
        }
        out
    }
}

/// A table's object that rules name and that lives outside their chain, as `nft list` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct NamedObject {
    /// `set`, `map` or `counter`.
    pub(super) kind: &'static str,
    /// `ip`, `ip6` or `inet`.
    pub(super) family: String,
    pub(super) table: String,
    pub(super) name: String,
}

/// The sets, maps and named counters the rules among `items` name: what a reading of single
/// chains lists with them.
pub(super) fn named_objects(items: &[Value]) -> Vec<NamedObject> {
    let mut found = Vec::new();
    for item in items {
        let Some(rule) = item.get("rule") else { continue };
        let named = |kind: &'static str, name: &str| NamedObject {
            kind,
            family: str_field(rule, "family").to_string(),
            table: str_field(rule, "table").to_string(),
            name: name.to_string(),
        };
        let mut add = |object: NamedObject| {
            if !found.contains(&object) {
                found.push(object);
            }
        };
        for statement in rule.get("expr").and_then(Value::as_array).into_iter().flatten() {
            if let Some(Value::String(name)) = statement.get("counter") {
                add(named("counter", name));
            }
            collect_references(statement, None, &mut |kind, name| add(named(kind, name)));
        }
    }
    found
}

/// Calls `found` for every `@name` under `value`: a map where it is the data of a `map` or
/// `vmap` expression, a set elsewhere.
fn collect_references(value: &Value, parent: Option<&str>, found: &mut dyn FnMut(&'static str, &str)) {
    match value {
        Value::String(reference) => {
            if let Some(name) = reference.strip_prefix('@') {
                found(if matches!(parent, Some("vmap" | "map")) { "map" } else { "set" }, name);
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_references(v, None, found)),
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("vmap" | "map", Value::Object(lookup)) => {
                        for (part, inner) in lookup {
                            let kind = (part == "data").then_some(key.as_str());
                            collect_references(inner, kind, found);
                        }
                    }
                    _ => collect_references(field, None, found),
                }
            }
        }
        _ => {}
    }
}

fn with_family(mut nft_chain: NftChain, family: Family) -> NftChain {
    nft_chain.chain.family = family;
    for rule in &mut nft_chain.chain.rules {
        rule.family = family;
    }
    nft_chain
}

struct ParsedNftRule {
    text: String,
    verdict: Verdict,
    map_verdicts: Vec<Verdict>,
    vmap: Option<Lookup>,
    mark_change: Option<MarkChange>,
    matches: RuleMatches,
    counter: Option<(u64, u64)>,
    opaque_lookup: bool,
}

fn parse_nft_rule(
    statements: &[Value],
    comment: Option<&str>,
    family: &str,
    table: &(String, String),
    objects: &NftObjects,
) -> ParsedNftRule {
    let mut rule = ParsedNftRule {
        text: String::new(),
        verdict: Verdict::Other("continue".to_string()),
        map_verdicts: Vec::new(),
        vmap: None,
        mark_change: None,
        matches: RuleMatches::default(),
        counter: None,
        opaque_lookup: false,
    };
    let mut words: Vec<String> = Vec::new();
    for statement in statements {
        let Some((kind, arg)) = statement.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let text = render_statement(kind, arg, family);
        match kind.as_str() {
            "match" => {
                let unparsed = rule.matches.unparsed.len();
                let looked_up = parse_nft_match(arg, &text, table, objects, &mut rule.matches);
                if looked_up || (rule.matches.unparsed.len() > unparsed && contains_set_reference(arg)) {
                    rule.opaque_lookup = true;
                }
            }
            "counter" => {
                rule.counter = match arg {
                    Value::String(name) => {
                        objects.counters.get(&(table.0.clone(), table.1.clone(), name.clone())).copied()
                    }
                    _ => Some((u64_field(arg, "packets").unwrap_or(0), u64_field(arg, "bytes").unwrap_or(0))),
                };
            }
            "accept" => rule.verdict = Verdict::Accept,
            "drop" => rule.verdict = Verdict::Drop,
            "return" => rule.verdict = Verdict::Return,
            "jump" => rule.verdict = Verdict::Jump(str_field(arg, "target").to_string()),
            "goto" => rule.verdict = Verdict::Goto(str_field(arg, "target").to_string()),
            "reject" => rule.verdict = Verdict::Reject { with: Some(nft_reject_with(arg)) },
            "xt" if str_field(arg, "type") == "target" => {
                rule.verdict = match str_field(arg, "name") {
                    // iptables-nft's REJECT; nft does not show its options.
                    "REJECT" => Verdict::Reject { with: None },
                    "ACCEPT" => Verdict::Accept,
                    "DROP" => Verdict::Drop,
                    _ => Verdict::Other(text.clone()),
                }
            }
            "xt" => rule.matches.unparsed.push(text.clone()),
            "vmap" => {
                rule.opaque_lookup = true;
                let key = arg.get("key").unwrap_or(&Value::Null);
                match lookup(key, arg.get("data").unwrap_or(&Value::Null), table, objects, true) {
                    Some(lookup) => {
                        // Each once, in element order: kube-proxy's maps have thousands.
                        let mut seen: HashSet<&Verdict> = HashSet::new();
                        rule.map_verdicts = lookup
                            .set
                            .0
                            .elements
                            .iter()
                            .filter_map(|e| e.verdict.as_ref())
                            .filter(|verdict| seen.insert(*verdict))
                            .cloned()
                            .collect();
                        payload_dependencies(key, &mut rule.matches);
                        rule.vmap = Some(lookup);
                    }
                    None => rule.matches.unparsed.push(text.clone()),
                }
                rule.verdict = Verdict::Other(text.clone());
            }
            "mangle" if arg.get("key").and_then(|k| k.get("meta")).is_some_and(|m| str_field(m, "key") == "mark") => {
                rule.mark_change = Some(mark_change(arg.get("value").unwrap_or(&Value::Null)));
            }
            // Conditions that stop the rule for some packets.
            "limit" | "quota" | "ct count" | "connlimit" => rule.matches.unparsed.push(text.clone()),
            // NAT from a map: a key in no element stops the rule.
            "dnat" | "snat" => {
                for part in ["addr", "port"] {
                    if let Some(map) = arg.get(part).and_then(|p| p.get("map")) {
                        let key = map.get("key").unwrap_or(&Value::Null);
                        match lookup(key, map.get("data").unwrap_or(&Value::Null), table, objects, true) {
                            Some(lookup) => {
                                rule.opaque_lookup = true;
                                payload_dependencies(key, &mut rule.matches);
                                rule.matches.test(false, Condition::Lookup(lookup));
                            }
                            None => rule.matches.unparsed.push(text.clone()),
                        }
                    }
                }
                rule.verdict = Verdict::Other(text.clone())
            }
            // Terminal statements other than verdicts.
            "masquerade" | "redirect" | "queue" | "tproxy" | "synproxy" | "continue" => {
                rule.verdict = Verdict::Other(text.clone())
            }
            _ => {}
        }
        words.push(text);
    }
    if let Some(comment) = comment {
        words.push(format!("comment {}", quote(comment)));
    }
    rule.text = words.join(" ");
    rule
}

fn contains_set_reference(value: &Value) -> bool {
    match value {
        Value::String(s) => s.starts_with('@'),
        Value::Object(o) => o.iter().any(|(k, v)| k == "set" || k == "map" || contains_set_reference(v)),
        Value::Array(a) => a.iter().any(contains_set_reference),
        _ => false,
    }
}

/// The fields of a lookup key: one, or a concatenation `a . b . c`.
fn key_parts(key: &Value) -> Vec<KeyPart> {
    match key.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(key_part).collect(),
        None => vec![key_part(key)],
    }
}

fn key_part(expr: &Value) -> KeyPart {
    if let Some(payload) = expr.get("payload") {
        let part = match (str_field(payload, "protocol"), str_field(payload, "field")) {
            ("ip" | "ip6", "saddr") => Some(KeyPart::Src),
            ("ip" | "ip6", "daddr") => Some(KeyPart::Dst),
            ("ip", "protocol") | ("ip6", "nexthdr") => Some(KeyPart::L4Proto),
            ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "sport") => Some(KeyPart::Sport),
            ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "dport") => Some(KeyPart::Dport),
            _ => None,
        };
        if let Some(part) = part {
            return part;
        }
    } else if let Some(meta) = expr.get("meta") {
        let part = match str_field(meta, "key") {
            "l4proto" => Some(KeyPart::L4Proto),
            "nfproto" => Some(KeyPart::NfProto),
            "iifname" | "iif" => Some(KeyPart::InIface),
            "oifname" | "oif" => Some(KeyPart::OutIface),
            "mark" => Some(KeyPart::Mark),
            _ => None,
        };
        if let Some(part) = part {
            return part;
        }
    } else if expr.get("ct").is_some_and(|ct| str_field(ct, "key") == "state" && ct.get("dir").is_none()) {
        return KeyPart::CtState;
    } else if let Some(numgen) = expr.get("numgen") {
        let number = |key: &str| u64_field(numgen, key).and_then(|n| u32::try_from(n).ok());
        if let Some(modulus) = number("mod") {
            return KeyPart::Numgen { modulus, offset: number("offset").unwrap_or(0) };
        }
    }
    KeyPart::Unknown(render_expr(expr, None))
}

/// How `meta mark set VALUE` changes the mark.
fn mark_change(value: &Value) -> MarkChange {
    let operand = |op: &str| -> Option<u32> {
        let [left, right] = value.get(op)?.as_array()?.as_slice() else { return None };
        let is_mark = left.get("meta").is_some_and(|m| str_field(m, "key") == "mark");
        u32::try_from(right.as_u64()?).ok().filter(|_| is_mark)
    };
    if let Some(n) = value.as_u64().and_then(|n| u32::try_from(n).ok()) {
        MarkChange::Xmark { mask: u32::MAX, xor: n }
    } else if let Some(n) = operand("|") {
        MarkChange::Xmark { mask: n, xor: n }
    } else if let Some(n) = operand("^") {
        MarkChange::Xmark { mask: 0, xor: n }
    } else if let Some(n) = operand("&") {
        MarkChange::Xmark { mask: !n, xor: 0 }
    } else {
        MarkChange::Unknown
    }
}

/// A match on a protocol's header also requires that protocol (and family), whatever the
/// operator: nft adds the dependency, e.g. `tcp dport != 80` only matches TCP. For a
/// concatenation, each of its fields.
fn payload_dependencies(expr: &Value, matches: &mut RuleMatches) {
    if let Some(parts) = expr.get("concat").and_then(Value::as_array) {
        for part in parts {
            payload_dependencies(part, matches);
        }
        return;
    }
    let Some(payload) = expr.get("payload") else { return };
    let proto = str_field(payload, "protocol");
    let family = match proto {
        "ip" | "icmp" => Some(Family::Ipv4),
        "ip6" | "icmpv6" => Some(Family::Ipv6),
        _ => None,
    };
    if let Some(family) = family {
        let test = Condition::Family(family);
        if !matches.tests.iter().any(|t| !t.negated && t.condition == test) {
            matches.test(false, test);
        }
    }
    let transport = ["tcp", "udp", "sctp", "dccp", "udplite", "icmp", "icmpv6", "esp", "ah", "comp", "igmp"];
    if transport.contains(&proto) {
        if let Some(Some(number)) = protocol_number(proto) {
            matches.test(false, Condition::Proto(vec![number]));
        }
    }
}

/// What a match tests, when it is one of the packet fields attribution can check.
enum NftField {
    Family,
    Proto,
    Src,
    Dst,
    Sport,
    Dport,
    InIface,
    OutIface,
}

/// Adds what a match tests to `matches`; true when it became a set lookup.
fn parse_nft_match(
    arg: &Value,
    text: &str,
    table: &(String, String),
    objects: &NftObjects,
    matches: &mut RuleMatches,
) -> bool {
    let left = arg.get("left").unwrap_or(&Value::Null);
    let right = arg.get("right").unwrap_or(&Value::Null);
    let op = arg.get("op").and_then(Value::as_str).unwrap_or("==");
    payload_dependencies(left, matches);

    if let Some((negated, condition)) = state_condition(left, right, op) {
        matches.test(negated, condition);
        return false;
    }
    // Named sets, and concatenations in any set, are looked up.
    let named = right.as_str().is_some_and(|r| r.starts_with('@'));
    if named || left.get("concat").is_some() {
        let negated = match op {
            "==" | "in" => false,
            "!=" => true,
            _ => {
                matches.unparsed.push(text.to_string());
                return false;
            }
        };
        // A single value of a concatenation is a set of one.
        let one;
        let data = if right.get("concat").is_some() {
            one = serde_json::json!({"set": [right]});
            &one
        } else {
            right
        };
        return match lookup(left, data, table, objects, false) {
            Some(lookup) => {
                matches.test(negated, Condition::Lookup(lookup));
                true
            }
            None => {
                matches.unparsed.push(text.to_string());
                false
            }
        };
    }

    let field = if let Some(payload) = left.get("payload") {
        match (str_field(payload, "protocol"), str_field(payload, "field")) {
            ("ip", "saddr") | ("ip6", "saddr") => Some(NftField::Src),
            ("ip", "daddr") | ("ip6", "daddr") => Some(NftField::Dst),
            ("ip", "protocol") | ("ip6", "nexthdr") => Some(NftField::Proto),
            ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "sport") => Some(NftField::Sport),
            ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "dport") => Some(NftField::Dport),
            _ => None,
        }
    } else if let Some(meta) = left.get("meta") {
        match str_field(meta, "key") {
            "l4proto" => Some(NftField::Proto),
            "nfproto" => Some(NftField::Family),
            "iifname" | "iif" => Some(NftField::InIface),
            "oifname" | "oif" => Some(NftField::OutIface),
            _ => None,
        }
    } else {
        None
    };

    let negated = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => {
            // `tcp dport < 1024` and friends are ranges.
            if let (Some(NftField::Sport | NftField::Dport), Some(bound)) = (&field, right.as_u64()) {
                if let Some(range) = comparison_range(op, bound) {
                    let condition = match field {
                        Some(NftField::Sport) => Condition::Sport(vec![range]),
                        _ => Condition::Dport(vec![range]),
                    };
                    matches.test(false, condition);
                    return false;
                }
            }
            matches.unparsed.push(text.to_string());
            return false;
        }
    };

    // The values the field is compared with: one, or an anonymous set.
    let values: Option<Vec<Value>> = match right {
        Value::Object(o) if o.contains_key("set") => o.get("set").and_then(Value::as_array).cloned(),
        other => Some(vec![other.clone()]),
    };
    let condition = match (field, values) {
        (Some(field), Some(values)) => nft_condition(field, &values),
        _ => None,
    };
    match condition {
        Some(condition) => matches.test(negated, condition),
        None => matches.unparsed.push(text.to_string()),
    }
    false
}

/// The lookup of `key` in a set or map (`is_map`), named (`@name`) or written in the rule
/// (`{ ... }`); `None` when a named one is not in the listing.
fn lookup(key: &Value, data: &Value, table: &(String, String), objects: &NftObjects, is_map: bool) -> Option<Lookup> {
    let key = key_parts(key);
    let set = match data {
        Value::String(reference) => objects.set(table, reference)?.clone(),
        Value::Object(o) => {
            let items = o.get("set").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            let kinds: Vec<FieldKind> = key.iter().map(FieldKind::of_key).collect();
            Arc::new(NftSet::from_json(String::new(), items, &kinds, is_map))
        }
        _ => return None,
    };
    Some(Lookup { key, set: SetRef(set) })
}

/// Conditions on what the packet carries beyond its headers: `ct state`, `meta mark`,
/// `fib saddr|daddr type local`, `numgen`. `None` for other matches; the condition comes
/// with whether it is negated.
fn state_condition(left: &Value, right: &Value, op: &str) -> Option<(bool, Condition)> {
    let negated = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => return None,
    };
    let set_items = |value: &'_ Value| -> Vec<Value> {
        match value {
            Value::Array(items) => items.clone(),
            Value::Object(o) => o.get("set").and_then(Value::as_array).cloned().unwrap_or_default(),
            other => vec![other.clone()],
        }
    };
    if left.get("ct").is_some_and(|ct| str_field(ct, "key") == "state" && ct.get("dir").is_none()) {
        let items = set_items(right);
        let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
        return Some((negated, Condition::CtState(CtStates::from_names(names?)?)));
    }
    let is_mark = |expr: &Value| expr.get("meta").is_some_and(|m| str_field(m, "key") == "mark");
    let number = |value: &Value| value.as_u64().and_then(|n| u32::try_from(n).ok());
    if is_mark(left) {
        let values: Option<Vec<MarkMatch>> =
            set_items(right).iter().map(|v| Some(MarkMatch { value: number(v)?, mask: u32::MAX })).collect();
        return Some((negated, Condition::Mark(values?)));
    }
    if let Some([expr, mask]) = left.get("&").and_then(Value::as_array).map(Vec::as_slice) {
        if is_mark(expr) {
            return Some((negated, Condition::Mark(vec![MarkMatch { value: number(right)?, mask: number(mask)? }])));
        }
    }
    if let Some(fib) = left.get("fib") {
        let flags: Vec<&str> = match fib.get("flags") {
            Some(Value::Array(flags)) => flags.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(flag)) => vec![flag.as_str()],
            _ => Vec::new(),
        };
        let side = match (str_field(fib, "result"), flags.as_slice(), right.as_str()) {
            ("type", ["saddr"], Some("local")) => Side::Src,
            ("type", ["daddr"], Some("local")) => Side::Dst,
            _ => return None,
        };
        return Some((negated, Condition::LocalAddr(side)));
    }
    if left.get("numgen").is_some() {
        return Some((
            false,
            Condition::Random(format!("{} {op} {}", render_expr(left, None), render_expr(right, None))),
        ));
    }
    None
}

fn comparison_range(op: &str, bound: u64) -> Option<PortRange> {
    let bound = u16::try_from(bound).ok()?;
    match op {
        "<" => Some(PortRange { first: 0, last: bound.checked_sub(1)? }),
        "<=" => Some(PortRange { first: 0, last: bound }),
        ">" => Some(PortRange { first: bound.checked_add(1)?, last: u16::MAX }),
        ">=" => Some(PortRange { first: bound, last: u16::MAX }),
        _ => None,
    }
}

/// A condition from nft values; `None` when any value is not understood (the whole match
/// then counts as unparsed rather than half-checked).
fn nft_condition(field: NftField, values: &[Value]) -> Option<Condition> {
    // Elements of sets with per-element statements come as {"elem": {"val": ...}}.
    let values: Vec<&Value> = values.iter().map(|v| v.get("elem").and_then(|e| e.get("val")).unwrap_or(v)).collect();
    match field {
        NftField::Family => match values.as_slice() {
            [Value::String(f)] if f == "ipv4" => Some(Condition::Family(Family::Ipv4)),
            [Value::String(f)] if f == "ipv6" => Some(Condition::Family(Family::Ipv6)),
            _ => None,
        },
        NftField::Proto => values
            .iter()
            .map(|v| match v {
                Value::String(name) => protocol_number(name).flatten(),
                Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .map(Condition::Proto),
        NftField::Src | NftField::Dst => {
            let ranges = values.iter().map(|v| nft_addr_range(v)).collect::<Option<Vec<_>>>()?;
            let condition = if matches!(field, NftField::Src) { Condition::Src } else { Condition::Dst };
            Some(condition(ranges))
        }
        NftField::Sport | NftField::Dport => {
            let ranges = values.iter().map(|v| nft_port_range(v)).collect::<Option<Vec<_>>>()?;
            let condition = if matches!(field, NftField::Sport) { Condition::Sport } else { Condition::Dport };
            Some(condition(ranges))
        }
        NftField::InIface | NftField::OutIface => {
            let names = values.iter().map(|v| v.as_str().map(nft_iface)).collect::<Option<Vec<_>>>()?;
            let condition = if matches!(field, NftField::InIface) { Condition::InIface } else { Condition::OutIface };
            Some(condition(names))
        }
    }
}

fn nft_addr_range(value: &Value) -> Option<AddrRange> {
    match value {
        Value::String(addr) => Some(AddrRange::single(addr.parse().ok()?)),
        Value::Object(o) => {
            if let Some(prefix) = o.get("prefix") {
                let addr = str_field(prefix, "addr").parse().ok()?;
                let len = u8::try_from(u64_field(prefix, "len")?).ok()?;
                AddrRange::cidr(addr, len)
            } else if let Some(range) = o.get("range").and_then(Value::as_array) {
                Some(AddrRange {
                    first: range.first()?.as_str()?.parse().ok()?,
                    last: range.get(1)?.as_str()?.parse().ok()?,
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

fn nft_port_range(value: &Value) -> Option<PortRange> {
    let port = |v: &Value| -> Option<u16> {
        match v {
            Value::Number(n) => u16::try_from(n.as_u64()?).ok(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    match value {
        Value::Object(o) => {
            let range = o.get("range")?.as_array()?;
            Some(PortRange { first: port(range.first()?)?, last: port(range.get(1)?)? })
        }
        other => {
            let p = port(other)?;
            Some(PortRange { first: p, last: p })
        }
    }
}

/// nft's `"eth*"` is a prefix; `\*` is a literal star.
fn nft_iface(name: &str) -> IfacePattern {
    match name.strip_suffix('*') {
        Some(prefix) if !prefix.ends_with('\\') => IfacePattern { name: prefix.to_string(), prefix: true },
        _ => IfacePattern { name: name.replace("\\*", "*"), prefix: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::fixtures::{chain, chain_names, cidr, iface, ports, reject_with, test, NATIVE_JSON};

    #[test]
    fn nft_native_ruleset() {
        let chains = parse_nft_json(NATIVE_JSON).expect("parse");
        // inet chains once per family; bridge, netdev and arp tables left out.
        let names = chain_names(&chains);
        assert_eq!(
            names,
            [
                "Ipv4 inet fw myfwd",
                "Ipv6 inet fw myfwd",
                "Ipv4 inet fw sub",
                "Ipv6 inet fw sub",
                "Ipv4 inet fw ing",
                "Ipv6 inet fw ing",
                "Ipv4 ip natty pre",
                "Ipv4 ip natty post",
                "Ipv6 ip6 six inp",
            ]
        );
        assert!(chains.iter().all(|c| c.backend == Backend::Nftables && c.policy_packets.is_none()));

        let forward = chain(&chains, Family::Ipv4, "inet fw", "myfwd");
        assert_eq!((forward.hook, &forward.policy), (Some(Hook::Forward), &Some(Verdict::Drop)));
        assert_eq!(chain(&chains, Family::Ipv4, "inet fw", "ing").hook, None);
        assert_eq!(chain(&chains, Family::Ipv4, "inet fw", "sub").policy, None);
        let rule = |handle: u64| forward.rules.iter().find(|r| r.handle == Some(handle)).expect("rule");

        let dns = rule(8);
        assert_eq!(dns.position, 3);
        assert_eq!(dns.verdict, reject_with("icmp host-prohibited"));
        assert_eq!((dns.packets, dns.bytes), (Some(0), Some(0)));
        assert_eq!(
            dns.matches.tests,
            [
                test(false, Condition::Family(Family::Ipv4)),
                test(false, Condition::InIface(vec![iface("veth", true)])),
                test(true, Condition::OutIface(vec![iface("eth0", false)])),
                test(false, Condition::Proto(vec![17])),
                test(false, Condition::Dport(vec![ports(53, 53)])),
            ]
        );
        // A named set is looked up; a named counter is read from its object.
        let blocked = rule(9);
        let Condition::Lookup(lookup) = &blocked.matches.tests[1].condition else {
            panic!("not a lookup: {:?}", blocked.matches.tests)
        };
        assert_eq!(lookup.key, [KeyPart::Src]);
        assert_eq!(lookup.set.0.name, "@blocked");
        let texts: Vec<&str> = lookup.set.0.elements.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["10.1.0.0/16", "10.9.9.9"]);
        assert_eq!(blocked.packets, Some(0));
        assert_eq!(rule(11).verdict, reject_with("tcp reset"));
        assert_eq!(
            rule(11).matches.tests[3],
            test(false, Condition::Dport(vec![ports(80, 80), ports(443, 443), ports(8000, 8080)]))
        );
        // A bare `reject` in an inet table answers with icmpx port-unreachable.
        assert_eq!(rule(12).verdict, reject_with("icmpx port-unreachable"));
        assert_eq!(rule(12).packets, None);
        assert_eq!(rule(14).verdict, reject_with("icmpv6 addr-unreachable"));
        assert_eq!(rule(15).matches.tests, [test(false, Condition::Dport(vec![ports(99, 99)]))]);
        assert!(rule(16).matches.unparsed.contains(&"limit rate 5/second".to_string()));
        assert_eq!(
            rule(17).matches.tests,
            [test(false, Condition::Mark(vec![MarkMatch { value: 16, mask: u32::MAX }]))]
        );
        assert_eq!(
            rule(18).matches.tests,
            [test(false, Condition::Mark(vec![MarkMatch { value: 0x100, mask: 0xff00 }]))]
        );
        assert_eq!(rule(20).map_verdicts, [Verdict::Drop, Verdict::Accept]);
        assert_eq!(rule(20).vmap.as_ref().map(|v| v.key.clone()), Some(vec![KeyPart::Dst]));
        assert!(rule(20).matches.unparsed.is_empty(), "the walk looks the map up");
        assert_eq!(rule(25).matches.tests, [test(false, Condition::LocalAddr(Side::Dst))]);
        assert_eq!(rule(21).matches.tests, [test(false, Condition::InIface(vec![iface("lo", false)]))]);
        assert_eq!(rule(22).verdict, Verdict::Jump("sub".to_string()));
        assert_eq!(rule(22).matches.tests[1], test(true, Condition::Src(vec![cidr("10.0.0.0/8")])));
        assert_eq!(rule(23).verdict, Verdict::Goto("sub".to_string()));
        assert_eq!(
            rule(28).matches.tests,
            [test(false, Condition::Proto(vec![6, 17])), test(false, Condition::Dport(vec![ports(5353, 5353)]))]
        );
        assert_eq!(rule(30).matches.tests[1], test(true, Condition::Dport(vec![ports(1, 1), ports(2, 2)])));

        let pre = chain(&chains, Family::Ipv4, "ip natty", "pre");
        assert_eq!(pre.rules[0].verdict, Verdict::Other("dnat to 10.244.0.7:53".to_string()));
        let six = chain(&chains, Family::Ipv6, "ip6 six", "inp");
        assert_eq!(six.rules[1].verdict, reject_with("icmpv6 admin-prohibited"));
        assert_eq!(six.rules[2].verdict, reject_with("icmpv6 port-unreachable"));
    }

    /// A field of another type than nft's schema says (a future nft's, a bridge table's) leaves
    /// that field unknown; the rest of the listing is read.
    #[test]
    fn an_odd_field_does_not_cost_the_listing() {
        let json = r#"{"nftables": [
            {"table": {"family": "bridge", "name": {"odd": 1}}},
            {"chain": {"family": {"odd": 1}, "table": "x", "name": "y"}},
            {"set": {"family": "ip", "table": "t", "name": "s", "type": "ipv4_addr", "elem": "not a list"}},
            {"counter": {"family": "ip", "table": "t", "name": "n", "packets": "many", "bytes": -1}},
            {"chain": {"family": "ip", "table": "t", "name": "c", "hook": "forward", "policy": ["drop"]}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": "seven", "comment": 5,
                      "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
                               {"drop": null}]}}]}"#;
        let chains = parse_nft_json(json).expect("read despite the odd fields");
        let [chain] = &chains[..] else { panic!("the ip chain only: {}", chains.len()) };
        assert_eq!((chain.hook, chain.policy.as_ref()), (Some(Hook::Forward), None));
        assert_eq!((chain.rules[0].handle, chain.rules[0].comment.as_ref()), (None, None));
        assert_eq!(chain.rules[0].verdict, Verdict::Drop);
    }

    #[test]
    fn tool_output_never_panics() {
        for bad in ["", "{", "[]", "{\"nftables\": 3}", "{\"x\": []}"] {
            assert!(parse_nft_json(bad).is_err(), "{bad}");
        }
        let odd = r#"{"nftables": [1, "x", {}, {"rule": {}}, {"chain": {"family": "ip"}},
            {"rule": {"family": "ip", "table": "", "chain": "", "expr": [1, {"match": 2}, {"match": {"left": 3}},
            {"counter": "nope"}, {"reject": 7}, {"vmap": {"data": "@missing"}}, {"jump": null},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [1]}}},
            {"match": {"op": "<", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 0}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "1.2.3.4", "len": 99}}}}]}}]}"#;
        let chains = parse_nft_json(odd).expect("odd but valid JSON");
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].rules.len(), 1);

        // Sets and maps with elements that do not fit their type, lookups of every shape.
        let sets = r#"{"nftables": [
            {"set": {"family": "ip", "table": "t", "name": "s", "type": ["ipv4_addr", "inet_service"],
             "elem": [{"concat": [1]}, {"prefix": {"addr": "1.2.3.4", "len": 99}}, {"range": [5]}, {"elem": 3},
                      {"concat": [{"prefix": {"addr": "x", "len": 8}}, {"range": [9, 1]}]}]}},
            {"map": {"family": "ip", "table": "t", "name": "m", "type": 7, "map": "verdict",
             "elem": [[1], [{"elem": {"val": null}}, {"goto": 3}], "x", [[], {"jump": {"target": ""}}]]}},
            {"chain": {"family": "ip", "table": "t", "name": "c", "hook": "forward", "policy": "drop"}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [
              {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, 5]}, "right": "@s"}},
              {"match": {"op": "!=", "left": {"concat": []}, "right": {"concat": [1, "a"]}}},
              {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["new", "bogus"]}},
              {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, "x"]}, "right": 1}},
              {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": 5}}, "right": "local"}},
              {"match": {"op": "==", "left": {"numgen": {"mod": -1}}, "right": 0}},
              {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [1]}}},
              {"dnat": {"addr": {"map": {"key": {"numgen": {"mod": 0}}, "data": "@m"}}}},
              {"vmap": {"key": {"ct": {"key": "state"}}, "data": "@m"}},
              {"vmap": {"key": {"numgen": {"mode": "random", "mod": 4294967295, "offset": 4294967295}}, "data": {"set": [[0, {"drop": null}]]}}}]}}]}"#;
        let chains = parse_nft_json(sets).expect("odd but valid JSON");
        let snapshot = super::super::model::Snapshot { chains, errors: Vec::new() };
        let ruleset = super::super::eval::Ruleset::new(&snapshot);
        let packet = super::super::eval::Packet {
            family: Family::Ipv4,
            proto: crate::model::packet::L4Proto::Udp,
            src: None,
            dst: Some("1.2.3.4".parse().expect("addr")),
            sport: None,
            dport: Some(5),
            in_iface: None,
            out_iface: None,
        };
        let _ = ruleset.walk(Hook::Forward, &packet);
    }
}
