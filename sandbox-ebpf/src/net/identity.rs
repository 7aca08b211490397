//! Binary identity for the proxy: which process opened each connection to it, without scanning
//! /proc. Enforces nothing itself; under `leash run` the proxy serves only connections with a
//! record, and it applies `binaries:` rules with what the record names.
//!
//! 1. `connect4/6` (process context) call [`remember_owner`] for every allowed connect when the
//!    sandbox asks for it (`SANDBOX_RECORD_OWNERS`): socket cookie -> pid, uid, cgroup, and the
//!    original destination of a connection transparent mode redirected.
//! 2. `cgroup_skb/ingress` calls [`hand_over`] when the proxy's SYN-ACK reaches that socket: the
//!    record is published under `proxy_client_key(client port, proxy port)`, the key the proxy
//!    has at accept. Not at the SYN: a listener that drops a SYN (one the agent signed with
//!    `TCP_MD5SIG`, a full queue) would leave a record for a port its socket may give up, and that
//!    another user could then bind. Only for a client on the proxy's own address, the one address
//!    the proxy admits (the key holds no address).
//! 3. [`leash_sock_release`] removes the socket's records when its last descriptor closes, so no
//!    record outlives the socket whose port it names, even one the proxy never accepted. (The
//!    socket's own entry says which record it published: this program type may not read the
//!    socket's local port.)
//!
//! (A `sock_ops` program at `ACTIVE_ESTABLISHED` made the hand-over before; it ran five times per
//! connection, for callbacks a `sock_ops` program cannot turn off, and never removed a record.)
//!
//! Minimum kernel: 5.9 (`cgroup/sock_release`); socket cookies in every program type used here
//! (5.7 for `cgroup/connect`). The VM matrix checks it by loading.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::{SkBuffContext, SockAddrContext, SockContext},
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
    let owner = ConnOwner { cgroup_id, cookie, pid, uid: uid_gid as u32, dest, listener_port, client_port: 0 };
    let _ = SOCKET_OWNERS.insert(&cookie, &owner, 0);
}

/// Publishes the owner record of the socket receiving `ctx` (the proxy's SYN-ACK, to
/// `client_port`) under the key the proxy looks it up by. The socket keeps its own entry, now
/// naming that port, for [`leash_sock_release`]; a retransmitted SYN-ACK publishes nothing again.
#[inline(always)]
pub fn hand_over(ctx: &SkBuffContext, client_port: u16) {
    // SAFETY: plain BPF helper call on the program's own context (the cookie of the receiving
    // socket, which the kernel sets on the packet while ingress programs run).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(owner) = SOCKET_OWNERS.get_ptr_mut(&cookie) else { return };
    // SAFETY: a valid value of this map; only this socket's programs write its entry.
    let owner = unsafe { &mut *owner };
    if owner.client_port == 0 {
        owner.client_port = client_port;
        let _ = PROXY_CLIENTS.insert(&proxy_client_key(client_port, owner.listener_port), owner, 0);
    }
}

/// `cgroup/sock_release`, attached where owners are recorded: a socket's last descriptor is
/// closed (before the kernel closes the connection). Removes the socket's entry and the record it
/// published, if that record is still this socket's.
#[cgroup_sock(sock_release)]
pub fn leash_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: plain BPF helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the lookup's lifetime ends.
    let Some(owner) = (unsafe { SOCKET_OWNERS.get(&cookie).copied() }) else { return 1 };
    if owner.client_port != 0 {
        let key = proxy_client_key(owner.client_port, owner.listener_port);
        // SAFETY: the value is read before the lookup's lifetime ends.
        if unsafe { PROXY_CLIENTS.get(&key) }.is_some_and(|published| published.cookie == cookie) {
            let _ = PROXY_CLIENTS.remove(&key);
        }
    }
    let _ = SOCKET_OWNERS.remove(&cookie);
    1
}
