//! Dialling upstreams. Every dial goes through [`resolve_checked`]: the name is resolved once,
//! every address is checked against the endpoint's address policy, and only checked addresses
//! are dialled (no second lookup a rebinding resolver could answer differently).
//!
//! [`UpstreamClient`] is the pooled HTTP client requests are forwarded with: its connector does
//! the checked dial and, for `https`, TLS with ALPN h2/http1.1 verified against the system roots
//! plus `--upstream-ca`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ssrf::{normalize_host, resolve_checked, AddressPolicy, NormalizedHost};

/// Why an upstream could not be reached; the message is safe to show the agent.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid upstream host: {0}")]
    Host(String),
    #[error("{0}")]
    Blocked(String),
    #[error("connecting to {host}: {error}")]
    Connect { host: String, error: std::io::Error },
    #[error("TLS with {host}: {error}")]
    Tls { host: String, error: std::io::Error },
}

/// Resolves `host`, checks every address, and connects to the first that answers.
pub async fn dial_checked(host: &NormalizedHost, port: u16, policy: &AddressPolicy) -> Result<TcpStream, DialError> {
    let addrs = resolve_checked(host, port, policy).await.map_err(|e| DialError::Blocked(e.to_string()))?;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr}: timed out"))),
        }
    }
    Err(DialError::Connect {
        host: host.to_string(),
        error: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// A connection to an upstream: plain TCP (absolute-form `http://`) or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connector of one endpoint's pooled client: it dials only what that endpoint allows.
#[derive(Clone)]
pub struct CheckedConnector {
    tls: TlsConnector,
    addresses: Arc<AddressPolicy>,
}

impl CheckedConnector {
    pub fn new(tls: Arc<rustls::ClientConfig>, addresses: AddressPolicy) -> Self {
        Self { tls: TlsConnector::from(tls), addresses: Arc::new(addresses) }
    }

    /// Dials `uri`'s host (checked addresses only) and, for `https`, completes TLS.
    pub async fn connect(self, uri: Uri) -> Result<TokioIo<Conn>, DialError> {
        let raw_host = uri.host().ok_or_else(|| DialError::Host(uri.to_string()))?;
        let host = normalize_host(raw_host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| DialError::Host(e.to_string()))?;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = dial_checked(&host, port, &self.addresses).await?;
        if !https {
            return Ok(TokioIo::new(Conn { stream: UpstreamStream::Plain(tcp), h2: false }));
        }
        let name = match &host {
            NormalizedHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
            NormalizedHost::Name(n) => ServerName::try_from(n.clone()).map_err(|e| DialError::Host(e.to_string()))?,
        };
        let tls =
            self.tls.connect(name, tcp).await.map_err(|error| DialError::Tls { host: host.to_string(), error })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(TokioIo::new(Conn { stream: UpstreamStream::Tls(Box::new(tls)), h2 }))
    }
}

/// A dialled upstream and whether it speaks HTTP/2.
pub struct Conn {
    stream: UpstreamStream,
    h2: bool,
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl tower_service::Service<Uri> for CheckedConnector {
    type Response = TokioIo<Conn>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// The pooled client requests are forwarded with.
pub type UpstreamClient<B> = Client<CheckedConnector, B>;

/// Builds the client: connections pooled per scheme and authority, idle ones dropped after 90 s.
pub fn client<B>(connector: CheckedConnector) -> UpstreamClient<B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector)
}
