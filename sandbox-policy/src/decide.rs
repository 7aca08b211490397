//! The proxy's hot path: network and request decisions from a compiled index and a cache.
//!
//! [`Decider`] answers the same two questions as `policies/sandbox.rego` (see [`super::rego`]),
//! with the same verdicts, rules and reasons, without running the interpreter:
//!
//! * [`Decider::network`], at CONNECT: may this executable connect to `host:port`? The first
//!   endpoint in file order whose host pattern and ports cover it, in a policy the executable may
//!   use (`binaries:`), allows it. Exact hosts are found in a hash map, `*.x` patterns by the host
//!   minus its first label, `**.x` patterns by each of the host's suffixes; ports are sets.
//! * [`Decider::request`], per request inside an inspected tunnel: does the chosen endpoint let
//!   this method and path through? The path is normalised first ([`super::normalize`]); deny
//!   rules win over `access:` presets and `rules:`; `enforcement: audit` lets a refused request
//!   through with `audit: true`. Path globs are compiled once into segment matchers.
//!
//! Both cache their verdicts in bounded concurrent caches (`quick_cache`), keyed by
//! (host, port, executable) and (endpoint, method, normalised path). A `Decider` is immutable,
//! `Send + Sync`, and meant to be shared in an `Arc`; a policy reload builds a new one.
//!
//! Rego stays the source of truth: the differential tests (`tests/decisions.rs`) run both on
//! thousands of generated inputs, and every reading of them, and require identical verdicts.
//!
//! ```
//! use sandbox_policy::{parse_str, decide::Decider};
//!
//! let policy = parse_str("inline.yaml", "
//! version: 1
//! network_policies:
//!   github:
//!     endpoints:
//!       - { host: api.github.com, port: 443, protocol: rest, access: read-only }
//! ").unwrap();
//! let decider = Decider::new(&policy);
//! let connect = decider.network("api.github.com", 443, None);
//! assert!(connect.allow);
//! let endpoint = connect.endpoint_ref.unwrap();
//! assert!(decider.request(endpoint, "GET", "/repos/a/b?page=2").allow);
//! let post = decider.request(endpoint, "POST", "/repos/a/b");
//! assert!(!post.allow);
//! assert_eq!(&*post.rule, "access:read-only");
//! ```

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;

use quick_cache::{sync::Cache, DefaultHashBuilder, Equivalent};
use serde_json::{json, Value};

use super::compile::{AllowedRequests, CompiledEndpoint, CompiledPolicy, Inspection, NetworkPolicy, RequestRule};
use super::data::access_name;
use super::document::{Access, Enforcement, Protocol};
use super::normalize::{normalize, PathError};
use super::rego::NetworkInput;

/// Verdicts each cache holds by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 16_384;

/// Longest DNS label a wildcard may stand for.
const MAX_LABEL_LEN: usize = 63;

// ---------------------------------------------------------------------------------------------
// Verdicts (shared with the Rego evaluator)
// ---------------------------------------------------------------------------------------------

/// Rule and reason texts. `policies/sandbox.rego` writes the same strings.
pub(crate) mod text {
    pub const INVALID_HOST: &str = "invalid-host";
    pub const INVALID_HOST_REASON: &str = "the host is not a valid DNS name (or ends with a dot)";
    pub const DEFAULT_DENY: &str = "default-deny";
    pub const NO_ENDPOINT_REASON: &str = "no endpoint covers this host and port";
    pub const ENDPOINT_REASON: &str = "an endpoint covers this host and port";
    pub const BINARIES_REASON: &str = "the endpoints covering this host and port are restricted to other executables";
    pub const PATH_REJECTED: &str = "path-rejected";
    pub const TCP: &str = "protocol:tcp";
    pub const TCP_REASON: &str = "tcp endpoints are not inspected";
    pub const DENY_RULE_REASON: &str = "a deny rule matches the request";
    pub const FULL_REASON: &str = "the access preset allows every request";
    pub const PRESET_ALLOWS_REASON: &str = "the access preset allows the method";
    pub const PRESET_REFUSES_REASON: &str = "the access preset does not allow the method";
    pub const RULE_ALLOWS_REASON: &str = "an allow rule matches the request";
    pub const NO_RULE_REASON: &str = "no allow rule matches the request";
    pub const AUDIT_PREFIX: &str = "audit: ";
    pub const CONNECTION_REFUSED_PREFIX: &str = "connection refused: ";
}

/// Which endpoint a connection was allowed to: indices into
/// [`CompiledPolicy::network_policies`] and that policy's `endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointRef {
    /// Index of the network policy, in file order.
    pub policy: u32,
    /// Index of the endpoint within the policy.
    pub endpoint: u32,
}

/// The answer to "may this executable connect to host:port?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkVerdict {
    /// Whether the connection may be made.
    pub allow: bool,
    /// The network policy named by the decision (the allowing one, or the one whose `binaries`
    /// refused the executable); `None` when no endpoint covers host:port.
    pub policy: Option<Arc<str>>,
    /// That endpoint's host pattern as written, lower-case (`**.example.com`).
    pub endpoint: Option<Arc<str>>,
    /// The allowing endpoint, for [`Decider::request`]; `None` when refused.
    pub endpoint_ref: Option<EndpointRef>,
    /// What made the decision: `network_policies.<name>.endpoints[<i>]`,
    /// `network_policies.<name>.binaries`, `invalid-host` or `default-deny`.
    pub rule: Arc<str>,
    /// Why, in words.
    pub reason: Arc<str>,
}

/// The answer to "may this request go through the endpoint?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVerdict {
    /// Whether the request may be forwarded.
    pub allow: bool,
    /// The rules refused it but the endpoint only audits: forwarded, and must be recorded.
    pub audit: bool,
    /// The endpoint's network policy.
    pub policy: Option<Arc<str>>,
    /// The endpoint's host pattern.
    pub endpoint: Option<Arc<str>>,
    /// What made the decision: `deny_rules[<i>]`, `rules[<i>]`, `access:<preset>`,
    /// `protocol:tcp`, `default-deny`, `path-rejected`, or the network rule when the connection
    /// itself was refused.
    pub rule: Arc<str>,
    /// Why, in words.
    pub reason: Arc<str>,
}

impl NetworkVerdict {
    /// The verdict as JSON (the shape `network_decision` has in Rego, without the indices).
    pub fn to_json(&self) -> Value {
        json!({
            "allow": self.allow,
            "policy": self.policy.as_deref(),
            "endpoint": self.endpoint.as_deref(),
            "rule": &*self.rule,
            "reason": &*self.reason,
        })
    }
}

impl RequestVerdict {
    /// How this verdict counts among the readings of a request
    /// ([`judge_all`](super::readings::judge_all)).
    pub fn outcome(&self) -> super::readings::Outcome {
        use super::readings::Outcome;
        match (self.allow, self.audit) {
            (_, true) => Outcome::Audited,
            (true, false) => Outcome::Allowed,
            (false, false) => Outcome::Refused,
        }
    }

    /// The verdict as JSON (the shape of `request_decision` in Rego).
    pub fn to_json(&self) -> Value {
        json!({
            "allow": self.allow,
            "audit": self.audit,
            "policy": self.policy.as_deref(),
            "endpoint": self.endpoint.as_deref(),
            "rule": &*self.rule,
            "reason": &*self.reason,
        })
    }

    /// The verdict for a request on a connection `network` refused: refused by the same rule.
    pub(crate) fn connection_refused(network: &NetworkVerdict) -> Self {
        RequestVerdict {
            allow: false,
            audit: false,
            policy: network.policy.clone(),
            endpoint: network.endpoint.clone(),
            rule: network.rule.clone(),
            reason: Arc::from(format!("{}{}", text::CONNECTION_REFUSED_PREFIX, network.reason)),
        }
    }

    /// The verdict for a request whose path has no canonical form: refused, whatever the
    /// endpoint's rules or enforcement say.
    pub(crate) fn path_rejected(policy: Option<Arc<str>>, endpoint: Option<Arc<str>>, error: &PathError) -> Self {
        RequestVerdict {
            allow: false,
            audit: false,
            policy,
            endpoint,
            rule: Arc::from(text::PATH_REJECTED),
            reason: Arc::from(format!("request path refused: {error}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Path globs
// ---------------------------------------------------------------------------------------------

/// A compiled request-path glob: `*`/`**` alone match any path; otherwise, split on `/`, a `**`
/// segment matches zero or more whole segments and `*` inside a segment matches any characters
/// but `/`. Mirrors `path_matches` in `policies/sandbox.rego`.
#[derive(Debug, Clone)]
enum PathGlob {
    /// `*` or `**`.
    Any,
    /// The glob's segments; the first is what precedes its leading `/`.
    Segments(Vec<Segment>),
}

/// One segment of a [`PathGlob`].
#[derive(Debug, Clone)]
enum Segment {
    /// `**` (not as the first segment): zero or more path segments.
    AnyDepth,
    /// Exactly one path segment matching these literal pieces joined by `*` wildcards.
    Pattern(Vec<Box<str>>),
}

impl PathGlob {
    /// Compiles a glob as written in the policy.
    fn new(glob: &str) -> Self {
        if glob == "*" || glob == "**" {
            return PathGlob::Any;
        }
        let segments = glob
            .split('/')
            .enumerate()
            .map(|(i, segment)| {
                if i > 0 && segment == "**" {
                    Segment::AnyDepth
                } else {
                    Segment::Pattern(segment.split('*').map(Box::from).collect())
                }
            })
            .collect();
        PathGlob::Segments(segments)
    }

    /// Whether the normalised `path` matches.
    fn matches(&self, path: &str) -> bool {
        match self {
            PathGlob::Any => true,
            PathGlob::Segments(globs) => {
                let path: Vec<&str> = path.split('/').collect();
                segments_match(globs, &path)
            }
        }
    }
}

/// Matches glob segments against path segments, `**` standing for any run of segments.
///
/// Greedy with backtracking to the last `**` only: once a later `**` has matched, how much an
/// earlier one swallowed no longer matters, so this is exact and O(globs × path).
fn segments_match(globs: &[Segment], path: &[&str]) -> bool {
    let (mut gi, mut pi) = (0, 0);
    // (glob index after the last `**`, path index it was tried at)
    let mut backtrack: Option<(usize, usize)> = None;
    while pi < path.len() {
        match globs.get(gi) {
            Some(Segment::AnyDepth) => {
                backtrack = Some((gi + 1, pi));
                gi += 1;
                continue;
            }
            Some(Segment::Pattern(pieces)) if segment_matches(pieces, path[pi]) => {
                gi += 1;
                pi += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((after, at)) => {
                backtrack = Some((after, at + 1));
                gi = after;
                pi = at + 1;
            }
            None => return false,
        }
    }
    globs[gi..].iter().all(|g| matches!(g, Segment::AnyDepth))
}

/// Whether one path segment matches literal `pieces` joined by `*` (each `*` any characters).
fn segment_matches(pieces: &[Box<str>], segment: &str) -> bool {
    let [first, middle @ .., last] = pieces else {
        // One piece: no wildcard.
        return pieces.first().is_some_and(|p| **p == *segment);
    };
    if segment.len() < first.len() + last.len() || !segment.starts_with(&**first) || !segment.ends_with(&**last) {
        return false;
    }
    let mut rest = &segment[first.len()..segment.len() - last.len()];
    for piece in middle {
        match rest.find(&**piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The compiled index
// ---------------------------------------------------------------------------------------------

/// A request rule with its glob compiled and its label (`rules[2]`) ready.
#[derive(Debug, Clone)]
struct Rule {
    /// Upper-case method, or `None` for any.
    method: Option<Box<str>>,
    path: PathGlob,
    label: Arc<str>,
}

impl Rule {
    fn new(rule: &RequestRule, label: String) -> Self {
        Rule { method: rule.method.as_deref().map(Box::from), path: PathGlob::new(&rule.path), label: Arc::from(label) }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && self.path.matches(path)
    }
}

/// What lets requests through an endpoint (before deny rules).
#[derive(Debug, Clone)]
enum AllowSide {
    /// `access: full`.
    Full,
    /// `access: read-only` / `read-write`: the preset's method rules (as `compile` expanded
    /// them) under one label.
    Preset { label: Arc<str>, rules: Vec<Rule> },
    /// `rules:` (possibly none), in file order.
    Rules(Vec<Rule>),
}

/// How an endpoint judges requests.
#[derive(Debug, Clone)]
enum Requests {
    /// `protocol: tcp`: never inspected, every request passes.
    Tcp,
    /// `protocol: rest`.
    Rest { deny: Vec<Rule>, allow: AllowSide, audit: bool },
}

/// A small sorted set of ports.
#[derive(Debug, Clone)]
struct PortSet(Box<[u16]>);

impl PortSet {
    fn new(ports: &[u16]) -> Self {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        PortSet(ports.into_boxed_slice())
    }

    fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }
}

/// One endpoint, indexed by its position in file order (its ordinal).
#[derive(Debug, Clone)]
struct Entry {
    /// Index of its policy in `Decider::policies`.
    policy: u32,
    ports: PortSet,
    requests: Requests,
    /// See [`CompiledEndpoint::judges_paths`].
    judges_paths: bool,
    /// The verdict when it allows a connection.
    allowed: NetworkVerdict,
    /// The verdict when it covers host:port but its policy's `binaries` exclude the executable.
    binaries_refused: NetworkVerdict,
}

/// One network policy's executable restriction.
#[derive(Debug, Clone)]
struct PolicyEntry {
    /// `None`: any executable; otherwise exact paths.
    binaries: Option<Vec<Box<OsStr>>>,
}

impl PolicyEntry {
    fn allows(&self, binary: Option<&OsStr>) -> bool {
        match (&self.binaries, binary) {
            (None, _) => true,
            (Some(list), Some(binary)) => list.iter().any(|b| **b == *binary),
            (Some(_), None) => false,
        }
    }
}

/// Ordinals of endpoints by lower-case host or host suffix, each list in file order.
type HostIndex = HashMap<Box<str>, Vec<u32>, DefaultHashBuilder>;

/// Key of the network cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NetKey {
    host: Box<str>,
    port: u16,
    binary: Option<Box<OsStr>>,
}

/// Borrowed form of [`NetKey`] for lookups; hashes identically (same field types and order).
#[derive(Hash)]
struct NetKeyRef<'a> {
    host: &'a str,
    port: u16,
    binary: Option<&'a OsStr>,
}

impl Equivalent<NetKey> for NetKeyRef<'_> {
    fn equivalent(&self, key: &NetKey) -> bool {
        self.port == key.port && self.host == &*key.host && self.binary == key.binary.as_deref()
    }
}

/// Key of the request cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReqKey {
    ordinal: u32,
    method: Box<str>,
    path: Box<str>,
}

/// Borrowed form of [`ReqKey`].
#[derive(Hash)]
struct ReqKeyRef<'a> {
    ordinal: u32,
    method: &'a str,
    path: &'a str,
}

impl Equivalent<ReqKey> for ReqKeyRef<'_> {
    fn equivalent(&self, key: &ReqKey) -> bool {
        self.ordinal == key.ordinal && self.method == &*key.method && self.path == &*key.path
    }
}

/// The constant verdict texts, allocated once per decider.
#[derive(Debug)]
struct Texts {
    invalid_host: NetworkVerdict,
    no_endpoint: NetworkVerdict,
    tcp: Arc<str>,
    tcp_reason: Arc<str>,
    deny_rule_reason: Arc<str>,
    full: Arc<str>,
    full_reason: Arc<str>,
    preset_allows: Arc<str>,
    preset_refuses: Arc<str>,
    rule_allows: Arc<str>,
    default_deny: Arc<str>,
    no_rule: Arc<str>,
    /// `audit: ` + each reason a refusal can give.
    audit_deny_rule: Arc<str>,
    audit_preset_refuses: Arc<str>,
    audit_no_rule: Arc<str>,
}

impl Texts {
    fn new() -> Self {
        let refused = |rule: &str, reason: &str| NetworkVerdict {
            allow: false,
            policy: None,
            endpoint: None,
            endpoint_ref: None,
            rule: Arc::from(rule),
            reason: Arc::from(reason),
        };
        let audit = |reason: &str| Arc::from(format!("{}{reason}", text::AUDIT_PREFIX));
        Texts {
            invalid_host: refused(text::INVALID_HOST, text::INVALID_HOST_REASON),
            no_endpoint: refused(text::DEFAULT_DENY, text::NO_ENDPOINT_REASON),
            tcp: Arc::from(text::TCP),
            tcp_reason: Arc::from(text::TCP_REASON),
            deny_rule_reason: Arc::from(text::DENY_RULE_REASON),
            full: Arc::from(format!("access:{}", access_name(Access::Full))),
            full_reason: Arc::from(text::FULL_REASON),
            preset_allows: Arc::from(text::PRESET_ALLOWS_REASON),
            preset_refuses: Arc::from(text::PRESET_REFUSES_REASON),
            rule_allows: Arc::from(text::RULE_ALLOWS_REASON),
            default_deny: Arc::from(text::DEFAULT_DENY),
            no_rule: Arc::from(text::NO_RULE_REASON),
            audit_deny_rule: audit(text::DENY_RULE_REASON),
            audit_preset_refuses: audit(text::PRESET_REFUSES_REASON),
            audit_no_rule: audit(text::NO_RULE_REASON),
        }
    }
}

/// Network and request decisions for one compiled policy; see the module documentation.
pub struct Decider {
    policies: Vec<PolicyEntry>,
    /// Endpoints in file order; an endpoint's index here is its ordinal.
    entries: Vec<Entry>,
    /// Ordinal of each policy's first endpoint.
    first_ordinal: Vec<u32>,
    /// Exact patterns by host.
    exact: HostIndex,
    /// `*.suffix` patterns by suffix.
    one_label: HostIndex,
    /// `**.suffix` patterns by suffix.
    any_depth: HostIndex,
    texts: Texts,
    network_cache: Cache<NetKey, NetworkVerdict>,
    request_cache: Cache<ReqKey, RequestVerdict>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("endpoints", &self.entries.len())
            .field("cached_network", &self.network_cache.len())
            .field("cached_requests", &self.request_cache.len())
            .finish_non_exhaustive()
    }
}

impl Decider {
    /// Indexes `policy`, with caches of [`DEFAULT_CACHE_CAPACITY`] verdicts each.
    pub fn new(policy: &CompiledPolicy) -> Self {
        Self::with_cache_capacity(policy, DEFAULT_CACHE_CAPACITY)
    }

    /// Indexes `policy`, with caches holding about `capacity` verdicts each (at least 1).
    pub fn with_cache_capacity(policy: &CompiledPolicy, capacity: usize) -> Self {
        let texts = Texts::new();
        let mut decider = Decider {
            policies: Vec::new(),
            entries: Vec::new(),
            first_ordinal: Vec::new(),
            exact: HostIndex::default(),
            one_label: HostIndex::default(),
            any_depth: HostIndex::default(),
            texts,
            network_cache: Cache::new(capacity.max(1)),
            request_cache: Cache::new(capacity.max(1)),
        };
        for (pi, network_policy) in policy.network_policies().iter().enumerate() {
            decider.add_policy(to_u32(pi), network_policy);
        }
        decider
    }

    /// Indexes one network policy's endpoints.
    fn add_policy(&mut self, pi: u32, policy: &NetworkPolicy) {
        let name: Arc<str> = Arc::from(policy.name.as_str());
        self.policies.push(PolicyEntry {
            binaries: policy
                .binaries
                .as_ref()
                .map(|list| list.iter().map(|path| Box::from(path.as_os_str())).collect()),
        });
        self.first_ordinal.push(to_u32(self.entries.len()));
        let binaries_rule: Arc<str> = Arc::from(format!("network_policies.{name}.binaries"));
        let binaries_reason: Arc<str> = Arc::from(text::BINARIES_REASON);
        let endpoint_reason: Arc<str> = Arc::from(text::ENDPOINT_REASON);
        for (ei, endpoint) in policy.endpoints.iter().enumerate() {
            let ordinal = to_u32(self.entries.len());
            let pattern = endpoint.host.to_string();
            let host: Arc<str> = Arc::from(pattern.as_str());
            let endpoint_ref = EndpointRef { policy: pi, endpoint: to_u32(ei) };
            let allowed = NetworkVerdict {
                allow: true,
                policy: Some(name.clone()),
                endpoint: Some(host.clone()),
                endpoint_ref: Some(endpoint_ref),
                rule: Arc::from(format!("network_policies.{name}.endpoints[{ei}]")),
                reason: endpoint_reason.clone(),
            };
            let binaries_refused = NetworkVerdict {
                allow: false,
                endpoint_ref: None,
                rule: binaries_rule.clone(),
                reason: binaries_reason.clone(),
                ..allowed.clone()
            };
            self.entries.push(Entry {
                policy: pi,
                ports: PortSet::new(endpoint.ports.as_slice()),
                requests: compile_requests(endpoint),
                judges_paths: endpoint.judges_paths(),
                allowed,
                binaries_refused,
            });
            let (index, key) = if let Some(suffix) = pattern.strip_prefix("**.") {
                (&mut self.any_depth, suffix)
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                (&mut self.one_label, suffix)
            } else {
                (&mut self.exact, pattern.as_str())
            };
            index.entry(Box::from(key)).or_default().push(ordinal);
        }
    }

    /// May `binary` (the executable asking, if known) connect to `host:port`?
    pub fn network(&self, host: &str, port: u16, binary: Option<&Path>) -> NetworkVerdict {
        let binary = binary.map(Path::as_os_str);
        let key = NetKeyRef { host, port, binary };
        if let Some(verdict) = self.network_cache.get(&key) {
            return verdict;
        }
        let verdict = self.decide_network(host, port, binary);
        self.network_cache
            .insert(NetKey { host: Box::from(host), port, binary: binary.map(Box::from) }, verdict.clone());
        verdict
    }

    /// [`Decider::network`] without the cache.
    fn decide_network(&self, host: &str, port: u16, binary: Option<&OsStr>) -> NetworkVerdict {
        if !valid_host(host) {
            return self.texts.invalid_host.clone();
        }
        let host = host.to_ascii_lowercase();
        // The lowest ordinal covering host:port, and the lowest one this executable may use.
        let mut covering: Option<u32> = None;
        let mut usable: Option<u32> = None;
        let mut consider = |ordinals: Option<&Vec<u32>>| {
            for &ordinal in ordinals.into_iter().flatten() {
                let Some(entry) = self.entries.get(ordinal as usize) else {
                    continue;
                };
                if !entry.ports.contains(port) {
                    continue;
                }
                covering = Some(covering.map_or(ordinal, |c| c.min(ordinal)));
                let policy_ok = self.policies.get(entry.policy as usize).is_some_and(|p| p.allows(binary));
                if policy_ok {
                    usable = Some(usable.map_or(ordinal, |u| u.min(ordinal)));
                }
            }
        };
        consider(self.exact.get(host.as_str()));
        // Walk the host's suffixes after each dot, left to right; the labels before a suffix
        // must all be valid for a wildcard to stand for them.
        let mut start = 0;
        let mut first_label = true;
        while let Some(dot) = host[start..].find('.') {
            let label = &host[start..start + dot];
            if label.is_empty() || label.len() > MAX_LABEL_LEN {
                break;
            }
            let suffix = &host[start + dot + 1..];
            if first_label {
                consider(self.one_label.get(suffix));
                first_label = false;
            }
            consider(self.any_depth.get(suffix));
            start += dot + 1;
        }
        let entry = |ordinal: u32| self.entries.get(ordinal as usize);
        match (usable.and_then(entry), covering.and_then(entry)) {
            (Some(entry), _) => entry.allowed.clone(),
            (None, Some(entry)) => entry.binaries_refused.clone(),
            (None, None) => self.texts.no_endpoint.clone(),
        }
    }

    /// What `leash policy eval` prints: the verdict on connecting to `host:port` from `binary`
    /// and, when `method` or `path` is given (`GET` and `/` stand in for the one missing), on
    /// that request, decided as the proxy decides them. The JSON is that of the reference,
    /// [`rego::eval_json`](crate::rego::eval_json), which the tests check it against.
    pub fn eval_json(
        &self,
        host: &str,
        port: u16,
        method: Option<&str>,
        path: Option<&str>,
        binary: Option<&Path>,
    ) -> Value {
        let network = self.network(host, port, binary);
        let request = (method.is_some() || path.is_some()).then(|| {
            let target = path.unwrap_or("/");
            match network.endpoint_ref.filter(|_| network.allow) {
                Some(endpoint) => self.request(endpoint, method.unwrap_or("GET"), target),
                None => RequestVerdict::connection_refused(&network),
            }
        });
        eval_report(&NetworkInput { host, port, binary }, method, path, &network, request.as_ref())
    }

    /// May a request with `method` and `target` (path and query, as sent) go through
    /// `endpoint` (from an allowing [`NetworkVerdict`])?
    pub fn request(&self, endpoint: EndpointRef, method: &str, target: &str) -> RequestVerdict {
        let Some((ordinal, entry)) = self.entry(endpoint) else {
            return RequestVerdict {
                allow: false,
                audit: false,
                policy: None,
                endpoint: None,
                rule: self.texts.default_deny.clone(),
                reason: Arc::from("unknown endpoint"),
            };
        };
        let path = match normalize(target) {
            Ok(normalized) => normalized.path,
            // Nothing compares the path: judge the request as if it were the root.
            Err(_) if !entry.judges_paths => std::borrow::Cow::Borrowed("/"),
            Err(error) => {
                return RequestVerdict::path_rejected(
                    entry.allowed.policy.clone(),
                    entry.allowed.endpoint.clone(),
                    &error,
                )
            }
        };
        let key = ReqKeyRef { ordinal, method, path: &path };
        if let Some(verdict) = self.request_cache.get(&key) {
            return verdict;
        }
        let verdict = self.decide_request(entry, method, &path);
        self.request_cache
            .insert(ReqKey { ordinal, method: Box::from(method), path: Box::from(&*path) }, verdict.clone());
        verdict
    }

    /// The entry an [`EndpointRef`] names, with its ordinal.
    fn entry(&self, endpoint: EndpointRef) -> Option<(u32, &Entry)> {
        let first = *self.first_ordinal.get(endpoint.policy as usize)?;
        let ordinal = first.checked_add(endpoint.endpoint)?;
        let entry = self.entries.get(ordinal as usize)?;
        (entry.policy == endpoint.policy).then_some((ordinal, entry))
    }

    /// [`Decider::request`] on a normalised path, without the cache.
    fn decide_request(&self, entry: &Entry, method: &str, path: &str) -> RequestVerdict {
        let t = &self.texts;
        let verdict = |allow: bool, audit: bool, rule: &Arc<str>, reason: &Arc<str>| RequestVerdict {
            allow,
            audit,
            policy: entry.allowed.policy.clone(),
            endpoint: entry.allowed.endpoint.clone(),
            rule: rule.clone(),
            reason: reason.clone(),
        };
        let Requests::Rest { deny, allow, audit } = &entry.requests else {
            return verdict(true, false, &t.tcp, &t.tcp_reason);
        };
        // A refusal, or with `enforcement: audit` a flagged pass.
        let refuse = |rule: &Arc<str>, reason: &Arc<str>, audit_reason: &Arc<str>| {
            if *audit {
                verdict(true, true, rule, audit_reason)
            } else {
                verdict(false, false, rule, reason)
            }
        };
        // A deny rule on GET refuses HEAD too: servers run the GET handler for a HEAD (Express,
        // Flask, Django, Rails, Spring, Go's ServeMux), side effects and all. Allow rules stay
        // as written, so a rule allowing only HEAD still does.
        let denied = |r: &&Rule| r.matches(method, path) || (method == "HEAD" && r.matches("GET", path));
        if let Some(rule) = deny.iter().find(denied) {
            return refuse(&rule.label, &t.deny_rule_reason, &t.audit_deny_rule);
        }
        match allow {
            AllowSide::Full => verdict(true, false, &t.full, &t.full_reason),
            AllowSide::Preset { label, rules } => {
                if rules.iter().any(|r| r.matches(method, path)) {
                    verdict(true, false, label, &t.preset_allows)
                } else {
                    refuse(label, &t.preset_refuses, &t.audit_preset_refuses)
                }
            }
            AllowSide::Rules(rules) => match rules.iter().find(|r| r.matches(method, path)) {
                Some(rule) => verdict(true, false, &rule.label, &t.rule_allows),
                None => refuse(&t.default_deny, &t.no_rule, &t.audit_no_rule),
            },
        }
    }

    /// Number of endpoints indexed.
    pub fn endpoint_count(&self) -> usize {
        self.entries.len()
    }
}

/// The JSON `leash policy eval` prints for the connection `input` and, when `method` or `path`
/// was given, the request on it (`GET` and `/` standing in), whoever decided them: the decider
/// or the Rego reference.
pub(crate) fn eval_report(
    input: &NetworkInput<'_>,
    method: Option<&str>,
    path: Option<&str>,
    network: &NetworkVerdict,
    request: Option<&RequestVerdict>,
) -> Value {
    let NetworkInput { host, port, binary } = *input;
    let mut out = json!({
        "input": {
            "host": host, "port": port, "binary": binary.map(|b| b.to_string_lossy()),
            "method": method, "path": path,
        },
        "allow": network.allow,
        "network": network.to_json(),
    });
    if let Some(request) = request {
        let mut request_json = request.to_json();
        request_json["normalized_path"] = match normalize(path.unwrap_or("/")) {
            Ok(n) => json!(n.path),
            Err(_) => Value::Null,
        };
        out["allow"] = json!(network.allow && request.allow);
        out["request"] = request_json;
    }
    out
}

/// A `u32` index; a policy with more than 4 billion endpoints is not a concern.
fn to_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Whether a queried host may match any pattern: only `A-Z a-z 0-9 . _ -`, no trailing dot.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.ends_with('.')
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Compiles how an endpoint judges requests, from what `compile` decided.
fn compile_requests(endpoint: &CompiledEndpoint) -> Requests {
    if endpoint.protocol != Protocol::Rest {
        return Requests::Tcp;
    }
    let Inspection::Http(http) = &endpoint.inspection else {
        // Not inspected: `access: full` alone (the only `rest` endpoint `compile` tunnels).
        let allow = match endpoint.access {
            Some(Access::Full) => AllowSide::Full,
            _ => AllowSide::Rules(Vec::new()),
        };
        return Requests::Rest { deny: Vec::new(), allow, audit: false };
    };
    let deny = http.deny.iter().enumerate().map(|(i, r)| Rule::new(r, format!("deny_rules[{i}]"))).collect();
    let allow = match (&http.allow, endpoint.access) {
        (AllowedRequests::Any, _) => AllowSide::Full,
        (AllowedRequests::Only(rules), Some(access)) => AllowSide::Preset {
            label: Arc::from(format!("access:{}", access_name(access))),
            rules: rules.iter().map(|r| Rule::new(r, String::new())).collect(),
        },
        (AllowedRequests::Only(rules), None) => {
            AllowSide::Rules(rules.iter().enumerate().map(|(i, r)| Rule::new(r, format!("rules[{i}]"))).collect())
        }
    };
    Requests::Rest { deny, allow, audit: http.enforcement == Enforcement::Audit }
}

/// A `Decider` is shared across the proxy's tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Decider>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;

    fn decider(text: &str) -> Decider {
        Decider::new(&parse_str("t.yaml", text).unwrap_or_else(|e| panic!("{e}")))
    }

    fn glob(g: &str, path: &str) -> bool {
        PathGlob::new(g).matches(path)
    }

    #[test]
    fn globs() {
        assert!(glob("**", "/a/b") && glob("*", "/") && glob("/**", "/"));
        assert!(glob("/**", "/a/b/c"));
        assert!(glob("/repos/**", "/repos"));
        assert!(glob("/repos/**", "/repos/"));
        assert!(glob("/repos/**", "/repos/a/b"));
        assert!(!glob("/repos/**", "/reposx"));
        assert!(!glob("/repos/**", "/x/repos"));
        assert!(glob("/**/info/refs", "/info/refs"));
        assert!(glob("/**/info/refs", "/o/r.git/info/refs"));
        assert!(!glob("/**/info/refs", "/o/r.git/info/refs/x"));
        assert!(glob("/repos/*/*/actions/secrets/**", "/repos/o/r/actions/secrets"));
        assert!(glob("/repos/*/*/actions/secrets/**", "/repos/o/r/actions/secrets/X"));
        assert!(!glob("/repos/*/*/actions/secrets/**", "/repos/o/actions/secrets"));
        assert!(glob("/a/*", "/a/"));
        assert!(!glob("/a/*", "/a"));
        assert!(!glob("/a/*", "/a/b/c"));
        assert!(glob("/a/*.json", "/a/x.json"));
        assert!(glob("/a/*.json", "/a/.json"));
        assert!(!glob("/a/*.json", "/a/x.jso"));
        assert!(glob("/a/x*y*z", "/a/xyz") && glob("/a/x*y*z", "/a/x1y2z"));
        assert!(!glob("/a/x*y*z", "/a/xzy"));
        assert!(!glob("/a/ab*ba", "/a/aba"));
        assert!(glob("/user", "/user") && !glob("/user", "/user/") && !glob("/user", "/User"));
        assert!(glob("/a/**/b/**/c", "/a/b/c") && glob("/a/**/b/**/c", "/a/x/b/y/z/c"));
        assert!(!glob("/a/**/b/**/c", "/a/c/b"));
        assert!(glob("/a/**/**", "/a"));
        assert!(glob("/a.b+c(d)", "/a.b+c(d)") && !glob("/a.b", "/axb"));
    }

    const RULES: &str = "\
version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.com
        port: 443
        protocol: rest
        rules:
          - allow: { method: GET, path: '/repos/**' }
          - allow: { method: '*', path: /user }
        deny_rules:
          - { method: GET, path: '/repos/*/*/actions/secrets/**' }
          - { path: /repos/admin }
      - { host: audit.example.com, port: 443, protocol: rest, access: read-only, enforcement: audit }
      - { host: db.example.com, port: 5432, protocol: tcp }
      - { host: '*.one.example', ports: [443, 8443], protocol: rest, access: full }
      - { host: '**.deep.example', port: 443 }
  git:
    endpoints:
      - { host: github.com, port: 443, protocol: rest, access: read-write }
    binaries: [{ path: /usr/bin/git }]
  web:
    endpoints:
      - { host: github.com, port: 443, protocol: rest, access: read-only }
";

    #[test]
    fn network_decisions() {
        let d = decider(RULES);
        let v = d.network("API.example.com", 443, None);
        assert!(v.allow);
        assert_eq!(&*v.rule, "network_policies.api.endpoints[0]");
        assert_eq!(v.endpoint_ref, Some(EndpointRef { policy: 0, endpoint: 0 }));
        assert_eq!(&*d.network("api.example.com", 80, None).rule, "default-deny");
        assert_eq!(&*d.network("api.example.com.", 443, None).rule, "invalid-host");
        assert_eq!(&*d.network("", 443, None).rule, "invalid-host");
        assert_eq!(&*d.network("[::1]", 443, None).rule, "invalid-host");
        assert_eq!(&*d.network("\u{212A}.one.example", 443, None).rule, "invalid-host");
        assert!(d.network("a.one.example", 8443, None).allow);
        assert!(!d.network("a.b.one.example", 443, None).allow);
        assert!(!d.network("one.example", 443, None).allow);
        assert!(!d.network(".one.example", 443, None).allow);
        assert!(d.network("a.b.deep.example", 443, None).allow);
        assert!(!d.network("a..deep.example", 443, None).allow);
        assert!(!d.network("deep.example", 443, None).allow);
        let long = format!("{}.one.example", "a".repeat(64));
        assert!(!d.network(&long, 443, None).allow);
        // `binaries`: git gets the git policy; anyone else falls through to `web`.
        let git = d.network("github.com", 443, Some(Path::new("/usr/bin/git")));
        assert_eq!(git.policy.as_deref(), Some("git"));
        let other = d.network("github.com", 443, Some(Path::new("/usr/bin/curl")));
        assert_eq!(other.policy.as_deref(), Some("web"));
        assert_eq!(d.network("github.com", 443, None).policy.as_deref(), Some("web"));
        // Not the same bytes, even if the same file.
        let odd = d.network("github.com", 443, Some(Path::new("/usr/bin//git")));
        assert_eq!(odd.policy.as_deref(), Some("web"));
    }

    #[test]
    fn binaries_refusal_names_the_policy() {
        let d = decider(
            "version: 1\nnetwork_policies:\n  git:\n    endpoints: [{ host: github.com, port: 22 }]\n    binaries: [{ path: /usr/bin/ssh }]\n",
        );
        let v = d.network("github.com", 22, Some(Path::new("/bin/nc")));
        assert!(!v.allow);
        assert_eq!(&*v.rule, "network_policies.git.binaries");
        assert_eq!(v.policy.as_deref(), Some("git"));
        assert_eq!(v.endpoint_ref, None);
        assert!(d.network("github.com", 22, Some(Path::new("/usr/bin/ssh"))).allow);
    }

    fn request(d: &Decider, host: &str, method: &str, target: &str) -> RequestVerdict {
        let connect = d.network(host, 443, None);
        let endpoint = connect.endpoint_ref.unwrap_or_else(|| panic!("{host}: {connect:?}"));
        d.request(endpoint, method, target)
    }

    #[test]
    fn request_decisions() {
        let d = decider(RULES);
        let rule = |method: &str, target: &str| {
            let v = request(&d, "api.example.com", method, target);
            (v.allow, v.rule.to_string())
        };
        assert_eq!(rule("GET", "/repos/a/b"), (true, "rules[0]".into()));
        assert_eq!(rule("GET", "/repos/a/b/actions/secrets"), (false, "deny_rules[0]".into()));
        assert_eq!(rule("GET", "/repos/a/b/x/../actions/%73ecrets/k"), (false, "deny_rules[0]".into()));
        assert_eq!(rule("GET", "/repos/admin"), (false, "deny_rules[1]".into()));
        assert_eq!(rule("POST", "/repos/a"), (false, "default-deny".into()));
        assert_eq!(rule("DELETE", "/user?x=1"), (true, "rules[1]".into()));
        assert_eq!(rule("GET", "/repos/%2e%2e/user"), (true, "rules[1]".into()));
        assert_eq!(rule("GET", "/repos/a%2Fb"), (false, "path-rejected".into()));
        assert_eq!(rule("GET", "/../repos/a"), (false, "path-rejected".into()));
        // Cached answers are the same answers.
        assert_eq!(rule("GET", "/repos/a/b"), (true, "rules[0]".into()));
    }

    #[test]
    fn presets_audit_and_tcp() {
        let d = decider(RULES);
        let v = request(&d, "audit.example.com", "GET", "/x");
        assert!(v.allow && !v.audit);
        assert_eq!(&*v.rule, "access:read-only");
        let v = request(&d, "audit.example.com", "DELETE", "/x");
        assert!(v.allow && v.audit, "{v:?}");
        assert_eq!(&*v.rule, "access:read-only");
        assert_eq!(&*v.reason, "audit: the access preset does not allow the method");
        let v = request(&d, "audit.example.com", "DELETE", "/x%2f");
        assert!(!v.allow && !v.audit, "a path with no canonical form is refused even in audit");
        let v = request(&d, "a.one.example", "DELETE", "/anything");
        assert_eq!((v.allow, &*v.rule), (true, "access:full"));
        let v = request(&d, "github.com", "PATCH", "/x");
        assert_eq!((v.allow, &*v.rule, v.policy.as_deref()), (false, "access:read-only", Some("web")));
        let connect = d.network("db.example.com", 5432, None);
        let v = d.request(connect.endpoint_ref.expect("allowed"), "GET", "/");
        assert_eq!((v.allow, &*v.rule), (true, "protocol:tcp"));
        let bogus = EndpointRef { policy: 9, endpoint: 0 };
        assert!(!d.request(bogus, "GET", "/").allow);
        let bogus = EndpointRef { policy: 1, endpoint: 1 };
        assert!(!d.request(bogus, "GET", "/").allow);
    }

    #[test]
    fn agrees_with_the_first_covering_endpoint_in_file_order() {
        let policy = parse_str("t.yaml", RULES).expect("valid");
        let d = Decider::new(&policy);
        for host in ["api.example.com", "x.one.example", "a.b.deep.example", "github.com", "nope"] {
            for port in [22, 443, 5432, 8443] {
                let ours = d.network(host, port, None);
                let theirs = policy.matching_endpoints(host, port).find(|(p, _)| p.binaries.is_none());
                assert_eq!(ours.allow, theirs.is_some(), "{host}:{port}");
                if let Some((p, e)) = theirs {
                    assert_eq!(ours.policy.as_deref(), Some(p.name.as_str()));
                    assert_eq!(ours.endpoint.as_deref(), Some(e.host.to_string().as_str()));
                }
            }
        }
    }

    #[test]
    fn a_deny_rule_on_get_refuses_head_and_an_allow_rule_on_head_stays_one() {
        let d = decider(
            "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - { host: a.example, port: 443, protocol: rest, access: full, deny_rules: [{ method: GET, path: /secret }] }\n      - { host: b.example, port: 443, protocol: rest, rules: [{ allow: { method: HEAD, path: /health } }] }\n",
        );
        let a = d.network("a.example", 443, None).endpoint_ref.unwrap();
        assert!(!d.request(a, "HEAD", "/secret").allow, "HEAD runs the denied GET handler");
        assert!(d.request(a, "HEAD", "/open").allow);
        let b = d.network("b.example", 443, None).endpoint_ref.unwrap();
        assert!(d.request(b, "HEAD", "/health").allow, "a rule allowing only HEAD still allows it");
        assert!(!d.request(b, "GET", "/health").allow);
    }

    #[test]
    fn paths_without_canonical_form_pass_only_where_paths_are_not_judged() {
        let d = decider(
            "version: 1\nnetwork_policies:\n  gl:\n    endpoints:\n      - { host: gitlab.com, port: 443, protocol: rest, access: full }\n      - { host: api.example.com, port: 443, protocol: rest, access: read-only }\n",
        );
        let full = d.network("gitlab.com", 443, None).endpoint_ref.unwrap();
        let verdict = d.request(full, "GET", "/api/v4/projects/group%2Fproject");
        assert!(verdict.allow, "{verdict:?}");
        assert_eq!(&*verdict.rule, "access:full");
        let ro = d.network("api.example.com", 443, None).endpoint_ref.unwrap();
        let verdict = d.request(ro, "GET", "/api/v4/projects/group%2Fproject");
        assert!(!verdict.allow, "{verdict:?}");
        assert_eq!(&*verdict.rule, "path-rejected");
    }
}
