//! BPF-LSM programs. Attached once per host (never per sandbox): every program runs for every
//! task, looks the task's cgroup id up in `LEASH_LSM_SANDBOXES` and allows everything to tasks
//! that are not in a sandbox cgroup.
//!
//! | file | hooks | `lsm_deny` flag |
//! |---|---|---|
//! | `socket.rs` | `socket_create` | `PACKET_SOCKET`, `RAW_SOCKET`, `VSOCK`, `NETLINK` |
//! | `bpf.rs` | `bpf` | `BPF` |
//! | `perf_event.rs` | `perf_event_open` | `PERF_EVENT` |
//! | `mount.rs` | `sb_mount`, `sb_umount`, `sb_pivotroot`, `move_mount`, `fs_context_parse_param` | `MOUNT` |
//! | `kernel_module.rs` | `kernel_module_request`, `kernel_load_data`, `kernel_read_file` | `KERNEL_MODULE` |
//! | `ptrace.rs` | `ptrace_access_check`, `ptrace_traceme` | `PTRACE` |
//! | `userns.rs` | `userns_create` (6.1+) | `USERNS` |
//! | `probe.rs` | `socket_create` | none: `leash doctor`'s "does BPF-LSM work here" probe |
//!
//! The hooks use only their scalar arguments (no kernel struct reads), so they need no CO-RE.
//! The task is identified by its own cgroup (not its ancestors): a sandbox's processes must stay
//! in the cgroup leash registered.

mod bpf;
mod kernel_module;
mod mount;
mod perf_event;
mod probe;
mod ptrace;
mod socket;
mod userns;

use sandbox_common::Hook;

use crate::maps::LSM_SANDBOXES;
use crate::net::{current_cgroup, report, Denied};

/// LSM verdicts: 0 lets the next LSM decide, a negative errno refuses.
pub const ALLOW: i32 = 0;
pub const EPERM: i32 = -1;

/// The verdict for a task asking for something the `flag` of its sandbox policy forbids:
/// `EPERM` (and a deny event) when the task is in a sandbox whose policy sets `flag`, else allow.
/// `detail` fills the event's `family`, `sock_type` and `protocol`.
#[inline(always)]
pub fn check(flag: u32, hook: Hook, detail: (u32, u32, u32)) -> i32 {
    let cgroup = current_cgroup();
    // SAFETY: the value is copied out of the map before the lookup's lifetime ends.
    let Some(policy) = (unsafe { LSM_SANDBOXES.get(&cgroup).copied() }) else {
        return ALLOW;
    };
    if policy.deny & flag == 0 {
        return ALLOW;
    }
    let (family, sock_type, protocol) = detail;
    report(cgroup, &Denied { hook, family, sock_type, protocol, addr: [0; 16], port: 0 }, true);
    EPERM
}
