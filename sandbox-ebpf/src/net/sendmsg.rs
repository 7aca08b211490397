//! `cgroup/sendmsg4` and `cgroup/sendmsg6`: no datagram with an explicit destination leaves a
//! sandbox. The proxy speaks TCP only and resolves names itself, so a sandbox needs no UDP, DNS
//! included. (Connected UDP is already stopped by `connect.rs`.) Minimum kernel: 4.18.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sandbox_common::{counter, Hook};

use super::{count, current_cgroup, report, words_to_bytes, Event, AF_INET, AF_INET6, DENY};

#[cgroup_sock_addr(sendmsg4)]
pub fn leash_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    deny_datagram(Hook::Sendmsg4, AF_INET, sa.type_, sa.protocol, addr, sa.user_port)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn leash_sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let ip6 = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    deny_datagram(Hook::Sendmsg6, AF_INET6, sa.type_, sa.protocol, words_to_bytes(&ip6), sa.user_port)
}

#[inline(always)]
fn deny_datagram(hook: Hook, family: u32, sock_type: u32, protocol: u32, addr: [u8; 16], port: u32) -> i32 {
    let cgroup = current_cgroup();
    count(cgroup, counter::SENDMSG_DENIED);
    let port = u16::from_be(port as u16);
    report(cgroup, &Event { hook, family, sock_type, protocol, addr, port, ..Event::new(hook) }, true);
    DENY
}
