//! The egress proxy the sandbox is confined to. This first version is an HTTP CONNECT proxy: it
//! checks the requested host and port against the policy's `network_policies`, answers 403 (JSON)
//! when none allows it, and otherwise tunnels bytes to the upstream it dialled. The kernel layer
//! does not care which proxy it confines to: it only knows the address this one listens on.

mod addresses;
mod connect;
pub mod credentials;
pub mod ssrf;
pub mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::audit::Auditor;
use crate::policy::CompiledPolicy;

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
    pub fn serve(self, policy: Arc<CompiledPolicy>, audit: Auditor) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((stream, client)) = self.listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let (policy, audit) = (policy.clone(), audit.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| connect::handle(req, client, policy.clone(), audit.clone()));
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
