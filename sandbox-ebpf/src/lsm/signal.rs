//! `lsm/task_kill`: no signals from a sandbox to processes outside it (`kernel.deny:
//! kill_outside`) — leash, its proxy, the user's shell, other sandboxes. Covers kill, tgkill,
//! sigqueue and pidfd_send_signal (every user-sent signal passes this hook); signals within the
//! sandbox and the kernel's own (SIGCHLD, SIGPIPE) are untouched. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::{current_sandbox, deny, same_sandbox, Event, ALLOW};
use crate::kernel::{layout_set, task_tgid};

#[lsm(hook = "task_kill")]
pub fn leash_lsm_task_kill(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.deny & lsm_deny::KILL_OUTSIDE == 0 {
        return ALLOW;
    }
    let target: u64 = ctx.arg(0);
    let signal: i32 = ctx.arg(2);
    let mut event = Event::new(Hook::LsmKill);
    event.protocol = signal as u32;
    if same_sandbox(target, &sandbox) {
        return ALLOW;
    }
    if layout_set() {
        event.target_pid = task_tgid(target);
    }
    deny(&sandbox, &event)
}
