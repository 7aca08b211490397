//! Transparent mode (`SANDBOX_TRANSPARENT`): where `connect4/6` and `sendmsg4/6` send a socket
//! that did not address the proxy, instead of refusing it. TCP goes to the proxy's transparent
//! listener, DNS over UDP (port 53) to leash's resolver; the original destination is recorded
//! (`identity.rs` for TCP, `DNS_SOURCES` for UDP, which `recvmsg.rs` reads). Anything else is
//! still refused by the caller. Minimum kernel: 4.17 (rewriting the address in connect4/6),
//! 4.18 (sendmsg4/6), 5.2 (recvmsg4/6).

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext, EbpfContext};
use sandbox_common::{OriginalDest, SandboxNet, DNS_PORT, SANDBOX_TRANSPARENT};

use super::{IPPROTO_TCP, SOCK_STREAM};
use crate::maps::DNS_SOURCES;

pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_UDP: u32 = 17;

/// Where a socket of this kind, addressed to `port`, goes instead: the proxy's transparent port
/// (TCP) or the resolver's port (UDP to 53); `None` when the sandbox is not transparent or the
/// socket is neither.
#[inline(always)]
pub fn port_for(proxy: &SandboxNet, sock_type: u32, protocol: u32, port: u16) -> Option<u16> {
    if proxy.flags & SANDBOX_TRANSPARENT == 0 {
        return None;
    }
    if sock_type == SOCK_STREAM && protocol == IPPROTO_TCP && proxy.transparent_port != 0 {
        return Some(proxy.transparent_port);
    }
    if sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP && port == DNS_PORT && proxy.dns_port != 0 {
        return Some(proxy.dns_port);
    }
    None
}

/// The IPv4-mapped form of an IPv4 address given as `user_ip4`, in `SandboxNet::addr` encoding.
#[inline(always)]
pub fn mapped4(ip4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4]
}

/// Points the socket address of `ctx` at the proxy's address and `port`. An IPv4 socket can only
/// be sent to an IPv4 proxy: `false` (refuse) otherwise.
#[inline(always)]
pub fn rewrite(ctx: &SockAddrContext, proxy: &SandboxNet, ipv6: bool, port: u16) -> bool {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid, writable context; connect and sendmsg
    // programs may write user_ip4/user_ip6 (word by word) and user_port.
    unsafe {
        if ipv6 {
            (*sa).user_ip6[0] = proxy.addr[0];
            (*sa).user_ip6[1] = proxy.addr[1];
            (*sa).user_ip6[2] = proxy.addr[2];
            (*sa).user_ip6[3] = proxy.addr[3];
        } else if proxy.is_ipv4 == 1 {
            (*sa).user_ip4 = proxy.addr[3];
        } else {
            return false;
        }
        (*sa).user_port = u32::from(port.to_be());
    }
    true
}

/// Records, for a UDP socket sending DNS, the resolver it addressed.
#[inline(always)]
pub fn remember_resolver(ctx: &SockAddrContext, dest: OriginalDest) {
    // SAFETY: plain BPF helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = DNS_SOURCES.insert(&cookie, &dest, 0);
}
