//! `cgroup_skb/egress` and `cgroup_skb/ingress`: the backstop. Every IP packet a sandbox socket
//! sends must be TCP to the proxy address and port; every packet it receives must be TCP from
//! there (in transparent mode: or TCP to its transparent port, or UDP to its resolver's port).
//! Anything else (raw sockets, ICMP, UDP, a path that never called connect) is dropped, so a gap
//! in the socket hooks cannot become a way out. The egress side also drops the owner record of a
//! socket that resets its connection (`identity.rs`), and records which sandbox sent each DNS
//! query to its resolver, and from which socket (the record goes when the socket is closed). Minimum kernel: 4.10 for the hook; the helper
//! naming the packet's cgroup (`bpf_skb_cgroup_id`) and direct packet access (`__sk_buff.data`,
//! for a privileged loader) must be allowed for this program type, which `leash doctor` checks
//! by loading it.
//!
//! The context starts at the network header. Headers are read in place ([`Packet`]): these
//! programs run for every packet of a sandbox socket, and a helper call per field read cost
//! about a tenth of their time. IPv6 extension headers are not walked: a packet whose next
//! header is not TCP is dropped.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
    EbpfContext as _,
};
use sandbox_common::{counter, dns_client_key, Hook, SandboxNet, SANDBOX_TRANSPARENT};

use crate::maps::{DNS_CLIENTS, DNS_CLIENT_SOCKETS};

use super::redirect::IPPROTO_UDP;
use super::{count, report, sandbox, words_to_bytes, Event, AF_INET, AF_INET6, ALLOW, DENY, IPPROTO_TCP};

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

/// A packet's bytes from its network header on. Read in place where they are in the packet's
/// linear part, as the headers of the packets a socket makes are (direct packet access: no
/// helper call per read); with `bpf_skb_load_bytes` otherwise.
struct Packet<'a> {
    ctx: &'a SkBuffContext,
    data: usize,
    end: usize,
}

impl<'a> Packet<'a> {
    #[inline(always)]
    fn new(ctx: &'a SkBuffContext) -> Self {
        // SAFETY: the kernel hands cgroup_skb programs a valid context.
        let (data, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
        Self { ctx, data, end }
    }

    /// The `T` at `offset`, or `None` past the packet's end. `T` is two bytes or more (a byte is
    /// read as one of a pair): for one, LLVM turns `at + 1 <= end` into `at < end`, from which
    /// the verifier learns no readable byte.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        const { assert!(core::mem::size_of::<T>() >= 2) };
        let at = self.data + offset;
        if at + core::mem::size_of::<T>() <= self.end {
            // SAFETY: `[at, at + size)` lies within the packet's linear part (checked against
            // `data_end`, as the verifier requires).
            return Some(unsafe { core::ptr::read_unaligned(at as *const T) });
        }
        self.ctx.load::<T>(offset).ok()
    }
}

/// The remote end of a packet. `addr` holds the address as four network-order words (the
/// layout of `SandboxNet::addr`); an IPv4 address is in `addr[0]`.
struct Remote {
    family: u32,
    protocol: u32,
    addr: [u32; 4],
    port: u16,
    /// Where the TCP or UDP header starts.
    l4: usize,
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, dir: Direction) -> i32 {
    // SAFETY: plain BPF helper call on the program's own context.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let pkt = Packet::new(ctx);
    let remote = parse(&pkt, dir);
    if sandbox(cgroup).is_some_and(|proxy| is_proxy(&proxy, &remote)) {
        if dir == Direction::Egress && remote.protocol == IPPROTO_UDP {
            // DNS to the sandbox's resolver (the only UDP `is_proxy` lets out): say whose it is.
            // The socket's entry first: a record is made only if it goes with the socket.
            let key = dns_client_key(local_port(&pkt, &remote), remote.port);
            // SAFETY: plain BPF helper call on the program's own context (the sending socket's).
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if DNS_CLIENT_SOCKETS.insert(&cookie, &key, 0).is_ok() {
                let _ = DNS_CLIENTS.insert(&key, &cgroup, 0);
            }
        } else if dir == Direction::Egress && is_reset(&pkt, &remote) {
            // The connection is over, and nothing of the socket is left for the proxy to find.
            super::identity::forget_reset(ctx);
        }
        return ALLOW;
    }
    let (dropped, hook) = match dir {
        Direction::Egress => (counter::SKB_EGRESS_DROPPED, Hook::SkbEgress),
        Direction::Ingress => (counter::SKB_INGRESS_DROPPED, Hook::SkbIngress),
    };
    count(cgroup, dropped);
    let denied = Event {
        family: remote.family,
        protocol: remote.protocol,
        addr: words_to_bytes(&remote.addr),
        port: remote.port,
        ..Event::new(hook)
    };
    report(cgroup, &denied, false);
    DENY
}

/// The proxy's address, at its port over TCP; in transparent mode also its transparent port
/// (TCP) and its resolver's port (UDP).
#[inline(always)]
fn is_proxy(proxy: &SandboxNet, remote: &Remote) -> bool {
    let transparent = proxy.flags & SANDBOX_TRANSPARENT != 0;
    let port_ok = match remote.protocol {
        IPPROTO_TCP => remote.port == proxy.port || (transparent && remote.port == proxy.transparent_port),
        IPPROTO_UDP => transparent && remote.port == proxy.dns_port,
        _ => false,
    };
    if !port_ok || remote.port == 0 {
        return false;
    }
    if remote.family == AF_INET {
        return proxy.is_ipv4 == 1 && remote.addr[0] == proxy.addr[3];
    }
    remote.family == AF_INET6
        && proxy.is_ipv4 == 0
        && remote.addr[0] == proxy.addr[0]
        && remote.addr[1] == proxy.addr[1]
        && remote.addr[2] == proxy.addr[2]
        && remote.addr[3] == proxy.addr[3]
}

/// Reads the remote address and port of an IPv4 or IPv6 packet; family 0 for anything else
/// (or a packet too short to read), which no proxy matches.
#[inline(always)]
fn parse(pkt: &Packet, dir: Direction) -> Remote {
    let mut remote = Remote { family: 0, protocol: 0, addr: [0; 4], port: 0, l4: 0 };
    let Some([first, _]) = pkt.read::<[u8; 2]>(0) else { return remote };
    match first >> 4 {
        4 => {
            let header_len = ((first & 0x0f) as usize) * 4;
            let Some([_, protocol]) = pkt.read::<[u8; 2]>(8) else { return remote };
            // Source at 12, destination at 16.
            let addr_off = if dir == Direction::Egress { 16 } else { 12 };
            let Some(ip) = pkt.read::<u32>(addr_off) else { return remote };
            remote.family = AF_INET;
            remote.protocol = protocol as u32;
            remote.addr[0] = ip;
            remote.port = l4_port(pkt, header_len, remote.protocol, dir);
            remote.l4 = header_len;
        }
        6 => {
            let Some([next, _]) = pkt.read::<[u8; 2]>(6) else { return remote };
            // Source at 8, destination at 24.
            let addr_off = if dir == Direction::Egress { 24 } else { 8 };
            let Some(ip) = pkt.read::<[u32; 4]>(addr_off) else { return remote };
            remote.family = AF_INET6;
            remote.protocol = next as u32;
            remote.addr = ip;
            remote.port = l4_port(pkt, 40, remote.protocol, dir);
            remote.l4 = 40;
        }
        _ => {}
    }
    remote
}

/// The sandbox's own port of an outgoing TCP or UDP header: its source port (0 for a short
/// packet).
#[inline(always)]
fn local_port(pkt: &Packet, remote: &Remote) -> u16 {
    pkt.read::<u16>(remote.l4).map(u16::from_be).unwrap_or(0)
}

/// Whether a TCP segment carries RST.
#[inline(always)]
fn is_reset(pkt: &Packet, remote: &Remote) -> bool {
    // The flags byte, 13 (the second of the pair at 12): RST 0x04.
    remote.protocol == IPPROTO_TCP && pkt.read::<[u8; 2]>(remote.l4 + 12).is_some_and(|[_, flags]| flags & 0x04 != 0)
}

/// The remote port of a TCP/UDP header at `offset`; 0 for other protocols or a short packet.
#[inline(always)]
fn l4_port(pkt: &Packet, offset: usize, protocol: u32, dir: Direction) -> u16 {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return 0;
    }
    // Source port first, destination port second.
    let port_off = if dir == Direction::Egress { offset + 2 } else { offset };
    pkt.read::<u16>(port_off).map(u16::from_be).unwrap_or(0)
}
