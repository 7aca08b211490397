//! What the proxy decides with, swapped as a whole on reload: the compiled policy, its decision
//! index and the credential values it binds. A connection keeps the state it was accepted
//! under, so a reload never changes the rules under a request in flight.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::policy::{CompiledPolicy, Decider};

use super::addresses;
use super::credentials::{CredentialLoadError, SecretSource, SecretStore};
use super::ssrf::{AddressPolicy, NormalizedHost};
use super::upstream::AddressPolicies;

/// Where credential values come from.
#[derive(Debug, Clone)]
pub enum Secrets {
    /// leash's own environment.
    Environment,
    /// A `--credentials-file`.
    File(PathBuf),
}

/// One consistent generation of the proxy's rules.
pub struct PolicyState {
    pub policy: CompiledPolicy,
    pub decider: Decider,
    pub secrets: SecretStore,
}

impl PolicyState {
    /// Compiles the decision index and loads the credential values the policy declares.
    pub fn build(policy: CompiledPolicy, secrets: &Secrets) -> Result<Self, CredentialLoadError> {
        let source = match secrets {
            Secrets::Environment => SecretSource::Environment,
            Secrets::File(path) => SecretSource::File(path),
        };
        let secrets = SecretStore::load(policy.credentials(), source)?;
        let decider = Decider::new(&policy);
        Ok(Self { policy, decider, secrets })
    }
}

/// The current state, shared by the proxy and its upstream connector.
#[derive(Clone)]
pub struct SharedState(Arc<ArcSwap<PolicyState>>);

impl SharedState {
    pub fn new(state: PolicyState) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(state)))
    }

    /// The state new connections use.
    pub fn current(&self) -> Arc<PolicyState> {
        self.0.load_full()
    }

    /// Makes `state` current; connections already accepted keep theirs.
    pub fn replace(&self, state: PolicyState) {
        self.0.store(Arc::new(state));
    }
}

impl AddressPolicies for SharedState {
    fn address_policy(&self, host: &NormalizedHost, port: u16) -> AddressPolicy {
        addresses::for_target(&self.0.load().policy, host, port)
    }
}
