//! A small seccomp filter for the agent: sockets only of the families the network layer judges.
//!
//! The cgroup programs see only AF_INET and AF_INET6 sockets. Other families would bypass them:
//! AF_VSOCK reaches a hypervisor, AF_SMC, AF_TIPC, AF_RDS and friends have transports of their
//! own. So `socket()` and `socketpair()` are allowed only for AF_UNIX, AF_INET, AF_INET6 and
//! AF_NETLINK (EAFNOSUPPORT otherwise), netlink only for NETLINK_ROUTE (interfaces and addresses,
//! which libc's `getifaddrs` reads; other netlink families reach host daemons, like
//! NETLINK_USERSOCK, or the kernel's audit and diagnostics: EPROTONOSUPPORT), and `io_uring_setup` is refused (ENOSYS), because
//! `IORING_OP_SOCKET` creates sockets without passing through seccomp. x32 system calls are
//! refused as a whole. This is not the syscall policy (that is BPF-LSM's job); it closes the
//! families the network layer cannot see.

use std::io;

/// One classic-BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16; // low 32 bits on little-endian
const OFF_ARG2: u32 = 32;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The filter program, built once in the parent.
#[derive(Clone)]
pub struct SocketFamilyFilter {
    program: Vec<Insn>,
}

impl SocketFamilyFilter {
    pub fn new() -> Self {
        let allowed_families = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];
        let n = allowed_families.len() as u8;
        let mut p = vec![
            stmt(LD_W_ABS, OFF_ARCH),
            jump(JEQ_K, AUDIT_ARCH, 1, 0),
            stmt(RET_K, RET_KILL_PROCESS),
            stmt(LD_W_ABS, OFF_NR),
            // x32 syscalls on x86_64 would dodge the numbers below.
            jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32),
            jump(JEQ_K, libc::SYS_io_uring_setup as u32, 0, 1),
            stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32),
            jump(JEQ_K, libc::SYS_socket as u32, 2, 0),
            jump(JEQ_K, libc::SYS_socketpair as u32, 1, 0),
            stmt(RET_K, RET_ALLOW),
            stmt(LD_W_ABS, OFF_ARG0),
        ];
        // After the family comparisons: the netlink one, the errno return, the protocol load, its
        // comparison and its errno return come before the final ALLOW.
        const NETLINK_CHECK: u8 = 5;
        for (i, family) in allowed_families.iter().enumerate() {
            let to_allow = (n - i as u8 - 1) + NETLINK_CHECK;
            p.push(jump(JEQ_K, *family as u32, to_allow, 0));
        }
        p.push(jump(JEQ_K, libc::AF_NETLINK as u32, 1, 0));
        p.push(stmt(RET_K, RET_ERRNO | libc::EAFNOSUPPORT as u32));
        p.push(stmt(LD_W_ABS, OFF_ARG2));
        p.push(jump(JEQ_K, libc::NETLINK_ROUTE as u32, 1, 0));
        p.push(stmt(RET_K, RET_ERRNO | libc::EPROTONOSUPPORT as u32));
        p.push(stmt(RET_K, RET_ALLOW));
        Self { program: p }
    }

    /// Installs the filter on the calling thread. Async-signal-safe (one prctl); needs
    /// `no_new_privs` or CAP_SYS_ADMIN.
    pub fn install(&self) -> io::Result<()> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const Insn,
        }
        let prog = SockFprog { len: self.program.len() as u16, filter: self.program.as_ptr() };
        // SAFETY: prog points at a live, well-formed filter for the duration of the call.
        let r =
            unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const SockFprog, 0, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Default for SocketFamilyFilter {
    fn default() -> Self {
        Self::new()
    }
}
