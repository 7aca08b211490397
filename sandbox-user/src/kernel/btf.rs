//! The kernel struct offsets leash's BPF-LSM programs read, found in the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs are built without CO-RE relocations (Rust has no
//! `preserve_access_index`), so userspace does the relocation itself: it reads the BTF type
//! section, looks up each struct member by name (through anonymous unions and structs), and
//! sets the byte offsets as the object's read-only global `LEASH_KERNEL_LAYOUT` when it loads it
//! (`generation.rs`), which the verifier then treats as constants. A member this kernel lacks is
//! an error naming it: rules that need it cannot be enforced.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use sandbox_common::KernelLayout;

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union: name offset, type id, bit offset.
#[derive(Clone, Copy)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// The structs and unions of a BTF blob, enough to find member offsets.
pub struct KernelBtf {
    strings: Vec<u8>,
    /// Type id -> members, for structs and unions only.
    members: HashMap<u32, Vec<Member>>,
    /// Struct name -> type id (the first complete definition).
    structs: HashMap<String, u32>,
}

impl KernelBtf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data =
            std::fs::read(path).with_context(|| format!("reading {path} (a kernel built with BTF is needed)"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(data.get(o..o + 2).context("truncated BTF")?.try_into()?))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(data.get(o..o + 4).context("truncated BTF")?.try_into()?))
        };
        if u16_at(0)? != BTF_MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let strings_start = hdr_len + str_off;
        let strings = data.get(strings_start..strings_start + str_len).context("truncated BTF strings")?.to_vec();
        let mut btf = KernelBtf { strings, members: HashMap::new(), structs: HashMap::new() };
        let mut at = types_start;
        let end = types_start + type_len;
        let mut id = 1u32;
        while at < end {
            let name = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(m + 8)?;
                        // With kind_flag, the top 8 bits are a bitfield size.
                        let bit_offset = if kind_flag { raw & 0x00ff_ffff } else { raw };
                        members.push(Member { name: u32_at(m)?, type_id: u32_at(m + 4)?, bit_offset });
                    }
                    at += vlen * 12;
                    if kind == KIND_STRUCT && name != 0 {
                        let n = btf.string(name)?.to_owned();
                        // Forward declarations are a different kind; keep the first definition.
                        btf.structs.entry(n).or_insert(id);
                    }
                    btf.members.insert(id, members);
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_ENUM | KIND_FUNC_PROTO => at += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => at += vlen * 12,
                _ => {} // no trailing data
            }
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> Result<&str> {
        let rest = self.strings.get(offset as usize..).context("BTF string offset out of range")?;
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(std::str::from_utf8(&rest[..len])?)
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous unions and structs.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32> {
        let id = *self.structs.get(name).with_context(|| format!("the kernel's BTF has no struct {name}"))?;
        let bits = self
            .find(id, member, 0, 0)
            .with_context(|| format!("the kernel's struct {name} has no member {member}"))?;
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bitfield");
        }
        Ok(bits / 8)
    }

    /// The first of `members` that `struct name` has, and its offset.
    pub fn offset_any(&self, name: &str, members: &[&'static str]) -> Result<(&'static str, u32)> {
        for m in members {
            if let Ok(off) = self.offset(name, m) {
                return Ok((m, off));
            }
        }
        bail!("the kernel's struct {name} has none of the members {}", members.join(", "))
    }

    fn find(&self, id: u32, member: &str, base: u32, depth: u32) -> Option<u32> {
        if depth > 4 {
            return None;
        }
        let members = self.members.get(&id)?;
        for m in members {
            if m.name == 0 {
                // An anonymous union or struct: its members belong to the outer struct.
                if let Some(bits) = self.find(m.type_id, member, base + m.bit_offset, depth + 1) {
                    return Some(bits);
                }
            } else if self.string(m.name).ok() == Some(member) {
                return Some(base + m.bit_offset);
            }
        }
        None
    }

    /// Whether `struct name` has `member`.
    pub fn has(&self, name: &str, member: &str) -> bool {
        self.offset(name, member).is_ok()
    }

    /// The layout the LSM programs need, or an error naming the first member this kernel lacks.
    pub fn lsm_layout(&self) -> Result<KernelLayout> {
        // cgroup.ancestors (pointers) replaced cgroup.ancestor_ids (ids) in 6.0.
        let (ancestors, cgroup_ancestors) = self.offset_any("cgroup", &["ancestors", "ancestor_ids"])?;
        Ok(KernelLayout {
            valid: 1,
            binprm_file: self.offset("linux_binprm", "file")?,
            binprm_filename: self.offset("linux_binprm", "filename")?,
            file_inode: self.offset("file", "f_inode")?,
            inode_ino: self.offset("inode", "i_ino")?,
            inode_sb: self.offset("inode", "i_sb")?,
            inode_nlink: self.offset_any("inode", &["i_nlink", "__i_nlink"])?.1,
            sb_dev: self.offset("super_block", "s_dev")?,
            task_tgid: self.offset("task_struct", "tgid")?,
            task_cgroups: self.offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.offset("css_set", "dfl_cgrp")?,
            cgroup_kn: self.offset("cgroup", "kn")?,
            cgroup_level: self.offset("cgroup", "level")?,
            cgroup_ancestors,
            ancestors_are_ids: (ancestors == "ancestor_ids") as u32,
            kernfs_id: self.offset("kernfs_node", "id")?,
            msghdr_name: self.offset("msghdr", "msg_name")?,
            msghdr_namelen: self.offset("msghdr", "msg_namelen")?,
            vma_file: self.offset("vm_area_struct", "vm_file")?,
            socket_sk: self.offset("socket", "sk")?,
            skc_daddr: self.offset("sock_common", "skc_daddr")?,
            skc_dport: self.offset("sock_common", "skc_dport")?,
            skc_family: self.offset("sock_common", "skc_family")?,
            skc_v6_daddr: self.offset("sock_common", "skc_v6_daddr")?,
            sk_cgrp_data: self.offset("sock", "sk_cgrp_data")?,
            unix_sock_addr: self.offset("unix_sock", "addr")?,
            unix_address_len: self.offset("unix_address", "len")?,
            unix_address_name: self.offset("unix_address", "name")?,
            ancestor_helper: u32::from(running_kernel_at_least(5, 11)),
            file_flags: self.offset("file", "f_flags")?,
            file_path: self.offset("file", "f_path")?,
            path_dentry: self.offset("path", "dentry")?,
            dentry_parent: self.offset("dentry", "d_parent")?,
            dentry_inode: self.offset("dentry", "d_inode")?,
            inode_mode: self.offset("inode", "i_mode")?,
        })
    }
}

/// Whether the running kernel's release (`/proc/sys/kernel/osrelease`) is at least
/// `major.minor`; false when it cannot be read.
pub(crate) fn running_kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, major, minor)
}

/// Whether kernel release `release` (`6.1.0-57-cloud-amd64`) is at least `major.minor`.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own BTF (every kernel leash supports has it): offsets must be found and sane.
    #[test]
    fn host_layout_is_found() {
        let Ok(btf) = KernelBtf::from_sys_fs() else {
            crate::say!("no /sys/kernel/btf/vmlinux here; nothing to check");
            return;
        };
        let layout = btf.lsm_layout().expect("layout");
        assert_eq!(layout.valid, 1);
        // msg_name is msghdr's first member on every kernel; msg_namelen follows the pointer.
        assert_eq!(layout.msghdr_name, 0);
        assert_eq!(layout.msghdr_namelen, 8);
        // sock_common opens with the address pair, then the port pair; the family follows.
        assert_eq!((layout.skc_daddr, layout.skc_dport, layout.skc_family), (0, 12, 16));
        assert!(layout.task_cgroups > layout.task_tgid || layout.task_tgid > 0);
        assert!(btf.has("inode", "i_ino"));
        assert!(!btf.has("inode", "no_such_member"));
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("5.11.0", 5, 11));
        assert!(release_at_least("6.1.0-57-cloud-amd64\n", 5, 11));
        assert!(release_at_least("7.2.13+deb14-cloud-amd64", 5, 11));
        assert!(!release_at_least("5.10.0-46-cloud-amd64", 5, 11));
        assert!(!release_at_least("4.19.0", 5, 11));
        assert!(!release_at_least("", 5, 11));
        assert!(!release_at_least("garbage", 5, 11));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(KernelBtf::parse(b"not btf at all, not btf at all").is_err());
        assert!(KernelBtf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
    }
}
