//! Cgroup network confinement: each program here is attached to a sandbox cgroup and keeps every
//! process in it (and in its descendants) to one TCP address, the sandbox's proxy.
//!
//! | file | hook | what it stops |
//! |---|---|---|
//! | `connect.rs` | `cgroup/connect4`, `connect6` | TCP/UDP connect (and TCP fast open) to anything but the proxy (transparent mode: redirected) |
//! | `sendmsg.rs` | `cgroup/sendmsg4`, `sendmsg6` | every unconnected UDP datagram (transparent mode: DNS redirected to leash's resolver) |
//! | `recvmsg.rs` | `cgroup/recvmsg4`, `recvmsg6` | nothing: shows resolver replies as from the resolver the client addressed |
//! | `redirect.rs` | (helpers) | transparent mode: where a redirected socket goes, and what is recorded |
//! | `sock_create.rs` | `cgroup/sock_create` | raw and ICMP (ping) sockets |
//! | `skb.rs` | `cgroup_skb/egress`, `ingress` | any packet not to or from the proxy: the backstop for paths that never call connect |
//! | `identity.rs` | (helpers for connect and egress); `cgroup/sock_release` | nothing: records which process owns each connection to the proxy, for admission and `binaries:` rules, until the proxy takes the record or no proxy can; forgets a closed UDP socket's DNS client record |
//!
//! The hooks only filter and hand over to the helpers below, which look up the sandbox by cgroup
//! id, count the verdict and report denials.

mod connect;
mod identity;
mod recvmsg;
mod redirect;
mod sendmsg;
mod skb;
mod sock_create;

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use sandbox_common::SandboxNet;

pub use crate::events::{report, Event};
use crate::maps::{COUNTERS, SANDBOXES};

/// Return values of cgroup programs.
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const SOCK_STREAM: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;

/// The network reach of the sandbox `cgroup_id`, or `None` when the cgroup has no entry (which
/// callers treat as deny).
#[inline(always)]
pub fn sandbox(cgroup_id: u64) -> Option<SandboxNet> {
    // SAFETY: the value is copied out of the map before the lookup's lifetime ends.
    unsafe { SANDBOXES.get(&cgroup_id).copied() }
}

/// The cgroup id of the task making the call (socket hooks run in process context).
#[inline(always)]
pub fn current_cgroup() -> u64 {
    // SAFETY: plain BPF helper call.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Adds one to counter `index` of sandbox `cgroup_id`, if userspace created its entry.
#[inline(always)]
pub fn count(cgroup_id: u64, index: usize) {
    if let Some(counters) = COUNTERS.get_ptr_mut(&cgroup_id) {
        if index < sandbox_common::counter::COUNT {
            // SAFETY: per-CPU value, no concurrent writer on this CPU; index checked above.
            unsafe { (*counters).values[index] += 1 };
        }
    }
}

/// The 16 bytes of an address given as the kernel's four network-order words.
#[inline(always)]
pub fn words_to_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
