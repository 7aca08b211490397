//! `lsm/bpf`: no bpf(2) at all inside a sandbox. Loading programs or reading maps would let the
//! agent observe or undo leash's own confinement (and most commands need privileges it should
//! not have anyway); nothing an agent legitimately does needs it. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::check;

#[lsm(hook = "bpf")]
pub fn leash_lsm_bpf(ctx: LsmContext) -> i32 {
    let cmd: u32 = ctx.arg(0);
    check(lsm_deny::BPF, Hook::LsmBpf, (0, 0, cmd))
}
