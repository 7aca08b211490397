//! leash's resolver, for a sandbox in transparent mode: the kernel sends every DNS query the
//! sandbox makes (UDP to port 53 at any address) here, and TCP to port 53 arrives through the
//! transparent front door (`transparent.rs`). A name an endpoint of the policy covers gets a
//! synthetic address (`names.rs`); every other name gets NXDOMAIN. Nothing is ever forwarded:
//! no query leaves the machine, so a query cannot carry data out.
//!
//! | file | job |
//! |---|---|
//! | `wire.rs` | reading a query, writing an answer (bytes only) |
//! | `names.rs` | the synthetic address of each allowed name, and back |

pub mod names;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::audit::DnsDecision;

use super::Proxy;
use wire::{bare_answer, parse_query, Malformed, Rcode, TYPE_A};

/// How long clients may keep an answer: the address stays the name's for the sandbox's life.
const TTL: u32 = 300;
/// How long a TCP client may take to send its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long one DNS-over-TCP connection may last in all.
const TCP_LIFETIME: Duration = Duration::from_secs(60);
/// DNS-over-TCP connections served at once; more are closed at once (each holds a buffer).
pub const TCP_CONNECTIONS: usize = 64;

/// The answer to the DNS message `msg` from `client`, or `None` when nothing is sent back.
pub fn answer(proxy: &Proxy, msg: &[u8], client: SocketAddr) -> Option<Vec<u8>> {
    let query = match parse_query(msg) {
        Ok(q) => q,
        Err(Malformed::Drop) => return None,
        Err(Malformed::Answer { id, rcode }) => return Some(bare_answer(id, rcode)),
    };
    if !query.is_internet() {
        return Some(query.answer(Rcode::Refused, None, TTL));
    }
    let state = proxy.state.current();
    let mut policy = query.name.as_deref().and_then(|n| state.policy.names(n)).map(str::to_owned);
    if policy.is_none() && query.name.is_some() && proxy.learner.get().is_some() {
        // Learning: every host name resolves, so the connection that follows is learned.
        policy = Some("learning".to_owned());
    }
    let audit = |allowed: bool, policy: Option<String>| {
        let decision =
            DnsDecision { allowed, name: query.name.clone(), qtype: query.qtype, policy, client: Some(client) };
        proxy.audit.dns_decision(&decision);
    };
    let Some(name) = query.name.as_deref().filter(|_| policy.is_some()) else {
        // Refusals are audited at a bounded rate (a loop of random names would flood the log).
        if admit_refusal(&proxy.dns_refusals) {
            audit(false, None);
        } else {
            proxy.audit.dns_refusal_counted(query.name.as_deref());
        }
        return Some(query.answer(Rcode::NxDomain, None, TTL));
    };
    if query.qtype != TYPE_A {
        // The name exists, with IPv4 addresses only (AAAA, HTTPS, MX, ...: no data).
        return Some(query.answer(Rcode::NoError, None, TTL));
    }
    Some(match proxy.names.address_of(name) {
        Some((addr, new)) => {
            // An answer is audited when the name gets its address, not for every repeat.
            if new && proxy.audit.records(true) {
                audit(true, policy);
            }
            query.answer(Rcode::NoError, Some(addr.octets()), TTL)
        }
        None => query.answer(Rcode::ServFail, None, TTL),
    })
}

/// Refusals audited each second, one by one; the rest are counted, and said in one line when the
/// next second's first refusal comes.
pub const REFUSALS_PER_SECOND: u32 = 20;

/// Whether this refusal is audited one by one, under `rate`.
fn admit_refusal(rate: &crate::audit::Rate) -> bool {
    let (admitted, held) = rate.admit();
    if held > 0 {
        crate::say!("leash: {held} more DNS refusal(s) in one second were not shown one by one");
    }
    admitted
}

/// Answers queries on `socket` forever: under `leash run` only those the sandbox sent (its
/// `cgroup_skb/egress` program records each client port), others are dropped unanswered; under
/// `leash confine` any local process in the pod is answered (the pod cannot read the maps).
pub async fn serve_udp(socket: UdpSocket, proxy: Arc<Proxy>) {
    let Ok(local) = socket.local_addr() else { return };
    let source = source_for(local);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // The sandbox's datagrams come from the address the kernel gives whatever is sent to the
        // resolver, from a port a socket of the sandbox holds (its record goes when it is closed,
        // `cgroup/sock_release`). Another address, or the port once the socket is closed, is
        // whoever bound it: not answered.
        let ours =
            |c: &crate::kernel::programs::DnsClients| Some(from.ip()) == source && c.sent(from.port(), local.port());
        if proxy.dns_clients.get().is_some_and(|c| !ours(c)) {
            continue;
        }
        if let Some(reply) = answer(&proxy, &buf[..len], from) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The source address the kernel gives datagrams sent to `to` from this host: a resolver on
/// 127.0.0.2 hears from 127.0.0.1.
fn source_for(to: SocketAddr) -> Option<std::net::IpAddr> {
    let unspecified: std::net::IpAddr = match to {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let probe = std::net::UdpSocket::bind(SocketAddr::new(unspecified, 0)).ok()?;
    probe.connect(to).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// DNS over TCP (RFC 7766): length-prefixed queries on one connection, answered in order. At
/// most [`TCP_CONNECTIONS`] at once, each for at most [`TCP_LIFETIME`]; a message's buffer is as
/// long as its length prefix says, read only as its bytes arrive.
pub async fn serve_tcp<S>(mut stream: S, proxy: Arc<Proxy>, client: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(_slot) = proxy.dns_tcp_slots.clone().try_acquire_owned() else { return };
    let _ = tokio::time::timeout(TCP_LIFETIME, async {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let len = u16::from_be_bytes(len) as usize;
            buf.clear();
            let mut message = (&mut stream).take(len as u64);
            match tokio::time::timeout(TCP_IDLE, message.read_to_end(&mut buf)).await {
                Ok(Ok(n)) if n == len => {}
                _ => return,
            }
            let Some(reply) = answer(&proxy, &buf, client) else { return };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_beyond_the_rate_are_not_audited_one_by_one() {
        let rate = crate::audit::Rate::new(REFUSALS_PER_SECOND);
        let admitted = (0..REFUSALS_PER_SECOND + 30).filter(|_| admit_refusal(&rate)).count();
        assert_eq!(admitted, REFUSALS_PER_SECOND as usize);
        std::thread::sleep(Duration::from_millis(1010));
        assert!(admit_refusal(&rate), "a new second audits again");
    }
}
