//! ptrace from inside a sandbox to a process outside it: `ptrace_access_check` (PTRACE_ATTACH/
//! SEIZE, and every ptrace-mode access check: `/proc/<pid>/mem`, `environ`, `process_vm_readv`,
//! `pidfd_getfd`, kcmp) and `ptrace_traceme` (being traced by a parent outside). Tracing another
//! process reads its memory and credentials and can drive it; outside the sandbox that could be
//! leash or its proxy. Debugging within the sandbox stays possible. A task's access to its own
//! thread group never reaches the hook. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::{current_sandbox, deny, same_sandbox, Event, ALLOW};
use crate::kernel::{layout_set, task_tgid};

#[lsm(hook = "ptrace_access_check")]
pub fn leash_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    // arg 1: the PTRACE_MODE_* access mode.
    let mode: u32 = ctx.arg(1);
    judge(ctx.arg(0), mode)
}

#[lsm(hook = "ptrace_traceme")]
pub fn leash_lsm_ptrace_traceme(ctx: LsmContext) -> i32 {
    judge(ctx.arg(0), 0)
}

/// Allows ptrace of `target` (a `task_struct` address) only within the caller's sandbox.
#[inline(always)]
fn judge(target: u64, mode: u32) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.deny & lsm_deny::PTRACE == 0 {
        return ALLOW;
    }
    let mut event = Event::new(Hook::LsmPtrace);
    event.protocol = mode;
    if same_sandbox(target, &sandbox) {
        return ALLOW;
    }
    if layout_set() {
        event.target_pid = task_tgid(target);
    }
    deny(&sandbox, &event)
}
