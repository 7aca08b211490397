//! What the proxy decides with, swapped as a whole on reload: the compiled policy, its decision
//! index, the credential values it binds, and the upstream connection pools (one per endpoint,
//! each dialling only the addresses that endpoint allows). A request keeps the state it was
//! judged under, so a reload never changes the rules under a request in flight; new
//! connections get new pools, so nothing dialled under an old policy serves a new one. A
//! connection accepted under an old state is not used for new requests: on a reload, tunnels
//! are shut down gracefully, and upgraded streams (WebSockets) and passed-through connections
//! are closed unless the new policy still allows them ([`SharedState::reloads`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::policy::{CompiledEndpoint, CompiledPolicy, Decider, EndpointRef};

use super::addresses;
use super::credentials::{CredentialLoadError, SecretSource, SecretStore};
use super::upstream::{client, CheckedConnector, UpstreamClient};
use super::ProxyBody;

/// Where credential values come from.
#[derive(Debug, Clone)]
pub enum Secrets {
    /// leash's own environment.
    Environment,
    /// A `--credentials-file`.
    File(PathBuf),
}

/// TLS settings for upstream connections: ALPN h2 + http/1.1, and http/1.1 only (for requests
/// that switch protocols, which HTTP/2 cannot carry).
#[derive(Clone)]
pub struct UpstreamTls {
    pub any: Arc<rustls::ClientConfig>,
    pub http1: Arc<rustls::ClientConfig>,
}

/// One endpoint's connector and the pooled client built on it.
type Upstream = (CheckedConnector, UpstreamClient<ProxyBody>);

/// One consistent generation of the proxy's rules.
pub struct PolicyState {
    pub policy: CompiledPolicy,
    pub decider: Decider,
    pub secrets: SecretStore,
    tls: UpstreamTls,
    clients: Mutex<HashMap<(EndpointRef, bool), Upstream>>,
    /// How many reloads came before this state ([`SharedState::is_current`]).
    pub(super) reload: u64,
}

impl PolicyState {
    /// Compiles the decision index and loads the credential values the policy declares.
    pub fn build(policy: CompiledPolicy, secrets: &Secrets, tls: UpstreamTls) -> Result<Self, CredentialLoadError> {
        let source = match secrets {
            Secrets::Environment => SecretSource::Environment,
            Secrets::File(path) => SecretSource::File(path),
        };
        let secrets = SecretStore::load(policy.credentials(), source)?;
        let decider = Decider::new(&policy);
        Ok(Self { policy, decider, secrets, tls, clients: Mutex::new(HashMap::new()), reload: 0 })
    }

    /// The compiled endpoint a verdict refers to.
    pub fn endpoint(&self, r: EndpointRef) -> Option<&CompiledEndpoint> {
        self.policy.network_policies().get(r.policy as usize)?.endpoints.get(r.endpoint as usize)
    }

    /// The pooled client for requests through `endpoint` (`http1_only` for protocol upgrades).
    pub fn client(&self, endpoint: EndpointRef, http1_only: bool) -> Option<UpstreamClient<ProxyBody>> {
        self.with_entry(endpoint, http1_only, |(_, c)| c.clone())
    }

    /// The connector of `endpoint`, for a tunnel's own upstream connection (HTTP/1.1 only).
    pub fn http1_connector(&self, endpoint: EndpointRef) -> Option<CheckedConnector> {
        self.with_entry(endpoint, true, |(c, _)| c.clone())
    }

    fn with_entry<T>(&self, endpoint: EndpointRef, http1_only: bool, f: impl FnOnce(&Upstream) -> T) -> Option<T> {
        let compiled = self.endpoint(endpoint)?;
        let mut clients = self.clients.lock().ok()?;
        let entry = clients.entry((endpoint, http1_only)).or_insert_with(|| {
            let tls = if http1_only { self.tls.http1.clone() } else { self.tls.any.clone() };
            let connector = CheckedConnector::new(tls, addresses::for_endpoint(compiled));
            (connector.clone(), client(connector))
        });
        Some(f(entry))
    }
}

/// The current state, swapped on reload, and the count of reloads, which long-lived
/// connections watch.
#[derive(Clone)]
pub struct SharedState {
    current: Arc<ArcSwap<PolicyState>>,
    reloads: tokio::sync::watch::Sender<u64>,
    /// One reload at a time (the file watcher and SIGHUP may both ask), so each state gets a
    /// number of its own.
    replacing: Arc<Mutex<()>>,
}

impl SharedState {
    pub fn new(state: PolicyState) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(state)),
            reloads: tokio::sync::watch::Sender::new(0),
            replacing: Arc::default(),
        }
    }

    /// The state new connections and requests use.
    pub fn current(&self) -> Arc<PolicyState> {
        self.current.load_full()
    }

    /// Whether no reload came after `state` (a tunnel's may be older; learning's states are
    /// made from the current one). Between a reload's store and its count, a new state reads as
    /// not current: a tunnel opened then is closed at once, never one kept too long.
    pub fn is_current(&self, state: &PolicyState) -> bool {
        state.reload == *self.reloads.borrow()
    }

    /// Makes `state` current, then tells every watcher of [`SharedState::reloads`] (which then
    /// finds the new state).
    pub fn replace(&self, mut state: PolicyState) {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.reload = *self.reloads.borrow() + 1;
        let reload = state.reload;
        self.current.store(Arc::new(state));
        self.reloads.send_replace(reload);
    }

    /// Changes on every reload from now on.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }
}
