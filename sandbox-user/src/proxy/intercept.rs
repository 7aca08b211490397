//! Inspected endpoints: the proxy answers the CONNECT, terminates the agent's TLS with a leaf
//! certificate for the CONNECT host minted by leash's CA, and serves HTTP/1.1 or HTTP/2 (ALPN)
//! on it, judging each request (`request.rs`) before forwarding it upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use crate::policy::EndpointRef;

use super::ssrf::NormalizedHost;
use super::state::PolicyState;
use super::tls::{client_sni, sni_mismatch};
use super::{request, Proxy};

/// Everything a request in one tunnel is judged by, fixed when the tunnel opened.
pub struct Tunnel {
    pub proxy: Arc<Proxy>,
    pub state: Arc<PolicyState>,
    pub host: NormalizedHost,
    pub port: u16,
    /// `https` inside a CONNECT tunnel, `http` for absolute-form requests.
    pub scheme: &'static str,
    pub endpoint: EndpointRef,
    pub policy: Option<Arc<str>>,
    pub binary: Option<PathBuf>,
    pub client: SocketAddr,
    /// The TLS client named another host in SNI than in CONNECT (domain fronting).
    pub sni_mismatch: bool,
}

impl Tunnel {
    /// The port a `Host` header without one means.
    pub fn default_port(&self) -> u16 {
        if self.scheme == "https" {
            443
        } else {
            80
        }
    }
}

/// Takes over the upgraded CONNECT stream: TLS handshake, then HTTP until the agent hangs up.
pub fn spawn(on_upgrade: OnUpgrade, mut tunnel: Tunnel) {
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let host = tunnel.host.to_string();
        let config = match tunnel.proxy.leaves.server_config_for(&host) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("leash: proxy: no certificate for {host}: {e}");
                return;
            }
        };
        let Ok(tls) = TlsAcceptor::from(config).accept(TokioIo::new(upgraded)).await else { return };
        tunnel.sni_mismatch = sni_mismatch(&host, client_sni(&tls));
        let tunnel = Arc::new(tunnel);
        let service = service_fn(move |req| request::handle(req, tunnel.clone()));
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(tls), service)
            .await;
    });
}
