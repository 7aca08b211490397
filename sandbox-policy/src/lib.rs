//! The policy file: reading, checking and compiling it.
//!
//! A policy is a YAML document compatible with the OpenShell sandbox schema plus leash's own
//! `credentials:` and `kernel:` sections (see `policies/default.yaml`). Data flows one way:
//!
//! ```text
//! YAML text --document::parse--> Document --compile--> CompiledPolicy --> kernel maps, Landlock, proxy
//! ```
//!
//! * [`document`] mirrors the file. Every value is read into a type that only holds valid values
//!   and every check runs while the YAML node is being read, so errors point at `FILE:LINE:COL`.
//!   Unknown and duplicate keys are errors; OpenShell keys leash does not implement yet are
//!   rejected with the name of the feature.
//! * [`compile()`] fills in defaults, expands `access:` presets into request rules and decides,
//!   per endpoint, whether the proxy must inspect requests.
//! * [`hosts`] holds the host pattern language (`api.github.com`, `*.x`, `**.x`) and IP ranges.
//! * [`rego`] evaluates `policies/sandbox.rego` (the source of truth for network and request
//!   decisions) with regorus; [`decide`] gives the same verdicts on the proxy's hot path from a
//!   compiled index and a decision cache; [`normalize`] puts request paths in canonical form
//!   before either matches them; [`readings`] lists the readings of a request both judge.
//!
//! ```
//! use sandbox_policy::{decide::Decider, parse_str};
//!
//! let policy = parse_str("inline.yaml", "
//! version: 1
//! network_policies:
//!   github:
//!     endpoints: [{ host: api.github.com, port: 443 }]
//! ").unwrap();
//! let decider = Decider::new(&policy);
//! assert!(decider.network("api.github.com", 443, None).allow);
//! assert!(!decider.network("github.com", 443, None).allow);
//! ```

pub mod compile;
mod data;
pub mod decide;
pub mod document;
pub mod error;
pub mod hosts;
pub mod learn;
pub mod learn_files;
pub mod merge;
pub mod normalize;
pub mod readings;
pub mod rego;
pub mod show;
pub mod suggest;

pub use compile::{
    compile, load, parse_str, AllowedRequests, CompiledEndpoint, CompiledPolicy, Credential, FilesystemRules,
    HttpRules, Inspection, KernelRules, NetworkPolicy, RequestRule, RunAs, PROTECT_IN_WORKDIR,
};
pub use decide::{Decider, EndpointRef, NetworkVerdict, RequestVerdict};
pub use document::{Access, Document, Enforcement, KernelDeny, LandlockCompat, PortList, Protocol, UnixSocketName};
pub use error::{Location, PolicyError};
pub use hosts::{HostPattern, HostPatternError, IpNetwork, IpNetworkError};
pub use normalize::{normalize, NormalizedTarget, PathError};
pub use rego::{eval_json, NetworkInput, RegoError, RegoPolicy, RequestInput};
