//! Endpoints that are not inspected (`protocol: tcp`, `tls: skip`): after the CONNECT is allowed
//! the proxy dials the checked address and copies bytes both ways.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Copies bytes between the agent's upgraded CONNECT stream and `upstream` until either closes.
pub fn spawn(on_upgrade: OnUpgrade, mut upstream: TcpStream) {
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut agent = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
        }
    });
}
