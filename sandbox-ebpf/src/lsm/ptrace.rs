//! ptrace across a sandbox's edge: `ptrace_access_check` (PTRACE_ATTACH/
//! SEIZE, and every ptrace-mode access check: `/proc/<pid>/mem`, `environ`, `process_vm_readv`,
//! `pidfd_getfd`, kcmp) and `ptrace_traceme` (being traced by a parent outside). Tracing another
//! process reads its memory and credentials and can drive it; outside the sandbox that could be
//! leash or its proxy. Debugging within the sandbox stays possible, except under
//! `lsm_rule::NO_ATTACH_INSIDE` (a policy with `binaries:` rules): then no access in attach mode,
//! and no `PTRACE_TRACEME`, between the sandbox's own processes either, since code put into an
//! allowed executable would make requests in its name. From outside, only root attaches to or
//! reads a sandbox's process ([`from_outside`]). A task's access to its own thread group never reaches
//! the hook. Minimum kernel: 5.7.

use aya_ebpf::{helpers::bpf_get_current_uid_gid, macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, lsm_rule, Hook};

use super::{current_sandbox, deny, same_sandbox, sandbox_of_cgroup, Event, ALLOW};
use crate::kernel::{layout_set, task_cgroup, task_tgid};

#[lsm(hook = "ptrace_access_check")]
pub fn leash_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    // arg 1: the PTRACE_MODE_* access mode.
    let mode: u32 = ctx.arg(1);
    judge(ctx.arg(0), mode)
}

#[lsm(hook = "ptrace_traceme")]
pub fn leash_lsm_ptrace_traceme(ctx: LsmContext) -> i32 {
    // The parent becomes a tracer, which may then write the caller's memory: attach.
    judge(ctx.arg(0), PTRACE_MODE_ATTACH)
}

/// `PTRACE_MODE_ATTACH` and `PTRACE_MODE_NOAUDIT` (`include/linux/ptrace.h`).
const PTRACE_MODE_ATTACH: u32 = 0x02;
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// Allows ptrace of `target` (a `task_struct` address) only within the caller's sandbox, and
/// there not in attach mode under `NO_ATTACH_INSIDE`.
#[inline(always)]
fn judge(target: u64, mode: u32) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return from_outside(target, mode);
    };
    let mut event = Event::new(Hook::LsmPtrace);
    event.protocol = mode;
    if same_sandbox(target, &sandbox) {
        if sandbox.policy.rules & lsm_rule::NO_ATTACH_INSIDE == 0 || mode & PTRACE_MODE_ATTACH == 0 {
            return ALLOW;
        }
    } else if sandbox.policy.deny & lsm_deny::PTRACE == 0 {
        return ALLOW;
    }
    if layout_set() {
        event.target_pid = task_tgid(target);
    }
    deny(&sandbox, &event)
}

/// A task in no sandbox attaches to one in a sandbox only as root, and under
/// `NO_READ_FROM_OUTSIDE` (`leash run`) reads it only as root. Another process of the agent's
/// user (a daemon running as `nobody`, the invoking user's other processes) would otherwise
/// drive the agent, or take its connection to the proxy (`pidfd_getfd`), and be served by the
/// proxy as the sandbox; or reopen its descriptors through `/proc/<pid>/fd` (its terminal, its
/// stdin). leash and the node daemon run as root. The checks `ps` makes (`PTRACE_MODE_NOAUDIT`:
/// `/proc/<pid>/stat`) stay open, and cost the host no lookup.
#[inline(always)]
fn from_outside(target: u64, mode: u32) -> i32 {
    let quiet_read = mode & PTRACE_MODE_ATTACH == 0 && mode & PTRACE_MODE_NOAUDIT != 0;
    if quiet_read || bpf_get_current_uid_gid() as u32 == 0 || !layout_set() {
        return ALLOW;
    }
    let Some(sandbox) = task_cgroup(target).and_then(sandbox_of_cgroup) else {
        return ALLOW;
    };
    // Reads only where the sandbox asks (`leash run`; a pod's proxy reads its agent's `/proc`).
    if mode & PTRACE_MODE_ATTACH == 0 && sandbox.policy.rules & lsm_rule::NO_READ_FROM_OUTSIDE == 0 {
        return ALLOW;
    }
    let mut event = Event::new(Hook::LsmPtrace);
    event.protocol = mode;
    event.target_pid = task_tgid(target);
    deny(&sandbox, &event)
}
