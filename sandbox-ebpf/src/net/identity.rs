//! Binary identity for the proxy: which process opened each connection to it, without scanning
//! /proc. Enforces nothing itself; the proxy applies `binaries:` rules with what it records.
//!
//! 1. `connect4/6` (process context) call [`remember_owner`] for every allowed connect when the
//!    sandbox asks for it (`SANDBOX_RECORD_OWNERS`): socket cookie -> pid, uid, cgroup, and the
//!    original destination of a connection transparent mode redirected.
//! 2. `sockops` (attached only to sandboxes that record owners) at `ACTIVE_ESTABLISHED` (often softirq context, where the current task is not
//!    the owner) moves that record to the connection's local port and the proxy port it went to
//!    (`proxy_client_key`), which the proxy sees at accept.
//!
//! Minimum kernel: 4.13 (sockops), 5.? for socket cookies in both program types; the daemon and
//! VM matrix check it by loading.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use sandbox_common::{proxy_client_key, ConnOwner, OriginalDest};

use crate::maps::{PROXY_CLIENTS, SOCKET_OWNERS};

/// `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`: a connection this socket initiated is established.
const ACTIVE_ESTABLISHED: u32 = 4;

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

#[sock_ops]
pub fn leash_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == ACTIVE_ESTABLISHED {
        // SAFETY: plain BPF helper call on the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the value is copied out before the lookup's lifetime ends.
        if let Some(owner) = unsafe { SOCKET_OWNERS.get(&cookie).copied() } {
            let key = proxy_client_key(ctx.local_port() as u16, owner.listener_port);
            let _ = PROXY_CLIENTS.insert(&key, &owner, 0);
            let _ = SOCKET_OWNERS.remove(&cookie);
        }
    }
    1
}
