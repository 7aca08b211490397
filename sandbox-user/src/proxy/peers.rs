//! Who may use the proxy. Under `leash run` it serves only its own sandbox: the sandbox's
//! programs record every connection it makes to the proxy under its socket's cookie
//! (`sandbox-ebpf/src/net/identity.rs`), and a connection from the proxy's own address is served
//! only if the socket the kernel says is at its client end (`sock_diag`) has such a record.
//! Anything else (another local user, root outside the sandbox, whoever took a port the
//! sandbox's socket gave up) is closed before a byte of it is read. An admitted connection's
//! record leaves the kernel's map at once: the connection carries what it says (`connect::Client`),
//! and the map, shared by every sandbox on the host and evicting its oldest records when full,
//! keeps only connections no proxy has accepted yet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::identity::Identity;
use crate::kernel::programs::ConnectionOwners;
use sandbox_common::ConnOwner;

/// The sandbox's connection records, for the admission check and `binaries:` rules.
#[derive(Clone)]
pub struct SandboxPeers {
    owners: Arc<ConnectionOwners>,
    holders: Option<Arc<Holders>>,
    /// Whether the kernel can say which socket is at a connection's client end (`sock_diag`);
    /// without it no record can be found, and a degraded run serves no connection.
    by_socket: bool,
}

impl SandboxPeers {
    pub fn new(owners: ConnectionOwners) -> Self {
        Self { owners: Arc::new(owners), holders: None, by_socket: true }
    }

    /// Admits no connection: for a run `--allow-degraded` lets start without `sock_diag`, which
    /// cannot tell the sandbox's connections from others'.
    pub fn without_sock_diag(mut self) -> Self {
        self.by_socket = false;
        self
    }

    /// Names the executable of each connection, for `binaries:` rules and learning, when every
    /// process of the sandbox (`procs`, its `cgroup.procs`) holding the connection's socket runs
    /// the executable that connected. `proxy` is the proxy's address (any of its ports).
    pub fn naming_executables(mut self, procs: PathBuf, proxy: std::net::IpAddr) -> Self {
        self.holders = Some(Arc::new(Holders { procs, proxy }));
        self
    }

    /// What the proxy makes of `stream`, accepted from `peer` at the proxy's `local`.
    /// [`Admission::Admitted`] with its record when it is a connection the sandbox made: the
    /// sandbox recorded the socket now at its client end, and the proxy's end is still connected
    /// to it. (A reset connection is not: its client end may be another socket by now, even one of
    /// the sandbox that took the freed port after it.) The record is made at `connect()`, before
    /// the SYN leaves, so it is there by the time the proxy accepts; it is taken out of the
    /// kernel's map here, also when the client bound another local address, which the proxy does
    /// not admit (only the proxy's own address rules out a port another user could bind).
    pub async fn admits(&self, stream: &TcpStream, peer: SocketAddr, local: SocketAddr) -> Admission {
        if !self.by_socket {
            return Admission::Refused;
        }
        let Some(owner) = self.owners.connection(peer, local) else {
            // No socket of the sandbox at the client end: a live client there is someone else's,
            // and a client that reset its connection left nothing to say whose it was.
            return if connected_a_moment_later(stream).await { Admission::Refused } else { Admission::Gone };
        };
        if !still_connected(stream) {
            // The socket now at the client end is a newer connection from the same address; its
            // record is left for its own accept.
            return Admission::Gone;
        }
        // This connection's own record: no other proxy will take it, admitted or not.
        self.owners.forget(&owner);
        if peer.ip() != local.ip() {
            return Admission::OtherAddress(owner);
        }
        Admission::Admitted(owner)
    }

    /// What the record of an admitted connection from `peer` to the proxy's port `listener` says.
    /// The executable counts only if every process now holding the socket runs it too: a process
    /// that connected and then exec'd an allowed program, or passed the socket on, does not lend
    /// that program's rights to the others holding the socket.
    pub fn identity(&self, owner: &ConnOwner, peer: SocketAddr, listener: u16) -> Identity {
        let binary = self.holders.as_ref().and_then(|h| {
            let exe = std::fs::read_link(format!("/proc/{}/exe", owner.pid)).ok()?;
            h.all_run(peer, listener, &exe).then_some(exe)
        });
        Identity {
            binary,
            pid: Some(owner.pid),
            destination: crate::kernel::programs::original_destination(&owner.dest),
        }
    }
}

/// What the proxy does with a connection it accepted.
pub enum Admission {
    /// The sandbox's own connection, and the kernel's record of who opened it.
    Admitted(ConnOwner),
    /// A live client the sandbox did not connect: another user, root outside the sandbox.
    /// Refused and audited as an outsider.
    Refused,
    /// The sandbox's own connection, from another local address than the proxy's (where
    /// another user could have bound the port): refused, and audited as the sandbox's denial.
    OtherAddress(ConnOwner),
    /// The client reset the connection before the proxy read it: nothing can be read from it,
    /// and nothing is left to say whose it was, so it is counted, not audited as an outsider's
    /// (the agent resetting its own connections would otherwise fill the audit with "outsiders").
    Gone,
}

/// Who in the sandbox holds a connection's client socket.
struct Holders {
    procs: PathBuf,
    proxy: std::net::IpAddr,
}

impl Holders {
    fn all_run(&self, peer: SocketAddr, listener: u16, exe: &std::path::Path) -> bool {
        let to = SocketAddr::new(self.proxy, listener);
        super::identity::holders_all_run(&self.procs, std::path::Path::new("/proc/net"), peer, to, exe)
    }
}

/// How long a client that seems connected, though no sandbox socket is at its end, is given to
/// show a reset: a socket closed with a reset leaves the kernel's tables just before its reset
/// reaches the proxy's end, and in that gap it looks like a live client of no sandbox.
const RESET_SETTLE: std::time::Duration = std::time::Duration::from_millis(1);

/// [`still_connected`], asked again after [`RESET_SETTLE`] when it is.
async fn connected_a_moment_later(stream: &TcpStream) -> bool {
    if !still_connected(stream) {
        return false;
    }
    tokio::time::sleep(RESET_SETTLE).await;
    still_connected(stream)
}

/// Whether the proxy's end of a connection is still connected: established (or, accepted early
/// by TCP Fast Open, about to be), or the client has only finished sending. Not after a reset.
fn still_connected(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    // `struct tcp_info` starts with the state; the kernel copies no more than asked for.
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`; the descriptor is open.
    let r = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    // TCP_ESTABLISHED, TCP_SYN_RECV and TCP_CLOSE_WAIT (`include/net/tcp_states.h`).
    r == 0 && len >= 1 && matches!(info[0], 1 | 3 | 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The proxy's end of a connection counts as connected while the client is there or has
    /// only shut its sending side, and not once the client reset it.
    #[tokio::test]
    async fn a_reset_connection_is_not_still_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let live = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(still_connected(&accepted), "a live connection");
        live.shutdown(std::net::Shutdown::Write).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(still_connected(&accepted), "a client that only finished sending");

        let reset = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // SO_LINGER with a zero timeout: close sends a reset.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        use std::os::fd::AsRawFd as _;
        // SAFETY: setsockopt with a linger struct of its own size on an open socket.
        let r = unsafe {
            libc::setsockopt(
                reset.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        drop(reset);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!still_connected(&accepted), "a connection its client reset");
    }
}
