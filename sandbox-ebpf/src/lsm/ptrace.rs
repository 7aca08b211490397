//! ptrace from inside a sandbox: `ptrace_access_check` (PTRACE_ATTACH/SEIZE, and every
//! ptrace-mode access check: `/proc/<pid>/mem`, `environ`, `process_vm_readv`, `pidfd_getfd`,
//! kcmp) and `ptrace_traceme`. Tracing another process reads its memory and credentials and can
//! drive it; inside a sandbox that could be a process leash trusts. A task's access to its own
//! thread group never reaches the hook. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::check;

#[lsm(hook = "ptrace_access_check")]
pub fn leash_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    // arg 1: the PTRACE_MODE_* access mode.
    let mode: u32 = ctx.arg(1);
    check(lsm_deny::PTRACE, Hook::LsmPtrace, (0, 0, mode))
}

#[lsm(hook = "ptrace_traceme")]
pub fn leash_lsm_ptrace_traceme(_ctx: LsmContext) -> i32 {
    check(lsm_deny::PTRACE, Hook::LsmPtrace, (0, 0, 0))
}
