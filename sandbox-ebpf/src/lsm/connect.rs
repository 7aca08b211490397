//! `lsm/socket_connect` and `lsm/socket_sendmsg`: where a sandbox's IP sockets may connect or
//! send (unix sockets are judged by their peer, in `unix.rs`).
//!
//! - AF_INET/AF_INET6 (`lsm_rule::PROXY_ONLY`): only the proxy (with `lsm_rule::TRANSPARENT`, a
//!   socket created in the sandbox anywhere: the cgroup programs redirect it to the proxy). The cgroup programs already
//!   enforce this for the sandbox's own sockets; this is the second line, on the syscall path
//!   every caller (io_uring included) goes through, and the only line for a socket created
//!   outside the sandbox (passed in with `SCM_RIGHTS`, or held by a process moved in): the
//!   cgroup programs judge a socket by the cgroup it was created in, these hooks the caller.
//!   A send without an address (`send`, `write`, `sendmsg` on a connected socket) is judged by
//!   the socket's connected peer, so a socket connected outside reaches nothing but the proxy.
//!   Not covered before 6.5: `sendfile`/`splice` into a socket went through `sendpage`, which
//!   has no LSM hook.
//!
//! The address is the kernel's copy of the caller's sockaddr. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_rule, Hook};

use super::{current_sandbox, deny, socket_of, Event, Sandbox, ALLOW};
use crate::kernel::{field, layout_set, offset, read};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[lsm(hook = "socket_connect")]
pub fn leash_lsm_socket_connect(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::PROXY_ONLY == 0 {
        return ALLOW;
    }
    let sock: u64 = ctx.arg(0);
    if redirected(&sandbox, sock) {
        return ALLOW;
    }
    let address: u64 = ctx.arg(1);
    let len: i32 = ctx.arg(2);
    judge(&sandbox, Hook::LsmConnect, address, len)
}

/// Transparent mode: a socket created in the sandbox is left to the cgroup programs, which run
/// after this hook and redirect it to the proxy or refuse it. `sock` is typed (`struct socket *`).
#[inline(always)]
fn redirected(sandbox: &Sandbox, sock: u64) -> bool {
    sandbox.policy.rules & lsm_rule::TRANSPARENT != 0 && socket_of(field(sock, offset!(socket_sk)), sandbox)
}

#[lsm(hook = "socket_sendmsg")]
pub fn leash_lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::PROXY_ONLY == 0 {
        return ALLOW;
    }
    let msg: u64 = ctx.arg(1);
    if !layout_set() {
        return deny(&sandbox, &Event::new(Hook::LsmSendmsg));
    }
    // `msg` is typed (`struct msghdr *`); `msg_name` is a `void *`, read through with `read`.
    let name: u64 = field(msg, offset!(msghdr_name));
    let len: i32 = field(msg, offset!(msghdr_namelen));
    // No address: the socket's peer (a unix socket's was judged when it connected). With one: the
    // address, and the peer too when connected, since TCP ignores the address then.
    let sock: u64 = ctx.arg(0);
    if name != 0 && redirected(&sandbox, sock) {
        return ALLOW;
    }
    if name == 0 {
        return judge_peer(&sandbox, sock, true);
    }
    match judge(&sandbox, Hook::LsmSendmsg, name, len) {
        ALLOW => judge_peer(&sandbox, sock, false),
        refused => refused,
    }
}

/// The verdict on the peer of the socket at `sock`: an IP socket only to the proxy; one not
/// connected (peer port 0) is refused when `required` (a send with no address), else allowed.
/// Other families: as the kernel decides. `sock` is typed (`struct socket *`). Only for a
/// sandbox with `lsm_rule::PROXY_ONLY` (both hooks checked it on entry).
#[inline(always)]
fn judge_peer(sandbox: &Sandbox, sock: u64, required: bool) -> i32 {
    let sk: u64 = field(sock, offset!(socket_sk));
    if sk == 0 {
        return deny(sandbox, &Event::new(Hook::LsmSendmsg));
    }
    let family: u16 = field(sk, offset!(skc_family));
    let port = u16::from_be(field(sk, offset!(skc_dport)));
    let mut words = [0u32; 4];
    match family {
        AF_INET => {
            words[2] = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
            words[3] = field(sk, offset!(skc_daddr));
        }
        AF_INET6 => words = field(sk, offset!(skc_v6_daddr)),
        _ => return ALLOW,
    }
    if port == 0 && !required {
        return ALLOW;
    }
    verdict(sandbox, Hook::LsmSendmsg, family, port, &words)
}

/// The verdict on sending to the sockaddr at `address` (`len` bytes).
#[inline(always)]
fn judge(sandbox: &Sandbox, hook: Hook, address: u64, len: i32) -> i32 {
    if len < 2 {
        return ALLOW; // no family: the kernel refuses it itself
    }
    let Some(family) = read::<u16>(address) else {
        return deny(sandbox, &Event::new(hook));
    };
    match family {
        AF_INET | AF_INET6 => judge_inet(sandbox, hook, address, family),
        _ => ALLOW,
    }
}

/// IP sockets: only the proxy's address and port.
#[inline(always)]
fn judge_inet(sandbox: &Sandbox, hook: Hook, address: u64, family: u16) -> i32 {
    // sockaddr_in: port at 2, address at 4; sockaddr_in6: port at 2, address at 8. Both in
    // network order, compared as the same native words the policy stores.
    let port = read::<u16>(address + 2).map(u16::from_be).unwrap_or(0);
    let mut words = [0u32; 4];
    let addressed = if family == AF_INET {
        words[2] = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        read::<u32>(address + 4).map(|w| words[3] = w)
    } else {
        read::<[u32; 4]>(address + 8).map(|w| words = w)
    };
    let port = if addressed.is_some() { port } else { 0 };
    verdict(sandbox, hook, family, port, &words)
}

/// Allows the proxy's address and port (`port` 0 never is) — in transparent mode its
/// transparent and resolver ports too —, refuses anything else.
#[inline(always)]
fn verdict(sandbox: &Sandbox, hook: Hook, family: u16, port: u16, words: &[u32; 4]) -> i32 {
    let policy = &sandbox.policy;
    let proxy_port = port == policy.proxy_port
        || (policy.rules & lsm_rule::TRANSPARENT != 0 && (port == policy.transparent_port || port == policy.dns_port));
    if port != 0 && proxy_port && *words == policy.proxy_addr {
        return ALLOW;
    }
    let mut event = Event::new(hook);
    event.family = family as u32;
    event.port = port;
    event.addr = crate::net::words_to_bytes(words);
    deny(sandbox, &event)
}
