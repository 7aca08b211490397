//! Differential test: the hot-path [`Decider`] and the Rego policy ([`RegoPolicy`]) must give
//! the same verdict (allow, audit, policy, endpoint, rule and reason) on every input.
//!
//! Inputs are generated with a fixed seed over the default policy, every example policy, a
//! policy written to exercise each feature, and a generated 1,000-endpoint policy. Rego is the
//! source of truth: when this fails, `decide.rs` (or the data in `data.rs`) is what is wrong,
//! unless `policies/sandbox.rego` changed on purpose.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::convert::Infallible;

use leash::policy::readings::{judge_all, readings};
use leash::policy::{load, parse_str, CompiledPolicy, Decider, NetworkInput, RegoPolicy, RequestInput, RequestVerdict};
use support::synthetic::{self, Rng};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A policy that uses every feature the two evaluators must agree on.
const FEATURES: &str = "\
version: 1
network_policies:
  github_api:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        rules:
          - allow: { method: GET, path: '/repos/**' }
          - allow: { method: GET, path: /user }
          - allow: { method: '*', path: '/search/*' }
          - allow: { path: '/a/**/b' }
        deny_rules:
          - { method: GET, path: '/repos/*/*/actions/secrets/**' }
          - { path: '/admin/**' }
      - { host: '*.githubusercontent.com', ports: [443, 8443], protocol: rest, access: read-only }
      - { host: '**.audit.example', port: 443, protocol: rest, access: read-only, enforcement: audit, deny_rules: [{ method: HEAD }] }
      - { host: rw.example, port: 443, protocol: rest, access: read-write }
      - { host: full.example, port: 443, protocol: rest, access: full, tls: skip }
      - { host: deny.example, port: 443, protocol: rest, access: full, deny_rules: [{ method: DELETE, path: '/**' }] }
      - { host: db.example, ports: [5432, 5433], protocol: tcp }
      - { host: plain.example, port: 443 }
  github_git:
    endpoints:
      - host: github.com
        port: 443
        protocol: rest
        rules:
          - allow: { method: GET, path: '/**/info/refs' }
          - allow: { method: POST, path: '/**/git-upload-pack' }
        enforcement: audit
    binaries: [{ path: /usr/bin/git }, { path: /usr/lib/git-core/git-remote-https }]
  github_web:
    endpoints:
      - { host: github.com, port: 443, protocol: rest, access: read-only }
      - { host: api.github.com, port: 443, protocol: rest, access: full }
  ssh:
    endpoints: [{ host: github.com, port: 22, protocol: tcp }]
    binaries: [{ path: /usr/bin/ssh }]
";

/// What kinds of verdicts a run compared: rule names without indices or policy names
/// (`rules[]`, `network_policies.*.binaries`), plus `audit` for flagged passes.
type Tally = BTreeMap<String, usize>;

/// A rule with its indices and policy name blanked, so runs can be tallied by kind.
fn rule_kind(rule: &str) -> String {
    let mut kind = String::new();
    let mut in_index = false;
    for c in rule.chars() {
        match c {
            '[' => {
                in_index = true;
                kind.push('[');
            }
            ']' => {
                in_index = false;
                kind.push(']');
            }
            _ if in_index => {}
            _ => kind.push(c),
        }
    }
    match kind.strip_prefix("network_policies.") {
        Some(rest) => format!("network_policies.*.{}", rest.rsplit('.').next().unwrap_or(rest)),
        None => kind,
    }
}

/// Checks `inputs` generated inputs against `policy`; returns the verdict kinds compared.
fn check_policy(label: &str, policy: &CompiledPolicy, inputs: usize, seed: u64) -> Tally {
    let mut tally = Tally::new();
    let decider = Decider::new(policy);
    let rego = RegoPolicy::new(policy).unwrap_or_else(|e| panic!("{label}: {e}"));
    let endpoints: Vec<(String, Vec<u16>, Vec<String>)> = policy
        .network_policies()
        .iter()
        .flat_map(|p| &p.endpoints)
        .map(|e| {
            let globs = match &e.inspection {
                leash::policy::Inspection::Http(http) => {
                    let mut globs: Vec<String> = http.deny.iter().map(|r| r.path.clone()).collect();
                    if let leash::policy::AllowedRequests::Only(rules) = &http.allow {
                        globs.extend(rules.iter().map(|r| r.path.clone()));
                    }
                    globs
                }
                leash::policy::Inspection::Tunnel => Vec::new(),
            };
            (e.host.to_string(), e.ports.as_slice().to_vec(), globs)
        })
        .collect();
    let mut rng = Rng::new(seed);
    for i in 0..inputs {
        // Mostly inputs aimed at an endpoint (so requests get judged), some near misses.
        let (host, port, globs) = if endpoints.is_empty() || rng.chance(5) {
            (format!("random{}.example", rng.below(50)), 443, Vec::new())
        } else {
            let (pattern, ports, globs) = rng.pick(endpoints.as_slice()).clone();
            let mut host = synthetic::host_for(&pattern, &mut rng);
            if rng.chance(15) {
                host = synthetic::mutate_host(&host, &mut rng);
            }
            let port = if rng.chance(85) {
                *rng.pick(ports.as_slice())
            } else {
                *rng.pick(&[22, 80, 443, 5432, 8443, 0, 65535])
            };
            (host, port, globs)
        };
        let binary = if rng.chance(40) { None } else { Some(Path::new(*rng.pick(synthetic::BINARIES))) };
        let network_input = NetworkInput { host: &host, port, binary };
        let ours = decider.network(&host, port, binary);
        let theirs = rego.decide_network(&network_input).unwrap_or_else(|e| panic!("{label} #{i}: {e}"));
        assert_eq!(ours, theirs, "{label} #{i}: network {host}:{port} binary {binary:?}");
        assert_eq!(decider.network(&host, port, binary), ours, "{label} #{i}: cached network verdict");
        *tally.entry(format!("network {}", rule_kind(&ours.rule))).or_default() += 1;
        let Some(endpoint) = ours.endpoint_ref else {
            continue;
        };
        for _ in 0..3 {
            let method = *rng.pick(synthetic::METHODS);
            let target = if !globs.is_empty() && rng.chance(70) {
                synthetic::target_for(&rng.pick(globs.as_slice()).clone(), &mut rng)
            } else {
                synthetic::random_target(&mut rng)
            };
            let ours = decider.request(endpoint, method, &target);
            let theirs = rego
                .decide_request(&RequestInput { network: network_input, method, target: &target })
                .unwrap_or_else(|e| panic!("{label} #{i}: {e}"));
            assert_eq!(ours, theirs, "{label} #{i}: {method} {target} on {host}:{port} binary {binary:?}");
            assert_eq!(decider.request(endpoint, method, &target), ours, "{label} #{i}: cached");
            let audit = if ours.audit { " audit" } else { "" };
            let kind = format!("request {}{audit}", rule_kind(&ours.rule));
            *tally.entry(kind).or_default() += 1;

            // Every reading the proxy judges (method overrides, `;parameters`, trailing slash),
            // and the verdict they make together, agree as well.
            let overrides: Vec<&str> = if rng.chance(30) { vec![*rng.pick(synthetic::METHODS)] } else { Vec::new() };
            let Some(all) = readings(method, overrides.iter().copied(), &target) else {
                continue;
            };
            let judge_ours = |r: &leash::policy::readings::Reading<'_>| {
                Ok::<_, Infallible>(decider.request(endpoint, &r.method, &r.target))
            };
            let Ok(ours) = judge_all(&all, judge_ours, RequestVerdict::outcome);
            let judge_theirs = |r: &leash::policy::readings::Reading<'_>| {
                rego.decide_request(&RequestInput { network: network_input, method: &r.method, target: &r.target })
            };
            let theirs =
                judge_all(&all, judge_theirs, RequestVerdict::outcome).unwrap_or_else(|e| panic!("{label} #{i}: {e}"));
            assert_eq!(
                ours, theirs,
                "{label} #{i}: readings of {method} {target} (overrides {overrides:?}) on {host}:{port}"
            );
            if let Some((verdict, reading)) = ours {
                let how = if verdict.allow { "allowed" } else { "refused" };
                *tally.entry(format!("readings {reading} {how}")).or_default() += 1;
            }
        }
    }
    tally
}

/// Number of request verdicts in a tally.
fn requests(tally: &Tally) -> usize {
    tally.iter().filter(|(k, _)| k.starts_with("request ")).map(|(_, n)| n).sum()
}

#[test]
fn decider_agrees_with_rego_on_the_feature_policy() {
    let policy = parse_str("features.yaml", FEATURES).unwrap_or_else(|e| panic!("{e}"));
    let tally = check_policy("features.yaml", &policy, 3000, 1);
    // Every kind of decision was compared, allowed and refused.
    for kind in [
        "network network_policies.*.endpoints[]",
        "network network_policies.*.binaries",
        "network invalid-host",
        "network default-deny",
        "request rules[]",
        "request deny_rules[]",
        "request deny_rules[] audit",
        "request access:read-only",
        "request access:read-only audit",
        "request access:read-write",
        "request access:full",
        "request protocol:tcp",
        "request default-deny",
        "request default-deny audit",
        "request path-rejected",
        "readings as sent allowed",
        "readings as sent refused",
        "readings method override refused",
        "readings without the trailing slash refused",
    ] {
        assert!(tally.get(kind).is_some_and(|n| *n > 0), "never compared {kind}: {tally:#?}");
    }
    assert!(requests(&tally) > 3000, "{tally:#?}");
}

/// The readings random inputs rarely reach, taken on purpose: a `;parameter` on each segment in
/// turn and a trailing slash, on a target from each rule of the feature policy, with every method
/// and every method as an override. The two evaluators' combined verdicts must agree, and the
/// readings must decide some of them (else this test tries nothing).
#[test]
fn decider_agrees_with_rego_on_every_reading_of_the_rules() {
    let policy = parse_str("features.yaml", FEATURES).unwrap_or_else(|e| panic!("{e}"));
    let decider = Decider::new(&policy);
    let rego = RegoPolicy::new(&policy).unwrap_or_else(|e| panic!("{e}"));
    let network = NetworkInput { host: "api.github.com", port: 443, binary: None };
    let endpoint = decider.network(network.host, network.port, None).endpoint_ref.expect("an endpoint");
    let paths = ["/repos/o/r/actions/secrets/x", "/repos/o/r/pulls", "/admin/users", "/user", "/search/code", "/a/x/b"];
    let mut decided_by: BTreeMap<&str, usize> = BTreeMap::new();
    for path in paths {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let mut targets = vec![path.to_owned(), format!("{path}/")];
        for at in 0..segments.len() {
            let mut with = segments.clone();
            let param = format!("{};v=1", with[at]);
            with[at] = &param;
            targets.push(format!("/{}", with.join("/")));
        }
        for target in &targets {
            for method in synthetic::METHODS {
                for overrides in [None, Some("DELETE"), Some("get")] {
                    let Some(all) = readings(method, overrides, target) else { continue };
                    let Ok(ours) = judge_all(
                        &all,
                        |r| Ok::<_, Infallible>(decider.request(endpoint, &r.method, &r.target)),
                        RequestVerdict::outcome,
                    );
                    let theirs = judge_all(
                        &all,
                        |r| rego.decide_request(&RequestInput { network, method: &r.method, target: &r.target }),
                        RequestVerdict::outcome,
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(ours, theirs, "{method} {target} (override {overrides:?})");
                    if let Some((verdict, reading)) = ours.filter(|(v, _)| !v.allow) {
                        assert!(!verdict.allow);
                        *decided_by.entry(reading).or_default() += 1;
                    }
                }
            }
        }
    }
    // (A refusal from the trailing-slash reading is among the feature policy's random inputs.)
    for reading in ["as sent", "method override", "without ;parameters"] {
        assert!(decided_by.get(reading).is_some_and(|n| *n > 0), "no refusal came from {reading}: {decided_by:?}");
    }
}

#[test]
fn decider_agrees_with_rego_on_the_shipped_policies() {
    let mut files = vec![policies_dir().join("default.yaml")];
    let examples = policies_dir().join("examples");
    for entry in std::fs::read_dir(&examples).unwrap_or_else(|e| panic!("{}: {e}", examples.display())) {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    for (seed, file) in files.iter().enumerate() {
        let policy = load(file).unwrap_or_else(|e| panic!("{e}"));
        check_policy(&file.display().to_string(), &policy, 600, 100 + seed as u64);
    }
}

#[test]
fn decider_agrees_with_rego_on_a_thousand_endpoints() {
    let yaml = synthetic::policy_yaml(1000, 7);
    let policy = parse_str("synthetic.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let count: usize = policy.network_policies().iter().map(|p| p.endpoints.len()).sum();
    assert_eq!(count, 1000);
    // The interpreter walks every endpoint per decision; keep debug builds reasonable.
    let inputs = if cfg!(debug_assertions) { 250 } else { 2000 };
    let tally = check_policy("synthetic.yaml", &policy, inputs, 2);
    assert!(requests(&tally) > inputs, "{tally:#?}");
    eprintln!("{tally:#?}");
}
