//! `lsm/perf_event_open`: no perf events inside a sandbox. They expose kernel and other
//! processes' activity (and have been a steady source of kernel bugs); an agent does not need
//! them. Minimum kernel: 5.7 (the hook itself exists since 5.6).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::check;

#[lsm(hook = "perf_event_open")]
pub fn leash_lsm_perf_event_open(ctx: LsmContext) -> i32 {
    // arg 0 is the attr pointer; arg 1 the kind of access (PERF_SECURITY_OPEN, ...).
    let access: u32 = ctx.arg(1);
    check(lsm_deny::PERF_EVENT, Hook::LsmPerfEvent, (0, 0, access))
}
