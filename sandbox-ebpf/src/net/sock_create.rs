//! `cgroup/sock_create`: no raw sockets and no ICMP "ping" sockets inside a sandbox, for IPv4 and
//! IPv6. Both can send packets that never pass through connect; `skb.rs` would drop them anyway,
//! this refuses them at the door with EPERM. Other families (AF_PACKET, AF_NETLINK, ...) never
//! reach this hook; the BPF-LSM `socket_create` program handles them. Minimum kernel: 4.10.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use sandbox_common::{counter, Hook};

use super::{count, current_cgroup, report, Event, ALLOW, DENY};

const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

#[cgroup_sock(sock_create)]
pub fn leash_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands sock programs a valid context.
    let sk = unsafe { &*ctx.sock };
    let (family, sock_type, protocol) = (sk.family, sk.type_, sk.protocol);
    if !is_raw_or_ping(sock_type, protocol) {
        return ALLOW;
    }
    let cgroup = current_cgroup();
    count(cgroup, counter::SOCK_CREATE_DENIED);
    report(cgroup, &Event { family, sock_type, protocol, ..Event::new(Hook::SockCreate) }, true);
    DENY
}

#[inline(always)]
fn is_raw_or_ping(sock_type: u32, protocol: u32) -> bool {
    sock_type == SOCK_RAW || (sock_type == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6))
}
