//! Endpoints that are not inspected (`protocol: tcp`, `tls: skip`): after the CONNECT (or the
//! redirected connection) is allowed, the proxy dials the checked address and copies bytes both
//! ways. A reload of the policy asks again: a connection the new policy would not allow to the
//! same kind of endpoint and the same address is closed.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::connect::{decide_for_owner, endpoint, Client};
use super::ssrf::NormalizedHost;
use super::state::PolicyState;
use super::{addresses, Proxy};

/// What a passed-through connection was allowed as: asked again on each reload.
pub struct Allowed {
    pub host: NormalizedHost,
    pub port: u16,
    pub client: Client,
    /// The address dialled.
    pub upstream: IpAddr,
}

impl Allowed {
    /// Whether `state` allows the connection as it is: host and port for this client, to an
    /// uninspected endpoint whose address policy admits the address dialled.
    pub fn still(&self, state: &PolicyState) -> bool {
        let verdict = decide_for_owner(state, &self.host.to_string(), self.port, &self.client);
        verdict.allow
            && endpoint(state, &verdict)
                .is_some_and(|e| e.is_passed_through() && addresses::for_endpoint(e).check(self.upstream).is_ok())
    }
}

/// Copies bytes between the agent's upgraded CONNECT stream and `upstream`; see
/// [`copy_while_allowed`].
pub fn spawn(
    on_upgrade: OnUpgrade,
    mut upstream: TcpStream,
    proxy: Arc<Proxy>,
    allowed: Allowed,
    reloads: watch::Receiver<u64>,
) {
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut agent = TokioIo::new(upgraded);
            copy_while_allowed(&mut agent, &mut upstream, &proxy, reloads, |state| allowed.still(state)).await;
        }
    });
}

/// Copies bytes between `agent` and `upstream` until either closes, or a reload (seen on
/// `reloads`, subscribed to before the decision that let them through) leaves them no longer
/// allowed by `still_allowed`. Passed-through connections and WebSockets (`request.rs`) end so.
pub async fn copy_while_allowed<A, U>(
    agent: &mut A,
    upstream: &mut U,
    proxy: &Proxy,
    mut reloads: watch::Receiver<u64>,
    still_allowed: impl Fn(&PolicyState) -> bool,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional(agent, upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            changed = reloads.changed() => {
                if changed.is_err() || !still_allowed(&proxy.state.current()) {
                    return;
                }
            }
        }
    }
}
