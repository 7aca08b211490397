//! The egress proxy the sandbox is confined to; the kernel layer only knows its address.
//!
//! | file | job |
//! |---|---|
//! | `connect.rs` | the front door: CONNECT and absolute-form requests, judged at L4 |
//! | `intercept.rs` | TLS termination with a leaf from leash's CA, HTTP/1.1 and HTTP/2 |
//! | `request.rs` | where a request is judged, credentials are swapped, and it is forwarded |
//! | `tunnel.rs` | uninspected endpoints (`protocol: tcp`, `tls: skip`) |
//! | `headers.rs` | framing, target and hop-by-hop header rules |
//! | `credentials/` | placeholder values and where they may go |
//! | `ssrf.rs`, `addresses.rs`, `upstream.rs` | host normalisation, address checks, checked dialling, the pooled client |
//! | `tls/` | the ephemeral CA, leaf certificates, upstream trust, the agent's CA bundle |
//! | `state.rs` | the policy generation in force, swapped on reload |
//! | `identity.rs` | which executable opened a connection |

mod addresses;
mod answers;
mod connect;
pub mod credentials;
mod headers;
mod identity;
mod intercept;
mod request;
pub mod ssrf;
pub mod state;
pub mod tls;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::audit::Auditor;
use crate::kernel::programs::ConnectionOwners;
use crate::policy::CompiledPolicy;

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
    client: upstream::UpstreamClient<ProxyBody>,
    /// The same, offering only HTTP/1.1 upstream: for requests that switch protocols.
    client_h1: upstream::UpstreamClient<ProxyBody>,
    audit: Auditor,
    owners: Option<Arc<ConnectionOwners>>,
}

impl Proxy {
    /// Makes a fresh CA, loads the credential values and builds the upstream client.
    pub fn new(policy: CompiledPolicy, config: &ProxyConfig, audit: Auditor) -> Result<Arc<Self>> {
        let state = state::SharedState::new(state::PolicyState::build(policy, &config.secrets)?);
        let ca = Arc::new(tls::CertificateAuthority::generate().context("creating leash's CA")?);
        let leaves = tls::LeafCache::new(ca, 1024);
        let tls = tls::upstream_client_config(&config.upstream_ca).context("loading upstream trust roots")?;
        let mut tls_h1 = (*tls).clone();
        tls_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = upstream::CheckedConnector::new(tls, Arc::new(state.clone()));
        let connector_h1 = upstream::CheckedConnector::new(Arc::new(tls_h1), Arc::new(state.clone()));
        Ok(Arc::new(Self {
            state,
            secrets: config.secrets.clone(),
            leaves,
            client: upstream::client(connector),
            client_h1: upstream::client(connector_h1),
            audit,
            owners: None,
        }))
    }

    /// Lets the proxy learn which executable opened each connection (the sandbox's sock_ops).
    pub fn with_connection_owners(self: Arc<Self>, owners: ConnectionOwners) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut p) => {
                p.owners = Some(Arc::new(owners));
                Arc::new(p)
            }
            Err(shared) => shared,
        }
    }

    /// leash's CA, whose certificate the agent must trust.
    pub fn ca(&self) -> &tls::CertificateAuthority {
        self.leaves.ca()
    }

    /// Puts `policy` in force for new connections. On error (a credential it declares cannot be
    /// loaded) the old policy stays in force.
    pub fn reload(&self, policy: CompiledPolicy) -> Result<()> {
        let next = state::PolicyState::build(policy, &self.secrets)?;
        self.state.replace(next);
        Ok(())
    }
}

/// A proxy whose listening socket is bound (so its address is known) but not yet serving.
pub struct BoundProxy {
    listener: TcpListener,
    addr: SocketAddr,
}

impl BoundProxy {
    /// Binds `listen` (port 0 picks an ephemeral port).
    pub async fn bind(listen: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding the proxy to {listen}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The address the sandbox is confined to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves connections until the returned task is aborted.
    pub fn serve(self, proxy: Arc<Proxy>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = self.listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let binary = proxy.owners.as_ref().and_then(|o| identity::binary_of(o, addr));
                let client = connect::Client { addr, binary };
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| connect::handle(req, client.clone(), proxy.clone()));
                    let _ = http1::Builder::new()
                        .preserve_header_case(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        })
    }
}
