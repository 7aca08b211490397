//! Binary identity for the proxy: which process opened each connection to it, without scanning
//! /proc. Enforces nothing itself; under `leash run` the proxy serves only connections with a
//! record, and it applies `binaries:` rules with what the record names.
//!
//! `connect4/6` (process context) call [`remember_owner`] for every allowed connect when the
//! sandbox asks for it (`SANDBOX_RECORD_OWNERS`): socket cookie -> cookie, pid, uid, cgroup, the
//! proxy port, and the original destination of a connection transparent mode redirected. At
//! accept the proxy asks the kernel which socket is at the connection's client end
//! (`sandbox-user/src/kernel/sock_diag.rs`) and looks its cookie up: a cookie is never reused,
//! so a record cannot be borrowed by whoever takes a port the sandbox's socket gave up. The proxy
//! removes the record when it accepts the connection (the node daemon, when it answers for it).
//!
//! A record no proxy can take any more goes at once, so that the map does not fill (a full LRU map
//! evicts one record at every insert, which doubled what `connect4` costs) and a sandbox that
//! opens and closes connections by the hundred thousand pushes out no other sandbox's record:
//! - `cgroup/sock_release` ([`leash_sock_release`]): a socket closed before its connection was
//!   made (SYN sent, or refused);
//! - `cgroup_skb/egress` ([`forget_reset`]): a socket that closes its connection with a reset;
//!   the kernel then keeps nothing of it that the proxy could find.
//!
//! A connection closed in the usual way before the proxy accepted it keeps its record: the
//! client's end lingers (FIN_WAIT, TIME_WAIT) with its cookie, and the proxy still judges and
//! audits it. Nothing else runs per connection. (The record used to move to a key of client and
//! proxy port when the proxy's SYN-ACK reached the socket, in `cgroup_skb/ingress`, and before
//! that at `sock_ops`'s `ACTIVE_ESTABLISHED`: a lookup, an insert and a delete per connection,
//! half of what the programs cost a connect.)
//!
//! Minimum kernel: socket cookies in `cgroup/connect` (5.7), `cgroup/sock_release` (5.9). The VM
//! matrix checks it by loading.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_sk_fullsock},
    macros::cgroup_sock,
    programs::{SkBuffContext, SockAddrContext, SockContext},
    EbpfContext,
};
use sandbox_common::{ConnOwner, OriginalDest};

use crate::maps::{DNS_CLIENTS, DNS_CLIENT_SOCKETS, SOCKET_OWNERS};

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

/// `TCP_SYN_SENT` and `TCP_CLOSE` (`include/net/tcp_states.h`): a socket in these states when it
/// is closed never made its connection.
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

/// Removes the owner record of a TCP socket closed before its connection was made, and the DNS
/// client record of a UDP socket that sent to its sandbox's resolver (`skb.rs`): once the socket
/// is closed anyone may bind its port, and would be answered as the sandbox. (A UDP socket costs
/// one lookup.)
#[cgroup_sock(sock_release)]
pub fn leash_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands sock programs a valid context, whose protocol and state are
    // readable here.
    let (protocol, state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    let tcp_unconnected = protocol == super::IPPROTO_TCP && (state == TCP_SYN_SENT || state == TCP_CLOSE);
    if !tcp_unconnected && protocol != super::redirect::IPPROTO_UDP {
        return super::ALLOW;
    }
    // SAFETY: plain BPF helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if tcp_unconnected {
        let _ = SOCKET_OWNERS.remove(&cookie);
    // SAFETY: the key is copied out before the lookup's lifetime ends.
    } else if let Some(key) = unsafe { DNS_CLIENT_SOCKETS.get(&cookie).copied() } {
        let _ = DNS_CLIENTS.remove(&key);
        let _ = DNS_CLIENT_SOCKETS.remove(&cookie);
    }
    super::ALLOW
}

/// Removes the owner record of the socket sending `ctx`, a reset, when that socket has closed
/// its connection: an abortive close. (From 6.13 the kernel also attaches a socket to a reset it
/// sends on that socket's behalf, as to an unacceptable ACK during the handshake; that socket
/// connects on, and keeps its record.)
#[inline(always)]
pub fn forget_reset(ctx: &SkBuffContext) {
    // SAFETY: the kernel hands cgroup_skb programs a valid context; `sk` may be null, and a
    // full socket's state is readable.
    let closed = unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        let full = if sk.is_null() { sk } else { bpf_sk_fullsock(sk) };
        !full.is_null() && (*full).state == TCP_CLOSE
    };
    if closed {
        // SAFETY: plain BPF helper call on the program's own context (the sending socket's cookie).
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = SOCKET_OWNERS.remove(&cookie);
    }
}
