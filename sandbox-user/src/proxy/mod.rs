//! The egress proxy the sandbox is confined to; the kernel layer only knows its address.
//!
//! | file | job |
//! |---|---|
//! | `connect.rs` | the front door: CONNECT and absolute-form requests, judged at L4 |
//! | `intercept.rs` | TLS termination with a leaf from leash's CA, HTTP/1.1 and HTTP/2 |
//! | `request.rs` | where a request is judged, credentials are swapped, and it is forwarded |
//! | `transparent.rs` | the second front door: connections the kernel redirected (`network.transparent`), judged as a CONNECT to the name they were for |
//! | `dns/` | transparent mode's resolver: allowed names get synthetic addresses, others NXDOMAIN, nothing forwarded |
//! | `passthrough.rs` | uninspected endpoints (`protocol: tcp`, `tls: skip`): bytes copied both ways |
//! | `headers.rs` | framing, target and hop-by-hop header rules |
//! | `credentials/` | placeholder values and where they may go |
//! | `ssrf.rs`, `addresses.rs`, `upstream.rs` | host normalisation, address checks, checked dialling, the pooled client |
//! | `tls/` | the ephemeral CA, leaf certificates, upstream trust, the agent's CA bundle |
//! | `state.rs` | the policy generation in force, swapped on reload |
//! | `identity.rs` | which executable opened a connection |
//! | `peers.rs` | who may use the proxy at all: only its own sandbox |
//! | `learning.rs` | learning mode: what the policy would deny is allowed and recorded |

mod addresses;
mod answers;
mod connect;
pub mod credentials;
pub mod dns;
mod headers;
pub(crate) mod identity;
pub use identity::{DaemonOwners, OwnerSource};
mod intercept;
mod judge;
mod learning;
mod passthrough;
mod peers;
mod rejudged;
pub use peers::SandboxPeers;
mod request;
pub mod ssrf;
pub mod state;
pub mod tls;
mod transparent;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::audit::Auditor;
use crate::kernel::programs::TransparentPorts;
use crate::policy::CompiledPolicy;
use peers::Admission;

pub use state::Secrets;

/// Errors carried by proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the proxy forwards and every response it returns.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How the proxy is set up, besides its policy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Extra roots for verifying upstreams (`--upstream-ca`).
    pub upstream_ca: Vec<PathBuf>,
    /// Where credential values come from.
    pub secrets: Secrets,
}

/// The proxy's long-lived parts; shared by every connection.
pub struct Proxy {
    state: state::SharedState,
    secrets: Secrets,
    leaves: tls::LeafCache,
    tls: state::UpstreamTls,
    /// Slots for request bodies held in memory for credential rewriting.
    rewrite_budget: Arc<tokio::sync::Semaphore>,
    audit: Auditor,
    /// Set once, before serving, when the sandbox records connection owners.
    owners: std::sync::OnceLock<Box<dyn identity::OwnerSource>>,
    /// Set once, before serving, when only the sandbox may use the proxy (`leash run`).
    peers: std::sync::OnceLock<SandboxPeers>,
    /// Set once, before serving, when the proxy learns instead of denying (`leash run --learn`).
    learner: std::sync::OnceLock<Arc<learning::Learner>>,
    /// Transparent mode: the name behind each synthetic address the resolver handed out.
    names: dns::names::SyntheticNames,
    /// Slots for DNS-over-TCP connections.
    dns_tcp_slots: Arc<tokio::sync::Semaphore>,
    /// How many DNS refusals are audited one by one.
    dns_refusals: crate::audit::Rate,
    /// Set once, before serving, when the resolver answers only its sandbox (`leash run`).
    dns_clients: std::sync::OnceLock<crate::kernel::programs::DnsClients>,
}

/// What the proxy needs of TLS whatever its policy: leash's CA, made fresh, and the clients
/// that verify upstreams. Made apart from the proxy so that `leash run` can make it, and write
/// the agent's trust files from it, while the policy is still being read.
pub struct TlsMaterial {
    ca: Arc<tls::CertificateAuthority>,
    upstream: state::UpstreamTls,
}

impl TlsMaterial {
    /// A new CA, and upstream clients trusting the system's roots and `upstream_ca`.
    pub fn prepare(upstream_ca: &[PathBuf]) -> Result<Self> {
        let any = tls::upstream_client_config(upstream_ca).context("loading upstream trust roots")?;
        let mut http1 = (*any).clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let upstream = state::UpstreamTls { any, http1: Arc::new(http1) };
        let ca = Arc::new(tls::CertificateAuthority::generate().context("creating leash's CA")?);
        Ok(Self { ca, upstream })
    }

    /// leash's CA, whose certificate the agent must trust.
    pub fn ca(&self) -> &tls::CertificateAuthority {
        &self.ca
    }
}

impl Proxy {
    /// Makes a fresh CA, loads the credential values and builds the upstream client.
    pub fn new(policy: CompiledPolicy, config: &ProxyConfig, audit: Auditor) -> Result<Arc<Self>> {
        Self::with_tls(policy, config, audit, TlsMaterial::prepare(&config.upstream_ca)?)
    }

    /// Loads the credential values and serves with `material`'s CA and upstream clients.
    pub fn with_tls(
        policy: CompiledPolicy,
        config: &ProxyConfig,
        audit: Auditor,
        material: TlsMaterial,
    ) -> Result<Arc<Self>> {
        let TlsMaterial { ca, upstream } = material;
        let state = state::SharedState::new(state::PolicyState::build(policy, &config.secrets, upstream.clone())?);
        let leaves = tls::LeafCache::new(ca, 1024);
        let proxy = Arc::new(Self {
            state,
            secrets: config.secrets.clone(),
            leaves,
            tls: upstream,
            rewrite_budget: Arc::new(tokio::sync::Semaphore::new(request::BODY_REWRITE_SLOTS)),
            audit,
            owners: std::sync::OnceLock::new(),
            peers: std::sync::OnceLock::new(),
            learner: std::sync::OnceLock::new(),
            names: Default::default(),
            dns_tcp_slots: Arc::new(tokio::sync::Semaphore::new(dns::TCP_CONNECTIONS)),
            dns_refusals: crate::audit::Rate::new(dns::REFUSALS_PER_SECOND),
            dns_clients: std::sync::OnceLock::new(),
        });
        proxy.reserve_exact_names();
        Ok(proxy)
    }

    /// Lets a proxy that serves every connection (`leash confine`, whose pod's network namespace
    /// is the boundary) learn who opened each one. A second source is refused: there is one
    /// sandbox per proxy.
    pub fn set_connection_owners(&self, owners: Box<dyn identity::OwnerSource>) -> Result<()> {
        self.owners.set(owners).map_err(|_| anyhow::anyhow!("the proxy already has a connection-owner table"))
    }

    /// Serves only connections `peers` recorded; every other one is closed unread.
    pub fn serve_only(&self, peers: SandboxPeers) -> Result<()> {
        self.peers.set(peers).map_err(|_| anyhow::anyhow!("the proxy already serves only one sandbox"))
    }

    /// Answers DNS only from the client ports `clients` says the sandbox sent from; every other
    /// datagram is dropped unanswered.
    pub fn answer_dns_only(&self, clients: crate::kernel::programs::DnsClients) -> Result<()> {
        self.dns_clients.set(clients).map_err(|_| anyhow::anyhow!("the resolver already serves only one sandbox"))
    }

    /// Allows and records what the policy would deny, from now on (`learning.rs`);
    /// `allow_private` lets hosts that resolve to private addresses be learned too.
    pub fn learn(&self, allow_private: bool) -> Result<()> {
        let learner = Arc::new(learning::Learner::new(allow_private));
        self.learner.set(learner).map_err(|_| anyhow::anyhow!("the proxy is already learning"))
    }

    /// What the agent did through the proxy, when it is learning.
    pub fn learned(&self) -> Option<Vec<crate::policy::learn::Observation>> {
        self.learner.get().map(|l| l.observations())
    }

    /// leash's CA, whose certificate the agent must trust.
    pub fn ca(&self) -> &tls::CertificateAuthority {
        self.leaves.ca()
    }

    /// The credentials the proxy holds a value for, in policy order.
    pub fn credential_names(&self) -> Vec<String> {
        self.state.current().secrets.names().map(str::to_owned).collect()
    }

    /// Whether `value` contains a credential's real value.
    pub fn mentions_secret(&self, value: &std::ffi::OsStr) -> bool {
        self.state.current().secrets.appears_in(std::os::unix::ffi::OsStrExt::as_bytes(value))
    }

    /// Whether the policy in force asks for transparent mode (`network.transparent`).
    pub fn transparent(&self) -> bool {
        self.state.current().policy.transparent()
    }

    /// Puts `policy` in force for new connections. On error (a credential it declares cannot be
    /// loaded) the old policy stays in force.
    pub fn reload(&self, policy: CompiledPolicy) -> Result<()> {
        let next = state::PolicyState::build(policy, &self.secrets, self.tls.clone())?;
        self.state.replace(next);
        self.reserve_exact_names();
        Ok(())
    }

    /// Transparent mode: every exact host name of the policy gets its synthetic address now, so
    /// that names asked for by the thousand (under a wildcard, or by another local process) can
    /// fill the table without taking any of them away.
    fn reserve_exact_names(&self) {
        let state = self.state.current();
        let names: Vec<String> = state
            .policy
            .network_policies()
            .iter()
            .flat_map(|p| &p.endpoints)
            .filter(|e| e.host.is_exact())
            .map(|e| e.host.to_string())
            .filter(|h| h.parse::<std::net::IpAddr>().is_err())
            .collect();
        self.names.reserve(names.iter().map(String::as_str));
    }
}

/// How long a client may take to send a request head (front door and inside tunnels).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The first byte of a TLS handshake record: how a tunnel's first byte is told to be TLS.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long the agent may take to complete the TLS handshake inside a tunnel.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// A proxy whose listening socket is bound (so its address is known) but not yet serving.
pub struct BoundProxy {
    listener: TcpListener,
    addr: SocketAddr,
    transparent: Option<TransparentListeners>,
}

/// Transparent mode's two sockets, on the proxy's address: redirected TCP, and the resolver.
struct TransparentListeners {
    tcp: TcpListener,
    dns: tokio::net::UdpSocket,
}

impl BoundProxy {
    /// Binds `listen` (port 0 picks an ephemeral port).
    pub async fn bind(listen: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding the proxy to {listen}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr, transparent: None })
    }

    /// Also binds transparent mode's listener (TCP) and resolver (UDP) on the proxy's address,
    /// at ports the kernel picks.
    pub fn bind_transparent(&mut self) -> Result<TransparentPorts> {
        let (tcp, dns) = bind_transparent(self.addr.ip())?;
        self.adopt_transparent(tcp, dns)
    }

    /// Serves transparent mode on sockets made by [`bind_transparent`] (`leash confine` makes
    /// them after its agent's fork, so that the agent never holds them).
    pub fn adopt_transparent(
        &mut self,
        tcp: std::net::TcpListener,
        dns: std::net::UdpSocket,
    ) -> Result<TransparentPorts> {
        tcp.set_nonblocking(true)?;
        dns.set_nonblocking(true)?;
        let tcp = TcpListener::from_std(tcp).context("serving the transparent listener")?;
        let dns = tokio::net::UdpSocket::from_std(dns).context("serving the resolver")?;
        let ports = TransparentPorts { tcp: tcp.local_addr()?.port(), dns: dns.local_addr()?.port() };
        self.transparent = Some(TransparentListeners { tcp, dns });
        Ok(ports)
    }

    /// The address the sandbox is confined to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, to hand to the node daemon (`leash confine`), which confines the
    /// agent to exactly this socket's address and network namespace.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.listener.as_fd()
    }

    /// Every socket bound so far: the listener, and transparent mode's listener and resolver.
    pub fn sockets(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        let mut sockets = vec![self.listener.as_fd()];
        if let Some(t) = &self.transparent {
            sockets.extend([t.tcp.as_fd(), t.dns.as_fd()]);
        }
        sockets
    }

    /// Serves connections (and in transparent mode redirected ones and DNS queries) until the
    /// returned task is aborted.
    pub fn serve(self, proxy: Arc<Proxy>) -> tokio::task::JoinHandle<()> {
        let Self { listener, addr, transparent } = self;
        tokio::spawn(async move {
            let explicit = accept_loop(listener, addr, proxy.clone(), Door::Explicit);
            match transparent {
                None => explicit.await,
                Some(TransparentListeners { tcp, dns }) => {
                    let local = tcp.local_addr().unwrap_or(addr);
                    let resolver = dns::serve_udp(dns, proxy.clone());
                    tokio::join!(explicit, accept_loop(tcp, local, proxy, Door::Transparent), resolver);
                }
            }
        })
    }
}

/// Transparent mode's listener (TCP) and resolver (UDP) sockets, bound at ports the kernel picks
/// on `ip` (the proxy's address).
pub fn bind_transparent(ip: std::net::IpAddr) -> Result<(std::net::TcpListener, std::net::UdpSocket)> {
    let any = SocketAddr::new(ip, 0);
    let tcp = std::net::TcpListener::bind(any).with_context(|| format!("binding the transparent listener on {any}"))?;
    let dns = std::net::UdpSocket::bind(any).with_context(|| format!("binding the resolver on {any}"))?;
    Ok((tcp, dns))
}

/// Which front door a listener is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Door {
    /// The proxy clients are told about (`HTTPS_PROXY`): `connect.rs`.
    Explicit,
    /// Where the kernel sends redirected connections: `transparent.rs`.
    Transparent,
}

/// Accepts connections on `listener` (bound at `local`) forever, serving each on its own task.
async fn accept_loop(listener: TcpListener, local: SocketAddr, proxy: Arc<Proxy>, door: Door) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(_) => {
                // Out of descriptors or memory: wait for connections to close instead
                // of spinning on the error.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, addr, local, proxy.clone(), door));
    }
}

/// One accepted connection: admitted only from the proxy's own sandbox (when it serves one),
/// then handed to its front door.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    local: SocketAddr,
    proxy: Arc<Proxy>,
    door: Door,
) {
    // Under `leash run` only the sandbox's own connections are served, and the kernel's record
    // of each says who opened it; under `leash confine` the node daemon says (when asked).
    let identity = match proxy.peers.get() {
        Some(peers) => match peers.admits(&stream, addr, local).await {
            Admission::Admitted(owner) => peers.identity(&owner, addr, local.port()),
            Admission::Refused => {
                proxy.audit.outsider_refused(addr);
                return;
            }
            Admission::OtherAddress(owner) => {
                proxy.audit.other_address_refused(addr, owner.pid);
                return;
            }
            Admission::Gone => {
                proxy.audit.reset_before_read();
                return;
            }
        },
        None => proxy.owners.get().and_then(|o| o.identify(addr, local.port())).unwrap_or_default(),
    };
    // Only the sandbox's own records say where a redirected connection was going; one without
    // is not the sandbox's.
    let redirected_from = match door {
        Door::Explicit => None,
        Door::Transparent if identity.destination.is_none() => {
            proxy.audit.outsider_refused(addr);
            return;
        }
        Door::Transparent => identity.destination,
    };
    let client = connect::Client { addr, binary: identity.binary, pid: identity.pid, redirected_from };
    if let Some(to) = redirected_from {
        return transparent::serve(stream, proxy, client, to).await;
    }
    let service = service_fn(move |req| connect::handle(req, client.clone(), proxy.clone()));
    let _ = http1::Builder::new()
        .preserve_header_case(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}
