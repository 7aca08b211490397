//! The policy as the Rego data document that `policies/sandbox.rego` reads.
//!
//! The shape follows the YAML file, with two deliberate differences:
//!
//! * `network_policies` is a list in file order, each entry carrying its `name` (a JSON object
//!   has no order, and the first matching endpoint in file order wins);
//! * every endpoint spells out what the file may leave implicit: `ports` (also for `port:`),
//!   `protocol` (`tcp` when absent), `enforcement` (`enforce` when absent), `rules` and
//!   `deny_rules` (empty lists), and rule keys (`method: "*"`, `path: "/**"` when absent).
//!
//! `access:` stays a preset name: expanding it is the Rego policy's job, and the differential
//! tests check that its expansion matches [`super::compile()`]'s.
//!
//! ```json
//! { "network_policies": [
//!     { "name": "github",
//!       "endpoints": [{ "host": "api.github.com", "ports": [443], "protocol": "rest",
//!                       "access": "read-only", "rules": [], "deny_rules": [],
//!                       "enforcement": "enforce", "tls": "skip" }],
//!       "binaries": [{ "path": "/usr/bin/git" }] } ],
//!   "credentials": { "GITHUB_TOKEN": { "hosts": ["api.github.com"] } } }
//! ```
//! (`access`, `tls` and `binaries` appear only when the file sets them.)

use serde_json::{json, Map, Value};

use super::compile::{AllowedRequests, CompiledEndpoint, CompiledPolicy, Inspection, RequestRule};
use super::document::{Access, Enforcement, Protocol};

impl CompiledPolicy {
    /// The policy as the data document of `policies/sandbox.rego` (see the module docs).
    pub fn to_data_json(&self) -> Value {
        let policies: Vec<Value> = self
            .network_policies()
            .iter()
            .map(|policy| {
                let mut entry = Map::new();
                entry.insert("name".into(), json!(policy.name));
                entry.insert("endpoints".into(), policy.endpoints.iter().map(endpoint_json).collect());
                if let Some(binaries) = &policy.binaries {
                    let list: Vec<Value> =
                        binaries.iter().map(|path| json!({ "path": path.to_string_lossy() })).collect();
                    entry.insert("binaries".into(), Value::Array(list));
                }
                Value::Object(entry)
            })
            .collect();
        let credentials: Map<String, Value> = self
            .credentials()
            .iter()
            .map(|c| {
                let hosts: Vec<String> = c.hosts.iter().map(ToString::to_string).collect();
                (c.name.clone(), json!({ "hosts": hosts }))
            })
            .collect();
        json!({ "network_policies": policies, "credentials": credentials })
    }
}

/// The preset's name as the file spells it.
pub(crate) fn access_name(access: Access) -> &'static str {
    match access {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
        Access::Full => "full",
    }
}

/// One endpoint, with implicit values spelled out.
fn endpoint_json(endpoint: &CompiledEndpoint) -> Value {
    let mut out = Map::new();
    out.insert("host".into(), json!(endpoint.host.to_string()));
    out.insert("ports".into(), json!(endpoint.ports.as_slice()));
    let protocol = match endpoint.protocol {
        Protocol::Rest => "rest",
        Protocol::Tcp => "tcp",
    };
    out.insert("protocol".into(), json!(protocol));
    if let Some(access) = endpoint.access {
        out.insert("access".into(), json!(access_name(access)));
    }
    let (rules, deny_rules, enforcement) = match &endpoint.inspection {
        Inspection::Tunnel => (Vec::new(), Vec::new(), Enforcement::Enforce),
        Inspection::Http(http) => {
            // With a preset, the compiled allow list is the preset's expansion, not `rules:`.
            let rules = match (&http.allow, endpoint.access) {
                (AllowedRequests::Only(rules), None) => {
                    rules.iter().map(|r| json!({ "allow": rule_json(r) })).collect()
                }
                _ => Vec::new(),
            };
            (rules, http.deny.iter().map(rule_json).collect(), http.enforcement)
        }
    };
    out.insert("rules".into(), Value::Array(rules));
    out.insert("deny_rules".into(), Value::Array(deny_rules));
    let enforcement = match enforcement {
        Enforcement::Enforce => "enforce",
        Enforcement::Audit => "audit",
    };
    out.insert("enforcement".into(), json!(enforcement));
    if endpoint.tls_skip {
        out.insert("tls".into(), json!("skip"));
    }
    Value::Object(out)
}

/// A request pattern; `*` for any method.
fn rule_json(rule: &RequestRule) -> Value {
    json!({ "method": rule.method.as_deref().unwrap_or("*"), "path": rule.path })
}

#[cfg(test)]
mod tests {
    use super::super::compile::parse_str;
    use serde_json::json;

    #[test]
    fn data_spells_out_defaults_and_keeps_file_order() {
        let policy = parse_str(
            "t.yaml",
            "\
version: 1
network_policies:
  zeta:
    endpoints:
      - { host: '*.Example.com', ports: [443, 8443], protocol: rest, access: read-only, deny_rules: [{ method: DELETE }] }
      - { host: db, port: 5432 }
    binaries: [{ path: /usr/bin/git }]
  alpha:
    endpoints:
      - { host: a.com, port: 443, protocol: rest, rules: [{ allow: { path: /x } }], enforcement: audit }
      - { host: b.com, port: 443, protocol: rest, access: full, tls: skip }
credentials:
  TOKEN: { hosts: [a.com] }
",
        )
        .expect("valid");
        assert_eq!(
            policy.to_data_json(),
            json!({
                "network_policies": [
                    { "name": "zeta", "binaries": [{ "path": "/usr/bin/git" }], "endpoints": [
                        { "host": "*.example.com", "ports": [443, 8443], "protocol": "rest",
                          "access": "read-only", "rules": [],
                          "deny_rules": [{ "method": "DELETE", "path": "/**" }],
                          "enforcement": "enforce" },
                        { "host": "db", "ports": [5432], "protocol": "tcp", "rules": [],
                          "deny_rules": [], "enforcement": "enforce" } ] },
                    { "name": "alpha", "endpoints": [
                        { "host": "a.com", "ports": [443], "protocol": "rest",
                          "rules": [{ "allow": { "method": "*", "path": "/x" } }],
                          "deny_rules": [], "enforcement": "audit" },
                        { "host": "b.com", "ports": [443], "protocol": "rest", "access": "full",
                          "rules": [], "deny_rules": [], "enforcement": "enforce", "tls": "skip" } ] }
                ],
                "credentials": { "TOKEN": { "hosts": ["a.com"] } }
            })
        );
    }
}
