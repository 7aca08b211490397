//! The proxy's front door: every request the agent sends to the proxy itself. `CONNECT host:port`
//! is judged at L4 (host, port, executable) and then passed through uninspected (`passthrough.rs`) or inspected
//! (`intercept.rs`); an absolute-form `http://` request is judged the same way and then as a
//! request; anything else is refused. Every decision is audited.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response};

use crate::audit::ProxyDecision;
use crate::policy::{CompiledEndpoint, NetworkVerdict};

use super::answers::{empty, refuse, Refusal, AUDIT_LOG_FULL};
use super::intercept::{self, Tunnel};
use super::ssrf::{normalize_host, NormalizedHost};
use super::state::PolicyState;
use super::upstream::{dial_checked, DialError};
use super::{addresses, identity, learning, passthrough, request, Proxy, ProxyBody};

/// Who is asking: the agent's address as the proxy sees it and, when known, its executable;
/// for a connection transparent mode redirected, where it was meant to go.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub binary: Option<PathBuf>,
    /// The pid of the process that opened the connection, as this process sees it.
    pub pid: Option<u32>,
    pub redirected_from: Option<SocketAddr>,
}

pub async fn handle(
    req: Request<Incoming>,
    client: Client,
    proxy: Arc<Proxy>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() == Method::CONNECT {
        return Ok(connect(req, client, proxy).await);
    }
    match req.uri().scheme_str() {
        Some("http") => Ok(absolute_form(req, client, proxy).await),
        Some("https") => Ok(refuse(
            Refusal::AbsoluteHttps,
            "send https:// requests through CONNECT (HTTPS_PROXY), not in absolute form",
            None,
        )),
        _ => Ok(refuse(
            Refusal::NotAProxyRequest,
            "this is a proxy: send CONNECT host:port or an absolute-form http:// request",
            None,
        )),
    }
}

/// The L4 decision for `host:port`, audited; `Err` is the refusal to send.
pub(super) fn decide(
    state: &PolicyState,
    proxy: &Proxy,
    method: &str,
    host: &NormalizedHost,
    port: u16,
    client: &Client,
) -> Result<NetworkVerdict, Box<Response<ProxyBody>>> {
    let host_text = host.to_string();
    let verdict = decide_for_owner(state, &host_text, port, client);
    let recorded = !proxy.audit.records(verdict.allow)
        || proxy.audit.proxy_decision(&ProxyDecision {
            allowed: verdict.allow,
            method: method.to_owned(),
            host: host_text.clone(),
            port,
            path: None,
            policy: verdict.policy.as_deref().map(str::to_owned),
            rule: Some(verdict.rule.to_string()),
            reason: if verdict.allow { "allowed".into() } else { verdict.reason.to_string() },
            binary: client.binary.as_ref().map(|b| b.display().to_string()),
            credentials: vec![],
            client: Some(client.addr),
            redirected_from: client.redirected_from,
        });
    if verdict.allow && !recorded {
        return Err(Box::new(refuse(Refusal::AuditLogFull, AUDIT_LOG_FULL, verdict.policy.as_deref())));
    }
    if verdict.allow {
        Ok(verdict)
    } else {
        let detail = format!("{}:{port} is not allowed: {}", host.uri_host(), verdict.reason);
        Err(Box::new(refuse(Refusal::NoMatchingPolicy, detail, verdict.policy.as_deref())))
    }
}

/// The decision for the connection's executable; when that decision rests on a `binaries:`
/// rule, the process must also run without loader variables (`identity.rs`), else it is judged
/// as a process of unknown executable, and a refusal says why.
pub(super) fn decide_for_owner(state: &PolicyState, host: &str, port: u16, client: &Client) -> NetworkVerdict {
    let verdict = state.decider.network(host, port, client.binary.as_deref());
    let by_binaries = verdict.allow
        && client.binary.is_some()
        && verdict
            .endpoint_ref
            .and_then(|r| state.policy.network_policies().get(r.policy as usize))
            .is_some_and(|p| p.binaries.is_some());
    if !by_binaries {
        return verdict;
    }
    let Err(untrusted) = identity::check_loader_variables(client.pid) else { return verdict };
    let mut anyone = state.decider.network(host, port, None);
    if !anyone.allow {
        anyone.reason = Arc::from(untrusted.to_string());
    }
    anyone
}

/// Whether the proxy is learning and the policy would deny `host:port` (`learning.rs`).
pub(super) fn learns_instead(
    state: &PolicyState,
    proxy: &Proxy,
    host: &NormalizedHost,
    port: u16,
    client: &Client,
) -> bool {
    proxy.learner.get().is_some() && !decide_for_owner(state, &host.to_string(), port, client).allow
}

pub(super) fn endpoint<'a>(state: &'a PolicyState, verdict: &NetworkVerdict) -> Option<&'a CompiledEndpoint> {
    state.endpoint(verdict.endpoint_ref?)
}

/// The host and port a request names: no user information, a host that normalises, and a port
/// (`default_port` when it may be left out).
#[allow(clippy::result_large_err)]
fn target(req: &Request<Incoming>, default_port: Option<u16>) -> Result<(NormalizedHost, u16), Response<ProxyBody>> {
    let bad_target = || refuse(Refusal::BadTarget, "the request must name host:port", None);
    let authority = req.uri().authority().ok_or_else(bad_target)?;
    if authority.as_str().contains('@') {
        return Err(refuse(Refusal::BadHost, "request target with user information", None));
    }
    let port = authority.port_u16().or(default_port).ok_or_else(bad_target)?;
    let host = normalize_host(authority.host()).map_err(|e| refuse(Refusal::BadHost, e.to_string(), None))?;
    Ok((host, port))
}

async fn connect(mut req: Request<Incoming>, client: Client, proxy: Arc<Proxy>) -> Response<ProxyBody> {
    let (host, port) = match target(&req, None) {
        Ok(t) => t,
        Err(refusal) => return refusal,
    };
    // Before the state is read: a reload from here on reaches a passed-through connection.
    let reloads = proxy.state.reloads();
    let state = proxy.state.current();
    if learns_instead(&state, &proxy, &host, port, &client) {
        return learning::connect(req, client, proxy, host, port).await;
    }
    let verdict = match decide(&state, &proxy, "CONNECT", &host, port, &client) {
        Ok(v) => v,
        Err(refusal) => return *refusal,
    };
    let (Some(endpoint), Some(endpoint_ref)) = (endpoint(&state, &verdict), verdict.endpoint_ref) else {
        return refuse(Refusal::NoMatchingPolicy, "no endpoint", None);
    };
    learning::allowed_connection(&proxy, &host.to_string(), port, &client, endpoint);
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(Refusal::BadRequest, "CONNECT without an upgradable connection", None);
    };
    if endpoint.is_passed_through() {
        let addresses = addresses::for_endpoint(endpoint);
        return match dial_checked(&host, port, &addresses).await {
            Ok(upstream) => {
                let Ok(peer) = upstream.peer_addr() else {
                    return refuse(Refusal::UpstreamUnreachable, "the upstream hung up", verdict.policy.as_deref());
                };
                let allowed = passthrough::Allowed { host, port, client, upstream: peer.ip() };
                passthrough::spawn(on_upgrade, upstream, proxy, allowed, reloads);
                Response::new(empty())
            }
            Err(e @ DialError::Blocked(_)) => refuse(Refusal::BlockedAddress, e.to_string(), verdict.policy.as_deref()),
            Err(e) => refuse(Refusal::UpstreamUnreachable, e.to_string(), verdict.policy.as_deref()),
        };
    }
    let policy = verdict.policy.clone();
    let tunnel = Tunnel::new(proxy, state, host, port, "https", endpoint_ref, policy, client);
    intercept::spawn(on_upgrade, tunnel);
    Response::new(empty())
}

/// `GET http://host/path` sent to the proxy: judged like a CONNECT to host:port, then like a
/// request inside a tunnel, and forwarded in plain HTTP.
async fn absolute_form(req: Request<Incoming>, client: Client, proxy: Arc<Proxy>) -> Response<ProxyBody> {
    let (host, port) = match target(&req, Some(80)) {
        Ok(t) => t,
        Err(refusal) => return refusal,
    };
    let state = proxy.state.current();
    if learns_instead(&state, &proxy, &host, port, &client) {
        return learning::absolute_form(req, client, proxy, host, port).await;
    }
    let verdict = match decide(&state, &proxy, req.method().as_str(), &host, port, &client) {
        Ok(v) => v,
        Err(refusal) => return *refusal,
    };
    let (Some(endpoint), Some(endpoint_ref)) = (endpoint(&state, &verdict), verdict.endpoint_ref) else {
        return refuse(Refusal::NoMatchingPolicy, "no endpoint", None);
    };
    learning::allowed_connection(&proxy, &host.to_string(), port, &client, endpoint);
    let policy = verdict.policy.clone();
    let tunnel = Arc::new(Tunnel::new(proxy, state, host, port, "http", endpoint_ref, policy, client));
    match request::handle(req, tunnel).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}
