//! A small reader for BTF, the kernel's own description of its types
//! (`/sys/kernel/btf/vmlinux` and, for modules, split BTF beside it).
//!
//! Only what tracer needs: named struct/union lookup, member offsets along a
//! dotted path, type sizes and enum values. Every read is bounds-checked because
//! the input comes from outside the program; malformed data yields an error.
//!
//! Format reference: the kernel's Documentation/bpf/btf.rst.

use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// `struct btf_header` up to `str_len`; later kernels may append fields.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;
/// Real kernels nest typedef chains and anonymous members a handful deep; a
/// limit turns a reference cycle in malformed input into an error, not a hang.
const MAX_DEPTH: usize = 64;

mod kind {
    pub(crate) const INT: u32 = 1;
    pub(crate) const PTR: u32 = 2;
    pub(crate) const ARRAY: u32 = 3;
    pub(crate) const STRUCT: u32 = 4;
    pub(crate) const UNION: u32 = 5;
    pub(crate) const ENUM: u32 = 6;
    pub(crate) const FWD: u32 = 7;
    pub(crate) const TYPEDEF: u32 = 8;
    pub(crate) const VOLATILE: u32 = 9;
    pub(crate) const CONST: u32 = 10;
    pub(crate) const RESTRICT: u32 = 11;
    pub(crate) const FUNC: u32 = 12;
    pub(crate) const FUNC_PROTO: u32 = 13;
    pub(crate) const VAR: u32 = 14;
    pub(crate) const DATASEC: u32 = 15;
    pub(crate) const FLOAT: u32 = 16;
    pub(crate) const DECL_TAG: u32 = 17;
    pub(crate) const TYPE_TAG: u32 = 18;
    pub(crate) const ENUM64: u32 = 19;
}

fn kind_name(k: u32) -> &'static str {
    match k {
        0 => "void",
        kind::INT => "int",
        kind::PTR => "pointer",
        kind::ARRAY => "array",
        kind::STRUCT => "struct",
        kind::UNION => "union",
        kind::ENUM => "enum",
        kind::FWD => "forward declaration",
        kind::TYPEDEF => "typedef",
        kind::VOLATILE => "volatile",
        kind::CONST => "const",
        kind::RESTRICT => "restrict",
        kind::FUNC => "function",
        kind::FUNC_PROTO => "function prototype",
        kind::VAR => "variable",
        kind::DATASEC => "data section",
        kind::FLOAT => "float",
        kind::DECL_TAG => "declaration tag",
        kind::TYPE_TAG => "type tag",
        kind::ENUM64 => "enum64",
        _ => "unknown kind",
    }
}

/// Bytes of kind-specific data after a `struct btf_type`; `None` for kinds this
/// reader does not know, since their length (and so every later type id) is unknowable.
fn trailing_len(k: u32, vlen: usize) -> Option<usize> {
    Some(match k {
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
        _ => return None,
    })
}

/// Kinds that can be looked up by name; functions, variables and tags never are,
/// and leaving them out keeps the index small (vmlinux has ~56k FUNCs).
fn indexed_kind(k: u32) -> bool {
    matches!(
        k,
        kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FWD | kind::TYPEDEF | kind::FLOAT
    )
}

fn is_composite(k: u32) -> bool {
    k == kind::STRUCT || k == kind::UNION
}

fn is_enum(k: u32) -> bool {
    k == kind::ENUM || k == kind::ENUM64
}

/// A member found at a path: where it starts and how big it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// From the start of the outer struct, in bits.
    pub offset_bits: u32,
    /// Width of a bitfield; 0 when the member is not a bitfield.
    pub bitfield_bits: u32,
    /// Size of the member's type with typedefs and qualifiers resolved (for a
    /// bitfield, of its underlying integer type).
    pub size_bytes: u32,
}

impl Member {
    pub(crate) fn is_bitfield(&self) -> bool {
        self.bitfield_bits != 0
    }

    /// The offset in bytes, if the member starts on a byte boundary.
    pub(crate) fn byte_offset(&self) -> Option<u32> {
        self.offset_bits.is_multiple_of(8).then_some(self.offset_bits / 8)
    }
}

#[derive(Clone, Copy, Debug)]
struct RawType {
    name_off: u32,
    info: u32,
    /// `size` for sized kinds, `type` for references; BTF shares the field.
    size_or_type: u32,
    /// Absolute position in the layer's data of the kind-specific bytes.
    extra: usize,
}

impl RawType {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// One BTF blob: vmlinux, or a module's split BTF stacked on top of it.
struct Layer {
    big_endian: bool,
    data: Vec<u8>,
    strs: Range<usize>,
    /// Type id of `types[0]` (1 for a base: id 0 is void and not stored).
    start_id: u32,
    /// String offset where this blob's string section begins (0 for a base).
    start_str: u32,
    types: Vec<RawType>,
    by_name: HashMap<String, Vec<u32>>,
}

impl Layer {
    fn u32_at(&self, pos: usize) -> Result<u32> {
        read_u32(&self.data, pos, self.big_endian).ok_or_else(|| anyhow!("BTF data truncated at byte {pos}"))
    }

    fn next_id(&self) -> Option<u32> {
        u32::try_from(self.types.len()).ok()?.checked_add(self.start_id)
    }

    fn next_str(&self) -> Option<u32> {
        u32::try_from(self.strs.len()).ok()?.checked_add(self.start_str)
    }

    fn local_str(&self, off: u32) -> Option<Result<&str>> {
        let rel = off.checked_sub(self.start_str)? as usize;
        let section = self.data.get(self.strs.clone()).unwrap_or_default();
        Some(c_str(section, rel).ok_or_else(|| {
            anyhow!("BTF string offset {off} is outside the string section or not NUL-terminated UTF-8")
        }))
    }
}

fn read_u32(data: &[u8], pos: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
}

fn c_str(section: &[u8], rel: usize) -> Option<&str> {
    let tail = section.get(rel..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&tail[..end]).ok()
}

/// Offset `off` in a stack of string sections: each layer owns the offsets from
/// its `start_str` up, lower offsets belong to the layers beneath.
fn str_in_layers(layers: &[Arc<Layer>], off: u32) -> Result<&str> {
    if off == 0 {
        // Offset 0 is the empty name in every BTF (the base section starts with NUL).
        return Ok("");
    }
    for layer in layers.iter().rev() {
        if let Some(s) = layer.local_str(off) {
            return s;
        }
    }
    bail!("BTF string offset {off} is out of range")
}

/// Parsed BTF: a base (vmlinux) or a split BTF together with its base.
/// Cloning is cheap: the blobs are shared.
#[derive(Clone)]
pub(crate) struct Btf {
    /// Base first; type ids and string offsets of each layer follow the one below.
    layers: Vec<Arc<Layer>>,
    ptr_size: u32,
}

struct RawMember {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

struct Found {
    offset_bits: u64,
    bitfield_bits: u32,
    type_id: u32,
}

struct Segment<'a> {
    name: &'a str,
    indices: Vec<u64>,
}

impl Btf {
    /// Parses a base BTF blob such as `/sys/kernel/btf/vmlinux`.
    pub(crate) fn parse(data: &[u8]) -> Result<Btf> {
        Btf::parse_owned(data.to_vec())
    }

    /// Parses a module's split BTF, whose type ids and string offsets continue
    /// after those of `base` and whose types may refer to the base's.
    pub(crate) fn parse_split(data: &[u8], base: &Btf) -> Result<Btf> {
        Btf::parse_split_owned(data.to_vec(), base)
    }

    #[cfg(test)]
    pub(crate) fn load(path: &Path) -> Result<Btf> {
        Btf::parse_owned(read_file(path)?).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    pub(crate) fn load_split(path: &Path, base: &Btf) -> Result<Btf> {
        Btf::parse_split_owned(read_file(path)?, base).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    fn parse_owned(data: Vec<u8>) -> Result<Btf> {
        let layer = parse_layer(data, &[], 1, 0)?;
        let mut btf = Btf { layers: vec![Arc::new(layer)], ptr_size: 8 };
        btf.ptr_size = btf.guess_ptr_size();
        Ok(btf)
    }

    fn parse_split_owned(data: Vec<u8>, base: &Btf) -> Result<Btf> {
        let top = base.layers.last().ok_or_else(|| anyhow!("base BTF has no data"))?;
        let start_id = top.next_id().ok_or_else(|| anyhow!("base BTF has too many types to stack split BTF on"))?;
        let start_str = top.next_str().ok_or_else(|| anyhow!("base BTF strings too large to stack split BTF on"))?;
        let layer = parse_layer(data, &base.layers, start_id, start_str)?;
        if layer.big_endian != top.big_endian {
            bail!("split BTF and its base BTF differ in byte order");
        }
        let mut layers = base.layers.clone();
        layers.push(Arc::new(layer));
        Ok(Btf { layers, ptr_size: base.ptr_size })
    }

    pub(crate) fn is_big_endian(&self) -> bool {
        self.layers.first().is_some_and(|l| l.big_endian)
    }

    /// Number of type ids in use, including void (id 0).
    pub(crate) fn type_count(&self) -> u32 {
        self.layers.last().and_then(|l| l.next_id()).unwrap_or(1)
    }

    /// Whether a complete (not merely forward-declared) struct or union, or a
    /// typedef of one, has this name.
    pub(crate) fn has_struct(&self, name: &str) -> bool {
        !self.composites_named(name).is_empty()
    }

    /// Whether some complete named type (struct, union, enum, typedef, int,
    /// float) has this name.
    pub(crate) fn has_type(&self, name: &str) -> bool {
        self.ids_named(name)
            .any(|id| self.get(id).is_ok_and(|t| t.kind() != kind::FWD && !(is_enum(t.kind()) && t.vlen() == 0)))
    }

    /// Whether an enum (or enum64) with at least one variant has this name.
    pub(crate) fn has_enum(&self, name: &str) -> bool {
        self.enum_named(name).is_some()
    }

    /// The member at `path` (e.g. `"nd_net.net"`, `"tuplehash[1].tuple"`) inside
    /// the struct or union `type_name`, looking through anonymous members.
    pub(crate) fn member(&self, type_name: &str, path: &str) -> Result<Member> {
        let segments = parse_path(path).map_err(|e| anyhow!("bad member path {type_name}.{path}: {e}"))?;
        let candidates = self.composites_named(type_name);
        let Some(&first) = candidates.first() else {
            return Err(self.missing(type_name));
        };
        // vmlinux holds a few names with several unrelated definitions (static
        // structs in different files), so every definition is asked and they must agree.
        let mut found: Option<Member> = None;
        let mut first_err = None;
        for id in candidates {
            match self.member_in(id, &segments) {
                Ok(m) => match found {
                    Some(prev) if prev != m => {
                        bail!("{type_name} has several definitions in BTF that disagree about {path}")
                    }
                    _ => found = Some(m),
                },
                Err(e) => {
                    if id == first {
                        first_err = Some(e);
                    }
                }
            }
        }
        match (found, first_err) {
            (Some(m), _) => Ok(m),
            (None, Some(e)) => Err(anyhow!("{type_name}.{path}: {e:#}")),
            (None, None) => bail!("{type_name}.{path}: not found"),
        }
    }

    /// Size in bytes of the struct, union, typedef (or other named type) `type_name`.
    pub(crate) fn type_size(&self, type_name: &str) -> Result<u32> {
        let composites = self.composites_named(type_name);
        let ids: Vec<u32> = if composites.is_empty() {
            self.ids_named(type_name).filter(|&id| self.get(id).is_ok_and(|t| t.kind() != kind::FWD)).collect()
        } else {
            composites
        };
        if ids.is_empty() {
            return Err(self.missing(type_name));
        }
        let mut size = None;
        for id in ids {
            let s = self.size_of(id).map_err(|e| anyhow!("size of {type_name}: {e:#}"))?;
            match size {
                Some(prev) if prev != s => {
                    bail!("{type_name} has several definitions in BTF with different sizes")
                }
                _ => size = Some(s),
            }
        }
        size.ok_or_else(|| self.missing(type_name))
    }

    /// Value of `variant` in the enum (or enum64) `enum_name`. Unsigned enum64
    /// values above `i64::MAX` come back as the same 64 bits read as signed.
    pub(crate) fn enum_value(&self, enum_name: &str, variant: &str) -> Result<i64> {
        for (name, value) in self.enum_variants(enum_name)? {
            if name == variant {
                return Ok(value);
            }
        }
        bail!("enum {enum_name} has no variant {variant}")
    }

    pub(crate) fn enum_variants(&self, enum_name: &str) -> Result<Vec<(String, i64)>> {
        let id = self.enum_named(enum_name).ok_or_else(|| {
            if self.ids_named(enum_name).next().is_some() {
                anyhow!("{enum_name} in BTF is not an enum with variants")
            } else {
                anyhow!("no enum named {enum_name} in BTF")
            }
        })?;
        let (layer, t) = self.layer_and_type(id)?;
        let signed = t.kind_flag();
        let mut out = Vec::with_capacity(t.vlen());
        for i in 0..t.vlen() {
            let (name_off, value) = if t.kind() == kind::ENUM64 {
                let pos = t.extra + i * 12;
                let lo = u64::from(layer.u32_at(pos + 4)?);
                let hi = u64::from(layer.u32_at(pos + 8)?);
                // Unsigned and signed share the bit pattern at 64 bits.
                (layer.u32_at(pos)?, ((hi << 32) | lo) as i64)
            } else {
                let pos = t.extra + i * 8;
                let raw = layer.u32_at(pos + 4)?;
                let value = if signed { i64::from(raw as i32) } else { i64::from(raw) };
                (layer.u32_at(pos)?, value)
            };
            out.push((self.str_at(name_off)?.to_string(), value));
        }
        Ok(out)
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        let declared = self.ids_named(name).any(|id| self.get(id).is_ok_and(|t| t.kind() == kind::FWD));
        if declared {
            anyhow!("{name} is only forward-declared in BTF (no definition)")
        } else {
            anyhow!("no type named {name} in BTF")
        }
    }

    fn member_in(&self, id: u32, segments: &[Segment<'_>]) -> Result<Member> {
        let mut cur = id;
        let mut offset: u64 = 0;
        let mut bitfield = 0;
        let mut walked = String::new();
        for seg in segments {
            if bitfield != 0 {
                bail!("{walked} is a bitfield and has no members");
            }
            let (cid, ct) = self.resolve(cur)?;
            if !is_composite(ct.kind()) {
                bail!("{walked} is a {}, not a struct or union", kind_name(ct.kind()));
            }
            let hit = self.find_member(cid, seg.name, 0)?.ok_or_else(|| {
                if walked.is_empty() {
                    anyhow!("no member {}", seg.name)
                } else {
                    anyhow!("{walked} has no member {}", seg.name)
                }
            })?;
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(seg.name);
            offset += hit.offset_bits;
            bitfield = hit.bitfield_bits;
            cur = hit.type_id;
            for &index in &seg.indices {
                if bitfield != 0 {
                    bail!("{walked} is a bitfield, not an array");
                }
                let (_, at) = self.resolve(cur)?;
                if at.kind() != kind::ARRAY {
                    bail!("{walked} is a {}, not an array", kind_name(at.kind()));
                }
                let (elem, nelems) = self.array_info(cur)?;
                if index >= u64::from(nelems) {
                    bail!("index {index} is out of bounds: {walked} has {nelems} elements");
                }
                let elem_size = u64::from(self.size_of(elem)?);
                offset += index * elem_size * 8;
                walked.push_str(&format!("[{index}]"));
                cur = elem;
            }
        }
        let offset_bits = u32::try_from(offset).map_err(|_| anyhow!("offset of {walked} does not fit in 32 bits"))?;
        Ok(Member { offset_bits, bitfield_bits: bitfield, size_bytes: self.size_of(cur)? })
    }

    /// Depth-first in declaration order, so a name inside an anonymous member is
    /// found where C would find it.
    fn find_member(&self, composite: u32, name: &str, depth: usize) -> Result<Option<Found>> {
        if depth > MAX_DEPTH {
            bail!("anonymous members nested deeper than {MAX_DEPTH} (a cycle in BTF?)");
        }
        let (_, t) = self.layer_and_type(composite)?;
        let kind_flag = t.kind_flag();
        for m in self.members(composite)? {
            let (offset_bits, bitfield_bits) =
                if kind_flag { (m.offset & 0x00ff_ffff, m.offset >> 24) } else { (m.offset, 0) };
            let member_name = self.str_at(m.name_off)?;
            if member_name == name {
                let (extra_offset, bitfield_bits) =
                    if kind_flag { (0, bitfield_bits) } else { self.int_bitfield(m.type_id)? };
                return Ok(Some(Found {
                    offset_bits: u64::from(offset_bits) + u64::from(extra_offset),
                    bitfield_bits,
                    type_id: m.type_id,
                }));
            }
            if member_name.is_empty() {
                let (inner, it) = self.resolve(m.type_id)?;
                if is_composite(it.kind()) {
                    if let Some(mut hit) = self.find_member(inner, name, depth + 1)? {
                        hit.offset_bits += u64::from(offset_bits);
                        return Ok(Some(hit));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Without `kind_flag`, BTF marks a bitfield by pointing the member at an int
    /// type whose encoding has a bit offset or fewer bits than its size.
    fn int_bitfield(&self, type_id: u32) -> Result<(u32, u32)> {
        let (id, t) = self.resolve(type_id)?;
        if t.kind() != kind::INT {
            return Ok((0, 0));
        }
        let (layer, _) = self.layer_and_type(id)?;
        let encoding = layer.u32_at(t.extra)?;
        let bits = encoding & 0xff;
        let offset = (encoding >> 16) & 0xff;
        if offset != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8 {
            Ok((offset, bits))
        } else {
            Ok((0, 0))
        }
    }

    fn members(&self, id: u32) -> Result<Vec<RawMember>> {
        let (layer, t) = self.layer_and_type(id)?;
        (0..t.vlen())
            .map(|i| {
                let pos = t.extra + i * 12;
                Ok(RawMember {
                    name_off: layer.u32_at(pos)?,
                    type_id: layer.u32_at(pos + 4)?,
                    offset: layer.u32_at(pos + 8)?,
                })
            })
            .collect()
    }

    fn array_info(&self, id: u32) -> Result<(u32, u32)> {
        let (rid, _) = self.resolve(id)?;
        let (layer, t) = self.layer_and_type(rid)?;
        Ok((layer.u32_at(t.extra)?, layer.u32_at(t.extra + 8)?))
    }

    /// Follows typedefs and qualifiers to the type that gives the layout.
    fn resolve(&self, mut id: u32) -> Result<(u32, RawType)> {
        for _ in 0..MAX_DEPTH {
            let t = self.get(id)?;
            match t.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok((id, t)),
            }
        }
        bail!("typedef/qualifier chain longer than {MAX_DEPTH} at type id {id} (a cycle in BTF?)")
    }

    fn size_of(&self, id: u32) -> Result<u32> {
        self.size_of_depth(id, 0)
    }

    fn size_of_depth(&self, id: u32, depth: usize) -> Result<u32> {
        if depth > MAX_DEPTH {
            bail!("arrays nested deeper than {MAX_DEPTH} (a cycle in BTF?)");
        }
        let (rid, t) = self.resolve(id)?;
        match t.kind() {
            kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT | kind::DATASEC => {
                Ok(t.size_or_type)
            }
            kind::PTR => Ok(self.ptr_size),
            kind::ARRAY => {
                let (elem, nelems) = self.array_info(rid)?;
                let elem_size = self.size_of_depth(elem, depth + 1)?;
                elem_size.checked_mul(nelems).ok_or_else(|| anyhow!("array type id {rid} is larger than 4 GiB"))
            }
            k => bail!("type id {rid} is a {} and has no size", kind_name(k)),
        }
    }

    fn layer_and_type(&self, id: u32) -> Result<(&Layer, RawType)> {
        if id == 0 {
            bail!("type id 0 is void");
        }
        for layer in self.layers.iter().rev() {
            if id >= layer.start_id {
                let index = (id - layer.start_id) as usize;
                return match layer.types.get(index) {
                    Some(t) => Ok((layer, *t)),
                    None => Err(anyhow!("type id {id} is out of range (BTF has {} types)", self.type_count())),
                };
            }
        }
        bail!("type id {id} is out of range")
    }

    fn get(&self, id: u32) -> Result<RawType> {
        if id == 0 {
            // Void is a real target of typedefs and pointers; give it kind 0.
            return Ok(RawType { name_off: 0, info: 0, size_or_type: 0, extra: 0 });
        }
        self.layer_and_type(id).map(|(_, t)| t)
    }

    fn str_at(&self, off: u32) -> Result<&str> {
        str_in_layers(&self.layers, off)
    }

    fn ids_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.layers.iter().filter_map(move |l| l.by_name.get(name)).flatten().copied()
    }

    /// Complete structs/unions with this name, or else typedefs that resolve to one.
    fn composites_named(&self, name: &str) -> Vec<u32> {
        let direct: Vec<u32> =
            self.ids_named(name).filter(|&id| self.get(id).is_ok_and(|t| is_composite(t.kind()))).collect();
        if !direct.is_empty() {
            return direct;
        }
        self.ids_named(name)
            .filter(|&id| {
                self.get(id).is_ok_and(|t| t.kind() == kind::TYPEDEF)
                    && self.resolve(id).is_ok_and(|(_, t)| is_composite(t.kind()))
            })
            .collect()
    }

    /// Enums declared but not defined appear as an ENUM with no variants.
    fn enum_named(&self, name: &str) -> Option<u32> {
        self.ids_named(name).find(|&id| self.get(id).is_ok_and(|t| is_enum(t.kind()) && t.vlen() > 0))
    }

    /// BTF does not record the pointer size; like libbpf, take it from `long`.
    fn guess_ptr_size(&self) -> u32 {
        for name in ["long int", "long unsigned int", "long", "unsigned long"] {
            for id in self.ids_named(name) {
                if let Ok(t) = self.get(id) {
                    if t.kind() == kind::INT && (t.size_or_type == 4 || t.size_or_type == 8) {
                        return t.size_or_type;
                    }
                }
            }
        }
        8
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read BTF {}: {e}", path.display()))
}

fn parse_layer(owned: Vec<u8>, below: &[Arc<Layer>], start_id: u32, start_str: u32) -> Result<Layer> {
    let data = owned.as_slice();
    let magic = data.get(0..2).ok_or_else(|| anyhow!("BTF data is too short for a header ({} bytes)", data.len()))?;
    let big_endian = match [magic[0], magic[1]] {
        m if u16::from_le_bytes(m) == MAGIC => false,
        m if u16::from_be_bytes(m) == MAGIC => true,
        m => bail!("not BTF data: bad magic {:#06x}", u16::from_le_bytes(m)),
    };
    let field = |pos: usize| {
        read_u32(data, pos, big_endian)
            .ok_or_else(|| anyhow!("BTF data is too short for a header ({} bytes)", data.len()))
    };
    let version = *data.get(2).ok_or_else(|| anyhow!("BTF data is too short for a header"))?;
    if version != VERSION {
        bail!("unsupported BTF version {version} (expected {VERSION})");
    }
    let hdr_len = field(4)? as usize;
    let type_off = field(8)? as usize;
    let type_len = field(12)? as usize;
    let str_off = field(16)? as usize;
    let str_len = field(20)? as usize;
    if hdr_len < HEADER_LEN {
        bail!("BTF header length {hdr_len} is shorter than {HEADER_LEN}");
    }
    if hdr_len > data.len() {
        bail!("BTF header length {hdr_len} exceeds the data ({} bytes)", data.len());
    }
    let section = |name: &str, off: usize, len: usize| -> Result<Range<usize>> {
        let start = hdr_len.checked_add(off);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= data.len() => Ok(s..e),
            _ => bail!("BTF {name} section ({len} bytes at offset {off}) lies outside the data ({} bytes)", data.len()),
        }
    };
    if !type_off.is_multiple_of(4) {
        bail!("BTF type section offset {type_off} is not 4-byte aligned");
    }
    let types_range = section("type", type_off, type_len)?;
    let strs = section("string", str_off, str_len)?;
    let str_bytes = &data[strs.clone()];
    if below.is_empty() && str_bytes.first() != Some(&0) {
        bail!("BTF string section must start with an empty string");
    }
    if str_bytes.last().is_some_and(|&b| b != 0) {
        bail!("BTF string section does not end with NUL");
    }
    if u32::try_from(str_len).ok().and_then(|l| l.checked_add(start_str)).is_none() {
        bail!("BTF string section too large");
    }

    let mut types = Vec::new();
    let mut pos = types_range.start;
    while pos < types_range.end {
        let id = u64::from(start_id) + types.len() as u64;
        let header_end = pos + TYPE_LEN;
        if header_end > types_range.end {
            bail!("BTF type id {id} is truncated");
        }
        let word = |p: usize| read_u32(data, p, big_endian).unwrap_or(0);
        let t = RawType { name_off: word(pos), info: word(pos + 4), size_or_type: word(pos + 8), extra: header_end };
        let extra_len = trailing_len(t.kind(), t.vlen())
            .ok_or_else(|| anyhow!("BTF type id {id} has unknown kind {}", t.kind()))?;
        let end = header_end + extra_len;
        if end > types_range.end {
            bail!("BTF type id {id} ({}) is truncated", kind_name(t.kind()));
        }
        types.push(t);
        pos = end;
    }
    if u32::try_from(types.len()).ok().and_then(|n| n.checked_add(start_id)).is_none() {
        bail!("BTF has too many types");
    }

    let mut layer = Layer { big_endian, data: owned, strs, start_id, start_str, types, by_name: HashMap::new() };
    let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
    for (i, t) in layer.types.iter().enumerate() {
        if t.name_off == 0 || !indexed_kind(t.kind()) {
            continue;
        }
        let id = start_id + i as u32;
        let name = match layer.local_str(t.name_off) {
            Some(s) => s,
            None => str_in_layers(below, t.name_off),
        }
        .map_err(|e| anyhow!("name of BTF type id {id}: {e:#}"))?;
        by_name.entry(name.to_string()).or_default().push(id);
    }
    layer.by_name = by_name;
    Ok(layer)
}

fn parse_path(path: &str) -> std::result::Result<Vec<Segment<'_>>, String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if name.is_empty() {
            return Err("empty member name".into());
        }
        if name.contains(']') {
            return Err(format!("unexpected ']' in {part:?}"));
        }
        let mut indices = Vec::new();
        while !rest.is_empty() {
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or_else(|| format!("malformed index in {part:?}"))?;
            let index: u64 = inner.0.parse().map_err(|_| format!("index {:?} in {part:?} is not a number", inner.0))?;
            indices.push(index);
            rest = inner.1;
        }
        out.push(Segment { name, indices });
    }
    Ok(out)
}

/// Builds BTF blobs for tests, here and in `layout`.
#[cfg(test)]
pub(crate) mod testing {
    use super::kind;

    pub(crate) struct Builder {
        big_endian: bool,
        types: Vec<u8>,
        strings: Vec<u8>,
        /// For split BTF: the base's strings, reused by offset when they match
        /// (as pahole does), and where this blob's offsets start.
        base_strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Builder {
            Builder { big_endian: false, types: Vec::new(), strings: vec![0], base_strings: Vec::new(), next_id: 1 }
        }

        /// Split BTF on top of `base` (which must be complete: no more types added).
        pub(crate) fn split_on(base: &Builder) -> Builder {
            let mut base_strings = base.base_strings.clone();
            base_strings.extend_from_slice(&base.strings);
            Builder {
                big_endian: base.big_endian,
                types: Vec::new(),
                strings: Vec::new(),
                base_strings,
                next_id: base.next_id,
            }
        }

        pub(crate) fn big_endian(mut self) -> Builder {
            self.big_endian = true;
            self
        }

        pub(crate) fn next_id(&self) -> u32 {
            self.next_id
        }

        pub(crate) fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let needle: Vec<u8> = name.bytes().chain([0]).collect();
            if let Some(i) = find_str(&self.base_strings, &needle) {
                return i as u32;
            }
            let base_len = self.base_strings.len();
            if let Some(i) = find_str(&self.strings, &needle) {
                return (base_len + i) as u32;
            }
            let off = base_len + self.strings.len();
            self.strings.extend_from_slice(&needle);
            off as u32
        }

        fn word(&mut self, v: u32) {
            let bytes = if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
            self.types.extend_from_slice(&bytes);
        }

        /// A type with raw header fields and trailing words; returns its id.
        pub(crate) fn raw(
            &mut self,
            k: u32,
            kflag: bool,
            vlen: u32,
            name: &str,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.s(name);
            let info = (u32::from(kflag) << 31) | (k << 24) | vlen;
            self.word(name_off);
            self.word(info);
            self.word(size_or_type);
            for &w in extra {
                self.word(w);
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub(crate) fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
            self.int_enc(name, size, 0, size * 8, signed)
        }

        pub(crate) fn int_enc(&mut self, name: &str, size: u32, bit_off: u32, bits: u32, signed: bool) -> u32 {
            let enc = (u32::from(signed) << 24) | (bit_off << 16) | bits;
            self.raw(kind::INT, false, 0, name, size, &[enc])
        }

        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.raw(kind::PTR, false, 0, "", to, &[])
        }

        pub(crate) fn array(&mut self, elem: u32, index_type: u32, n: u32) -> u32 {
            self.raw(kind::ARRAY, false, 0, "", 0, &[elem, index_type, n])
        }

        /// Members as (name, type, bit offset).
        pub(crate) fn composite(&mut self, k: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let mut extra = Vec::new();
            for &(n, ty, off) in members {
                extra.extend([self.s(n), ty, off]);
            }
            self.raw(k, false, members.len() as u32, name, size, &extra)
        }

        pub(crate) fn struct_(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(kind::STRUCT, name, size, members)
        }

        pub(crate) fn union_(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(kind::UNION, name, size, members)
        }

        /// A kind_flag struct: members as (name, type, bit offset, bitfield bits).
        pub(crate) fn struct_kf(&mut self, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
            let mut extra = Vec::new();
            for &(n, ty, off, bits) in members {
                extra.extend([self.s(n), ty, (bits << 24) | off]);
            }
            self.raw(kind::STRUCT, true, members.len() as u32, name, size, &extra)
        }

        pub(crate) fn enum_(&mut self, name: &str, size: u32, signed: bool, variants: &[(&str, i32)]) -> u32 {
            let mut extra = Vec::new();
            for &(n, v) in variants {
                extra.extend([self.s(n), v as u32]);
            }
            self.raw(kind::ENUM, signed, variants.len() as u32, name, size, &extra)
        }

        pub(crate) fn enum64(&mut self, name: &str, signed: bool, variants: &[(&str, u64)]) -> u32 {
            let mut extra = Vec::new();
            for &(n, v) in variants {
                extra.extend([self.s(n), v as u32, (v >> 32) as u32]);
            }
            self.raw(kind::ENUM64, signed, variants.len() as u32, name, 8, &extra)
        }

        pub(crate) fn fwd(&mut self, name: &str, is_union: bool) -> u32 {
            self.raw(kind::FWD, is_union, 0, name, 0, &[])
        }

        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.raw(kind::TYPEDEF, false, 0, name, to, &[])
        }

        pub(crate) fn modifier(&mut self, k: u32, to: u32) -> u32 {
            self.raw(k, false, 0, "", to, &[])
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            let put = |out: &mut Vec<u8>, v: u32| {
                out.extend_from_slice(&if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() })
            };
            let magic = if self.big_endian { super::MAGIC.to_be_bytes() } else { super::MAGIC.to_le_bytes() };
            out.extend_from_slice(&magic);
            out.push(super::VERSION);
            out.push(0);
            put(&mut out, super::HEADER_LEN as u32);
            put(&mut out, 0);
            put(&mut out, self.types.len() as u32);
            put(&mut out, self.types.len() as u32);
            put(&mut out, self.strings.len() as u32);
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    impl Default for Builder {
        fn default() -> Self {
            Builder::new()
        }
    }

    /// The message of the error `result` holds, which must mention `want`.
    pub(crate) fn error_mentioning<T>(result: anyhow::Result<T>, want: &str) -> String {
        let Err(err) = result else { panic!("expected an error mentioning {want:?}") };
        let err = err.to_string();
        assert!(err.contains(want), "wanted {want:?} in {err:?}");
        err
    }

    /// Position of a NUL-terminated string that starts at a string boundary.
    fn find_str(hay: &[u8], needle: &[u8]) -> Option<usize> {
        (0..hay.len()).find(|&i| (i == 0 || hay[i - 1] == 0) && hay[i..].starts_with(needle))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{error_mentioning, Builder};
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    fn vmlinux() -> Option<Btf> {
        if !Path::new(VMLINUX).exists() {
            crate::note_line!("skipping: {VMLINUX} not present");
            return None;
        }
        Some(Btf::load(Path::new(VMLINUX)).expect("parse vmlinux BTF"))
    }

    fn m(offset_bits: u32, bitfield_bits: u32, size_bytes: u32) -> Member {
        Member { offset_bits, bitfield_bits, size_bytes }
    }

    /// A little struct zoo: `struct outer` holds an anonymous union of an
    /// anonymous struct and a named one, a typedef'd const pointer and an array of structs.
    fn zoo(b: &mut Builder) {
        let u32_t = b.int("unsigned int", 4, false);
        let u16_t = b.int("short unsigned int", 2, false);
        let u8_t = b.int("unsigned char", 1, false);
        let anon_s = b.struct_("", 8, &[("a", u32_t, 0), ("b", u32_t, 32)]);
        let named_s = b.struct_("", 8, &[("a", u32_t, 0), ("c", u32_t, 32)]);
        let anon_u = b.union_("", 8, &[("", anon_s, 0), ("grp", named_s, 0)]);
        let inner = b.struct_("inner", 4, &[("x", u16_t, 0), ("y", u8_t, 16)]);
        let td1 = b.typedef("inner_t", inner);
        let cst = b.modifier(kind::CONST, td1);
        let vol = b.modifier(kind::VOLATILE, cst);
        let td2 = b.typedef("inner_tt", vol);
        let arr = b.array(td2, u32_t, 3);
        let ptr = b.ptr(inner);
        let cptr = b.modifier(kind::CONST, ptr);
        let ptr_td = b.typedef("inner_ptr", cptr);
        let grid_row = b.array(u16_t, u32_t, 4);
        let grid = b.array(grid_row, u32_t, 2);
        b.struct_(
            "outer",
            48,
            &[("", anon_u, 0), ("p", ptr_td, 64), ("arr", arr, 128), ("grid", grid, 224), ("single", td2, 352)],
        );
        b.fwd("outer", false);
    }

    /// The zoo, parsed.
    fn zoo_btf() -> Btf {
        let mut b = Builder::new();
        zoo(&mut b);
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn anonymous_members_and_nested_paths() {
        let btf = zoo_btf();
        assert_eq!(btf.member("outer", "a").unwrap(), m(0, 0, 4));
        assert_eq!(btf.member("outer", "b").unwrap(), m(32, 0, 4));
        assert_eq!(btf.member("outer", "grp.c").unwrap(), m(32, 0, 4));
        assert_eq!(btf.member("outer", "grp").unwrap(), m(0, 0, 8));
        // `c` only lives in the named struct, which is not searched implicitly.
        assert!(btf.member("outer", "c").is_err());
        assert_eq!(btf.member("outer", "p").unwrap(), m(64, 0, 8));
        assert_eq!(btf.member("outer", "single.y").unwrap(), m(352 + 16, 0, 1));
        error_mentioning(btf.member("outer", "p.x"), "pointer");
        error_mentioning(btf.member("outer", "nope"), "no member nope");
    }

    #[test]
    fn arrays_through_typedef_chains() {
        let btf = zoo_btf();
        assert_eq!(btf.member("outer", "arr").unwrap(), m(128, 0, 12));
        assert_eq!(btf.member("outer", "arr[0].x").unwrap(), m(128, 0, 2));
        assert_eq!(btf.member("outer", "arr[2].y").unwrap(), m(128 + 64 + 16, 0, 1));
        assert_eq!(btf.member("outer", "arr[1]").unwrap(), m(128 + 32, 0, 4));
        assert_eq!(btf.member("outer", "grid[1][3]").unwrap(), m(224 + 64 + 48, 0, 2));
        error_mentioning(btf.member("outer", "arr[3].x"), "out of bounds");
        assert!(btf.member("outer", "p[0]").is_err());
        assert!(btf.member("outer", "grid[0][0][0]").is_err());
        assert_eq!(btf.type_size("inner_tt").unwrap(), 4);
        assert_eq!(btf.type_size("inner_ptr").unwrap(), 8);
        assert_eq!(btf.type_size("outer").unwrap(), 48);
        assert_eq!(btf.member("inner_tt", "y").unwrap(), m(16, 0, 1));
    }

    #[test]
    fn bad_paths_are_errors() {
        let btf = zoo_btf();
        for path in ["", ".a", "a.", "a..b", "arr[", "arr[x]", "arr]", "arr[1", "arr[-1]", "arr[1]x"] {
            let err = btf.member("outer", path).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        error_mentioning(btf.member("missing", "a"), "no type named missing");
    }

    #[test]
    fn forward_declarations_and_duplicates() {
        let mut b = Builder::new();
        let int = b.int("int", 4, true);
        b.fwd("late", false);
        b.fwd("only_fwd", false);
        b.struct_("late", 8, &[("x", int, 32)]);
        b.struct_("dup", 8, &[("x", int, 0), ("y", int, 32)]);
        b.struct_("dup", 4, &[("x", int, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member("late", "x").unwrap(), m(32, 0, 4));
        assert_eq!(btf.type_size("late").unwrap(), 8);
        assert!(btf.has_struct("late"));
        assert!(!btf.has_struct("only_fwd"));
        error_mentioning(btf.member("only_fwd", "x"), "forward-declared");
        assert!(btf.type_size("only_fwd").is_err());
        // Definitions that agree are fine; the one that has the member answers.
        assert_eq!(btf.member("dup", "x").unwrap(), m(0, 0, 4));
        assert_eq!(btf.member("dup", "y").unwrap(), m(32, 0, 4));
        error_mentioning(btf.type_size("dup"), "different sizes");
    }

    #[test]
    fn disagreeing_duplicates_are_an_error() {
        let mut b = Builder::new();
        let int = b.int("int", 4, true);
        b.struct_("dup", 8, &[("x", int, 0)]);
        b.struct_("dup", 8, &[("x", int, 32)]);
        let btf = Btf::parse(&b.build()).unwrap();
        error_mentioning(btf.member("dup", "x"), "disagree");
    }

    #[test]
    fn kind_flag_bitfields() {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8, false);
        let u8_t = b.int("unsigned char", 1, false);
        let bits = b.struct_kf("", 8, &[("flags", ulong, 0, 32), ("lltx", ulong, 32, 1), ("tx", ulong, 33, 1)]);
        b.struct_kf("dev", 16, &[("", bits, 0, 0), ("mode", u8_t, 64, 3), ("plain", u8_t, 72, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member("dev", "flags").unwrap(), m(0, 32, 8));
        assert_eq!(btf.member("dev", "tx").unwrap(), m(33, 1, 8));
        assert_eq!(btf.member("dev", "mode").unwrap(), m(64, 3, 1));
        let plain = btf.member("dev", "plain").unwrap();
        assert_eq!(plain, m(72, 0, 1));
        assert!(!plain.is_bitfield());
        assert_eq!(plain.byte_offset(), Some(9));
        assert_eq!(btf.member("dev", "tx").unwrap().byte_offset(), None);
        assert!(btf.member("dev", "flags.x").is_err());
        assert!(btf.member("dev", "flags[0]").is_err());
    }

    #[test]
    fn legacy_int_encoded_bitfields() {
        let mut b = Builder::new();
        let u32_t = b.int("unsigned int", 4, false);
        let three = b.int_enc("unsigned int", 4, 0, 3, false);
        let shifted = b.int_enc("unsigned int", 4, 5, 2, false);
        b.struct_("old", 8, &[("a", u32_t, 0), ("b", three, 32), ("c", shifted, 32)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member("old", "a").unwrap(), m(0, 0, 4));
        assert_eq!(btf.member("old", "b").unwrap(), m(32, 3, 4));
        assert_eq!(btf.member("old", "c").unwrap(), m(37, 2, 4));
    }

    #[test]
    fn enums_and_enum64() {
        let mut b = Builder::new();
        b.enum_("", 4, false, &[]);
        b.enum_("flags", 4, false, &[]);
        b.enum_("flags", 4, false, &[("F_A", 1), ("F_HIGH", i32::MIN)]);
        b.enum_("signed_e", 4, true, &[("NEG", -5), ("POS", 7)]);
        b.enum64("wide", false, &[("W_LOW", 3), ("W_HIGH", 1 << 40), ("W_TOP", u64::MAX)]);
        b.enum64("wide_signed", true, &[("WS_NEG", (-2i64) as u64)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.enum_value("flags", "F_A").unwrap(), 1);
        assert_eq!(btf.enum_value("flags", "F_HIGH").unwrap(), 0x8000_0000);
        assert_eq!(btf.enum_value("signed_e", "NEG").unwrap(), -5);
        assert_eq!(btf.enum_value("wide", "W_HIGH").unwrap(), 1 << 40);
        assert_eq!(btf.enum_value("wide", "W_TOP").unwrap(), -1);
        assert_eq!(btf.enum_value("wide_signed", "WS_NEG").unwrap(), -2);
        assert_eq!(btf.enum_variants("signed_e").unwrap(), vec![("NEG".to_string(), -5), ("POS".to_string(), 7)]);
        assert_eq!(btf.type_size("wide").unwrap(), 8);
        assert!(btf.has_enum("wide"));
        error_mentioning(btf.enum_value("flags", "F_B"), "no variant F_B");
        assert!(btf.enum_value("nope", "X").is_err());
    }

    /// One of every kind ahead of a struct: wrong trailing sizes would shift
    /// every later type and the struct would not be found.
    #[test]
    fn every_kind_is_skipped() {
        let mut b = Builder::new();
        let int = b.int("int", 4, true);
        let ptr = b.ptr(int);
        b.array(int, int, 2);
        b.struct_("s0", 4, &[("a", int, 0)]);
        b.union_("u0", 4, &[("a", int, 0), ("b", int, 0)]);
        b.enum_("e0", 4, false, &[("E0", 0), ("E1", 1)]);
        b.fwd("f0", true);
        b.typedef("t0", int);
        b.modifier(kind::VOLATILE, int);
        b.modifier(kind::CONST, int);
        b.modifier(kind::RESTRICT, ptr);
        let s_a = b.s("a");
        let s_b = b.s("b");
        let proto = b.raw(kind::FUNC_PROTO, false, 3, "", int, &[s_a, int, s_b, ptr, 0, 0]);
        b.raw(kind::FUNC, false, 0, "fn0", proto, &[]);
        let var = b.raw(kind::VAR, false, 0, "v0", int, &[1]);
        b.raw(kind::DATASEC, false, 2, ".data", 8, &[var, 0, 4, var, 4, 4]);
        b.raw(kind::FLOAT, false, 0, "double", 8, &[]);
        b.raw(kind::DECL_TAG, false, 0, "tag", proto, &[u32::MAX]);
        let tt = b.raw(kind::TYPE_TAG, false, 0, "user", int, &[]);
        b.enum64("e64", false, &[("X", 1), ("Y", 2), ("Z", 3)]);
        b.struct_("last", 12, &[("tagged", tt, 0), ("v", int, 64)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member("last", "v").unwrap(), m(64, 0, 4));
        assert_eq!(btf.member("last", "tagged").unwrap(), m(0, 0, 4));
        assert_eq!(btf.enum_value("e64", "Z").unwrap(), 3);
        assert_eq!(btf.type_size("double").unwrap(), 8);
        assert_eq!(btf.type_size("t0").unwrap(), 4);
        assert_eq!(btf.type_count(), b.next_id());
    }

    #[test]
    fn big_endian() {
        let mut b = Builder::new().big_endian();
        zoo(&mut b);
        b.enum64("wide", false, &[("W", 0x1_0000_0002)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(btf.is_big_endian());
        assert_eq!(btf.member("outer", "arr[2].y").unwrap(), m(128 + 64 + 16, 0, 1));
        assert_eq!(btf.member("outer", "grp.c").unwrap(), m(32, 0, 4));
        assert_eq!(btf.enum_value("wide", "W").unwrap(), 0x1_0000_0002);
    }

    #[test]
    fn split_btf_continues_ids_and_strings() {
        let mut base = Builder::new();
        let int = base.int("int", 4, true);
        let ulong = base.int("long unsigned int", 8, false);
        base.fwd("modstruct", false);
        base.struct_("basestruct", 16, &[("x", int, 0), ("y", ulong, 64)]);
        let base_btf = Btf::parse(&base.build()).unwrap();

        let mut module = Builder::split_on(&base);
        let first = module.next_id();
        assert_eq!(first, base.next_id());
        // Names "x" and "int" resolve to the base's string offsets; "mod_only" is new.
        let bs = module.struct_("basestruct", 16, &[("x", int, 0), ("y", ulong, 64)]);
        let inner = module.struct_("modinner", 8, &[("mod_only", ulong, 0)]);
        module.struct_("modstruct", 32, &[("b", bs, 0), ("inner", inner, 128), ("x", int, 192)]);
        module.enum_("modenum", 4, false, &[("MOD_A", 4)]);
        let data = module.build();
        let btf = Btf::parse_split(&data, &base_btf).unwrap();
        assert_eq!(btf.type_count(), module.next_id());
        assert_eq!(btf.member("modstruct", "inner.mod_only").unwrap(), m(128, 0, 8));
        assert_eq!(btf.member("modstruct", "b.y").unwrap(), m(64, 0, 8));
        assert_eq!(btf.member("modstruct", "x").unwrap(), m(192, 0, 4));
        assert_eq!(btf.member("basestruct", "y").unwrap(), m(64, 0, 8));
        assert_eq!(btf.enum_value("modenum", "MOD_A").unwrap(), 4);
        assert!(btf.has_struct("modstruct"));
        assert!(!base_btf.has_struct("modstruct"));
        // Parsed as a base it is malformed: its strings do not start with NUL.
        assert!(Btf::parse(&data).is_err());

        // A second module on the same base sees none of the first's types.
        let mut other = Builder::split_on(&base);
        other.struct_("othermod", 4, &[("x", int, 0)]);
        let other_btf = Btf::parse_split(&other.build(), &base_btf).unwrap();
        assert!(other_btf.has_struct("othermod"));
        assert!(!other_btf.has_struct("modstruct"));
    }

    #[test]
    fn split_btf_with_bad_references_is_an_error_not_a_panic() {
        let mut base = Builder::new();
        let int = base.int("int", 4, true);
        let base_btf = Btf::parse(&base.build()).unwrap();
        let mut module = Builder::split_on(&base);
        module.struct_("dangling", 8, &[("x", 9999, 0), ("y", int, 32)]);
        let btf = Btf::parse_split(&module.build(), &base_btf).unwrap();
        assert!(btf.member("dangling", "x").is_err());
        assert_eq!(btf.member("dangling", "y").unwrap(), m(32, 0, 4));
        let be = Builder::split_on(&base).big_endian();
        assert!(Btf::parse_split(&be.build(), &base_btf).is_err());
    }

    #[test]
    fn malformed_headers() {
        let mut b = Builder::new();
        zoo(&mut b);
        let good = b.build();
        assert!(Btf::parse(&good).is_ok());
        let with = |pos: usize, bytes: &[u8]| {
            let mut d = good.clone();
            d[pos..pos + bytes.len()].copy_from_slice(bytes);
            d
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "too short"),
            (vec![0x9f], "too short"),
            (with(0, &[0, 0]), "bad magic"),
            (with(2, &[2]), "version"),
            (with(4, &8u32.to_le_bytes()), "header length"),
            (with(4, &100_000u32.to_le_bytes()), "header length"),
            (with(8, &2u32.to_le_bytes()), "aligned"),
            (with(12, &u32::MAX.to_le_bytes()), "outside"),
            (with(16, &u32::MAX.to_le_bytes()), "outside"),
            (with(20, &(u32::MAX - 10).to_le_bytes()), "outside"),
            (with(24 + 4, &(30u32 << 24).to_le_bytes()), "unknown kind"),
            (with(good.len() - 1, b"x"), "NUL"),
            (with(24, &7_000_000u32.to_le_bytes()), "string offset"),
        ];
        for (data, want) in cases {
            let err = error_mentioning(Btf::parse(&data), want);
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut b = Builder::new();
        zoo(&mut b);
        let good = b.build();
        for len in 0..good.len() {
            assert!(Btf::parse(&good[..len]).is_err(), "truncated to {len} bytes parsed");
        }
    }

    /// Cycles and dangling ids in well-framed BTF must come back as errors.
    #[test]
    fn reference_cycles_and_dangling_ids() {
        let mut b = Builder::new();
        let next = b.next_id();
        b.typedef("loop_a", next + 1);
        b.typedef("loop_b", next);
        let self_id = b.next_id();
        b.struct_("selfish", 8, &[("", self_id, 0)]);
        let arr_id = b.next_id();
        b.array(arr_id, 0, 2);
        b.struct_("holder", 8, &[("a", arr_id, 0), ("d", 12345, 0), ("v", 0, 0)]);
        // A member name past the end of the string section.
        b.raw(kind::STRUCT, false, 1, "broken", 4, &[6_000_000, 1, 0]);
        let btf = Btf::parse(&b.build()).unwrap();
        for (ty, path) in [("selfish", "x"), ("holder", "a[1]"), ("holder", "d"), ("holder", "v"), ("broken", "x")] {
            let err = btf.member(ty, path).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(btf.type_size("loop_a").is_err());
        assert!(btf.type_size("holder").is_ok());
    }

    /// Random corruption of a valid blob: any result is fine except a panic.
    #[test]
    fn corrupted_blobs_never_panic() {
        let mut b = Builder::new();
        zoo(&mut b);
        b.enum64("wide", false, &[("W", 1)]);
        let good = b.build();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut d = good.clone();
            for _ in 0..1 + rand() % 4 {
                let pos = (rand() as usize) % d.len();
                d[pos] = rand() as u8;
            }
            if let Ok(btf) = Btf::parse(&d) {
                let _ = btf.member("outer", "arr[2].y");
                let _ = btf.member("outer", "grp.c");
                let _ = btf.type_size("outer");
                let _ = btf.enum_variants("wide");
            }
        }
        for len in [0usize, 1, 7, 24, 100, 1000] {
            let junk: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            let _ = Btf::parse(&junk);
        }
    }

    #[test]
    fn vmlinux_conntrack_tuple() {
        let Some(btf) = vmlinux() else { return };
        if !btf.has_struct("nf_conntrack_tuple") {
            crate::note_line!("skipping: no nf_conntrack_tuple in vmlinux");
            return;
        }
        let byte = |path: &str| btf.member("nf_conntrack_tuple", path).unwrap().byte_offset().unwrap();
        assert_eq!(byte("src.u3"), 0);
        assert_eq!(byte("src.u.all"), 16);
        assert_eq!(byte("dst.u3"), 20);
        assert_eq!(byte("dst.u.all"), 36);
        assert_eq!(byte("dst.protonum"), 38);
        assert_eq!(btf.member("nf_conntrack_tuple", "dst.u3").unwrap().size_bytes, 16);
        assert_eq!(btf.member("nf_conntrack_tuple", "dst.u.all").unwrap().size_bytes, 2);
        assert_eq!(btf.type_size("nf_conntrack_tuple").unwrap(), 40);
        let hash = btf.type_size("nf_conntrack_tuple_hash").unwrap();
        let t0 = btf.member("nf_conn", "tuplehash[0].tuple").unwrap();
        let t1 = btf.member("nf_conn", "tuplehash[1].tuple").unwrap();
        assert_eq!(t1.offset_bits - t0.offset_bits, hash * 8);
        assert!(btf.member("nf_conn", "tuplehash[2]").is_err());
    }

    #[test]
    fn vmlinux_net_device_and_enums() {
        let Some(btf) = vmlinux() else { return };
        let flags = btf.member("net_device", "priv_flags").unwrap();
        assert!(flags.byte_offset().is_some());
        // Since the priv_flags_fast struct group (6.12), a 32-bit bitfield in an
        // unsigned long; before, a plain integer.
        if btf.member("net_device", "priv_flags_fast").is_ok() {
            assert_eq!(flags.bitfield_bits, 32);
            assert_eq!(flags.size_bytes, 8);
            let fast = btf.member("net_device", "priv_flags_fast.priv_flags").unwrap();
            assert_eq!(fast, flags);
        } else {
            assert!(!flags.is_bitfield());
        }
        let nd = btf.member("net_device", "nd_net.net").unwrap();
        assert_eq!(nd.size_bytes, 8);
        assert!(btf.member("net", "ns.inum").unwrap().size_bytes == 4);
        assert_eq!(btf.enum_value("netdev_priv_flags", "IFF_BRIDGE_PORT").unwrap(), 512);
        assert_eq!(btf.enum_value("netdev_priv_flags", "IFF_EBRIDGE").unwrap(), 2);
        assert_eq!(btf.type_size("possible_net_t").unwrap(), 8);
        assert_eq!(btf.member("possible_net_t", "net").unwrap(), m(0, 0, 8));
        assert_eq!(btf.type_size("long unsigned int").unwrap(), 8);
        assert!(btf.type_count() > 1000);
    }
}
