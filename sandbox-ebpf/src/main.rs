//! leash's eBPF programs, built for `bpfel-unknown-none` by `sandbox-user/build.rs` (aya-build).
//!
//! - `net/`: cgroup programs attached to each sandbox cgroup. Together they confine every process
//!   in the cgroup (and its descendants) to one TCP address: the proxy leash started for it.
//! - `lsm/`: BPF-LSM programs, attached once per host and scoped to sandboxes by cgroup id, plus
//!   the probe `leash doctor` loads.
//! - `learn.rs`: while `leash run --learn` runs, what its sandbox opens and runs.
//! - `kernel.rs`: reading kernel structs at offsets userspace found in the kernel's BTF.
//! - `maps.rs`: the maps, keyed by sandbox cgroup id; layouts live in `sandbox-common`.
//! - `events.rs`: deny events to userspace, the same for both.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod learn;
#[cfg(target_arch = "bpf")]
mod lsm;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;

/// LSM programs are refused without a GPL-compatible license.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
