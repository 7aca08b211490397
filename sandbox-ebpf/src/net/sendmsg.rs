//! `cgroup/sendmsg4` and `cgroup/sendmsg6`: no datagram with an explicit destination leaves a
//! sandbox. The proxy speaks TCP only and resolves names itself, so a sandbox needs no UDP; in
//! transparent mode DNS queries (UDP to port 53, at any address) go to leash's resolver instead
//! (`redirect.rs`). (Connected UDP is judged by `connect.rs`.) Minimum kernel: 4.18.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sandbox_common::{counter, Hook, OriginalDest, SANDBOX_TRANSPARENT};

use super::connect::{event_addr, in_proxy_netns};
use super::redirect::{self, mapped4, IPPROTO_UDP};
use super::{count, current_cgroup, report, sandbox, Event, AF_INET, AF_INET6, ALLOW, DENY};

#[cgroup_sock_addr(sendmsg4)]
pub fn leash_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let words = mapped4(sa.user_ip4);
    judge(&ctx, Hook::Sendmsg4, AF_INET, sa.type_, sa.protocol, words, sa.user_port)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn leash_sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let ip6 = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    judge(&ctx, Hook::Sendmsg6, AF_INET6, sa.type_, sa.protocol, ip6, sa.user_port)
}

#[inline(always)]
fn judge(
    ctx: &SockAddrContext,
    hook: Hook,
    family: u32,
    sock_type: u32,
    protocol: u32,
    words: [u32; 4],
    port: u32,
) -> i32 {
    let cgroup = current_cgroup();
    let port = u16::from_be(port as u16);
    if let Some(proxy) = sandbox(cgroup) {
        // Only DNS (UDP to 53) has a redirect for datagrams. A datagram already addressed to
        // the resolver is one of a UDP socket `connect.rs` redirected: an IPv6 socket connected
        // to an IPv4-mapped address sends through the IPv4 path with the address filled in.
        if protocol == IPPROTO_UDP && in_proxy_netns(ctx, &proxy) {
            if proxy.flags & SANDBOX_TRANSPARENT != 0 && port == proxy.dns_port && words == proxy.addr {
                return ALLOW;
            }
            if let Some(to) = redirect::port_for(&proxy, sock_type, protocol, port) {
                if redirect::rewrite(ctx, &proxy, family == AF_INET6, to) {
                    redirect::remember_resolver(ctx, OriginalDest { addr: words, port, _pad: [0; 2] });
                    return ALLOW;
                }
            }
        }
    }
    count(cgroup, counter::SENDMSG_DENIED);
    report(
        cgroup,
        &Event { hook, family, sock_type, protocol, addr: event_addr(family, &words), port, ..Event::new(hook) },
        true,
    );
    DENY
}
