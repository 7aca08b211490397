//! Decisions by the Rego policy, `policies/sandbox.rego`, evaluated with regorus.
//!
//! The Rego policy is the source of truth for what a policy file means at the network and
//! request level; the proxy's hot path ([`super::decide::Decider`]) must give the same verdicts
//! and is tested against [`RegoPolicy`] for that. `leash policy eval` prints [`eval_json`].
//!
//! Input given to the policy (DESIGN.md): `{exec: {path, ancestors}, network: {host, port},
//! request: {method, path, query}}`, with `request.path` already normalised
//! ([`super::normalize`]); data: [`CompiledPolicy::to_data_json`].
//!
//! A regorus `Engine` is `Send` but not `Sync`, and evaluation needs `&mut`. [`RegoPolicy`]
//! keeps one prepared engine (policy parsed, data loaded, rules analysed) and a pool of idle
//! clones: each evaluation takes a clone from the pool (or clones the prepared engine), uses it
//! and gives it back, so concurrent tasks never wait for each other's evaluation.
//!
//! ```
//! use sandbox_policy::{parse_str, rego::{RegoPolicy, NetworkInput, RequestInput}};
//!
//! let policy = parse_str("inline.yaml", "
//! version: 1
//! network_policies:
//!   github:
//!     endpoints:
//!       - { host: api.github.com, port: 443, protocol: rest, access: read-only }
//! ").unwrap();
//! let rego = RegoPolicy::new(&policy).unwrap();
//! let network = NetworkInput { host: "api.github.com", port: 443, binary: None };
//! assert!(rego.decide_network(&network).unwrap().allow);
//! let post = RequestInput { network, method: "POST", target: "/repos/a/b" };
//! assert_eq!(&*rego.decide_request(&post).unwrap().rule, "access:read-only");
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use regorus::{Engine, Value as RegoValue};
use serde_json::{json, Value};

use super::compile::CompiledPolicy;
use super::decide::{EndpointRef, NetworkVerdict, RequestVerdict};
use super::normalize::normalize;

/// The Rego policy, compiled into the binary.
pub const SANDBOX_REGO: &str = include_str!("../../policies/sandbox.rego");

/// The rule giving the network decision object.
const NETWORK_RULE: &str = "data.leash.sandbox.network_decision";
/// The rule giving the request decision object.
const REQUEST_RULE: &str = "data.leash.sandbox.request_decision";

/// Why the Rego policy could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum RegoError {
    /// `policies/sandbox.rego` does not parse or analyse.
    #[error("policies/sandbox.rego: {0}")]
    Load(String),
    /// The policy data was refused.
    #[error("cannot load the policy as Rego data: {0}")]
    Data(String),
    /// Evaluation failed (a builtin error, a limit).
    #[error("evaluating {rule}: {message}")]
    Eval {
        /// The rule evaluated.
        rule: &'static str,
        /// What regorus said.
        message: String,
    },
    /// The rule produced something that is not a decision object.
    #[error("{rule} did not produce a decision: {value}")]
    Shape {
        /// The rule evaluated.
        rule: &'static str,
        /// What it produced, as JSON.
        value: String,
    },
}

/// What a connection attempt looks like to the policy.
#[derive(Debug, Clone, Copy)]
pub struct NetworkInput<'a> {
    /// The host the agent asked for (CONNECT authority or absolute-form URI), as sent.
    pub host: &'a str,
    /// The port it asked for.
    pub port: u16,
    /// The executable that opened the connection, if known.
    pub binary: Option<&'a Path>,
}

/// What a request inside a tunnel looks like to the policy.
#[derive(Debug, Clone, Copy)]
pub struct RequestInput<'a> {
    /// The connection it travels on.
    pub network: NetworkInput<'a>,
    /// The method, as sent.
    pub method: &'a str,
    /// The request target in origin form (`/path?query`), as sent; normalised before Rego sees it.
    pub target: &'a str,
}

/// The Rego policy with one policy file's data loaded; shareable across threads.
pub struct RegoPolicy {
    /// `judges_paths()` of every endpoint, by policy and endpoint index.
    judges_paths: Vec<Vec<bool>>,
    /// Prepared engine every evaluation engine is cloned from.
    prepared: Mutex<Engine>,
    /// Idle engines, ready for another evaluation.
    idle: Mutex<Vec<Engine>>,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoPolicy").finish_non_exhaustive()
    }
}

impl RegoPolicy {
    /// Loads `policies/sandbox.rego` with `policy` as data.
    pub fn new(policy: &CompiledPolicy) -> Result<Self, RegoError> {
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(true);
        engine
            .add_policy("policies/sandbox.rego".to_owned(), SANDBOX_REGO.to_owned())
            .map_err(|e| RegoError::Load(format!("{e:#}")))?;
        let data = RegoValue::from_json_str(&policy.to_data_json().to_string())
            .map_err(|e| RegoError::Data(format!("{e:#}")))?;
        engine.add_data(data).map_err(|e| RegoError::Data(format!("{e:#}")))?;
        // Evaluate once so parsing, analysis and rule gathering happen here, not per clone.
        engine.set_input(RegoValue::from(json!({ "network": { "host": "", "port": 0 } })));
        for rule in [NETWORK_RULE, REQUEST_RULE] {
            engine.eval_rule(rule.to_owned()).map_err(|e| RegoError::Load(format!("{rule}: {e:#}")))?;
        }
        let judges_paths =
            policy.network_policies().iter().map(|p| p.endpoints.iter().map(|e| e.judges_paths()).collect()).collect();
        Ok(RegoPolicy { judges_paths, prepared: Mutex::new(engine), idle: Mutex::new(Vec::new()) })
    }

    /// Evaluates `rule` (a full `data.` path) with `input`, on an engine of the pool.
    fn eval(&self, rule: &'static str, input: Value) -> Result<Value, RegoError> {
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut engine = match pooled {
            Some(engine) => engine,
            None => self.prepared.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        };
        engine.set_input(RegoValue::from(input));
        let result = engine.eval_rule(rule.to_owned());
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(engine);
        let value = result.map_err(|e| RegoError::Eval { rule, message: format!("{e:#}") })?;
        serde_json::to_value(&value).map_err(|e| RegoError::Eval { rule, message: format!("result is not JSON: {e}") })
    }

    /// The network decision object `network_decision` gives for `input`.
    pub fn network_decision_json(&self, input: &NetworkInput<'_>) -> Result<Value, RegoError> {
        self.eval(NETWORK_RULE, json!({ "exec": exec_json(input.binary), "network": network_json(input) }))
    }

    /// May the executable connect to host:port, according to the Rego policy?
    pub fn decide_network(&self, input: &NetworkInput<'_>) -> Result<NetworkVerdict, RegoError> {
        let value = self.network_decision_json(input)?;
        network_verdict(&value).ok_or_else(|| shape(NETWORK_RULE, &value))
    }

    /// The request decision object `request_decision` gives for a request whose target has
    /// already been normalised into `path` and `query`.
    fn request_decision_json(
        &self,
        input: &RequestInput<'_>,
        path: &str,
        query: Option<&str>,
    ) -> Result<Value, RegoError> {
        self.eval(
            REQUEST_RULE,
            json!({
                "exec": exec_json(input.network.binary),
                "network": network_json(&input.network),
                "request": { "method": input.method, "path": path, "query": query.unwrap_or("") },
            }),
        )
    }

    /// May the request go through, according to the Rego policy? A target with no canonical
    /// path is refused (`path-rejected`) once the connection itself is allowed, exactly as
    /// [`super::decide::Decider::request`] does.
    pub fn decide_request(&self, input: &RequestInput<'_>) -> Result<RequestVerdict, RegoError> {
        let value = match normalize(input.target) {
            Ok(target) => self.request_decision_json(input, &target.path, target.query)?,
            Err(error) => {
                let network = self.decide_network(&input.network)?;
                let judges_paths = network
                    .endpoint_ref
                    .and_then(|r| self.judges_paths.get(r.policy as usize)?.get(r.endpoint as usize).copied())
                    .unwrap_or(true);
                if network.allow && !judges_paths {
                    // Nothing compares the path (as `Decider::request` does): judge it as the root.
                    let value = self.request_decision_json(input, "/", None)?;
                    return request_verdict(&value).ok_or_else(|| shape(REQUEST_RULE, &value));
                }
                if network.allow {
                    return Ok(RequestVerdict::path_rejected(network.policy, network.endpoint, &error));
                }
                // Refused at the connection: let the policy say so, with the raw target.
                self.request_decision_json(input, input.target, None)?
            }
        };
        request_verdict(&value).ok_or_else(|| shape(REQUEST_RULE, &value))
    }
}

/// `input.exec`: the executable's path when it is UTF-8 (paths in a policy always are, so
/// another path can never equal one of them).
fn exec_json(binary: Option<&Path>) -> Value {
    json!({ "path": binary.and_then(Path::to_str), "ancestors": [] })
}

/// `input.network`.
fn network_json(input: &NetworkInput<'_>) -> Value {
    json!({ "host": input.host, "port": input.port })
}

fn shape(rule: &'static str, value: &Value) -> RegoError {
    RegoError::Shape { rule, value: value.to_string() }
}

/// A string field, or `None` for null.
fn optional_str(value: &Value, key: &str) -> Option<Option<Arc<str>>> {
    match value.get(key)? {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(Arc::from(s.as_str()))),
        _ => None,
    }
}

fn required_str(value: &Value, key: &str) -> Option<Arc<str>> {
    value.get(key)?.as_str().map(Arc::from)
}

/// Reads a `network_decision` object.
fn network_verdict(value: &Value) -> Option<NetworkVerdict> {
    let allow = value.get("allow")?.as_bool()?;
    let index = |key: &str| value.get(key).and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
    let endpoint_ref = match (allow, index("policy_index"), index("endpoint_index")) {
        (true, Some(policy), Some(endpoint)) => Some(EndpointRef { policy, endpoint }),
        (true, _, _) => return None,
        (false, _, _) => None,
    };
    Some(NetworkVerdict {
        allow,
        policy: optional_str(value, "policy")?,
        endpoint: optional_str(value, "endpoint")?,
        endpoint_ref,
        rule: required_str(value, "rule")?,
        reason: required_str(value, "reason")?,
    })
}

/// Reads a `request_decision` object.
fn request_verdict(value: &Value) -> Option<RequestVerdict> {
    Some(RequestVerdict {
        allow: value.get("allow")?.as_bool()?,
        audit: value.get("audit")?.as_bool()?,
        policy: optional_str(value, "policy")?,
        endpoint: optional_str(value, "endpoint")?,
        rule: required_str(value, "rule")?,
        reason: required_str(value, "reason")?,
    })
}

/// The Rego decision for `leash policy eval`, as JSON, or why it could not be evaluated.
///
/// A request is evaluated when `method` or `path` is given (`GET` and `/` stand in for the one
/// missing). The result:
///
/// ```json
/// { "input":   { "host": "api.github.com", "port": 443, "binary": null,
///                "method": "POST", "path": "/repos/a/b" },
///   "allow":   false,
///   "network": { "allow": true, "policy": "github", "endpoint": "api.github.com",
///                "rule": "network_policies.github.endpoints[0]", "reason": "..." },
///   "request": { "allow": false, "audit": false, "policy": "github",
///                "endpoint": "api.github.com", "rule": "access:read-only", "reason": "...",
///                "normalized_path": "/repos/a/b" } }
/// ```
pub fn eval_json(
    policy: &CompiledPolicy,
    host: &str,
    port: u16,
    method: Option<&str>,
    path: Option<&str>,
    binary: Option<&Path>,
) -> Result<Value, RegoError> {
    let rego = RegoPolicy::new(policy)?;
    let input = NetworkInput { host, port, binary };
    let network = rego.decide_network(&input)?;
    let request = match method.is_some() || path.is_some() {
        true => Some(rego.decide_request(&RequestInput {
            network: input,
            method: method.unwrap_or("GET"),
            target: path.unwrap_or("/"),
        })?),
        false => None,
    };
    Ok(crate::decide::eval_report(&input, method, path, &network, request.as_ref()))
}

/// A `RegoPolicy` is shared across the proxy's tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<RegoPolicy>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;

    const POLICY: &str = "\
version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.com
        port: 443
        protocol: rest
        rules:
          - allow: { method: GET, path: '/repos/**' }
          - allow: { path: /user }
        deny_rules:
          - { method: GET, path: '/repos/*/*/actions/secrets/**' }
      - { host: audit.example.com, port: 443, protocol: rest, access: read-write, enforcement: audit }
      - { host: '*.tcp.example', port: 22, protocol: tcp }
    binaries: [{ path: /usr/bin/git }]
";

    fn rego() -> RegoPolicy {
        RegoPolicy::new(&parse_str("t.yaml", POLICY).expect("valid")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn git() -> Option<&'static Path> {
        Some(Path::new("/usr/bin/git"))
    }

    fn request(rego: &RegoPolicy, host: &str, method: &str, target: &str) -> RequestVerdict {
        let network = NetworkInput { host, port: 443, binary: git() };
        rego.decide_request(&RequestInput { network, method, target }).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_embedded_policy_loads() {
        rego();
        RegoPolicy::new(&parse_str("t.yaml", "version: 1\n").expect("valid")).expect("empty policy");
    }

    #[test]
    fn network_decisions() {
        let rego = rego();
        let decide = |host: &str, port: u16, binary: Option<&Path>| {
            rego.decide_network(&NetworkInput { host, port, binary }).unwrap_or_else(|e| panic!("{e}"))
        };
        let v = decide("API.Example.com", 443, git());
        assert!(v.allow);
        assert_eq!(&*v.rule, "network_policies.api.endpoints[0]");
        assert_eq!(v.endpoint_ref, Some(EndpointRef { policy: 0, endpoint: 0 }));
        let v = decide("api.example.com", 443, Some(Path::new("/bin/sh")));
        assert_eq!((v.allow, &*v.rule), (false, "network_policies.api.binaries"));
        assert_eq!(&*decide("api.example.com", 443, None).rule, "network_policies.api.binaries");
        assert_eq!(&*decide("api.example.com", 80, git()).rule, "default-deny");
        assert_eq!(&*decide("api.example.com.", 443, git()).rule, "invalid-host");
        assert_eq!(&*decide("\u{212A}.tcp.example", 22, git()).rule, "invalid-host");
        assert!(decide("a.tcp.example", 22, git()).allow);
        assert!(!decide("a.b.tcp.example", 22, git()).allow);
    }

    #[test]
    fn request_decisions() {
        let rego = rego();
        let rule = |host: &str, method: &str, target: &str| {
            let v = request(&rego, host, method, target);
            (v.allow, v.audit, v.rule.to_string())
        };
        let api = "api.example.com";
        assert_eq!(rule(api, "GET", "/repos/a/b?x=1"), (true, false, "rules[0]".into()));
        assert_eq!(rule(api, "GET", "/repos/a/b/actions/secrets"), (false, false, "deny_rules[0]".into()));
        assert_eq!(rule(api, "PUT", "/user"), (true, false, "rules[1]".into()));
        assert_eq!(rule(api, "PUT", "/users"), (false, false, "default-deny".into()));
        assert_eq!(rule(api, "GET", "/a/%2e%2e/user"), (true, false, "rules[1]".into()));
        assert_eq!(rule(api, "GET", "/a%2fb"), (false, false, "path-rejected".into()));
        assert_eq!(rule("nope.example", "GET", "/a%2fb"), (false, false, "default-deny".into()));
        let audit = "audit.example.com";
        assert_eq!(rule(audit, "POST", "/x"), (true, false, "access:read-write".into()));
        assert_eq!(rule(audit, "DELETE", "/x"), (true, true, "access:read-write".into()));
        let v = request(&rego, "nope.example", "GET", "/");
        assert_eq!(&*v.reason, "connection refused: no endpoint covers this host and port");
    }

    #[test]
    fn an_unnormalised_path_in_raw_input_is_refused_by_the_policy() {
        let rego = rego();
        let input = RequestInput {
            network: NetworkInput { host: "api.example.com", port: 443, binary: git() },
            method: "GET",
            target: "",
        };
        for raw in ["/repos/../user", "/user/.", "//user", "/repos/a%2Fb", "/repos/%2e%2e/user", "user", "/a/..;/user"]
        {
            let value = rego.request_decision_json(&input, raw, None).expect("evaluates");
            assert_eq!(value["rule"], "path-not-normalized", "{raw}: {value}");
            assert_eq!(value["allow"], false);
        }
    }

    #[test]
    fn concurrent_evaluations_share_one_policy() {
        let rego = Arc::new(rego());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let rego = Arc::clone(&rego);
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let v = request(&rego, "api.example.com", "GET", &format!("/repos/{i}"));
                        assert!(v.allow);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
    }

    #[test]
    fn eval_json_reports_both_decisions() {
        let policy = parse_str("t.yaml", POLICY).expect("valid");
        let out =
            eval_json(&policy, "api.example.com", 443, Some("GET"), Some("/repos/x/../y?q"), git()).expect("evaluates");
        assert_eq!(out["allow"], true, "{out}");
        assert_eq!(out["network"]["rule"], "network_policies.api.endpoints[0]");
        assert_eq!(out["request"]["rule"], "rules[0]");
        assert_eq!(out["request"]["normalized_path"], "/repos/y");
        let out = eval_json(&policy, "api.example.com", 443, None, None, None).expect("evaluates");
        assert_eq!(out["allow"], false, "{out}");
        assert_eq!(out["network"]["rule"], "network_policies.api.binaries");
        assert!(out.get("request").is_none());
    }
}
