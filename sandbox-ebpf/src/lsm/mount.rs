//! Mounting inside a sandbox: `sb_mount` (mount(2), remounts and bind mounts included),
//! `sb_umount`, `sb_pivotroot`, `move_mount` (the new mount API's way to attach a mount, 5.2+) and
//! `fs_context_parse_param` (fsconfig(2) parameters of a filesystem being set up with fsopen(2)).
//! A sandbox that can mount can hide or replace the files Landlock and leash rely on. Each hook
//! is loaded only if this kernel's BTF has it. Minimum kernel: 5.7.
//!
//! Known gap: fsopen + `FSCONFIG_CMD_CREATE` with no parameters + fsmount yields a detached mount
//! that no hook here refuses (it cannot be attached to the tree without `move_mount`).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::check;

#[lsm(hook = "sb_mount")]
pub fn leash_lsm_sb_mount(ctx: LsmContext) -> i32 {
    // arg 3: the MS_* flags.
    let flags: u64 = ctx.arg(3);
    check(lsm_deny::MOUNT, Hook::LsmMount, (0, 0, flags as u32))
}

#[lsm(hook = "sb_umount")]
pub fn leash_lsm_sb_umount(_ctx: LsmContext) -> i32 {
    check(lsm_deny::MOUNT, Hook::LsmMount, (0, 0, 0))
}

#[lsm(hook = "sb_pivotroot")]
pub fn leash_lsm_sb_pivotroot(_ctx: LsmContext) -> i32 {
    check(lsm_deny::MOUNT, Hook::LsmMount, (0, 0, 0))
}

#[lsm(hook = "move_mount")]
pub fn leash_lsm_move_mount(_ctx: LsmContext) -> i32 {
    check(lsm_deny::MOUNT, Hook::LsmMount, (0, 0, 0))
}

#[lsm(hook = "fs_context_parse_param")]
pub fn leash_lsm_fs_context_parse_param(_ctx: LsmContext) -> i32 {
    check(lsm_deny::MOUNT, Hook::LsmMount, (0, 0, 0))
}
