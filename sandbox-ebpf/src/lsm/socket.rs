//! `lsm/socket_create`: the socket families a sandbox has no business with — `AF_PACKET`
//! (sniffing and forging link-layer frames), `SOCK_RAW` IPv4/IPv6 (forged IP packets),
//! `AF_VSOCK` (a channel to the hypervisor and other VMs that no cgroup network program sees) and
//! netlink other than `NETLINK_ROUTE` (audit, netfilter, kernel uevents, ...; `NETLINK_ROUTE` stays
//! because libc's address lookup uses it). The cgroup `sock_create` program only ever sees
//! `AF_INET`/`AF_INET6`, so these families need the LSM hook. Kernel-internal sockets (`kern`) are
//! never refused. Minimum kernel: 5.7 (BPF-LSM).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_deny, Hook};

use super::{check, ALLOW};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
const AF_PACKET: u32 = 17;
const AF_VSOCK: u32 = 40;
const SOCK_RAW: u32 = 3;
/// The kernel masks `SOCK_NONBLOCK`/`SOCK_CLOEXEC` off before the hook; masked again to be sure.
const SOCK_TYPE_MASK: u32 = 0xf;
const NETLINK_ROUTE: u32 = 0;

#[lsm(hook = "socket_create")]
pub fn leash_lsm_socket_create(ctx: LsmContext) -> i32 {
    let family: u32 = ctx.arg(0);
    let sock_type: u32 = ctx.arg::<u32>(1) & SOCK_TYPE_MASK;
    let protocol: u32 = ctx.arg(2);
    let kern: u32 = ctx.arg(3);
    if kern != 0 {
        return ALLOW;
    }
    match flag_for(family, sock_type, protocol) {
        0 => ALLOW,
        flag => check(flag, Hook::LsmSocketCreate, (family, sock_type, protocol)),
    }
}

/// The `lsm_deny` flag that governs this kind of socket, 0 when none does.
#[inline(always)]
fn flag_for(family: u32, sock_type: u32, protocol: u32) -> u32 {
    match family {
        AF_PACKET => lsm_deny::PACKET_SOCKET,
        AF_VSOCK => lsm_deny::VSOCK,
        AF_NETLINK if protocol != NETLINK_ROUTE => lsm_deny::NETLINK,
        AF_INET | AF_INET6 if sock_type == SOCK_RAW => lsm_deny::RAW_SOCKET,
        _ => 0,
    }
}
