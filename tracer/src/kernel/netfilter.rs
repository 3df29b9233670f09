//! A loader for netfilter-hook programs (BPF_PROG_TYPE_NETFILTER, kernel 6.4+),
//! which aya 0.14 does not have. Shaped like aya's program types: take the program
//! from the object aya loaded, `load()` it, then `attach()` it to hooks.
//!
//! The programs share the maps (ring buffer, lost counters, configuration) aya
//! created for the same object: aya-obj parses the ELF again and its relocations are
//! pointed at aya's map fds. Programs and links are file descriptors owned here: the
//! kernel unlinks them when they are dropped or the process exits, however it exits.

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{maps::Map, Ebpf};
use aya_obj::{
    generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type},
    Object,
};

use crate::model::hook::{Family, Hook};

/// The kernel refuses links at exactly INT_MIN / INT_MAX (NF_IP_PRI_FIRST / _LAST);
/// just inside them is still before conntrack, NAT and every filter table, or after
/// all of them (but conntrack confirmation).
pub(crate) const PRIORITY_EARLIEST: i32 = i32::MIN + 1;
pub(crate) const PRIORITY_LATEST: i32 = i32::MAX - 1;

/// The kernel allows one BPF program per hook and priority (EBUSY), and a priority
/// may also be taken by another hook function or another tracer in this namespace:
/// step inwards from the wanted priority to the nearest free one.
const PRIORITY_TRIES: i32 = 64;

/// The ELF object re-read with aya-obj, relocated against the maps aya created.
pub(crate) struct RelocatedObject {
    object: Object,
}

impl RelocatedObject {
    pub(crate) fn new(elf: &[u8], ebpf: &Ebpf) -> Result<RelocatedObject> {
        let mut object = Object::parse(elf).context("parsing the kernel programs for the netfilter loader")?;
        let mut fds: Vec<(String, RawFd)> = Vec::new();
        for (name, map) in ebpf.maps() {
            let data = match map {
                Map::Array(data)
                | Map::PerCpuArray(data)
                | Map::RingBuf(data)
                | Map::HashMap(data)
                | Map::LruHashMap(data)
                | Map::PerCpuHashMap(data)
                | Map::PerCpuLruHashMap(data) => data,
                _ => bail!("map {name} is of a kind the netfilter loader does not relocate: rebuild tracer"),
            };
            fds.push((name.to_string(), data.fd().as_fd().as_raw_fd()));
        }
        // Relocation needs the object mutably while the map definitions are borrowed.
        let definitions = object.maps.clone();
        let mut relocations: Vec<(&str, RawFd, &aya_obj::Map)> = Vec::new();
        for (name, fd) in &fds {
            let definition = definitions
                .get(name)
                .ok_or_else(|| anyhow!("map {name} is missing from the kernel object: rebuild tracer"))?;
            relocations.push((name.as_str(), *fd, definition));
        }
        let text_sections: HashSet<usize> = object.functions.keys().map(|(section, _)| *section).collect();
        object
            .relocate_maps(relocations.into_iter(), &text_sections)
            .map_err(|err| anyhow!("relocating the netfilter programs' maps: {err}"))?;
        object
            .relocate_calls(&text_sections)
            .map_err(|err| anyhow!("linking the netfilter programs' functions: {err}"))?;
        Ok(RelocatedObject { object })
    }

    pub(crate) fn program(&self, name: &str) -> Result<NetfilterProgram> {
        let program = self
            .object
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("program {name} missing from the kernel object: rebuild tracer"))?;
        let function = self
            .object
            .functions
            .get(&program.function_key())
            .ok_or_else(|| anyhow!("code of program {name} missing from the kernel object: rebuild tracer"))?;
        Ok(NetfilterProgram {
            name: name.to_string(),
            license: program.license.clone(),
            instructions: function.instructions.clone(),
            fd: None,
            links: Vec::new(),
        })
    }
}

pub(crate) struct NetfilterProgram {
    name: String,
    license: CString,
    instructions: Vec<bpf_insn>,
    fd: Option<OwnedFd>,
    links: Vec<OwnedFd>,
}

impl NetfilterProgram {
    pub(crate) fn load(&mut self) -> Result<()> {
        if self.fd.is_some() {
            return Ok(());
        }
        match self.prog_load(None) {
            Ok(fd) => {
                self.fd = Some(fd);
                Ok(())
            }
            Err(first) => {
                // Load again with a log only on failure: the log costs a large buffer
                // and verifier time on every successful load.
                let mut log = vec![0u8; 1 << 20];
                let detail = match self.prog_load(Some(&mut log)) {
                    Ok(_) => String::new(),
                    Err(_) => verifier_summary(&log),
                };
                Err(anyhow!("{first}{detail}"))
            }
        }
    }

    fn prog_load(&self, log: Option<&mut Vec<u8>>) -> Result<OwnedFd> {
        // SAFETY: bpf_attr is plain data; zero is the kernel's "not set" for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_PROG_LOAD member of the union.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32;
        load.expected_attach_type = bpf_attach_type::BPF_NETFILTER as u32;
        load.insns = self.instructions.as_ptr() as u64;
        load.insn_cnt = u32::try_from(self.instructions.len()).context("program too large")?;
        load.license = self.license.as_ptr() as u64;
        for (slot, byte) in load.prog_name.iter_mut().zip(self.name.bytes().take(15)) {
            *slot = byte as core::ffi::c_char;
        }
        if let Some(log) = log {
            load.log_level = 1;
            load.log_buf = log.as_mut_ptr() as u64;
            load.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        }
        let fd = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
            .map_err(|err| anyhow!("loading netfilter program {}: {err}", self.name))?;
        Ok(fd)
    }

    /// Links the program into `hook` of `family` at `priority` or, when that is
    /// taken, the nearest free priority towards the middle of the range, in the
    /// network namespace of the calling thread. Returns the priority used.
    pub(crate) fn attach(&mut self, family: Family, hook: Hook, priority: i32) -> Result<i32> {
        let inward = if priority < 0 { 1 } else { -1 };
        let mut last_error = None;
        for step in 0..PRIORITY_TRIES {
            let candidate = priority + inward * step;
            match self.link(family, hook, candidate) {
                Ok(()) => return Ok(candidate),
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => last_error = Some(err),
                Err(err) => {
                    return Err(anyhow!(
                        "linking {} to the {family:?} {} hook at priority {candidate}: {err}",
                        self.name,
                        hook.name()
                    ))
                }
            }
        }
        Err(anyhow!(
            "linking {} to the {family:?} {} hook: priorities {priority} to {} are all taken ({}): is another tracer running in this network namespace?",
            self.name,
            hook.name(),
            priority + inward * (PRIORITY_TRIES - 1),
            last_error.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn link(&mut self, family: Family, hook: Hook, priority: i32) -> std::io::Result<()> {
        let prog_fd = self.fd.as_ref().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: plain data, zero means "not set".
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_LINK_CREATE member of the union.
        let create = unsafe { &mut attr.link_create };
        create.__bindgen_anon_1.prog_fd = prog_fd.as_raw_fd() as u32;
        create.attach_type = bpf_attach_type::BPF_NETFILTER as u32;
        // SAFETY: writing the netfilter member of the link-type union.
        let netfilter = unsafe { &mut create.__bindgen_anon_3.netfilter };
        netfilter.pf = family.nfproto();
        netfilter.hooknum = hook as u32;
        netfilter.priority = priority;
        let link = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
        self.links.push(link);
        Ok(())
    }

    pub(crate) fn fd(&self) -> Option<&OwnedFd> {
        self.fd.as_ref()
    }

    pub(crate) fn link_count(&self) -> usize {
        self.links.len()
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, fully initialised bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>() as libc::c_long)
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// The verifier's last lines: they say why it refused.
fn verifier_summary(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log.split(|b| *b == 0).next().unwrap_or_default()).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" | ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(" (verifier: {tail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_number_like_the_kernel() {
        assert_eq!(Hook::from_number(2), Some(Hook::Forward));
        assert_eq!(Hook::from_number(5), None);
        assert_eq!(
            Hook::ALL.iter().map(|h| h.name()).collect::<Vec<_>>().join(","),
            "PRE_ROUTING,LOCAL_IN,FORWARD,LOCAL_OUT,POST_ROUTING"
        );
    }

    #[test]
    fn verifier_summary_keeps_the_last_lines() {
        let log = b"0: R1=ctx\n1: (79) r2 = *(u64 *)(r1 +16)\ninvalid bpf_context access off=16 size=8\nprocessed 2 insns\n\0garbage";
        assert_eq!(
            verifier_summary(log),
            " (verifier: 1: (79) r2 = *(u64 *)(r1 +16) | invalid bpf_context access off=16 size=8 | processed 2 insns)"
        );
        assert_eq!(verifier_summary(b"\0"), "");
    }
}
