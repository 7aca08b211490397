//! Reading kernel structs without CO-RE: each read is `bpf_probe_read_kernel` at a base address
//! plus a field offset that userspace found in the running kernel's BTF (`LEASH_LSM_LAYOUT`,
//! filled by `sandbox-user/src/kernel/btf.rs`). A failed read is `None`, and callers deny.
//! Every read of kernel memory in the LSM programs goes through [`read`].

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::generated as gen;
use sandbox_common::KernelLayout;

/// The `T` at kernel address `addr`, or `None` when the read faults.
///
/// The destination starts zeroed: the compiler may load it on a path where the read failed
/// (to select the value later), and 5.10's verifier refuses any read of stack it has not seen
/// written. `bpf_probe_read_kernel` from aya leaves it uninitialised, which `socket_sendmsg`
/// tripped over on 5.10.
#[inline(always)]
pub fn read<T: Copy>(addr: u64) -> Option<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    // SAFETY: the helper checks the address (a fault is an error, not a crash) and writes at
    // most `size_of::<T>()` bytes into `value`, which is all zeroes otherwise.
    let ret = unsafe {
        gen::bpf_probe_read_kernel(
            value.as_mut_ptr() as *mut c_void,
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        )
    };
    // SAFETY: zeroed or written: initialised either way, and `T` is plain data.
    (ret == 0).then(|| unsafe { value.assume_init() })
}

/// The `u64` (or pointer) at `base + offset`.
#[inline(always)]
pub fn read_u64(base: u64, offset: u32) -> Option<u64> {
    if base == 0 {
        return None;
    }
    read(base + offset as u64)
}

/// The `u32` at `base + offset`.
#[inline(always)]
pub fn read_u32(base: u64, offset: u32) -> Option<u32> {
    if base == 0 {
        return None;
    }
    read(base + offset as u64)
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
