//! Deny events: every program that refuses something, network or BPF-LSM, reports it the same
//! way, as a [`DenyEvent`] in the sandbox's own ring buffer (`LEASH_EVENT_RINGS`), or in the
//! shared `LEASH_EVENTS` one when the sandbox has none, which userspace turns into audit
//! records. When the ring is full the event is dropped; the verdict stands.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns};
use sandbox_common::{DenyEvent, Hook};

use crate::maps::{EVENTS, EVENT_RINGS, EVENT_SLOTS};

/// What a denial was about: the hook, and whichever details it has (zero otherwise).
pub struct Event {
    pub hook: Hook,
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub target_ino: u64,
    pub target_dev: u32,
    pub target_pid: u32,
    pub path: [u8; 64],
}

impl Event {
    /// An event of `hook` with every detail zero.
    #[inline(always)]
    pub const fn new(hook: Hook) -> Self {
        Event {
            hook,
            family: 0,
            sock_type: 0,
            protocol: 0,
            addr: [0; 16],
            port: 0,
            target_ino: 0,
            target_dev: 0,
            target_pid: 0,
            path: [0; 64],
        }
    }
}

/// Sends `e`, a denial in sandbox `cgroup_id`, to userspace. `from_task` is false for packet
/// hooks, which may run outside the sending task's context: pid, uid and comm are then zero.
#[inline(always)]
pub fn report(cgroup_id: u64, e: &Event, from_task: bool) {
    // SAFETY: a plain lookup; the inner map is only used through BPF helpers.
    let own = unsafe { EVENT_SLOTS.get(&cgroup_id) }.and_then(|slot| EVENT_RINGS.get(*slot));
    let entry = match own {
        Some(own) => own.reserve(0),
        None => EVENTS.reserve::<DenyEvent>(0),
    };
    let Some(mut entry) = entry else {
        return;
    };
    let (pid, uid, comm) = if from_task {
        let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let uid = bpf_get_current_uid_gid() as u32;
        (pid, uid, bpf_get_current_comm().unwrap_or([0; 16]))
    } else {
        (0, 0, [0; 16])
    };
    entry.write(DenyEvent {
        cgroup_id,
        // SAFETY: plain BPF helper call.
        time_ns: unsafe { bpf_ktime_get_ns() },
        pid,
        uid,
        hook: e.hook as u32,
        family: e.family,
        sock_type: e.sock_type,
        protocol: e.protocol,
        addr: e.addr,
        port: e.port,
        _pad: [0; 6],
        comm,
        target_ino: e.target_ino,
        target_dev: e.target_dev,
        target_pid: e.target_pid,
        path: e.path,
    });
    entry.submit(0);
}
