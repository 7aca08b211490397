//! The transparent front door: connections the kernel redirected here (`network.transparent`)
//! because the agent connected somewhere other than the proxy. The destination it meant comes
//! from the connection's owner record (`connect4/6`, found by the client socket's cookie), and the
//! connection is judged exactly as a CONNECT to the same name and port (`connect.rs`):
//!
//! - the name: the one a synthetic address was handed out for (`dns/names.rs`); any other
//!   address is judged as the IP host it is (`allowed_ips`, IP host rules). A synthetic address
//!   nobody was given is refused.
//! - port 53: DNS over TCP, answered by leash's resolver.
//! - learning (`--learn`): what the policy would deny is served as a learned CONNECT is.
//! - `protocol: tcp` / `tls: skip` endpoints: tunnelled as they are.
//! - inspected endpoints: TLS (first byte 0x16) is terminated as in a CONNECT tunnel; plain HTTP
//!   (an upper-case method) is served and judged request by request; anything else is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::audit::ProxyDecision;

use super::answers::Refusal;
use super::connect::{decide, endpoint, learns_instead, Client};
use super::dns::names::is_synthetic;
use super::intercept::{self, Tunnel};
use super::ssrf::NormalizedHost;
use super::state::PolicyState;
use super::upstream::{dial_checked, DialError};
use super::{addresses, dns, learning, passthrough, request, Proxy, HEADER_READ_TIMEOUT, TLS_HANDSHAKE};

/// Serves one redirected connection from `client`, which meant to reach `to`.
pub async fn serve(admitted: tokio::net::TcpStream, proxy: Arc<Proxy>, client: Client, to: SocketAddr) {
    if to.port() == sandbox_common::DNS_PORT {
        return dns::serve_tcp(admitted, proxy, client.addr).await;
    }
    let host = match name_of(&proxy, to.ip()) {
        Some(host) => host,
        None => {
            refused(&proxy, &client, &to.ip().to_string(), to, Refusal::SyntheticAddressUnknown);
            return;
        }
    };
    let port = to.port();
    // Before the state is read: a reload from here on reaches a passed-through connection.
    let reloads = proxy.state.reloads();
    let state = proxy.state.current();
    if learns_instead(&state, &proxy, &host, port, &client) {
        return learning::redirected(admitted, client, proxy, host, port).await;
    }
    let Ok(verdict) = decide(&state, &proxy, "CONNECT", &host, port, &client) else { return };
    let (Some(endpoint), Some(endpoint_ref)) = (endpoint(&state, &verdict), verdict.endpoint_ref) else { return };
    learning::allowed_connection(&proxy, &host.to_string(), port, &client, endpoint);
    if endpoint.is_passed_through() {
        let addresses = addresses::for_endpoint(endpoint);
        match dial_checked(&host, port, &addresses).await {
            Ok(mut upstream) => {
                let Ok(peer) = upstream.peer_addr() else { return };
                let allowed = passthrough::Allowed { host, port, client, upstream: peer.ip() };
                let mut agent = admitted;
                let still = |state: &PolicyState| allowed.still(state);
                passthrough::copy_while_allowed(&mut agent, &mut upstream, &proxy, reloads, still).await;
            }
            // The same refusal a CONNECT gets, audited (the agent sees the connection close).
            Err(DialError::Blocked(_)) => refused(&proxy, &client, &host.to_string(), to, Refusal::BlockedAddress),
            Err(_) => {}
        }
        return;
    }
    let mut first = [0u8; 1];
    let first = match tokio::time::timeout(HEADER_READ_TIMEOUT, admitted.peek(&mut first)).await {
        Ok(Ok(1)) => first[0],
        _ => return,
    };
    let policy = verdict.policy.clone();
    let host_text = host.to_string();
    let scheme = if first == TLS_HANDSHAKE { "https" } else { "http" };
    // `client` says where it was redirected from (`to`).
    let tunnel = Tunnel::new(proxy.clone(), state, host, port, scheme, endpoint_ref, policy, client.clone());
    if first == TLS_HANDSHAKE {
        intercept::serve(admitted, tunnel).await;
    } else if first.is_ascii_uppercase() {
        let tunnel = Arc::new(tunnel);
        let service = service_fn(move |req| request::handle(req, tunnel.clone()));
        let connection = http1::Builder::new()
            .preserve_header_case(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(admitted), service)
            .with_upgrades();
        tokio::pin!(connection);
        // As a tunnel does (`intercept.rs`): a reload ends the connection gracefully.
        let mut reloads = reloads;
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = reloads.changed() => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    } else {
        refused(&proxy, &client, &host_text, to, Refusal::NotTlsOrHttp);
    }
}

/// The host a redirected connection to `ip` is for: the name behind a synthetic address, else
/// the address itself.
fn name_of(proxy: &Proxy, ip: IpAddr) -> Option<NormalizedHost> {
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    match v4 {
        Some(v4) if is_synthetic(v4) => proxy.names.name_of(v4).map(NormalizedHost::Name),
        _ => Some(NormalizedHost::Ip(ip)),
    }
}

/// Audits a redirected connection to `host` refused for `why` (the agent sees it close).
fn refused(proxy: &Proxy, client: &Client, host: &str, to: SocketAddr, why: Refusal) {
    // A denial stands whatever the log took.
    let _ = proxy.audit.proxy_decision(&ProxyDecision {
        allowed: false,
        method: "CONNECT".into(),
        host: host.to_owned(),
        port: to.port(),
        reason: why.code().to_owned(),
        binary: client.binary.as_ref().map(|b| b.display().to_string()),
        client: Some(client.addr),
        redirected_from: Some(to),
        ..Default::default()
    });
}
