//! `cgroup/recvmsg4` and `cgroup/recvmsg6`: enforce nothing. In transparent mode a DNS reply
//! comes from leash's resolver; these hooks show it as coming from the resolver the client
//! addressed (`DNS_SOURCES`, written by `redirect.rs`), since resolvers drop answers from any
//! other address. Attached only to transparent sandboxes. Minimum kernel: 5.2.

use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext, EbpfContext};

use super::redirect::mapped4;
use super::{current_cgroup, sandbox, ALLOW};
use crate::maps::DNS_SOURCES;

#[cgroup_sock_addr(recvmsg4)]
pub fn leash_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let from = mapped4(unsafe { (*ctx.sock_addr).user_ip4 });
    restore(&ctx, from, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn leash_recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let from = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    restore(&ctx, from, true)
}

/// Rewrites the source of a datagram from the sandbox's resolver to the address recorded for
/// this socket. recvmsg programs must return 1.
#[inline(always)]
fn restore(ctx: &SockAddrContext, from: [u32; 4], ipv6: bool) -> i32 {
    let Some(proxy) = sandbox(current_cgroup()) else { return ALLOW };
    let sa = ctx.sock_addr;
    // SAFETY: valid context; user_port is readable here.
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    if port != proxy.dns_port || from != proxy.addr {
        return ALLOW;
    }
    // SAFETY: plain BPF helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the lookup's lifetime ends.
    let Some(dest) = (unsafe { DNS_SOURCES.get(&cookie).copied() }) else { return ALLOW };
    // SAFETY: recvmsg programs may write user_ip4/user_ip6 (word by word) and user_port.
    unsafe {
        if ipv6 {
            (*sa).user_ip6[0] = dest.addr[0];
            (*sa).user_ip6[1] = dest.addr[1];
            (*sa).user_ip6[2] = dest.addr[2];
            (*sa).user_ip6[3] = dest.addr[3];
        } else {
            (*sa).user_ip4 = dest.addr[3];
        }
        (*sa).user_port = u32::from(dest.port.to_be());
    }
    ALLOW
}
