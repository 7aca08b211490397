//! `leash_lsm_probe`: attached to `lsm/socket_create`, allows everything.
//!
//! Enforces nothing. `leash doctor` and `leash run` load and attach it to learn whether this
//! kernel runs BPF-LSM programs at all (needs `CONFIG_BPF_LSM`, `bpf` in `lsm=` and BTF), by
//! trying rather than by reading the kernel configuration. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};

#[lsm(hook = "socket_create")]
pub fn leash_lsm_probe(_ctx: LsmContext) -> i32 {
    0
}
