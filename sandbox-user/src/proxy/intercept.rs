//! Inspected endpoints: the proxy answers the CONNECT, terminates the agent's TLS with a leaf
//! certificate for the CONNECT host minted by leash's CA, and serves HTTP/1.1 or HTTP/2 (ALPN)
//! on it, judging each request (`request.rs`) before forwarding it upstream.

use std::sync::Arc;

use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use crate::policy::EndpointRef;

use super::connect::Client;
use super::ssrf::NormalizedHost;
use super::state::PolicyState;
use super::tls::{client_sni, sni_mismatch};
use super::{request, Proxy, HEADER_READ_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};

/// Idle HTTP/2 connections are pinged this often and dropped when a ping goes unanswered.
const H2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// Everything a request in one tunnel is judged by, fixed when the tunnel opened (and the
/// tunnel ends when the policy is reloaded).
pub struct Tunnel {
    pub proxy: Arc<Proxy>,
    pub state: Arc<PolicyState>,
    pub host: NormalizedHost,
    /// `host` as the policy and the credential bindings spell it.
    pub host_text: String,
    pub port: u16,
    /// `https` inside a CONNECT tunnel, `http` for absolute-form requests.
    pub scheme: &'static str,
    /// `scheme://host[:port]`: the part of every upstream URI that does not change per request.
    pub origin: String,
    pub endpoint: EndpointRef,
    pub policy: Option<Arc<str>>,
    /// Who opened the tunnel: its address, executable and pid, and where transparent mode
    /// redirected it from.
    pub client: Client,
    /// The TLS client named another host in SNI than in CONNECT (domain fronting).
    pub sni_mismatch: bool,
    /// This tunnel's own HTTP/1.1 upstream connection: the agent's HTTP/1.1 requests arrive one
    /// at a time, so they go over it without the shared pool's hand-offs.
    pub upstream: tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<super::ProxyBody>>>,
}

impl Tunnel {
    /// A tunnel for `host:port` under `state`, allowed to `endpoint` of network policy `policy`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        proxy: Arc<Proxy>,
        state: Arc<PolicyState>,
        host: NormalizedHost,
        port: u16,
        scheme: &'static str,
        endpoint: EndpointRef,
        policy: Option<Arc<str>>,
        client: Client,
    ) -> Self {
        let default_port = if scheme == "https" { 443 } else { 80 };
        let origin = if port == default_port {
            format!("{scheme}://{}", host.uri_host())
        } else {
            format!("{scheme}://{}:{port}", host.uri_host())
        };
        Self {
            proxy,
            state,
            origin,
            host_text: host.to_string(),
            host,
            port,
            scheme,
            endpoint,
            policy,
            client,
            sni_mismatch: false,
            upstream: Default::default(),
        }
    }

    /// `host[:port]` of [`Tunnel::origin`], the port left out when it is the scheme's default.
    pub fn authority(&self) -> &str {
        &self.origin[self.scheme.len() + "://".len()..]
    }

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
pub fn spawn(on_upgrade: OnUpgrade, tunnel: Tunnel) {
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        serve(TokioIo::new(upgraded), tunnel).await;
    });
}

/// [`spawn`] on a stream already taken over (learning mode reads its first byte first).
pub async fn serve<S>(stream: S, mut tunnel: Tunnel)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let host = tunnel.host_text.clone();
    let config = match tunnel.proxy.leaves.server_config_for(&host) {
        Ok(c) => c,
        Err(e) => {
            crate::say!("leash: proxy: no certificate for {host}: {e}");
            return;
        }
    };
    let handshake = TlsAcceptor::from(config).accept(stream);
    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await else { return };
    tunnel.sni_mismatch = sni_mismatch(&host, client_sni(&tls));
    // Subscribed before the state is looked at again: a reload from here on is seen.
    let mut reloads = tunnel.proxy.state.reloads();
    let stale = !tunnel.proxy.state.is_current(&tunnel.state);
    let tunnel = Arc::new(tunnel);
    let service = service_fn(move |req| request::handle(req, tunnel.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_KEEPALIVE).keep_alive_timeout(H2_KEEPALIVE);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(connection);
    // On a reload the tunnel ends gracefully (the request in flight is answered, HTTP/2 gets a
    // GOAWAY): it was allowed by the old policy, and the agent's next connection is judged by
    // the new one. A request that comes in meanwhile is refused (`request.rs`).
    if !stale {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = reloads.changed() => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
