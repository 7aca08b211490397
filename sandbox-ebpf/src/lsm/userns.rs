//! `lsm/userns_create`: no new user namespaces inside a sandbox. An unprivileged user namespace
//! hands the agent a full set of capabilities over new namespaces — the usual first step of
//! kernel exploits and of escaping the network confinement with a fresh network namespace.
//! Minimum kernel: 6.1 (the hook's first release); on older kernels it is reported unavailable.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::check;

#[lsm(hook = "userns_create")]
pub fn leash_lsm_userns_create(_ctx: LsmContext) -> i32 {
    check(lsm_deny::USERNS, Hook::LsmUserns, (0, 0, 0))
}
