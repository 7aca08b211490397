//! Learning mode (`leash run --learn`): what the policy would deny is allowed and recorded
//! instead, and everything the agent does through the proxy becomes an
//! [`Observation`] for [`crate::policy::learn`]. Only the proxy learns: the kernel still
//! confines the agent to the proxy, and the proxy's own refusals (misdirected requests,
//! ambiguous framing, credential placeholders sent to hosts they are not bound to) stay.
//!
//! A CONNECT to a host no endpoint covers (or a connection transparent mode redirected there;
//! leash's resolver then answers every host name) is given an endpoint of its own that allows every
//! request, held in a policy generation of its own (with the real policy's credentials, so
//! placeholders are swapped or refused exactly as before). Its first byte decides what it is:
//! a TLS ClientHello is intercepted, so its requests are seen; anything else (or nothing within
//! [`PEEK_WAIT`]: the server speaks first) is tunnelled and learned as `protocol: tcp`.
//!
//! Private addresses stay closed: a host that resolves to loopback or a private network is
//! refused and noted as not learned, unless `--learn-allow-private`, when it is reached and
//! learned with an `allowed_ips` entry naming exactly the addresses it resolved to. Unspecified
//! and cloud metadata addresses are never learned.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

use crate::audit::ProxyDecision;
use crate::policy::learn::{Observation, Seen};
use crate::policy::{CompiledEndpoint, EndpointRef, IpNetwork};

use super::answers::{empty, refuse, Refusal, AUDIT_LOG_FULL};
use super::connect::Client;
use super::intercept::{self, Tunnel};
use super::ssrf::{AddressPolicy, BlockReason, NormalizedHost};
use super::state::PolicyState;
use super::upstream::dial_checked;
use super::{addresses, request, Proxy, ProxyBody, TLS_HANDSHAKE};

/// How long a tunnel's first byte is awaited before the connection is taken for a protocol
/// whose server speaks first.
const PEEK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The network policy name learned connections are judged under.
const LEARNING: &str = "learning";

/// What a learning proxy has seen, and the generations it made for hosts the policy lacks.
pub struct Learner {
    allow_private: bool,
    seen: Mutex<Recorded>,
    states: Mutex<HashMap<(String, u16), Arc<PolicyState>>>,
}

/// The observations kept, and how many bytes they hold.
#[derive(Default)]
struct Recorded {
    observations: Vec<Observation>,
    bytes: usize,
}

/// The most the observations of one run may hold (leash keeps them until the agent ends; each
/// request's target can be tens of KiB, and the agent sends as many as it likes). Past it, the
/// rest is not learned, and leash says so once.
const MAX_RECORDED_BYTES: usize = 64 << 20;

/// The most host:port generations learning keeps made (about 6 KiB each).
const MAX_STATES: usize = 1024;

impl Learner {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private, seen: Mutex::default(), states: Mutex::default() }
    }

    /// Everything recorded so far, in order.
    pub fn observations(&self) -> Vec<Observation> {
        self.seen.lock().map(|s| s.observations.clone()).unwrap_or_default()
    }

    fn record(&self, host: &str, port: u16, binary: Option<&std::path::Path>, seen: Seen) {
        // What it takes in memory: the observation, and each of its allocations (with what
        // an allocator adds to one).
        let size = std::mem::size_of::<Observation>()
            + 4 * 32
            + host.len()
            + binary.map_or(0, |b| b.as_os_str().len())
            + match &seen {
                Seen::Request { method, target, overrides, credentials } => {
                    method.len()
                        + target.len()
                        + overrides.iter().chain(credentials).map(|v| v.len() + 32).sum::<usize>()
                }
                Seen::Tunnel { allowed_ips } | Seen::Inspected { allowed_ips } => {
                    allowed_ips.len() * std::mem::size_of::<IpNetwork>()
                }
                _ => 0,
            };
        if let Ok(mut s) = self.seen.lock() {
            if s.bytes + size > MAX_RECORDED_BYTES {
                if s.bytes <= MAX_RECORDED_BYTES {
                    s.bytes = MAX_RECORDED_BYTES + 1;
                    crate::say!(
                        "leash: warning: learning has recorded {} MiB of connections and requests; later ones are not learned",
                        MAX_RECORDED_BYTES >> 20
                    );
                }
                return;
            }
            s.bytes += size;
            s.observations.push(Observation { host: host.to_owned(), port, binary: binary.map(Into::into), seen });
        }
    }
}

/// Records a connection the policy allowed, with the `allowed_ips` of its endpoint.
pub fn allowed_connection(proxy: &Proxy, host: &str, port: u16, client: &Client, endpoint: &CompiledEndpoint) {
    let Some(learner) = proxy.learner.get() else { return };
    let allowed_ips = endpoint.allowed_ips.clone();
    let tunnelled = matches!(endpoint.inspection, crate::policy::Inspection::Tunnel) || endpoint.tls_skip;
    let seen = if tunnelled { Seen::Tunnel { allowed_ips } } else { Seen::Inspected { allowed_ips } };
    learner.record(host, port, client.binary.as_deref(), seen);
}

/// Records a request that went through (allowed, or allowed because the proxy is learning).
pub fn request_passed(t: &Tunnel, method: &str, target: &str, overrides: Vec<String>, credentials: &[String]) {
    let Some(learner) = t.proxy.learner.get() else { return };
    let seen = Seen::Request {
        method: method.to_owned(),
        target: target.to_owned(),
        overrides,
        credentials: credentials.to_vec(),
    };
    learner.record(&t.host_text, t.port, t.client.binary.as_deref(), seen);
}

/// The method-override header values of a request (read before credentials are swapped in),
/// only those spelled as a method; empty unless the proxy is learning.
pub fn method_overrides(parts: &hyper::http::request::Parts) -> Vec<String> {
    use crate::policy::readings::{is_canonical_method, METHOD_OVERRIDES};
    METHOD_OVERRIDES
        .iter()
        .flat_map(|name| parts.headers.get_all(*name))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_uppercase())
        .filter(|m| m.len() <= 16 && is_canonical_method(m))
        .collect()
}

/// A CONNECT the policy denies, under learning: intercepted or tunnelled by its first byte.
pub async fn connect(
    mut req: Request<Incoming>,
    client: Client,
    proxy: Arc<Proxy>,
    host: NormalizedHost,
    port: u16,
) -> Response<ProxyBody> {
    let (learner, state) = match learning_state(&proxy, &host, port, &client, "CONNECT").await {
        Ok(ready) => ready,
        Err(refusal) => return *refusal,
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(Refusal::BadRequest, "CONNECT without an upgradable connection", None);
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        serve_learned(TokioIo::new(upgraded), learner, proxy, state, host, port, client).await;
    });
    Response::new(empty())
}

/// A connection transparent mode redirected to a host:port the policy denies, under learning:
/// served as a learned CONNECT is.
pub async fn redirected<S>(agent: S, client: Client, proxy: Arc<Proxy>, host: NormalizedHost, port: u16)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok((learner, state)) = learning_state(&proxy, &host, port, &client, "CONNECT").await else { return };
    serve_learned(agent, learner, proxy, state, host, port, client).await;
}

/// An absolute-form `http://` request the policy denies, under learning: inspected as usual.
pub async fn absolute_form(
    req: Request<Incoming>,
    client: Client,
    proxy: Arc<Proxy>,
    host: NormalizedHost,
    port: u16,
) -> Response<ProxyBody> {
    let method = req.method().as_str().to_owned();
    let (learner, state) = match learning_state(&proxy, &host, port, &client, &method).await {
        Ok(ready) => ready,
        Err(refusal) => return *refusal,
    };
    let host_text = host.to_string();
    let allowed_ips = learned_endpoint(&state).map(|e| e.allowed_ips.clone()).unwrap_or_default();
    learner.record(&host_text, port, client.binary.as_deref(), Seen::Inspected { allowed_ips });
    let tunnel = Tunnel::new(proxy, state, host, port, "http", ENDPOINT, Some(LEARNING.into()), client);
    match request::handle(req, Arc::new(tunnel)).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// The only endpoint of a learning generation.
const ENDPOINT: EndpointRef = EndpointRef { policy: 0, endpoint: 0 };

fn learned_endpoint(state: &PolicyState) -> Option<&CompiledEndpoint> {
    state.endpoint(ENDPOINT)
}

/// The learner and the generation `host:port` is served under, or the refusal to send (the
/// host resolves to an address learning may not open). Audits the decision either way.
async fn learning_state(
    proxy: &Arc<Proxy>,
    host: &NormalizedHost,
    port: u16,
    client: &Client,
    method: &str,
) -> Result<(Arc<Learner>, Arc<PolicyState>), Box<Response<ProxyBody>>> {
    let learner = proxy
        .learner
        .get()
        .cloned()
        .ok_or_else(|| Box::new(refuse(Refusal::NoMatchingPolicy, "the proxy is not learning", None)))?;
    let host_text = host.to_string();
    // Whether the decision may stand (`Auditor::proxy_decision`).
    let audit = |allowed: bool, reason: &str| {
        proxy.audit.proxy_decision(&ProxyDecision {
            allowed,
            method: method.to_owned(),
            host: host_text.clone(),
            port,
            path: None,
            policy: Some(LEARNING.to_owned()),
            rule: Some(LEARNING.to_owned()),
            reason: reason.to_owned(),
            binary: client.binary.as_ref().map(|b| b.display().to_string()),
            credentials: vec![],
            client: Some(client.addr),
            redirected_from: client.redirected_from,
        })
    };
    let allowed_ips = match private_addresses(host, port, learner.allow_private).await {
        Ok(ips) => ips,
        Err(why) => {
            learner.record(&host_text, port, client.binary.as_deref(), Seen::NotLearned { why: why.clone() });
            let _ = audit(false, &why);
            let detail = format!("{}:{port} was not learned: {why}", host.uri_host());
            return Err(Box::new(refuse(Refusal::BlockedAddress, detail, Some(LEARNING))));
        }
    };
    let state = match learner.state_for(proxy, &host_text, port, &allowed_ips) {
        Ok(s) => s,
        Err(e) => {
            let _ = audit(false, &e);
            return Err(Box::new(refuse(Refusal::LearningFailed, e, Some(LEARNING))));
        }
    };
    if !audit(true, "learned") {
        return Err(Box::new(refuse(Refusal::AuditLogFull, AUDIT_LOG_FULL, Some(LEARNING))));
    }
    Ok((learner, state))
}

impl Learner {
    /// The generation for `host:port`: one endpoint allowing every request, reaching the
    /// private `allowed_ips` given, with the policy in force's credentials.
    fn state_for(
        &self,
        proxy: &Proxy,
        host: &str,
        port: u16,
        allowed_ips: &[IpNetwork],
    ) -> Result<Arc<PolicyState>, String> {
        let key = (host.to_owned(), port);
        if let Some(s) = self.states.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(s);
        }
        let current = proxy.state.current();
        let quote = |t: &str| format!("'{}'", t.replace('\'', "''"));
        let ips: Vec<String> = allowed_ips.iter().map(|n| quote(&n.to_string())).collect();
        let mut text = format!(
            "version: 1\nnetwork_policies:\n  {LEARNING}:\n    endpoints:\n      - host: {}\n        port: {port}\n        protocol: rest\n        rules: [{{ allow: {{ method: '*', path: '**' }} }}]\n",
            quote(host)
        );
        if !ips.is_empty() {
            text.push_str(&format!("        allowed_ips: [{}]\n", ips.join(", ")));
        }
        let credentials = current.policy.credentials();
        if !credentials.is_empty() {
            text.push_str("credentials:\n");
            for c in credentials {
                let hosts: Vec<String> = c.hosts.iter().map(|h| quote(&h.to_string())).collect();
                text.push_str(&format!("  {}: {{ hosts: [{}] }}\n", c.name, hosts.join(", ")));
            }
        }
        let policy = crate::policy::parse_str("learning", &text).map_err(|e| format!("learning {host}:{port}: {e}"))?;
        let mut state = PolicyState::build(policy, &proxy.secrets, proxy.tls.clone())
            .map_err(|e| format!("learning {host}:{port}: {e}"))?;
        // Made from the policy in force: as current as it is.
        state.reload = current.reload;
        let state = Arc::new(state);
        // Kept for the next connection to the same host, up to a bound: the agent chooses how
        // many hosts it tries, and one made again costs only time.
        if let Ok(mut m) = self.states.lock() {
            if m.len() < MAX_STATES {
                m.insert(key, state.clone());
            }
        }
        Ok(state)
    }
}

/// The private addresses `host` resolves to, as single-address networks, when learning may
/// open them; `Err` says why it may not.
async fn private_addresses(host: &NormalizedHost, port: u16, allow_private: bool) -> Result<Vec<IpNetwork>, String> {
    let addresses: Vec<IpAddr> = match host {
        NormalizedHost::Ip(ip) => vec![*ip],
        NormalizedHost::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    let mut private = Vec::new();
    for ip in addresses {
        let Err(blocked) = AddressPolicy::default().check(ip) else { continue };
        let never = matches!(blocked.reason, BlockReason::Unspecified | BlockReason::CloudMetadata);
        if never {
            return Err(format!("{ip} is a {}, which learning never opens", blocked.reason));
        }
        if !allow_private {
            return Err(format!(
                "{host} resolves to {ip}, a {}: rerun with --learn-allow-private to learn it with an allowed_ips entry",
                blocked.reason
            ));
        }
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let net = format!("{ip}/{len}").parse().map_err(|e| format!("{ip}: {e}"))?;
        if !private.contains(&net) {
            private.push(net);
        }
    }
    Ok(private)
}

/// Serves a learned connection once the agent's stream is ours: TLS is intercepted, anything
/// else tunnelled to the checked address.
async fn serve_learned<S>(
    mut agent: S,
    learner: Arc<Learner>,
    proxy: Arc<Proxy>,
    state: Arc<PolicyState>,
    host: NormalizedHost,
    port: u16,
    client: Client,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    let prefix = match tokio::time::timeout(PEEK_WAIT, agent.read(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(n)) => first[..n].to_vec(),
        Err(_) => Vec::new(),
    };
    let Some(endpoint) = learned_endpoint(&state) else { return };
    let allowed_ips = endpoint.allowed_ips.clone();
    let addresses = addresses::for_endpoint(endpoint);
    let host_text = host.to_string();
    let agent = Prefixed { prefix, at: 0, inner: agent };
    if agent.prefix.first() == Some(&TLS_HANDSHAKE) {
        learner.record(&host_text, port, client.binary.as_deref(), Seen::Inspected { allowed_ips });
        let tunnel = Tunnel::new(proxy, state, host, port, "https", ENDPOINT, Some(LEARNING.into()), client);
        intercept::serve(agent, tunnel).await;
        return;
    }
    learner.record(&host_text, port, client.binary.as_deref(), Seen::Tunnel { allowed_ips });
    let Ok(mut upstream) = dial_checked(&host, port, &addresses).await else { return };
    let mut agent = agent;
    let _ = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
}

/// A stream whose first bytes were already read: they are handed out again before the rest.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Learning kept every request's target until the agent ended: 3,000 requests with 60 KiB
    /// paths took root leash from 40 to 556 MB. What is kept is bounded.
    #[test]
    fn what_learning_keeps_is_bounded() {
        let learner = Learner::new(false);
        let target = format!("/{}", "a".repeat(60 << 10));
        for _ in 0..(2 * MAX_RECORDED_BYTES / target.len()) {
            let seen =
                Seen::Request { method: "GET".into(), target: target.clone(), overrides: vec![], credentials: vec![] };
            learner.record("example.com", 443, None, seen);
        }
        let kept = learner.observations();
        let bytes: usize = kept
            .iter()
            .map(|o| match &o.seen {
                Seen::Request { target, .. } => target.len(),
                _ => 0,
            })
            .sum();
        assert!(!kept.is_empty() && bytes <= MAX_RECORDED_BYTES, "{} observations, {bytes} bytes", kept.len());
    }
}
