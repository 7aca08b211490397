//! `lsm/file_open`: files a sandbox may never open (`kernel.deny_open`: a service-account token,
//! leash's credentials file), identified by (device, inode), so a hard link or a symlink to the
//! file is refused too. Runs for every open of every task; outside sandboxes it is one map
//! lookup, in a sandbox without `deny_open` two, and with one three map lookups and four loads
//! however long the list. Exec opens the file through this hook as well. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_rule, Hook, InodeKey};

use super::kernel::file_id;
use super::{current_sandbox, deny, Event, ALLOW};
use crate::maps::LSM_DENY_OPEN;

#[lsm(hook = "file_open")]
pub fn leash_lsm_file_open(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::DENY_OPEN == 0 {
        return ALLOW;
    }
    let file: u64 = ctx.arg(0);
    let mut event = Event::new(Hook::LsmOpen);
    let Some(id) = file_id(file) else {
        return deny(&sandbox, &event);
    };
    let key = InodeKey { sandbox: sandbox.id, ino: id.ino, dev: id.dev, _pad: 0 };
    // SAFETY: only presence is read.
    if unsafe { LSM_DENY_OPEN.get(&key) }.is_none() {
        return ALLOW;
    }
    event.target_dev = id.dev;
    event.target_ino = id.ino;
    deny(&sandbox, &event)
}
