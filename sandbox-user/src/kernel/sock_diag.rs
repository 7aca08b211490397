//! Which TCP socket holds a connection's client end: its cookie, found by the connection's
//! addresses with one exact `NETLINK_SOCK_DIAG` lookup (as `ss` looks one socket up). The cookie
//! is the value the eBPF programs read with `bpf_get_socket_cookie`, unique for the life of the
//! host, so it tells the socket a record was made for from any socket that holds the same port
//! later.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_NOCOOKIE`: the request names no cookie.
const NO_COOKIE: u32 = !0;

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` followed by `struct inet_diag_req_v2`.
#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct nlmsghdr` followed by the start of `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Reply {
    header: libc::nlmsghdr,
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

const _: () = {
    assert!(size_of::<SockId>() == 48);
    assert!(size_of::<Request>() == 16 + 56);
    assert!(size_of::<Reply>() == 16 + 52);
};

/// `LOOPBACK_IFINDEX`: the device every packet between two local addresses arrives on.
const LOOPBACK: u32 = 1;
/// `TCP_LISTEN` and `TCP_NEW_SYN_RECV` (`include/net/tcp_states.h`): no socket in these states
/// is a connection's client end.
const LISTEN: u8 = 10;
const NEW_SYN_RECV: u8 = 12;

/// What an exact lookup found.
struct Found {
    cookie: u64,
    state: u8,
    /// The remote port of what was found, host byte order.
    dport: u16,
}

/// The cookie of the TCP socket in this network namespace whose local address is `client` and
/// which is connected to `server`; `None` when no socket is. The kernel looks up what a packet
/// from `server` to `client` would reach, arriving on the loopback device (so a client bound to
/// it is found too): the connected socket, or its TIME_WAIT, which keeps its cookie. A listener
/// on `client` it may fall back to is no connection's client end, and counts as none.
pub fn client_cookie(client: SocketAddr, server: SocketAddr) -> io::Result<Option<u64>> {
    let found = lookup(client, server)?;
    Ok(found.filter(|f| f.state != LISTEN && f.state != NEW_SYN_RECV && f.dport == server.port()).map(|f| f.cookie))
}

/// One exact lookup of the TCP socket at `client` as seen from `server`.
fn lookup(client: SocketAddr, server: SocketAddr) -> io::Result<Option<Found>> {
    let (family, src, dst) = match (client.ip().to_canonical(), server.ip().to_canonical()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (libc::AF_INET, padded(&c.octets()), padded(&s.octets())),
        (IpAddr::V6(c), IpAddr::V6(s)) => (libc::AF_INET6, c.octets(), s.octets()),
        _ => return Ok(None),
    };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: !0,
        id: SockId {
            sport: client.port().to_be_bytes(),
            dport: server.port().to_be_bytes(),
            src,
            dst,
            interface: LOOPBACK,
            cookie: [NO_COOKIE, NO_COOKIE],
        },
    };
    let socket = netlink()?;
    // SAFETY: a plain-data struct sent whole; the descriptor is open.
    let sent = unsafe { libc::send(socket.as_raw_fd(), (&raw const request).cast(), size_of::<Request>(), 0) };
    if sent != size_of::<Request>() as isize {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    // SAFETY: receives at most `buf.len()` bytes into `buf`. The kernel answers within `send`,
    // so the reply is already queued.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    parse(&buf[..n])
}

/// Whether this network namespace answers the lookups [`client_cookie`] makes: the listening
/// socket at `listener` must be found by its address (as the client end of a connection to any
/// remote address). Fails where the kernel's TCP socket diagnostics are missing: `inet_diag` and
/// `tcp_diag`, modules on most distributions, which the kernel loads on first use where it can.
pub fn answers(listener: SocketAddr) -> io::Result<()> {
    let anywhere = SocketAddr::new(listener.ip(), 1);
    match lookup(listener, anywhere) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the kernel's TCP socket diagnostics (modules inet_diag, tcp_diag) did not find the proxy's own socket",
        )),
        Err(e) => {
            Err(io::Error::new(e.kind(), format!("the kernel's TCP socket diagnostics (NETLINK_SOCK_DIAG): {e}")))
        }
    }
}

/// What a reply found, `None` for "no such socket", an error for anything else. (A kernel
/// without the TCP diagnostics answers "no such socket" too: [`answers`] tells the two apart.)
fn parse(reply: &[u8]) -> io::Result<Option<Found>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "a short sock_diag reply");
    if reply.len() < 16 {
        return Err(short());
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind == libc::NLMSG_ERROR as u16 {
        let code = reply.get(16..20).ok_or_else(short)?;
        let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
        return match errno {
            libc::ENOENT => Ok(None),
            _ => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || reply.len() < size_of::<Reply>() {
        return Err(short());
    }
    // SAFETY: `Reply` is plain data and `reply` holds at least its size; read unaligned.
    let msg = unsafe { reply.as_ptr().cast::<Reply>().read_unaligned() };
    Ok(Some(Found {
        cookie: u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32),
        state: msg.state,
        dport: u16::from_be_bytes(msg.id.dport),
    }))
}

fn padded(v4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(v4);
    out
}

/// A `NETLINK_SOCK_DIAG` socket addressed to the kernel.
fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is the kernel's address (pid 0) once the family is set.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: connect(2) with a sockaddr_nl of its own size.
    let r = unsafe {
        libc::connect(socket.as_raw_fd(), (&raw const kernel).cast(), size_of::<libc::sockaddr_nl>() as libc::socklen_t)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a loopback connection: the client end is found by its addresses and has a
    /// cookie, the same one each time; a port nobody holds has none.
    #[test]
    fn the_client_end_of_a_loopback_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let local = client.local_addr().unwrap();
        let first = client_cookie(local, server).unwrap();
        assert!(first.is_some(), "the connection's client end was not found");
        assert_eq!(client_cookie(local, server).unwrap(), first);
        let (accepted, _) = listener.accept().unwrap();
        let server_end = client_cookie(server, local).unwrap();
        assert!(server_end.is_some() && server_end != first, "the server end is another socket");
        // An IPv6 socket that reached the IPv4 listener through its IPv4-mapped address.
        let mapped = std::net::TcpStream::connect(format!("[::ffff:127.0.0.1]:{}", server.port())).unwrap();
        let mapped_cookie = client_cookie(mapped.local_addr().unwrap(), server).unwrap();
        assert!(mapped_cookie.is_some() && mapped_cookie != first, "the mapped client end was not found");
        // A client bound to the loopback device, which a lookup on no device would not see.
        let bound = bound_to_loopback(server);
        let bound_cookie = client_cookie(bound.local_addr().unwrap(), server).unwrap();
        assert!(bound_cookie.is_some() && bound_cookie != first, "a client bound to lo was not found");
        drop((client, accepted, mapped, bound));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(client_cookie(nobody, server).unwrap(), None);
        answers(server).expect("the listener is found by its address");
        assert_eq!(client_cookie(server, nobody).unwrap(), None, "a listener is no connection's client end");
        drop(listener);
        assert!(answers(server).is_err(), "a closed listener was found");
    }

    /// A TCP connection to `server` from a socket bound to `lo` (SO_BINDTODEVICE).
    fn bound_to_loopback(server: SocketAddr) -> std::net::TcpStream {
        use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from("lo")).unwrap();
        let SocketAddr::V4(v4) = server else { panic!("an IPv4 listener") };
        connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
        std::net::TcpStream::from(fd)
    }
}
