//! Decides the `KernelLayout` (byte offsets the kernel programs read at) from the
//! running kernel's BTF. Offsets differ between kernel builds, so they are never
//! compiled in; this is also where tracer refuses a kernel whose fields no longer
//! have the widths the kernel programs read.

use super::btf::{Btf, Member};
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tracer_common::{KernelLayout, NO_DROP_REASON};

const SYSFS_BTF: &str = "/sys/kernel/btf";

/// The kernel's BTF: vmlinux plus the split BTF of every loaded module that has one
/// (on distro kernels bridge and nf_conntrack are modules with their own BTF).
pub(crate) struct KernelBtf {
    vmlinux: Btf,
    modules: Vec<(String, Btf)>,
    /// Module BTF files that could not be read, as one-line reasons; named in
    /// "not found" errors so a broken file is not mistaken for a missing type.
    unreadable: Vec<String>,
}

impl KernelBtf {
    pub(crate) fn load_running() -> Result<KernelBtf> {
        KernelBtf::load_from_dir(Path::new(SYSFS_BTF))
    }

    /// `dir/vmlinux` as base BTF and every other file in `dir` as a module's split BTF.
    pub(crate) fn load_from_dir(dir: &Path) -> Result<KernelBtf> {
        let vmlinux_path = dir.join("vmlinux");
        let data = match std::fs::read(&vmlinux_path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "kernel BTF not found at {}: tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
                vmlinux_path.display()
            ),
            Err(e) => bail!("cannot read kernel BTF {}: {e}", vmlinux_path.display()),
        };
        let vmlinux = Btf::parse(&data).map_err(|e| anyhow!("kernel BTF {}: {e:#}", vmlinux_path.display()))?;

        let entries = std::fs::read_dir(dir).map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "vmlinux" && entry.file_type().is_ok_and(|t| !t.is_dir()) {
                names.push(name);
            }
        }
        // Sorted so that lookups (and errors) do not depend on directory order.
        names.sort();
        let mut modules = Vec::new();
        let mut unreadable = Vec::new();
        for name in names {
            // One bad file (or a module unloaded since the listing) must not stop
            // tracer: it only matters if a type turns out to be missing.
            match Btf::load_split(&dir.join(&name), &vmlinux) {
                Ok(btf) => modules.push((name, btf)),
                Err(e) => unreadable.push(format!("{e:#}")),
            }
        }
        Ok(KernelBtf { vmlinux, modules, unreadable })
    }

    /// From already parsed BTF; `modules` must be split BTF on `vmlinux`.
    #[cfg(test)]
    pub(crate) fn from_parts(vmlinux: Btf, modules: Vec<(String, Btf)>) -> KernelBtf {
        KernelBtf { vmlinux, modules, unreadable: Vec::new() }
    }

    #[cfg(test)]
    pub(crate) fn module_names(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|(name, _)| name.as_str())
    }

    pub(crate) fn is_big_endian(&self) -> bool {
        self.vmlinux.is_big_endian()
    }

    /// Whether vmlinux or a module defines (not just declares) this struct or union.
    pub(crate) fn has_struct(&self, name: &str) -> bool {
        self.sources().any(|btf| btf.has_struct(name))
    }

    pub(crate) fn member(&self, type_name: &str, path: &str) -> Result<Member> {
        match self.sources().find(|btf| btf.has_struct(type_name)) {
            Some(btf) => btf.member(type_name, path),
            None => Err(self.not_found(&format!("struct {type_name}"))),
        }
    }

    pub(crate) fn type_size(&self, type_name: &str) -> Result<u32> {
        match self.sources().find(|btf| btf.has_type(type_name)) {
            Some(btf) => btf.type_size(type_name),
            None => Err(self.not_found(type_name)),
        }
    }

    pub(crate) fn enum_value(&self, enum_name: &str, variant: &str) -> Result<i64> {
        match self.sources().find(|btf| btf.has_enum(enum_name)) {
            Some(btf) => btf.enum_value(enum_name, variant),
            None => Err(self.not_found(&format!("enum {enum_name}"))),
        }
    }

    pub(crate) fn enum_variants(&self, enum_name: &str) -> Result<Vec<(String, i64)>> {
        match self.sources().find(|btf| btf.has_enum(enum_name)) {
            Some(btf) => btf.enum_variants(enum_name),
            None => Err(self.not_found(&format!("enum {enum_name}"))),
        }
    }

    /// vmlinux first: a module's split BTF also answers for vmlinux's types, and
    /// the base is where they are defined.
    fn sources(&self) -> impl Iterator<Item = &Btf> {
        std::iter::once(&self.vmlinux).chain(self.modules.iter().map(|(_, btf)| btf))
    }

    fn not_found(&self, what: &str) -> anyhow::Error {
        let searched = match self.modules.len() {
            0 => "vmlinux".to_string(),
            1 => "vmlinux and 1 module".to_string(),
            n => format!("vmlinux and {n} modules"),
        };
        if self.unreadable.is_empty() {
            anyhow!("{what} not found in kernel BTF ({searched})")
        } else {
            anyhow!("{what} not found in kernel BTF ({searched}; unreadable: {})", self.unreadable.join("; "))
        }
    }
}

pub(crate) struct ResolvedLayout {
    pub layout: KernelLayout,
    /// False when no BTF defines `struct nf_conn` (conntrack not built in and its
    /// module not loaded): then no skb can carry a conntrack entry and the ct_* and
    /// tuple_* offsets are left 0.
    pub conntrack_known: bool,
    /// False when no BTF defines `struct nf_hook_state` (a kernel without netfilter):
    /// then the netfilter-hook programs are not attached.
    pub netfilter_known: bool,
}

/// What the kernel programs read at an offset: fields are read whole with a
/// fixed width, so a kernel that changed a width must be refused, not misread.
#[derive(Clone, Copy)]
enum Width {
    Bytes(u32),
    /// Any size: only the offset of an aggregate is used.
    Any,
}

/// The most bytes of `nf_conn` the programs read at once (`CT_SPAN_MAX` in the programs).
const CT_SPAN_MAX: u32 = 128;

pub(crate) fn resolve_layout(btf: &KernelBtf) -> Result<ResolvedLayout> {
    let field = |ty: &str, path: &str, width: Width| byte_offset(btf, ty, path, width);
    // All of these are read through pointers by the kernel programs: 64-bit kernels only.
    let ptr = Width::Bytes(8);
    let mut l = KernelLayout {
        skb_dev: field("sk_buff", "dev", ptr)?,
        skb_head: field("sk_buff", "head", ptr)?,
        skb_len: field("sk_buff", "len", Width::Bytes(4))?,
        // sk_buff_data_t: an offset from head (u32) on 64-bit kernels.
        skb_tail: field("sk_buff", "tail", Width::Bytes(4))?,
        skb_mac_header: field("sk_buff", "mac_header", Width::Bytes(2))?,
        skb_network_header: field("sk_buff", "network_header", Width::Bytes(2))?,
        skb_protocol: field("sk_buff", "protocol", Width::Bytes(2))?,
        skb_iif: field("sk_buff", "skb_iif", Width::Bytes(4))?,
        // Required even though conntrack may be absent: an offset of 0 would make
        // the programs take skb->next for a conntrack pointer.
        skb_nfct: field("sk_buff", "_nfct", Width::Bytes(8))?,
        dev_ifindex: field("net_device", "ifindex", Width::Bytes(4))?,
        dev_priv_flags: priv_flags_offset(btf)?,
        dev_net: field("net_device", "nd_net.net", ptr)?,
        net_inum: field("net", "ns.inum", Width::Bytes(4))?,
        flag_bridge_port: priv_flag(btf, "IFF_BRIDGE_PORT")?,
        flag_bridge: priv_flag(btf, "IFF_EBRIDGE")?,
        // Frees that are not drops, where the kernel has them (a consumed packet went through
        // this tracepoint only from 6.3; the enum itself appeared in 5.17).
        reason_not_dropped_yet: drop_reason(btf, "SKB_NOT_DROPPED_YET"),
        reason_consumed: drop_reason(btf, "SKB_CONSUMED"),
        reason_netfilter_drop: drop_reason(btf, "SKB_DROP_REASON_NETFILTER_DROP"),
        ..KernelLayout::default()
    };

    let netfilter_known = btf.has_struct("nf_hook_state");
    if netfilter_known {
        let state = |path: &str, width| field("nf_hook_state", path, width);
        l.hook_state_hook = state("hook", Width::Bytes(1))?;
        l.hook_state_pf = state("pf", Width::Bytes(1))?;
        l.hook_state_in = state("in", ptr)?;
        l.hook_state_out = state("out", ptr)?;
        l.hook_state_net = state("net", ptr)?;
    }

    let conntrack_known = btf.has_struct("nf_conn");
    if conntrack_known {
        l.ct_status = field("nf_conn", "status", Width::Bytes(8))?;
        l.ct_tuple_original = field("nf_conn", "tuplehash[0].tuple", Width::Any)?;
        l.ct_tuplehash_size = btf.type_size("nf_conntrack_tuple_hash")?;
        // The programs find the reply tuple at original + hash size; check that
        // this is where BTF puts it rather than trusting the array arithmetic.
        let reply = field("nf_conn", "tuplehash[1].tuple", Width::Any)?;
        if reply.checked_sub(l.ct_tuple_original) != Some(l.ct_tuplehash_size) {
            bail!(
                "kernel BTF is inconsistent: nf_conn.tuplehash[1].tuple is at {reply}, expected {} + {}",
                l.ct_tuple_original,
                l.ct_tuplehash_size
            );
        }
        let tuple = |path: &str, width| field("nf_conntrack_tuple", path, width);
        l.tuple_src_addr = tuple("src.u3", Width::Bytes(16))?;
        l.tuple_src_port = tuple("src.u.all", Width::Bytes(2))?;
        l.tuple_dst_addr = tuple("dst.u3", Width::Bytes(16))?;
        l.tuple_dst_port = tuple("dst.u.all", Width::Bytes(2))?;
        l.tuple_protonum = tuple("dst.protonum", Width::Bytes(1))?;
        let tuple_size = btf.type_size("nf_conntrack_tuple")?;
        let start = l.ct_status.min(l.ct_tuple_original);
        let end = (l.ct_status + 8).max(l.ct_tuple_original + l.ct_tuplehash_size + tuple_size);
        if end - start > CT_SPAN_MAX {
            bail!(
                "kernel not supported: nf_conn's tuples and status span {} bytes, the programs read at most {CT_SPAN_MAX}",
                end - start
            );
        }
        l.ct_span_start = start;
        l.ct_span_len = end - start;
    }
    Ok(ResolvedLayout { layout: l, conntrack_known, netfilter_known })
}

/// Where a packet's page fragments are and how a page's bytes are found, for the payloads
/// a sender leaves outside the linear data (TCP between pods over veth does). Sets the
/// page-fragment fields of `l` and returns `Ok`, or leaves them 0 and says why the
/// programs will copy linear data only. `symbols` looks up kernel variables' addresses.
pub(crate) fn resolve_page_fragments(
    btf: &KernelBtf,
    l: &mut KernelLayout,
    symbols: impl FnOnce(&[&str]) -> Result<Vec<Option<u64>>>,
) -> Result<()> {
    // A page's bytes are at `page_offset_base + pfn * PAGE_SIZE`, with the pfn from the
    // page's index in the `vmemmap_base` array: x86-64's layout (4 KiB pages, sparse
    // vmemmap, the bases randomised at boot). Other architectures place both differently.
    if !cfg!(target_arch = "x86_64") {
        bail!("tracer finds page bytes on x86-64 only");
    }
    let field = |ty: &str, path: &str, width: Width| byte_offset(btf, ty, path, width);
    // `skb_frag_t` is `struct skb_frag { netmem_ref netmem; len; offset }` on newer kernels
    // and `struct bio_vec { bv_page; bv_len; bv_offset }` before.
    let (frag, [page, len, offset]) = if btf.has_struct("skb_frag") {
        ("skb_frag", ["netmem", "len", "offset"])
    } else {
        ("bio_vec", ["bv_page", "bv_len", "bv_offset"])
    };
    let frag_size = btf.type_size(frag)?;
    let frags = btf.member("skb_shared_info", "frags")?;
    if frag_size == 0 || !frags.size_bytes.is_multiple_of(frag_size) {
        bail!("skb_shared_info.frags is {} bytes, not an array of {frag} ({frag_size} bytes)", frags.size_bytes);
    }
    let page_struct_size = btf.type_size("page")?;
    if page_struct_size == 0 {
        bail!("struct page has no size in BTF");
    }
    let with_fragments = KernelLayout {
        skb_end: field("sk_buff", "end", Width::Bytes(4))?,
        skb_data_len: field("sk_buff", "data_len", Width::Bytes(4))?,
        shinfo_nr_frags: field("skb_shared_info", "nr_frags", Width::Bytes(1))?,
        shinfo_frags: field("skb_shared_info", "frags", Width::Any)?,
        frag_size,
        frag_page: field(frag, page, Width::Bytes(8))?,
        frag_len: field(frag, len, Width::Bytes(4))?,
        frag_offset: field(frag, offset, Width::Bytes(4))?,
        page_struct_size,
        page_shift: 12,
        ..*l
    };
    let found = symbols(&["page_offset_base", "vmemmap_base"])?;
    let (Some(Some(direct_map)), Some(Some(vmemmap))) = (found.first(), found.get(1)) else {
        bail!("/proc/kallsyms does not list page_offset_base and vmemmap_base: the kernel is built without CONFIG_KALLSYMS_ALL");
    };
    if *direct_map == 0 || *vmemmap == 0 {
        bail!("/proc/kallsyms hides kernel addresses (kernel.kptr_restrict)");
    }
    *l = KernelLayout { page_offset_base_addr: *direct_map, vmemmap_base_addr: *vmemmap, ..with_fragments };
    Ok(())
}

/// Values of `enum skb_drop_reason` are renumbered between kernels as reasons are
/// added: read them, never assume them. A reason this kernel does not have is
/// `NO_DROP_REASON`, which no drop carries.
fn drop_reason(btf: &KernelBtf, name: &str) -> u32 {
    btf.enum_value("skb_drop_reason", name).ok().and_then(|value| u32::try_from(value).ok()).unwrap_or(NO_DROP_REASON)
}

fn byte_offset(btf: &KernelBtf, ty: &str, path: &str, width: Width) -> Result<u32> {
    let m = btf.member(ty, path)?;
    if m.is_bitfield() {
        bail!("kernel not supported: {ty}.{path} is a bitfield, tracer reads it as a whole field");
    }
    let offset = m
        .byte_offset()
        .ok_or_else(|| anyhow!("kernel not supported: {ty}.{path} does not start on a byte boundary"))?;
    if let Width::Bytes(expected) = width {
        if m.size_bytes != expected {
            bail!("kernel not supported: {ty}.{path} is {} bytes, tracer reads {expected}", m.size_bytes);
        }
    }
    Ok(offset)
}

/// `net_device.priv_flags` has been a plain `unsigned int`, an `unsigned long long`
/// and (6.12+) a 32-bit bitfield in an `unsigned long`. The programs load 32 bits
/// and test the IFF_* bits, which are all below bit 32, so what is needed is the
/// address of the field's least significant 32 bits.
fn priv_flags_offset(btf: &KernelBtf) -> Result<u32> {
    let m = btf.member("net_device", "priv_flags")?;
    let start = m.byte_offset().ok_or_else(|| {
        anyhow!("kernel not supported: net_device.priv_flags starts at bit {}, not on a byte boundary", m.offset_bits)
    })?;
    let width_bits = if m.is_bitfield() { m.bitfield_bits } else { m.size_bytes * 8 };
    if width_bits < 32 || !width_bits.is_multiple_of(8) {
        bail!("kernel not supported: net_device.priv_flags is {width_bits} bits wide, tracer reads 32");
    }
    // BTF counts big-endian bitfield offsets from the most significant end, so in
    // both layouts the low 32 bits sit at the end of a wider field on big-endian.
    let low_word = if btf.is_big_endian() { (width_bits - 32) / 8 } else { 0 };
    Ok(start + low_word)
}

fn priv_flag(btf: &KernelBtf, name: &str) -> Result<u32> {
    let value = btf.enum_value("netdev_priv_flags", name)?;
    match u32::try_from(value) {
        Ok(v) if v.is_power_of_two() => Ok(v),
        _ => bail!("kernel not supported: {name} is {value:#x}, tracer expects a single flag bit below bit 32"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::btf::testing::{error_mentioning, Builder};
    use super::*;

    fn running() -> Option<KernelBtf> {
        if !Path::new(SYSFS_BTF).join("vmlinux").exists() {
            crate::note_line!("skipping: no {SYSFS_BTF}/vmlinux");
            return None;
        }
        Some(KernelBtf::load_running().expect("load running kernel BTF"))
    }

    #[test]
    fn running_kernel_layout() {
        let Some(btf) = running() else { return };
        let r = resolve_layout(&btf).unwrap();
        let l = r.layout;
        let skb = btf.type_size("sk_buff").unwrap();
        for (name, off, width) in [
            ("dev", l.skb_dev, 8),
            ("head", l.skb_head, 8),
            ("len", l.skb_len, 4),
            ("tail", l.skb_tail, 4),
            ("mac_header", l.skb_mac_header, 2),
            ("network_header", l.skb_network_header, 2),
            ("protocol", l.skb_protocol, 2),
            ("skb_iif", l.skb_iif, 4),
            ("_nfct", l.skb_nfct, 8),
        ] {
            assert!(off + width <= skb, "sk_buff.{name} at {off} outside {skb} bytes");
            assert_eq!(off % width, 0, "sk_buff.{name} at {off} is misaligned");
        }
        // Fields that have been in the first 256 bytes of sk_buff for years.
        assert!((200..=256).contains(&skb), "sk_buff is {skb} bytes");
        let dev = btf.type_size("net_device").unwrap();
        assert!(l.dev_ifindex + 4 <= dev && l.dev_priv_flags + 4 <= dev && l.dev_net + 8 <= dev);
        assert!(l.net_inum + 4 <= btf.type_size("net").unwrap());
        assert_eq!(l.flag_bridge_port, 512);
        assert_eq!(l.flag_bridge, 2);
        assert_eq!(l.reason_consumed, btf.enum_value("skb_drop_reason", "SKB_CONSUMED").unwrap() as u32);
        assert_eq!(
            l.reason_netfilter_drop,
            btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP").unwrap() as u32
        );
        assert_eq!(r.netfilter_known, btf.has_struct("nf_hook_state"));
        if r.netfilter_known {
            // u8 hook, u8 pf, then pointers: stable since nf_hook_state gained pf.
            assert_eq!((l.hook_state_hook, l.hook_state_pf), (0, 1));
            assert!(l.hook_state_in.is_multiple_of(8) && l.hook_state_out == l.hook_state_in + 8);
        }

        // On 6.12+ priv_flags is a 32-bit bitfield at the start of its struct group.
        if btf.member("net_device", "priv_flags_fast").is_ok() {
            let m = btf.member("net_device", "priv_flags").unwrap();
            assert_eq!(m.bitfield_bits, 32);
            let group = btf.member("net_device", "priv_flags_fast").unwrap();
            assert_eq!(l.dev_priv_flags * 8, group.offset_bits);
        }

        assert_eq!(r.conntrack_known, btf.has_struct("nf_conn"));
        if r.conntrack_known {
            assert_eq!(l.tuple_src_addr, 0);
            assert_eq!(l.tuple_src_port, 16);
            assert_eq!(l.tuple_dst_addr, 20);
            assert_eq!(l.tuple_dst_port, 36);
            assert_eq!(l.tuple_protonum, 38);
            assert_eq!(btf.type_size("nf_conntrack_tuple").unwrap(), 40);
            let ct = btf.type_size("nf_conn").unwrap();
            assert!(l.ct_status + 8 <= ct);
            assert!(l.ct_tuple_original + 2 * l.ct_tuplehash_size <= ct);
            assert!(l.ct_tuplehash_size >= 40);
        } else {
            assert_eq!(l.ct_status, 0);
            assert_eq!(l.tuple_dst_port, 0);
        }
    }

    #[test]
    fn running_kernel_page_fragments() {
        let Some(btf) = running() else { return };
        let mut l = resolve_layout(&btf).unwrap().layout;
        let given = |_: &[&str]| Ok(vec![Some(0xffff_ffff_8200_0000), Some(0xffff_ffff_8200_0008)]);
        if !cfg!(target_arch = "x86_64") {
            assert!(resolve_page_fragments(&btf, &mut l, given).is_err());
            return;
        }
        resolve_page_fragments(&btf, &mut l, given).unwrap();
        // Both shapes of skb_frag_t: a pointer, then two 32-bit fields, 16 bytes.
        assert_eq!((l.frag_size, l.frag_page, l.frag_len, l.frag_offset), (16, 0, 8, 12));
        assert_eq!(l.page_struct_size, btf.type_size("page").unwrap());
        assert!(l.page_struct_size >= 56 && l.page_struct_size <= 128, "struct page is {}", l.page_struct_size);
        assert!(l.shinfo_nr_frags < l.shinfo_frags && l.skb_end != 0 && l.skb_data_len != 0);
        assert_eq!((l.page_offset_base_addr, l.vmemmap_base_addr), (0xffff_ffff_8200_0000, 0xffff_ffff_8200_0008));
    }

    #[test]
    fn page_fragments_need_both_bases_and_their_addresses() {
        let Some(btf) = running() else { return };
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let mut l = resolve_layout(&btf).unwrap().layout;
        let unlisted = resolve_page_fragments(&btf, &mut l, |_| Ok(vec![Some(0xffff_ffff_8200_0000), None]));
        assert!(format!("{:#}", unlisted.unwrap_err()).contains("CONFIG_KALLSYMS_ALL"));
        let hidden = resolve_page_fragments(&btf, &mut l, |_| Ok(vec![Some(0), Some(0)]));
        assert!(format!("{:#}", hidden.unwrap_err()).contains("kptr_restrict"));
        // A refusal leaves the layout as it was: the programs copy linear data only.
        assert_eq!((l.page_offset_base_addr, l.frag_size), (0, 0));
    }

    /// What tracer needs of vmlinux, in the shapes of a given kernel generation.
    struct FakeKernel {
        base: Builder,
        /// Ids needed by module types.
        int: u32,
        u8_t: u32,
        u16_t: u32,
        ulong: u32,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum PrivFlags {
        /// 6.12+: `unsigned long priv_flags:32` inside an anonymous struct group.
        Bitfield,
        /// Older: `unsigned int priv_flags`.
        Plain32,
        /// 6.x before the struct group: `unsigned long long priv_flags`.
        Plain64,
        /// Not something any kernel did: a bitfield not starting on a byte.
        Misaligned,
    }

    fn fake_vmlinux(flags: PrivFlags, big_endian: bool, with_conntrack: bool) -> FakeKernel {
        let mut b = Builder::new();
        if big_endian {
            b = b.big_endian();
        }
        let ulong = b.int("long unsigned int", 8, false);
        let int = b.int("int", 4, true);
        let uint = b.int("unsigned int", 4, false);
        let u16_t = b.int("short unsigned int", 2, false);
        let u8_t = b.int("unsigned char", 1, false);
        let be16 = b.typedef("__be16", u16_t);
        let data_t = b.typedef("sk_buff_data_t", uint);
        let net_dev_fwd = b.fwd("net_device", false);
        let dev_ptr = b.ptr(net_dev_fwd);
        let uchar_ptr = b.ptr(u8_t);
        let skb_fwd = b.fwd("sk_buff", false);
        let skb_ptr = b.ptr(skb_fwd);
        let link = b.struct_("", 24, &[("next", skb_ptr, 0), ("prev", skb_ptr, 64), ("dev", dev_ptr, 128)]);
        let list_u = b.union_("", 24, &[("", link, 0)]);
        let hdrs = b.struct_(
            "",
            12,
            &[("skb_iif", int, 0), ("protocol", be16, 32), ("network_header", u16_t, 48), ("mac_header", u16_t, 64)],
        );
        let hdr_u = b.union_("", 12, &[("", hdrs, 0), ("headers", hdrs, 0)]);
        b.struct_(
            "sk_buff",
            224,
            &[
                ("", list_u, 0),
                ("_nfct", ulong, 192),
                ("len", uint, 256),
                ("", hdr_u, 288),
                ("tail", data_t, 384),
                ("head", uchar_ptr, 448),
            ],
        );

        let net_fwd = b.fwd("net", false);
        let net_ptr = b.ptr(net_fwd);
        let possible = b.struct_("", 8, &[("net", net_ptr, 0)]);
        let possible_t = b.typedef("possible_net_t", possible);
        let ns_common = b.struct_("ns_common", 24, &[("stashed", ulong, 0), ("inum", uint, 128)]);
        b.struct_("net", 64, &[("refcount", int, 0), ("ns", ns_common, 64)]);

        let flags_member = match flags {
            PrivFlags::Bitfield | PrivFlags::Misaligned => {
                let start = if flags == PrivFlags::Misaligned { 4 } else { 0 };
                let bits = b.struct_kf("", 8, &[("priv_flags", ulong, start, 32), ("lltx", ulong, 32, 1)]);
                let named = b.struct_kf("", 8, &[("priv_flags", ulong, 0, 32), ("lltx", ulong, 32, 1)]);
                let group = b.union_("", 8, &[("", bits, 0), ("priv_flags_fast", named, 0)]);
                ("", group)
            }
            PrivFlags::Plain32 => ("priv_flags", uint),
            PrivFlags::Plain64 => {
                let ull = b.int("long long unsigned int", 8, false);
                ("priv_flags", ull)
            }
        };
        let cacheline = b.array(u8_t, int, 0);
        b.struct_(
            "net_device",
            256,
            &[
                ("__cacheline_group_begin", cacheline, 0),
                (flags_member.0, flags_member.1, 64),
                ("ifindex", int, 128),
                ("nd_net", possible_t, 192),
            ],
        );
        b.enum_("netdev_priv_flags", 4, false, &[("IFF_802_1Q_VLAN", 1), ("IFF_EBRIDGE", 2), ("IFF_BRIDGE_PORT", 512)]);
        b.enum_(
            "skb_drop_reason",
            4,
            false,
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NETFILTER_DROP", 7),
            ],
        );
        let mut k = FakeKernel { base: b, int, u8_t, u16_t, ulong };
        if with_conntrack {
            let mut b = std::mem::take(&mut k.base);
            add_conntrack(&mut b, &k);
            k.base = b;
        } else {
            // A built-in user of nf_conn pointers leaves only a declaration behind.
            k.base.fwd("nf_conn", false);
        }
        k
    }

    /// `nf_conn` and its tuples, as in include/net/netfilter/nf_conntrack*.h.
    fn add_conntrack(b: &mut Builder, k: &FakeKernel) {
        let u32_arr = b.array(k.int, k.int, 4);
        let addr = b.union_("nf_inet_addr", 16, &[("all", u32_arr, 0)]);
        let port_u = b.union_("", 2, &[("all", k.u16_t, 0)]);
        let man = b.struct_("nf_conntrack_man", 20, &[("u3", addr, 0), ("u", port_u, 128), ("l3num", k.u16_t, 144)]);
        let empty = b.struct_("", 0, &[]);
        let dst = b.struct_(
            "",
            20,
            &[
                ("u3", addr, 0),
                ("u", port_u, 128),
                ("protonum", k.u8_t, 144),
                ("__end", empty, 152),
                ("dir", k.u8_t, 152),
            ],
        );
        let tuple = b.struct_("nf_conntrack_tuple", 40, &[("src", man, 0), ("dst", dst, 160)]);
        let hash = b.struct_("nf_conntrack_tuple_hash", 56, &[("hnnode", k.ulong, 0), ("tuple", tuple, 128)]);
        let hashes = b.array(hash, k.int, 2);
        b.struct_("nf_conn", 248, &[("ct_general", k.ulong, 0), ("tuplehash", hashes, 64), ("status", k.ulong, 960)]);
    }

    fn kernel(k: &FakeKernel) -> KernelBtf {
        KernelBtf::from_parts(Btf::parse(&k.base.build()).unwrap(), Vec::new())
    }

    #[test]
    fn synthetic_kernel_with_builtin_conntrack() {
        let k = fake_vmlinux(PrivFlags::Bitfield, false, true);
        let r = resolve_layout(&kernel(&k)).unwrap();
        assert!(r.conntrack_known);
        let l = r.layout;
        let want = KernelLayout {
            skb_dev: 16,
            skb_head: 56,
            skb_len: 32,
            skb_tail: 48,
            skb_mac_header: 44,
            skb_network_header: 42,
            skb_protocol: 40,
            skb_iif: 36,
            skb_nfct: 24,
            dev_ifindex: 16,
            dev_priv_flags: 8,
            dev_net: 24,
            net_inum: 24,
            ct_status: 120,
            ct_tuple_original: 24,
            ct_tuplehash_size: 56,
            // From the original tuple to the end of the status: one read.
            ct_span_start: 24,
            ct_span_len: 104,
            tuple_src_addr: 0,
            tuple_src_port: 16,
            tuple_dst_addr: 20,
            tuple_dst_port: 36,
            tuple_protonum: 38,
            flag_bridge_port: 512,
            flag_bridge: 2,
            // The fake kernel has no netfilter: the hook-state offsets stay 0.
            reason_not_dropped_yet: 0,
            reason_consumed: 1,
            reason_netfilter_drop: 7,
            ..KernelLayout::default()
        };
        assert_eq!(l, want);
        assert!(!r.netfilter_known);
    }

    #[test]
    fn no_conntrack_is_not_an_error() {
        let k = fake_vmlinux(PrivFlags::Plain32, false, false);
        let r = resolve_layout(&kernel(&k)).unwrap();
        assert!(!r.conntrack_known);
        assert_eq!(r.layout.ct_status, 0);
        assert_eq!(r.layout.ct_tuple_original, 0);
        assert_eq!(r.layout.ct_tuplehash_size, 0);
        assert_eq!(r.layout.tuple_dst_port, 0);
        assert_eq!(r.layout.dev_priv_flags, 8);
        assert_eq!(r.layout.skb_dev, 16);
    }

    #[test]
    fn priv_flags_generations() {
        for (flags, big_endian, want) in [
            (PrivFlags::Bitfield, false, Some(8)),
            (PrivFlags::Bitfield, true, Some(8)),
            (PrivFlags::Plain32, false, Some(8)),
            (PrivFlags::Plain32, true, Some(8)),
            (PrivFlags::Plain64, false, Some(8)),
            (PrivFlags::Plain64, true, Some(12)),
            (PrivFlags::Misaligned, false, None),
        ] {
            let k = fake_vmlinux(flags, big_endian, false);
            let got = resolve_layout(&kernel(&k)).map(|r| r.layout.dev_priv_flags);
            match want {
                Some(w) => assert_eq!(got.unwrap(), w),
                None => {
                    error_mentioning(got, "byte boundary");
                }
            }
        }
    }

    /// Distro kernels: nf_conntrack is a module whose split BTF defines nf_conn.
    #[test]
    fn conntrack_from_module_btf_in_a_directory() {
        let k = fake_vmlinux(PrivFlags::Bitfield, false, false);
        let mut module = Builder::split_on(&k.base);
        add_conntrack(&mut module, &k);
        let mut other = Builder::split_on(&k.base);
        other.struct_("bridge_thing", 4, &[("x", k.int, 0)]);

        let dir = TempDir::new("module");
        std::fs::write(dir.0.join("vmlinux"), k.base.build()).unwrap();
        std::fs::write(dir.0.join("nf_conntrack"), module.build()).unwrap();
        std::fs::write(dir.0.join("bridge"), other.build()).unwrap();
        std::fs::write(dir.0.join("broken"), b"not btf").unwrap();
        let btf = KernelBtf::load_from_dir(&dir.0).unwrap();
        assert_eq!(btf.module_names().collect::<Vec<_>>(), ["bridge", "nf_conntrack"]);
        let r = resolve_layout(&btf).unwrap();
        assert!(r.conntrack_known);
        assert_eq!(r.layout.tuple_dst_port, 36);
        assert_eq!(r.layout.ct_tuplehash_size, 56);
        assert_eq!(r.layout.ct_status, 120);
        assert_eq!(btf.member("bridge_thing", "x").unwrap().offset_bits, 0);
        // vmlinux types still come from vmlinux.
        assert_eq!(btf.type_size("sk_buff").unwrap(), 224);
        assert_eq!(btf.enum_value("netdev_priv_flags", "IFF_EBRIDGE").unwrap(), 2);
        assert_eq!(btf.enum_variants("netdev_priv_flags").unwrap().len(), 3);
        let err =
            error_mentioning(btf.member("nowhere", "x"), "not found in kernel BTF (vmlinux and 2 modules; unreadable:");
        assert!(err.contains("broken"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn missing_vmlinux_says_what_is_needed() {
        let dir = TempDir::new("empty");
        let err = KernelBtf::load_from_dir(&dir.0).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "kernel BTF not found at {}: tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
                dir.0.join("vmlinux").display()
            )
        );
        std::fs::write(dir.0.join("vmlinux"), b"\x9f\xeb\x01").unwrap();
        let err = KernelBtf::load_from_dir(&dir.0).err().unwrap().to_string();
        assert!(err.starts_with("kernel BTF "), "{err}");
    }

    #[test]
    fn missing_required_field_is_an_error() {
        let mut b = Builder::new();
        let int = b.int("int", 4, true);
        b.struct_("sk_buff", 8, &[("len", int, 0)]);
        let btf = KernelBtf::from_parts(Btf::parse(&b.build()).unwrap(), Vec::new());
        error_mentioning(resolve_layout(&btf), "sk_buff.dev");
    }

    #[test]
    fn wrong_width_is_refused() {
        let mut b = Builder::new();
        let int = b.int("int", 4, true);
        let uint = b.int("unsigned int", 4, false);
        b.struct_("sk_buff", 8, &[("dev", int, 0), ("head", uint, 32)]);
        let btf = KernelBtf::from_parts(Btf::parse(&b.build()).unwrap(), Vec::new());
        let err = resolve_layout(&btf).err().unwrap().to_string();
        assert_eq!(err, "kernel not supported: sk_buff.dev is 4 bytes, tracer reads 8");
    }

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "tracer-layout-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
