//! `cgroup_skb/egress` and `cgroup_skb/ingress`: the backstop. Every IP packet a sandbox socket
//! sends must be TCP to the proxy address and port; every packet it receives must be TCP from
//! there. Anything else (raw sockets, ICMP, UDP, a path that never called connect) is dropped,
//! so a gap in the socket hooks cannot become a way out. Minimum kernel: 4.10 (cgroup id of the
//! packet's socket: 5.10 for `bpf_skb_cgroup_id` in this program type).
//!
//! The context starts at the network header. IPv6 extension headers are not walked: a packet
//! whose next header is not TCP is dropped.

use aya_ebpf::{helpers::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext};
use sandbox_common::{counter, Hook, SandboxNet};

use super::{count, report, sandbox, Denied, AF_INET, AF_INET6, ALLOW, DENY, IPPROTO_TCP};

/// Which end of the packet must be the proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Egress,
    Ingress,
}

#[cgroup_skb(egress)]
pub fn leash_skb_egress(ctx: SkBuffContext) -> i32 {
    judge(&ctx, Direction::Egress)
}

#[cgroup_skb(ingress)]
pub fn leash_skb_ingress(ctx: SkBuffContext) -> i32 {
    judge(&ctx, Direction::Ingress)
}

/// The remote end of a packet: family, protocol, address (IPv4 in the first 4 bytes), port.
struct Remote {
    family: u32,
    protocol: u32,
    addr: [u8; 16],
    port: u16,
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, dir: Direction) -> i32 {
    // SAFETY: plain BPF helper call on the program's own context.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let remote = parse(ctx, dir);
    let allowed = match (sandbox(cgroup), &remote) {
        (Some(proxy), Some(remote)) => is_proxy(&proxy, remote),
        _ => false,
    };
    let (passed, dropped, hook) = match dir {
        Direction::Egress => (counter::SKB_EGRESS_PASSED, counter::SKB_EGRESS_DROPPED, Hook::SkbEgress),
        Direction::Ingress => (counter::SKB_INGRESS_PASSED, counter::SKB_INGRESS_DROPPED, Hook::SkbIngress),
    };
    if allowed {
        count(cgroup, passed);
        return ALLOW;
    }
    count(cgroup, dropped);
    let r = remote.unwrap_or(Remote { family: 0, protocol: 0, addr: [0; 16], port: 0 });
    report(
        cgroup,
        &Denied { hook, family: r.family, sock_type: 0, protocol: r.protocol, addr: r.addr, port: r.port },
        false,
    );
    DENY
}

#[inline(always)]
fn is_proxy(proxy: &SandboxNet, remote: &Remote) -> bool {
    if remote.protocol != IPPROTO_TCP || remote.port != proxy.port {
        return false;
    }
    let want = super::words_to_bytes(&proxy.addr);
    if remote.family == AF_INET {
        proxy.is_ipv4 == 1 && remote.addr[..4] == want[12..]
    } else {
        proxy.is_ipv4 == 0 && remote.addr == want
    }
}

/// Reads the remote address and port of an IPv4 or IPv6 packet; `None` for anything else.
#[inline(always)]
fn parse(ctx: &SkBuffContext, dir: Direction) -> Option<Remote> {
    let first: u8 = ctx.load(0).ok()?;
    let mut addr = [0u8; 16];
    match first >> 4 {
        4 => {
            let header_len = ((first & 0x0f) as usize) * 4;
            let protocol: u8 = ctx.load(9).ok()?;
            // Source at 12, destination at 16.
            let addr_off = if dir == Direction::Egress { 16 } else { 12 };
            let ip: [u8; 4] = ctx.load(addr_off).ok()?;
            addr[..4].copy_from_slice(&ip);
            let port = l4_port(ctx, header_len, protocol as u32, dir)?;
            Some(Remote { family: AF_INET, protocol: protocol as u32, addr, port })
        }
        6 => {
            let next: u8 = ctx.load(6).ok()?;
            // Source at 8, destination at 24.
            let addr_off = if dir == Direction::Egress { 24 } else { 8 };
            addr = ctx.load(addr_off).ok()?;
            let port = l4_port(ctx, 40, next as u32, dir)?;
            Some(Remote { family: AF_INET6, protocol: next as u32, addr, port })
        }
        _ => None,
    }
}

/// The remote port of a TCP/UDP header at `offset`; 0 for other protocols.
#[inline(always)]
fn l4_port(ctx: &SkBuffContext, offset: usize, protocol: u32, dir: Direction) -> Option<u16> {
    if protocol != IPPROTO_TCP && protocol != 17 {
        return Some(0);
    }
    // Source port first, destination port second.
    let port_off = if dir == Direction::Egress { offset + 2 } else { offset };
    let port: u16 = ctx.load(port_off).ok()?;
    Some(u16::from_be(port))
}
