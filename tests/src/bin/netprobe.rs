//! `netprobe`: tries one network action and prints `ok` or `err <errno>` (exit 0 / 1).
//! The integration tests run it inside and outside sandboxes and compare.
//!
//! ```text
//! netprobe tcp ADDR                 TCP connect
//! netprobe fastopen ADDR            TCP fast open (sendto MSG_FASTOPEN)
//! netprobe udp ADDR                 unconnected UDP sendto
//! netprobe udp-connected ADDR       UDP connect + send
//! netprobe ping ADDR                ICMP echo through a ping socket (SOCK_DGRAM/IPPROTO_ICMP)
//! netprobe raw ADDR                 ICMP echo through a raw socket
//! netprobe grandchild ADDR          fork twice; the grandchild does `tcp ADDR`
//! netprobe later SECS ADDR FILE     detach, wait SECS, try `tcp ADDR`, write the result to FILE
//! netprobe flood SECS ADDR          detach, then `tcp ADDR` over and over for SECS seconds
//! netprobe get PROXY HOST:PORT      CONNECT through PROXY, then GET / ; prints the status codes
//! netprobe direct-get ADDR          GET / straight to ADDR (transparent mode); prints the status
//! netprobe dns ADDR NAME            one A query over UDP to ADDR; prints rcode, answers, source
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::exit;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let addr = |i: usize| -> SocketAddr { parse_addr(&arg(i)) };
    let result = match arg(0).as_str() {
        "tcp" => tcp(addr(1)),
        "fastopen" => fastopen(addr(1)),
        "udp" => UdpSocket::bind(any_for(addr(1))).and_then(|s| s.send_to(b"probe", addr(1)).map(drop)),
        "udp-connected" => UdpSocket::bind(any_for(addr(1))).and_then(|s| {
            s.connect(addr(1))?;
            s.send(b"probe").map(drop)
        }),
        "ping" => icmp(addr(1), libc::SOCK_DGRAM),
        "raw" => icmp(addr(1), libc::SOCK_RAW),
        "grandchild" => grandchild(addr(1)),
        "later" => later(arg(1).parse().unwrap_or_else(|_| usage()), addr(2), &arg(3)),
        "flood" => flood(arg(1).parse().unwrap_or_else(|_| usage()), addr(2)),
        "get" => get(addr(1), &arg(2)),
        "direct-get" => direct_get(addr(1)),
        "dns" => dns(addr(1), &arg(2), args.get(3).map(|a| parse_addr(a))),
        _ => usage(),
    };
    report(result);
}

/// `ADDR`, or `proxy` for the proxy named by `$HTTP_PROXY`, or `proxy6` for the same address in
/// IPv4-mapped IPv6 form.
fn parse_addr(text: &str) -> SocketAddr {
    let from_env = || -> SocketAddr {
        let v = std::env::var("HTTP_PROXY").unwrap_or_else(|_| usage());
        v.trim_start_matches("http://").trim_end_matches('/').parse().unwrap_or_else(|_| usage())
    };
    match text {
        "proxy" => from_env(),
        "proxy6" => match from_env() {
            SocketAddr::V4(a) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
            v6 => v6,
        },
        _ => text.parse().unwrap_or_else(|_| usage()),
    }
}

fn usage() -> ! {
    eprintln!("usage: netprobe tcp|fastopen|udp|udp-connected|ping|raw|grandchild ADDR | later SECS ADDR FILE | get PROXY HOST:PORT | dns SERVER NAME [FROM]");
    exit(2)
}

fn report(result: std::io::Result<()>) -> ! {
    match result {
        Ok(()) => {
            println!("ok");
            exit(0)
        }
        Err(e) => {
            println!("err {}", errno_name(&e));
            exit(1)
        }
    }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(n) => format!("errno{n}"),
        None => e.to_string(),
    }
}

fn any_for(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    }
}

fn tcp(addr: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(drop)
}

/// A raw sockaddr for `addr` and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn check(ret: isize) -> std::io::Result<isize> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fastopen(addr: SocketAddr) -> std::io::Result<()> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls on a fd this function owns.
    unsafe {
        let fd = check(libc::socket(family, libc::SOCK_STREAM, 0) as isize)? as i32;
        let (ss, len) = sockaddr(addr);
        let r = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            &ss as *const _ as *const libc::sockaddr,
            len,
        );
        let r = check(r);
        libc::close(fd);
        r.map(drop)
    }
}

fn icmp(addr: SocketAddr, ty: i32) -> std::io::Result<()> {
    let (family, proto, echo_type) = if addr.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_ICMP, 8u8)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8)
    };
    // Echo request: type, code 0, checksum (ping sockets and ICMPv6 fill it), id, seq.
    let mut packet = [echo_type, 0, 0, 0, 0, 1, 0, 1];
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    // SAFETY: plain socket syscalls on a fd this function owns.
    unsafe {
        let fd = check(libc::socket(family, ty, proto) as isize)? as i32;
        let (ss, len) = sockaddr(SocketAddr::new(addr.ip(), 0));
        let r =
            libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, &ss as *const _ as *const libc::sockaddr, len);
        let r = check(r);
        libc::close(fd);
        r.map(drop)
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Double fork; the grandchild's verdict comes back through a pipe.
fn grandchild(addr: SocketAddr) -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: fork/pipe/waitpid used in the classic way; the children only call async-signal-safe
    // functions plus a connect.
    unsafe {
        check(libc::pipe(fds.as_mut_ptr()) as isize)?;
        let child = libc::fork();
        if child == 0 {
            if libc::fork() == 0 {
                let ok: u8 = if tcp(addr).is_ok() { b'1' } else { b'0' };
                libc::write(fds[1], (&ok as *const u8).cast(), 1);
                libc::_exit(0);
            }
            libc::_exit(0);
        }
        libc::waitpid(child, std::ptr::null_mut(), 0);
        libc::close(fds[1]);
        let mut buf = [0u8; 1];
        let mut f = <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]);
        f.read_exact(&mut buf)?;
        if buf[0] == b'1' {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        }
    }
}

/// Detaches (fork + setsid, parent exits at once), waits, tries, writes the verdict to `file`.
fn later(secs: u64, addr: SocketAddr, file: &str) -> std::io::Result<()> {
    // SAFETY: fork in a single-threaded process.
    unsafe {
        if libc::fork() != 0 {
            return Ok(());
        }
        libc::setsid();
    }
    std::thread::sleep(Duration::from_secs(secs));
    let verdict = match tcp(addr) {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("err {}", errno_name(&e)),
    };
    let _ = std::fs::write(file, verdict);
    exit(0)
}

/// Detaches, then connects to `addr` as fast as it can for `secs` seconds (each attempt a denial
/// when `addr` is not allowed), then exits.
fn flood(secs: u64, addr: SocketAddr) -> std::io::Result<()> {
    // SAFETY: fork in a single-threaded process.
    unsafe {
        if libc::fork() != 0 {
            return Ok(());
        }
        libc::setsid();
    }
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        let _ = tcp(addr);
    }
    exit(0)
}

/// A GET straight to `target`; prints "GET <code> <body>" (code 0: closed without an answer).
fn direct_get(target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A refused connection may be closed before the request is written (EPIPE): no answer.
    let mut rest = String::new();
    if write!(s, "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").is_ok() {
        let _ = s.read_to_string(&mut rest);
    }
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or("");
    println!("{}", format!("GET {} {body}", status(&rest)).trim_end());
    Ok(())
}

/// One A query for `name` over UDP to `server`; prints "dns rcode=<n> answers=<n> from=<ip>".
fn dns(server: SocketAddr, name: &str, from: Option<SocketAddr>) -> std::io::Result<()> {
    let s = UdpSocket::bind(from.unwrap_or_else(|| any_for(server)))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, server)?;
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf)?;
    if n < 12 {
        return Err(std::io::Error::other("short answer"));
    }
    println!("dns rcode={} answers={} from={}", buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]), from.ip());
    Ok(())
}

/// CONNECT through the proxy, then a GET; prints "CONNECT <code> GET <code> <body>".
fn get(proxy: SocketAddr, target: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
    let head = read_head(&mut s)?;
    let code = status(&head);
    if code != 200 {
        println!("CONNECT {code}");
        return Err(std::io::Error::other(format!("CONNECT answered {code}")));
    }
    write!(s, "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")?;
    let mut rest = String::new();
    s.read_to_string(&mut rest)?;
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or("");
    println!("CONNECT 200 GET {} {body}", status(&rest));
    Ok(())
}

fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn status(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
