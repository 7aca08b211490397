//! `lsm/file_open`: files a sandbox may never open (`kernel.deny_open`: a service-account token,
//! leash's credentials file), identified by (device, inode), so a hard link or a symlink to the
//! file is refused too. Exec opens the file through this hook as well. Minimum kernel: 5.7.
//!
//! The hottest hook there is: it runs for every open of every task. Outside sandboxes it costs
//! the pre-filter; a task whose own cgroup is a sandbox (every `leash run`) pays four loads and
//! one hash lookup, whatever the length of its list: the deny list is keyed by the cgroup id, so
//! a hit is a refusal without the sandbox's policy being looked up, and a miss an allow. Only a
//! task below a sandbox registered with descendants (the node daemon's pods) takes the full path.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_rule, Hook, InodeKey};

use super::{current_sandbox, deny_in, descendants_anywhere, may_be_sandbox, Event, ALLOW, EPERM};
use crate::kernel::{file_id, FileId};
use crate::maps::LSM_DENY_OPEN;
use crate::net::current_cgroup;

#[lsm(hook = "file_open")]
pub fn leash_lsm_file_open(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let own = current_cgroup();
    if may_be_sandbox(own) {
        if let Some(id) = file_id(file) {
            if denied(own, &id) {
                return refuse(own, &id);
            }
            if !descendants_anywhere() {
                return ALLOW;
            }
        }
    } else if !descendants_anywhere() {
        return ALLOW;
    }
    // Below a sandbox with descendants, or the file could not be read: the full lookup.
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::DENY_OPEN == 0 {
        return ALLOW;
    }
    match file_id(file) {
        Some(id) if !denied(sandbox.id, &id) => ALLOW,
        Some(id) => refuse(sandbox.id, &id),
        None => deny_in(sandbox.id, &Event::new(Hook::LsmOpen)),
    }
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
