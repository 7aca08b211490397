//! `lsm/unix_stream_connect` and `lsm/unix_may_send`: which unix sockets a sandbox reaches
//! (`lsm_rule::UNIX_ALLOWLIST`, in force for every `leash run` sandbox where BPF-LSM works).
//!
//! Its own: the peer socket was created by a process of the same sandbox (tmux, a language
//! server, a test's fixture). And those in `LEASH_LSM_UNIX_ALLOW`, by the name the peer bound
//! (pathname or abstract). Everything else — docker.sock, containerd's and dbus's sockets, a
//! host agent's, another sandbox's — is refused.
//!
//! Both hooks see the peer the kernel found, not the address the caller gave, so a link, a bind
//! mount or a relative path to a host socket changes nothing, and a socket created outside and
//! passed in reaches no more than one made inside. Stream and seqpacket connects reach
//! `unix_stream_connect`; datagram connects and sends (with an address or on a connected
//! socket) reach `unix_may_send`. `socketpair(2)` involves neither.
//!
//! Minimum kernel: 5.7 (BPF-LSM). `sk_cgrp_data` holds the socket's cgroup pointer on every
//! kernel of the matrix (on 5.10 as a word whose low bits are clear when it is a pointer).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, generated as gen},
    macros::lsm,
    programs::LsmContext,
};
use sandbox_common::{lsm_rule, Hook, UnixKey, UNIX_PATH_MAX};

use super::{current_sandbox, deny, socket_of, Event, Sandbox, ALLOW};
use crate::kernel::{field, layout_set, offset, read, read_u64};
use crate::maps::LSM_UNIX_ALLOW;

const AF_UNIX: u32 = 1;
/// `sun_path` starts after the 2-byte family.
const SUN_PATH: u64 = 2;

#[lsm(hook = "unix_stream_connect")]
pub fn leash_lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::UNIX_ALLOWLIST == 0 {
        return ALLOW;
    }
    // `struct sock *other`: the listening socket.
    let other: u64 = ctx.arg(1);
    judge(&sandbox, Hook::LsmUnixConnect, other)
}

#[lsm(hook = "unix_may_send")]
pub fn leash_lsm_unix_may_send(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::UNIX_ALLOWLIST == 0 {
        return ALLOW;
    }
    // `struct socket *other`: the receiving socket.
    let other: u64 = ctx.arg(1);
    if other == 0 || !layout_set() {
        return deny(&sandbox, &unix_event(Hook::LsmUnixSend));
    }
    let sk: u64 = field(other, offset!(socket_sk));
    judge(&sandbox, Hook::LsmUnixSend, sk)
}

/// Allows a peer socket (`struct sock` at `sk`) created in `sandbox` or bound to a listed name.
#[inline(always)]
fn judge(sandbox: &Sandbox, hook: Hook, sk: u64) -> i32 {
    if sk == 0 || !layout_set() {
        return deny(sandbox, &unix_event(hook));
    }
    if socket_of(sk, sandbox) {
        return ALLOW;
    }
    let mut key = UnixKey { sandbox: sandbox.id, len: 0, path: [0; UNIX_PATH_MAX] };
    // `unix_sock.addr` lies past `struct sock`, beyond what the typed pointer allows: read.
    let Some(address) = read_u64(sk, offset!(unix_sock_addr)).filter(|a| *a != 0) else {
        return deny(sandbox, &unix_event(hook));
    };
    let Some(len) = read::<i32>(address + offset!(unix_address_len) as u64) else {
        return deny(sandbox, &unix_event(hook));
    };
    let name = address + offset!(unix_address_name) as u64 + SUN_PATH;
    if !bound_name(name, len - SUN_PATH as i32, &mut key) {
        return deny(sandbox, &unix_event(hook));
    }
    // SAFETY: only presence is read.
    if unsafe { LSM_UNIX_ALLOW.get(&key) }.is_some() {
        return ALLOW;
    }
    let mut event = unix_event(hook);
    let mut j = 0usize;
    while j < event.path.len() {
        event.path[j] = key.path[j];
        j += 1;
    }
    deny(sandbox, &event)
}

/// Fills `key` with the name at `name` (`given` bytes as the peer bound it) the way userspace
/// keys are made: a pathname up to its NUL, an abstract name (first byte zero) exactly `given`
/// bytes; zeroes after. No loop over the bytes: one that tested each against `given` took
/// 6.1's verifier past its million instructions.
#[inline(always)]
fn bound_name(name: u64, given: i32, key: &mut UnixKey) -> bool {
    if given <= 0 || given > UNIX_PATH_MAX as i32 {
        return false;
    }
    let Some(first) = read::<u8>(name) else {
        return false;
    };
    if first != 0 {
        // SAFETY: the helper checks the address and stops at the NUL the kernel stored.
        return match unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut key.path) } {
            Ok(bytes) => {
                key.len = bytes.len() as u32;
                true
            }
            Err(_) => false,
        };
    }
    let size = (given as u32) & 0x7f;
    if size as usize > UNIX_PATH_MAX {
        return false;
    }
    // SAFETY: the helper checks the address and writes at most `size` <= 108 bytes into the
    // zeroed path.
    let ret = unsafe { gen::bpf_probe_read_kernel(key.path.as_mut_ptr() as *mut c_void, size, name as *const c_void) };
    key.len = size;
    ret == 0
}

#[inline(always)]
fn unix_event(hook: Hook) -> Event {
    let mut event = Event::new(hook);
    event.family = AF_UNIX;
    event
}
