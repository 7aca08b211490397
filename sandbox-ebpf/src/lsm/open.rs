//! `lsm/file_open`: files a sandbox may never open (`kernel.deny_open`: a service-account token,
//! leash's credentials file), identified by (device, inode), so a hard link or a symlink to the
//! file is refused too. Exec opens the file through this hook as well. Minimum kernel: 5.7.
//!
//! The hottest hook there is: it runs for every open of every task, in a sandbox or not. So the
//! file is asked about before the task: two loads (the inode and its number) and the deny lists'
//! pre-filter (`LEASH_LSM_DENY_OPEN_FILTER`, a multiply and an array lookup) answer "no sandbox
//! denies this file" for nearly every open, without looking up whose task it is, whatever the
//! length of the lists. Only a file some sandbox denies (or one sharing its slot) costs the
//! task's cgroup and a hash lookup: the deny list is keyed by the cgroup id, so a hit is a
//! refusal without the sandbox's policy being looked up, and a miss an allow. Only a task below
//! a sandbox registered with descendants takes the full path.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{deny_open_filter_slot, lsm_rule, Hook, InodeKey};

use super::{current_sandbox, deny_in, descendants_anywhere, may_be_sandbox, Event, ALLOW, EPERM};
use crate::kernel::{file_inode, inode_id, inode_number, FileId};
use crate::maps::{LSM_DENY_OPEN, LSM_DENY_OPEN_FILTER};
use crate::net::current_cgroup;

#[lsm(hook = "file_open")]
pub fn leash_lsm_file_open(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let Some(inode) = file_inode(file) else {
        return unreadable();
    };
    let ino = inode_number(inode);
    if !listed_anywhere(ino) {
        return ALLOW;
    }
    // Some sandbox denies a file with this slot: is the task in one that denies this file?
    let Some(id) = inode_id(inode, ino) else {
        return unreadable();
    };
    let own = current_cgroup();
    if may_be_sandbox(own) && denied(own, &id) {
        return refuse(own, &id);
    }
    if !descendants_anywhere() {
        return ALLOW;
    }
    // Below a sandbox with descendants: the full lookup.
    match current_sandbox() {
        Some(sandbox) if sandbox.policy.rules & lsm_rule::DENY_OPEN != 0 && denied(sandbox.id, &id) => {
            refuse(sandbox.id, &id)
        }
        _ => ALLOW,
    }
}

/// The verdict when the file's identity cannot be read (a NULL on the way, or the layout not
/// set): refused in a sandbox that denies files, allowed elsewhere.
#[inline(always)]
fn unreadable() -> i32 {
    match current_sandbox() {
        Some(sandbox) if sandbox.policy.rules & lsm_rule::DENY_OPEN != 0 => {
            deny_in(sandbox.id, &Event::new(Hook::LsmOpen))
        }
        _ => ALLOW,
    }
}

/// Whether some sandbox may deny a file with inode number `ino`: false when the pre-filter's
/// count for its slot is zero (a missing filter entry, never: the array is full-sized, is a
/// maybe).
#[inline(always)]
fn listed_anywhere(ino: u64) -> bool {
    !LSM_DENY_OPEN_FILTER.get(deny_open_filter_slot(ino)).is_some_and(|n| *n == 0)
}

/// Whether sandbox `sandbox` denies the file `id`.
#[inline(always)]
fn denied(sandbox: u64, id: &FileId) -> bool {
    let key = InodeKey { sandbox, ino: id.ino, dev: id.dev, _pad: 0 };
    // SAFETY: only presence is read.
    unsafe { LSM_DENY_OPEN.get(&key) }.is_some()
}

#[inline(always)]
fn refuse(sandbox: u64, id: &FileId) -> i32 {
    let mut event = Event::new(Hook::LsmOpen);
    event.target_dev = id.dev;
    event.target_ino = id.ino;
    deny_in(sandbox, &event);
    EPERM
}
