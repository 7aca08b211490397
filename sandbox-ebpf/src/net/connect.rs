//! `cgroup/connect4` and `cgroup/connect6`: a socket in a sandbox may connect only to its proxy,
//! and only over TCP; in transparent mode a TCP connect elsewhere, and a UDP connect to port 53,
//! is sent to the proxy instead (`redirect.rs`). Minimum kernel: 4.17.
//!
//! The kernel also runs these hooks for TCP fast open (`sendto(MSG_FASTOPEN)`) and for
//! `connect()` on UDP sockets, so neither escapes. On an IPv6 socket the proxy is accepted in its
//! IPv4-mapped form when it listens on IPv4; the unspecified address (`0.0.0.0`, `::`) and other
//! loopback addresses are refused like any other target. MPTCP sockets (protocol 262) are
//! refused here for every target but the proxy, where the hook sees their TCP subflow.
//! When the sandbox names a network namespace (node daemon), the proxy address counts only in it.

use aya_ebpf::{helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr, programs::SockAddrContext};
use sandbox_common::{counter, Hook, OriginalDest, SandboxNet, SANDBOX_RECORD_OWNERS};

use super::redirect::{self, mapped4, IPPROTO_UDP};
use super::{
    count, current_cgroup, report, sandbox, words_to_bytes, Event, AF_INET, AF_INET6, ALLOW, DENY, IPPROTO_TCP,
    SOCK_STREAM,
};

#[cgroup_sock_addr(connect4)]
pub fn leash_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let target = Target {
        hook: Hook::Connect4,
        family: AF_INET,
        sock_type: sa.type_,
        protocol: sa.protocol,
        words: mapped4(sa.user_ip4),
        port: u16::from_be(sa.user_port as u16),
    };
    decide(&ctx, &target, |proxy| proxy.is_ipv4 == 1 && proxy.addr[3] == sa.user_ip4)
}

#[cgroup_sock_addr(connect6)]
pub fn leash_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    // Word-by-word reads: the verifier only allows 4-byte loads of user_ip6.
    let ip6 = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let target = Target {
        hook: Hook::Connect6,
        family: AF_INET6,
        sock_type: sa.type_,
        protocol: sa.protocol,
        words: ip6,
        port: u16::from_be(sa.user_port as u16),
    };
    // The proxy's stored address is IPv4-mapped when it listens on IPv4, which is exactly the
    // form an IPv6 socket uses to reach it, so one comparison covers both.
    decide(&ctx, &target, |proxy| proxy.addr == ip6)
}

/// True when the socket is in the network namespace the proxy listens in (or the sandbox does not
/// name one). Minimum kernel for the helper in this program type: 5.7.
#[inline(always)]
pub fn in_proxy_netns(ctx: &SockAddrContext, proxy: &SandboxNet) -> bool {
    // SAFETY: plain BPF helper call on this program's own context.
    proxy.netns_cookie == 0 || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == proxy.netns_cookie
}

struct Target {
    hook: Hook,
    family: u32,
    sock_type: u32,
    protocol: u32,
    /// The address as `SandboxNet::addr` stores one (IPv4 mapped).
    words: [u32; 4],
    port: u16,
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, target: &Target, is_proxy_addr: impl Fn(&SandboxNet) -> bool) -> i32 {
    let cgroup = current_cgroup();
    if let Some(proxy) = sandbox(cgroup) {
        if in_proxy_netns(ctx, &proxy) {
            if target.sock_type == SOCK_STREAM
                && target.protocol == IPPROTO_TCP
                && target.port == proxy.port
                && is_proxy_addr(&proxy)
            {
                count(cgroup, counter::CONNECT_ALLOWED);
                if proxy.flags & SANDBOX_RECORD_OWNERS != 0 {
                    super::identity::remember_owner(ctx, cgroup, OriginalDest::default(), proxy.port);
                }
                return ALLOW;
            }
            if let Some(port) = redirect::port_for(&proxy, target.sock_type, target.protocol, target.port) {
                if redirect::rewrite(ctx, &proxy, target.family == AF_INET6, port) {
                    let dest = OriginalDest { addr: target.words, port: target.port, _pad: [0; 2] };
                    if target.protocol == IPPROTO_UDP {
                        redirect::remember_resolver(ctx, dest);
                    } else {
                        super::identity::remember_owner(ctx, cgroup, dest, port);
                    }
                    count(cgroup, counter::CONNECT_ALLOWED);
                    return ALLOW;
                }
            }
        }
    }
    count(cgroup, counter::CONNECT_DENIED);
    report(
        cgroup,
        &Event {
            family: target.family,
            sock_type: target.sock_type,
            protocol: target.protocol,
            addr: event_addr(target.family, &target.words),
            port: target.port,
            ..Event::new(target.hook)
        },
        true,
    );
    DENY
}

/// A denial's address as events carry it: an IPv4 address in the first four bytes.
#[inline(always)]
pub fn event_addr(family: u32, words: &[u32; 4]) -> [u8; 16] {
    if family == AF_INET {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&words[3].to_ne_bytes());
        addr
    } else {
        words_to_bytes(words)
    }
}
