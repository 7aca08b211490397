//! `fexit/security_file_open`: enforces nothing. While `leash run --learn` runs, it records
//! what the learning sandbox opens — for reading, for writing, to run — so that userspace can
//! write the `kernel.exec.allow` and `filesystem_policy` that the run needed. Only opens the
//! LSMs allowed are recorded (the hook's return value is 0): a file `kernel.deny_open` refused
//! is not learned as needed.
//!
//! An fexit program, not BPF-LSM: learning works on hosts without BPF-LSM, and it is attached
//! only while a learning run lives (by that run; the link closes with it). Every open on the host
//! pays one helper call and one hash lookup meanwhile. Each file is reported once per sandbox
//! (reads once per directory, which is what `filesystem_policy` grants; a directory opened is
//! reported as itself, never as its parent): the key goes into
//! `LEARN_SEEN` only once the record is in the ring, so a record lost to a full ring is sent again
//! at the next open. Records go to the sandbox's own event ring, never to the shared one.
//! Minimum kernel: 5.10 (`bpf_d_path`).

use aya_ebpf::{helpers::generated::bpf_d_path, macros::fexit, programs::FExitContext};
use sandbox_common::{counter, learn_kind, LearnEvent, LearnKey, LEARN_PATH_MAX};

use crate::kernel::{field, layout_set, offset};
use crate::maps::{EVENT_RINGS, EVENT_SLOTS, LEARNERS, LEARN_SEEN};
use crate::net::{count, current_cgroup};

/// `__FMODE_EXEC` in `file.f_flags`: the file was opened by exec (a bit no `O_` flag uses).
const FMODE_EXEC: u32 = 0x20;
/// `O_ACCMODE`: `O_WRONLY` 1 or `O_RDWR` 2 write.
const O_ACCMODE: u32 = 3;

/// `S_IFMT` and `S_IFDIR` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

#[fexit(function = "security_file_open")]
pub fn leash_learn_file_open(ctx: FExitContext) -> i32 {
    let sandbox = current_cgroup();
    // SAFETY: only presence is read.
    if unsafe { LEARNERS.get(&sandbox) }.is_none() || !layout_set() {
        return 0;
    }
    let file: u64 = ctx.arg(0);
    let refused: i32 = ctx.arg(1);
    if file == 0 || refused != 0 {
        return 0;
    }
    let flags: u32 = field(file, offset!(file_flags));
    let kind = if flags & FMODE_EXEC != 0 {
        learn_kind::EXEC
    } else if flags & O_ACCMODE != 0 {
        learn_kind::WRITE
    } else {
        learn_kind::READ
    };
    let path = file + offset!(file_path) as u64;
    let dentry: u64 = field(path, offset!(path_dentry));
    let own_inode: u64 = field(file, offset!(file_inode));
    let directory = own_inode != 0 && field::<u16>(own_inode, offset!(inode_mode)) & S_IFMT == S_IFDIR;
    let named = if kind == learn_kind::READ && !directory { field(dentry, offset!(dentry_parent)) } else { dentry };
    if named == 0 {
        return 0;
    }
    let inode: u64 = field(named, offset!(dentry_inode));
    if inode == 0 {
        return 0;
    }
    let sb: u64 = field(inode, offset!(inode_sb));
    let dev: u32 = if sb == 0 { 0 } else { field(sb, offset!(sb_dev)) };
    let key = LearnKey { sandbox, ino: field(inode, offset!(inode_ino)), dev, kind };
    // SAFETY: only presence is read.
    if unsafe { LEARN_SEEN.get(&key) }.is_some() {
        return 0;
    }
    // SAFETY: a plain lookup; the inner map is only used through BPF helpers.
    let Some(ring) = unsafe { EVENT_SLOTS.get(&sandbox) }.and_then(|slot| EVENT_RINGS.get(*slot)) else {
        return 0;
    };
    let Some(mut entry) = ring.reserve_untyped::<LearnEvent>(0) else {
        // Counted for the learned file to say so; reported again at the file's next open.
        count(sandbox, counter::LEARN_LOST);
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved record, `LearnEvent` sized; the helper writes at most
    // LEARN_PATH_MAX bytes into `path` and the typed `struct path` pointer is the verifier's
    // to check.
    unsafe {
        (*event).cgroup_id = sandbox;
        (*event).kind = kind;
        (*event)._pad = 0;
        let dst = core::ptr::addr_of_mut!((*event).path) as *mut u8;
        if bpf_d_path(path as *mut _, dst as *mut _, LEARN_PATH_MAX as u32) < 0 {
            *dst = 0;
        }
    }
    entry.submit(0);
    let _ = LEARN_SEEN.insert(&key, &1, 0);
    0
}
