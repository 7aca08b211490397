//! Reading kernel structs without CO-RE: each read is `bpf_probe_read_kernel` at a base address
//! plus a field offset that userspace found in the running kernel's BTF (`LEASH_LSM_LAYOUT`,
//! filled by `sandbox-user/src/kernel/btf.rs`). A failed read is `None`, and callers deny.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use sandbox_common::KernelLayout;

/// The `u64` (or pointer) at `base + offset`.
#[inline(always)]
pub fn read_u64(base: u64, offset: u32) -> Option<u64> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error, not a crash.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64).ok() }
}

/// The `u32` at `base + offset`.
#[inline(always)]
pub fn read_u32(base: u64, offset: u32) -> Option<u32> {
    if base == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u32).ok() }
}

/// The cgroup v2 cgroup of `task`: `task->cgroups->dfl_cgrp`.
#[inline(always)]
pub fn task_cgroup(task: u64, layout: &KernelLayout) -> Option<u64> {
    let css_set = read_u64(task, layout.task_cgroups)?;
    read_u64(css_set, layout.css_set_dfl_cgrp)
}

/// The id of the cgroup at `cgroup` (what `bpf_get_current_cgroup_id` returns): `cgroup->kn->id`.
#[inline(always)]
pub fn cgroup_id(cgroup: u64, layout: &KernelLayout) -> Option<u64> {
    let kn = read_u64(cgroup, layout.cgroup_kn)?;
    read_u64(kn, layout.kernfs_id)
}

/// Device (kernel encoding) and inode number of the file at `file`
/// (`file->f_inode->{i_sb->s_dev, i_ino}`), and the inode's address.
#[inline(always)]
pub fn file_identity(file: u64, layout: &KernelLayout) -> Option<(u32, u64, u64)> {
    let inode = read_u64(file, layout.file_inode)?;
    let ino = read_u64(inode, layout.inode_ino)?;
    let sb = read_u64(inode, layout.inode_sb)?;
    let dev = read_u32(sb, layout.sb_dev)?;
    Some((dev, ino, inode))
}
