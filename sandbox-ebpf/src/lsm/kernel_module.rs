//! Kernel code from inside a sandbox: `kernel_module_request` (module auto-loading the task
//! triggers, e.g. by asking for an unloaded socket family), `kernel_load_data` (init_module(2)
//! from a buffer, kexec_load) and `kernel_read_file` (finit_module(2), kexec_file_load, and also
//! firmware and policy files the kernel reads on the task's behalf). A root agent that can load a
//! module owns the kernel. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::check;

#[lsm(hook = "kernel_module_request")]
pub fn leash_lsm_kernel_module_request(_ctx: LsmContext) -> i32 {
    check(lsm_deny::KERNEL_MODULE, Hook::LsmKernelModule, (0, 0, 0))
}

#[lsm(hook = "kernel_load_data")]
pub fn leash_lsm_kernel_load_data(ctx: LsmContext) -> i32 {
    // arg 0: enum kernel_load_data_id (LOADING_MODULE, LOADING_KEXEC_IMAGE, ...).
    let id: u32 = ctx.arg(0);
    check(lsm_deny::KERNEL_MODULE, Hook::LsmKernelModule, (0, 0, id))
}

#[lsm(hook = "kernel_read_file")]
pub fn leash_lsm_kernel_read_file(ctx: LsmContext) -> i32 {
    // arg 1: enum kernel_read_file_id (READING_FIRMWARE, READING_MODULE, ...).
    let id: u32 = ctx.arg(1);
    check(lsm_deny::KERNEL_MODULE, Hook::LsmKernelModule, (0, 0, id))
}
