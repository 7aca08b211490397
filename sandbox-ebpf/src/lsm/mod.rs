//! BPF-LSM programs. Attached once per program set (never per sandbox): every program runs for
//! every task, finds the task's sandbox through `LEASH_LSM_SANDBOXES` ([`current_sandbox`]) and
//! allows everything to tasks that are not in one.
//!
//! | file | hooks | policy |
//! |---|---|---|
//! | `socket.rs` | `socket_create` | `lsm_deny::{PACKET_SOCKET, RAW_SOCKET, VSOCK, NETLINK}` |
//! | `connect.rs` | `socket_connect`, `socket_sendmsg` | `lsm_rule::PROXY_ONLY` |
//! | `unix.rs` | `unix_stream_connect`, `unix_may_send` | `lsm_rule::UNIX_ALLOWLIST` |
//! | `exec.rs` | `bprm_check_security` | `lsm_rule::EXEC_ALLOWLIST` |
//! | `mmap.rs` | `mmap_file`, `file_mprotect` (`PROT_EXEC` of a file) | `lsm_rule::EXEC_ALLOWLIST` |
//! | `open.rs` | `file_open` | `lsm_rule::DENY_OPEN` |
//! | `signal.rs` | `task_kill` (targets outside the sandbox) | `lsm_deny::KILL_OUTSIDE` |
//! | `bpf.rs` | `bpf` | `lsm_deny::BPF` |
//! | `perf_event.rs` | `perf_event_open` | `lsm_deny::PERF_EVENT` |
//! | `mount.rs` | `sb_mount`, `sb_umount`, `sb_pivotroot`, `move_mount`, `fs_context_parse_param` | `lsm_deny::MOUNT` |
//! | `kernel_module.rs` | `kernel_module_request`, `kernel_load_data`, `kernel_read_file` | `lsm_deny::KERNEL_MODULE` |
//! | `ptrace.rs` | `ptrace_access_check`, `ptrace_traceme` (targets outside the sandbox; attach from outside but by root) | `lsm_deny::PTRACE`, always |
//! | `userns.rs` | `userns_create` (6.1+) | `lsm_deny::USERNS` |
//! | `probe.rs` | `socket_create` | none: `leash doctor`'s "does BPF-LSM work here" probe |
//!
//! The programs are built without CO-RE: hooks that read kernel structs (`../kernel.rs`) take the
//! field offsets from a read-only global that userspace sets from the running kernel's BTF when
//! it loads the object, so the verifier sees them as constants.
//! A task belongs to a sandbox when its own cgroup has an entry, or when an ancestor cgroup has
//! one registered with `lsm_rule::DESCENDANTS`.
//!
//! What a hook costs a task in no sandbox (every process on the host, while any sandbox is
//! registered): one helper call for its cgroup id and two array lookups the JIT inlines, the
//! pre-filter (`LEASH_LSM_FILTER`, see [`lookup`]) and the levels with descendants (zero but on a
//! node). On a node, add one helper call per level with descendants (5.11+; on 5.10, reads of
//! the task's cgroup and its ancestors). Everything else comes after the task is found in a
//! sandbox, and then only for the rules that sandbox has. `file_open`, the hottest, asks about
//! the file first instead (`open.rs`): two loads and a pre-filter of every sandbox's deny list.

mod bpf;
mod connect;
mod exec;
mod kernel_module;
mod mmap;
mod mount;
mod open;
mod perf_event;
mod probe;
mod ptrace;
mod signal;
mod socket;
mod unix;
mod userns;

use aya_ebpf::helpers::{bpf_get_current_task, generated::bpf_get_current_ancestor_cgroup_id};
use sandbox_common::{lsm_filter_slot, lsm_rule, Hook, LsmPolicy, MAX_SANDBOX_LEVEL};

use crate::events::report;
pub use crate::events::Event;
use crate::kernel::{cgroup_id, layout_set, offset, read_u32, read_u64, task_cgroup};
use crate::maps::{LSM_FILTER, LSM_LEVELS, LSM_SANDBOXES};
use crate::net::current_cgroup;

/// LSM verdicts: 0 lets the next LSM decide, a negative errno refuses.
pub const ALLOW: i32 = 0;
pub const EPERM: i32 = -1;

/// The sandbox a task belongs to: the cgroup id its entry is keyed by, and its policy.
#[derive(Clone, Copy)]
pub struct Sandbox {
    pub id: u64,
    pub policy: LsmPolicy,
}

/// False when the cgroup `id` certainly has no sandbox entry: its pre-filter count is zero. A
/// missing filter entry (never: the array is full-sized) is a maybe.
#[inline(always)]
pub fn may_be_sandbox(id: u64) -> bool {
    !LSM_FILTER.get(lsm_filter_slot(id)).is_some_and(|n| *n == 0)
}

/// Whether a sandbox registered with descendants exists at any level (on a node, usually).
#[inline(always)]
pub fn descendants_anywhere() -> bool {
    LSM_LEVELS.get(0).is_none_or(|levels| *levels != 0)
}

/// The policy of the cgroup `id`, when it has an entry; the pre-filter first.
#[inline(always)]
fn lookup(id: u64) -> Option<LsmPolicy> {
    if !may_be_sandbox(id) {
        return None;
    }
    // SAFETY: the value is copied out of the map before the lookup's lifetime ends.
    unsafe { LSM_SANDBOXES.get(&id).copied() }
}

/// The sandbox of the current task, if any. Its own cgroup is looked up first; ancestors only
/// at the levels where sandboxes with descendants exist.
#[inline(always)]
pub fn current_sandbox() -> Option<Sandbox> {
    let id = current_cgroup();
    if let Some(policy) = lookup(id) {
        return Some(Sandbox { id, policy });
    }
    let levels = *LSM_LEVELS.get(0)?;
    if levels == 0 {
        return None;
    }
    if offset!(ancestor_helper) != 0 {
        return current_ancestor_sandbox(levels);
    }
    // SAFETY: plain BPF helper call.
    let task = unsafe { bpf_get_current_task() };
    ancestor_sandbox(task_cgroup(task)?, levels)
}

/// [`ancestor_sandbox`] of the current task, with the kernel naming each ancestor (5.11+; the
/// verifier drops this code on older kernels, where userspace leaves `ancestor_helper` 0).
#[inline(always)]
fn current_ancestor_sandbox(levels: u32) -> Option<Sandbox> {
    let mut n: u32 = 0;
    // Up to the highest level with descendants, not all 31.
    while n < MAX_SANDBOX_LEVEL && levels >> n != 0 {
        if levels & (1 << n) != 0 {
            // SAFETY: plain BPF helper call; 0 past the task's own level.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(n as i32) };
            if id == 0 {
                return None;
            }
            if let Some(policy) = lookup(id) {
                if policy.rules & lsm_rule::DESCENDANTS != 0 {
                    return Some(Sandbox { id, policy });
                }
            }
        }
        n += 1;
    }
    None
}

/// The sandbox the cgroup at kernel address `cgroup` belongs to, if any.
#[inline(always)]
pub fn sandbox_of_cgroup(cgroup: u64) -> Option<Sandbox> {
    let id = cgroup_id(cgroup)?;
    if let Some(policy) = lookup(id) {
        return Some(Sandbox { id, policy });
    }
    ancestor_sandbox(cgroup, *LSM_LEVELS.get(0)?)
}

/// Whether the socket (`struct sock`) at `sk` was created in `sandbox`: its cgroup, which the
/// cgroup programs judge it by, is one of the sandbox's. Fails closed while the layout is not set.
#[inline(always)]
pub fn socket_of(sk: u64, sandbox: &Sandbox) -> bool {
    // Read, not loaded: on 6.x the member is a typed pointer, and its low bits are tested.
    layout_set()
        && read_u64(sk, offset!(sk_cgrp_data)).is_some_and(|cgroup| {
            cgroup != 0 && cgroup & 3 == 0 && sandbox_of_cgroup(cgroup).is_some_and(|s| s.id == sandbox.id)
        })
}

/// Whether the task at kernel address `task` is in `sandbox`. Fails closed (false) while the
/// layout is not set.
#[inline(always)]
pub fn same_sandbox(task: u64, sandbox: &Sandbox) -> bool {
    layout_set() && task_cgroup(task).and_then(sandbox_of_cgroup).is_some_and(|s| s.id == sandbox.id)
}

/// The sandbox registered with descendants at one of `cgroup`'s ancestor levels; `levels` has bit
/// `n` set when such sandboxes sit at level `n`.
#[inline(always)]
fn ancestor_sandbox(cgroup: u64, levels: u32) -> Option<Sandbox> {
    if levels == 0 || !layout_set() {
        return None;
    }
    let level = read_u32(cgroup, offset!(cgroup_level))?;
    let ancestors = cgroup + offset!(cgroup_ancestors) as u64;
    let ids = offset!(ancestors_are_ids) != 0;
    let mut n: u32 = 0;
    while n < MAX_SANDBOX_LEVEL && n < level {
        if levels & (1 << n) != 0 {
            let slot = ancestors + 8 * n as u64;
            let id = if ids { read_u64(slot, 0) } else { read_u64(slot, 0).and_then(cgroup_id) };
            if let Some(id) = id {
                if let Some(policy) = lookup(id) {
                    if policy.rules & lsm_rule::DESCENDANTS != 0 {
                        return Some(Sandbox { id, policy });
                    }
                }
            }
        }
        n += 1;
    }
    None
}

/// The verdict for a task asking for something the `flag` of its sandbox policy forbids:
/// `EPERM` (and a deny event) when the task is in a sandbox whose policy sets `flag`, else allow.
/// `detail` fills the event's `family`, `sock_type` and `protocol`.
#[inline(always)]
pub fn check(flag: u32, hook: Hook, detail: (u32, u32, u32)) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.deny & flag == 0 {
        return ALLOW;
    }
    let (family, sock_type, protocol) = detail;
    deny(&sandbox, &Event { family, sock_type, protocol, ..Event::new(hook) })
}

/// Reports the denial to userspace and returns `EPERM`.
#[inline(always)]
pub fn deny(sandbox: &Sandbox, e: &Event) -> i32 {
    deny_in(sandbox.id, e)
}

/// [`deny`] for the sandbox keyed by cgroup id `id`.
#[inline(always)]
pub fn deny_in(id: u64, e: &Event) -> i32 {
    report(id, e, true);
    EPERM
}
