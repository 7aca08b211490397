//! Binary identity for the proxy: which process opened each connection to it, without scanning
//! /proc. Enforces nothing itself; under `leash run` the proxy serves only connections with a
//! record, and it applies `binaries:` rules with what the record names.
//!
//! 1. `connect4/6` (process context) call [`remember_owner`] for every allowed connect when the
//!    sandbox asks for it (`SANDBOX_RECORD_OWNERS`): socket cookie -> cookie, pid, uid, cgroup,
//!    and the original destination of a connection transparent mode redirected.
//! 2. `cgroup_skb/ingress` calls [`hand_over`] when the proxy's SYN-ACK reaches that socket: the
//!    record moves to `proxy_client_key(client port, proxy port)`, the key the proxy has at
//!    accept. Not at the SYN: a listener that drops a SYN (one the agent signed with
//!    `TCP_MD5SIG`, a full queue) would leave a record for a port nobody answered. Only for a
//!    client on the proxy's own address, the one address the proxy admits (the key holds no
//!    address).
//!
//! A record can outlive its socket's hold on the port (a reset, `connect(AF_UNSPEC)`, a timeout;
//! the proxy never accepting), so it is not proof by itself: the record names the socket's
//! cookie, and the proxy admits a connection only if the kernel says that very socket is at its
//! client end (`sandbox-user/src/kernel/sock_diag.rs`). (A `sock_ops` program at
//! `ACTIVE_ESTABLISHED` made the hand-over before; it ran five times per connection, for
//! callbacks a `sock_ops` program cannot turn off.)
//!
//! Minimum kernel: socket cookies in both program types (4.12 for `cgroup_skb`, 5.7 for
//! `cgroup/connect`). The VM matrix checks it by loading.

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
    let owner = ConnOwner { cgroup_id, cookie, pid, uid: uid_gid as u32, dest, listener_port, _pad: 0 };
    let _ = SOCKET_OWNERS.insert(&cookie, &owner, 0);
}

/// Moves the owner record of the socket receiving `ctx` (the proxy's SYN-ACK, to `client_port`)
/// to the key the proxy looks it up by. A retransmitted SYN-ACK finds nothing left to move.
#[inline(always)]
pub fn hand_over(ctx: &SkBuffContext, client_port: u16) {
    // SAFETY: plain BPF helper call on the program's own context (the cookie of the receiving
    // socket, which the kernel sets on the packet while ingress programs run).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the lookup's lifetime ends.
    if let Some(owner) = unsafe { SOCKET_OWNERS.get(&cookie).copied() } {
        let _ = PROXY_CLIENTS.insert(&proxy_client_key(client_port, owner.listener_port), &owner, 0);
        let _ = SOCKET_OWNERS.remove(&cookie);
    }
}
