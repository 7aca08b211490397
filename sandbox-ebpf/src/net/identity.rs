//! Binary identity for the proxy: which process opened each connection to it, without scanning
//! /proc. Enforces nothing itself; the proxy applies `binaries:` rules with what it records.
//!
//! 1. `connect4/6` (process context) call [`remember_owner`] for every allowed connect when the
//!    sandbox asks for it (`SANDBOX_RECORD_OWNERS`): socket cookie -> pid, uid, cgroup, and the
//!    original destination of a connection transparent mode redirected.
//! 2. `cgroup_skb/egress` calls [`hand_over`] for the connection's SYN to the proxy, the first
//!    packet that carries its local port: the record moves to that port and the proxy port it
//!    went to (`proxy_client_key`), which the proxy sees at accept. (A `sock_ops` program at
//!    `ACTIVE_ESTABLISHED` did this before; it ran five times per connection, for callbacks a
//!    `sock_ops` program cannot turn off, and cost each connect about 1 µs.)
//!
//! Minimum kernel: socket cookies in both program types (4.12 for `cgroup_skb`, 5.7 for
//! `cgroup/connect`); the VM matrix checks it by loading.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    programs::{SkBuffContext, SockAddrContext},
    EbpfContext,
};
use sandbox_common::{proxy_client_key, ConnOwner, OriginalDest};

use crate::maps::{PROXY_CLIENTS, SOCKET_OWNERS};

/// Records the calling process as the owner of the socket being connected to the proxy's port
/// `listener_port`, and `dest`, where it meant to go when transparent mode redirected it (port 0
/// otherwise).
#[inline(always)]
pub fn remember_owner(ctx: &SockAddrContext, cgroup_id: u64, dest: OriginalDest, listener_port: u16) {
    // SAFETY: plain BPF helper calls on the program's own context.
    let (cookie, pid_tgid, uid_gid) =
        unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_get_current_pid_tgid(), bpf_get_current_uid_gid()) };
    let pid = (pid_tgid >> 32) as u32;
    let owner = ConnOwner { cgroup_id, pid, uid: uid_gid as u32, dest, listener_port, _pad: 0 };
    let _ = SOCKET_OWNERS.insert(&cookie, &owner, 0);
}

/// Moves the owner record of the socket sending `ctx` (a SYN to the proxy from `local_port`) to
/// the key the proxy looks it up by. A retransmitted SYN finds nothing left to move.
#[inline(always)]
pub fn hand_over(ctx: &SkBuffContext, local_port: u16) {
    // SAFETY: plain BPF helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the lookup's lifetime ends.
    if let Some(owner) = unsafe { SOCKET_OWNERS.get(&cookie).copied() } {
        let _ = PROXY_CLIENTS.insert(&proxy_client_key(local_port, owner.listener_port), &owner, 0);
        let _ = SOCKET_OWNERS.remove(&cookie);
    }
}
