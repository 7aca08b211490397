//! Reading kernel structs without CO-RE. The field offsets come from the running kernel's BTF:
//! userspace sets them in the read-only global [`LEASH_KERNEL_LAYOUT`] when it loads the object
//! (`sandbox-user/src/kernel/generation.rs`), and the verifier, which reads frozen `.rodata`,
//! sees each offset as a constant.
//!
//! Two ways to read, chosen by what the verifier knows of the base address:
//! - [`field`]: a plain load, for pointers whose BTF type the verifier knows (a hook's arguments,
//!   and pointers loaded through them). The verifier checks the offset against the type and the
//!   JIT makes the load fault-safe (a bad address reads 0): one instruction, where a helper call
//!   costs dozens. A base the verifier sees as a plain number makes the program fail to load.
//! - [`read`]: `bpf_probe_read_kernel`, for addresses the verifier sees as plain numbers (the
//!   current task from `bpf_get_current_task`, which has no typed form before 5.11, and what is
//!   read through it). A failed read is `None`, and callers deny.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::generated as gen;
use sandbox_common::KernelLayout;

/// This kernel's struct layout; all zero (`valid` 0) until userspace sets it at load.
#[no_mangle]
// SAFETY: the layout is plain integers, for which all zeroes is a value.
pub(crate) static LEASH_KERNEL_LAYOUT: KernelLayout = unsafe { core::mem::zeroed() };

/// One offset of [`LEASH_KERNEL_LAYOUT`]. A volatile read: the compiler must not fold the
/// zeroes it was built with, the verifier folds the value userspace set.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read of an initialised static.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::kernel::LEASH_KERNEL_LAYOUT.$field)) }
    };
}
pub(crate) use offset;

/// Whether userspace set the layout (it always does before the programs can attach).
#[inline(always)]
pub fn layout_set() -> bool {
    offset!(valid) != 0
}

/// The `T` at `base + offset`, where `base` is a BTF-typed pointer (see the module doc).
#[inline(always)]
pub fn field<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: the verifier checks the access against `base`'s BTF type and the JIT turns it into
    // a load that cannot fault.
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
}

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

/// The cgroup v2 cgroup of `task` (any address): `task->cgroups->dfl_cgrp`.
#[inline(always)]
pub fn task_cgroup(task: u64) -> Option<u64> {
    let css_set = read_u64(task, offset!(task_cgroups))?;
    read_u64(css_set, offset!(css_set_dfl_cgrp))
}

/// The id of the cgroup at `cgroup` (any address; what `bpf_get_current_cgroup_id` returns):
/// `cgroup->kn->id`.
#[inline(always)]
pub fn cgroup_id(cgroup: u64) -> Option<u64> {
    let kn = read_u64(cgroup, offset!(cgroup_kn))?;
    read_u64(kn, offset!(kernfs_id))
}

/// The tgid of `task`, a BTF-typed `task_struct` pointer (a hook's argument).
#[inline(always)]
pub fn task_tgid(task: u64) -> u32 {
    field(task, offset!(task_tgid))
}

/// What names a file for the allow and deny lists: its device (kernel encoding) and inode
/// number; and its inode, for [`FileId::linked`].
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
    /// The BTF-typed `struct inode` pointer the two were read from.
    inode: u64,
}

impl FileId {
    /// Whether the file still has a link in some directory (a memfd or a deleted file has
    /// none). A load of its own: `file_open`, which runs for every open, does not need it.
    #[inline(always)]
    pub fn linked(&self) -> bool {
        field::<u32>(self.inode, offset!(inode_nlink)) != 0
    }
}

/// The identity of `file`, a BTF-typed `struct file` pointer (a hook's argument, or loaded
/// through one): `file->f_inode->{i_sb->s_dev, i_ino}`, four loads. `None` when the layout is
/// not set or a pointer on the way is NULL.
#[inline(always)]
pub fn file_id(file: u64) -> Option<FileId> {
    let inode = file_inode(file)?;
    inode_id(inode, inode_number(inode))
}

/// The inode of `file` (typed, as for [`file_id`]): `file->f_inode`, one load. `None` when the
/// layout is not set or a pointer on the way is NULL.
#[inline(always)]
pub fn file_inode(file: u64) -> Option<u64> {
    if !layout_set() || file == 0 {
        return None;
    }
    let inode: u64 = field(file, offset!(file_inode));
    (inode != 0).then_some(inode)
}

/// The inode number of `inode`, a typed `struct inode` pointer from [`file_inode`].
#[inline(always)]
pub fn inode_number(inode: u64) -> u64 {
    field(inode, offset!(inode_ino))
}

/// The identity of the file whose inode is `inode` (from [`file_inode`]) and its number `ino`
/// (from [`inode_number`]): with its superblock's device, two loads more. `None` when the
/// superblock pointer is NULL.
#[inline(always)]
pub fn inode_id(inode: u64, ino: u64) -> Option<FileId> {
    let sb: u64 = field(inode, offset!(inode_sb));
    if sb == 0 {
        return None;
    }
    Some(FileId { dev: field(sb, offset!(sb_dev)), ino, inode })
}
