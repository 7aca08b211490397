//! Differential test: the hot-path [`Decider`] and the Rego policy ([`RegoPolicy`]) must give
//! the same verdict (allow, audit, policy, endpoint, rule and reason) on every input.
//!
//! Inputs are generated with a fixed seed over the default policy, every example policy, a
//! policy written to exercise each feature, and a generated 1,000-endpoint policy; and, with a
//! new seed on every run, over small policies proptest generates ([`generated`]), which a failure
//! prints shrunk. Rego is the source of truth: when this fails, `decide.rs` (or the data in
//! `data.rs`) is what is wrong, unless `policies/sandbox.rego` changed on purpose.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::convert::Infallible;

use sandbox_policy::readings::{judge_all, readings, Reading};
use sandbox_policy::{
    load, parse_str, CompiledPolicy, Decider, EndpointRef, NetworkInput, NetworkVerdict, RegoPolicy, RequestInput,
    RequestVerdict,
};
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

/// The two evaluators of one policy, compared input by input; every method panics, naming the
/// input, when they disagree (or when a cached verdict differs from the first).
struct Pair {
    label: String,
    decider: Decider,
    rego: RegoPolicy,
}

impl Pair {
    fn new(label: &str, policy: &CompiledPolicy) -> Self {
        let rego = RegoPolicy::new(policy).unwrap_or_else(|e| panic!("{label}: {e}"));
        Pair { label: label.to_owned(), decider: Decider::new(policy), rego }
    }

    /// The network verdict both give for `input`.
    fn network(&self, input: &NetworkInput<'_>, case: &str) -> NetworkVerdict {
        let (label, NetworkInput { host, port, binary }) = (&self.label, *input);
        let ours = self.decider.network(host, port, binary);
        let theirs = self.rego.decide_network(input).unwrap_or_else(|e| panic!("{label} {case}: {e}"));
        assert_eq!(ours, theirs, "{label} {case}: network {host:?}:{port} binary {binary:?}");
        assert_eq!(self.decider.network(host, port, binary), ours, "{label} {case}: cached network verdict");
        ours
    }

    /// The verdict both give on the request as sent, through the endpoint `network` was allowed to.
    fn request(
        &self,
        endpoint: EndpointRef,
        network: NetworkInput<'_>,
        method: &str,
        target: &str,
        case: &str,
    ) -> RequestVerdict {
        let label = &self.label;
        let ours = self.decider.request(endpoint, method, target);
        let theirs = self
            .rego
            .decide_request(&RequestInput { network, method, target })
            .unwrap_or_else(|e| panic!("{label} {case}: {e}"));
        let (host, port, binary) = (network.host, network.port, network.binary);
        assert_eq!(ours, theirs, "{label} {case}: {method} {target:?} on {host}:{port} binary {binary:?}");
        assert_eq!(self.decider.request(endpoint, method, target), ours, "{label} {case}: cached");
        ours
    }

    /// The verdict both give on every reading the proxy judges (method overrides,
    /// `;parameters`, trailing slash) taken together, with the reading that gave it; `None` when
    /// the method is not canonical (the proxy refuses the request before any reading).
    fn readings(
        &self,
        endpoint: EndpointRef,
        network: NetworkInput<'_>,
        method: &str,
        overrides: &[&str],
        target: &str,
        case: &str,
    ) -> Option<(RequestVerdict, &'static str)> {
        let label = &self.label;
        let all = readings(method, overrides.iter().copied(), target)?;
        let judge_ours = |r: &Reading<'_>| Ok::<_, Infallible>(self.decider.request(endpoint, &r.method, &r.target));
        let Ok(ours) = judge_all(&all, judge_ours, RequestVerdict::outcome);
        let judge_theirs =
            |r: &Reading<'_>| self.rego.decide_request(&RequestInput { network, method: &r.method, target: &r.target });
        let theirs =
            judge_all(&all, judge_theirs, RequestVerdict::outcome).unwrap_or_else(|e| panic!("{label} {case}: {e}"));
        let (host, port) = (network.host, network.port);
        assert_eq!(
            ours, theirs,
            "{label} {case}: readings of {method} {target:?} (overrides {overrides:?}) on {host}:{port}"
        );
        ours
    }
}

/// Checks `inputs` generated inputs against `policy`; returns the verdict kinds compared.
fn check_policy(label: &str, policy: &CompiledPolicy, inputs: usize, seed: u64) -> Tally {
    let mut tally = Tally::new();
    let pair = Pair::new(label, policy);
    let endpoints: Vec<(String, Vec<u16>, Vec<String>)> = policy
        .network_policies()
        .iter()
        .flat_map(|p| &p.endpoints)
        .map(|e| {
            let globs = match &e.inspection {
                sandbox_policy::Inspection::Http(http) => {
                    let mut globs: Vec<String> = http.deny.iter().map(|r| r.path.clone()).collect();
                    if let sandbox_policy::AllowedRequests::Only(rules) = &http.allow {
                        globs.extend(rules.iter().map(|r| r.path.clone()));
                    }
                    globs
                }
                sandbox_policy::Inspection::Tunnel => Vec::new(),
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
        let case = format!("#{i}");
        let ours = pair.network(&network_input, &case);
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
            let ours = pair.request(endpoint, network_input, method, &target, &case);
            let audit = if ours.audit { " audit" } else { "" };
            let kind = format!("request {}{audit}", rule_kind(&ours.rule));
            *tally.entry(kind).or_default() += 1;

            // Every reading the proxy judges, and the verdict they make together, agree as well.
            let overrides: Vec<&str> = if rng.chance(30) { vec![*rng.pick(synthetic::METHODS)] } else { Vec::new() };
            if let Some((verdict, reading)) = pair.readings(endpoint, network_input, method, &overrides, &target, &case)
            {
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
    let pair = Pair::new("features.yaml", &policy);
    let network = NetworkInput { host: "api.github.com", port: 443, binary: None };
    let endpoint = pair.network(&network, "").endpoint_ref.expect("an endpoint");
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
                for overrides in [&[][..], &["DELETE"], &["get"]] {
                    let ours = pair.readings(endpoint, network, method, overrides, target, "");
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

/// Generated policies (issue 16): endpoints with exact, `*.` and `**.` hosts over a few shared
/// labels, ports, `tcp` and `rest`, presets, allow and deny rules whose methods and globs hold
/// wildcards, regex metacharacters, encodings and dot segments, `enforcement: audit`,
/// `tls: skip`, `binaries:` and credential bindings; and generated connections and requests
/// (hosts near a pattern, paths near a glob or made of awkward pieces, every method, method
/// overrides). The compiled decider and the Rego policy must agree on every reading of each.
mod generated {
    use std::fmt::Write as _;

    use proptest::prelude::*;
    use proptest::sample::select;

    use super::{parse_str, synthetic, NetworkInput, Pair};

    /// Labels host patterns and hosts are made of (shared, so patterns overlap).
    const LABELS: [&str; 6] = ["a", "b", "c-d", "e_f", "example", "Ex"];
    const PORTS: [u16; 4] = [80, 443, 8443, 5432];
    /// Methods of rules (`*` is any).
    const RULE_METHODS: [&str; 8] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PROPFIND", "*"];
    /// Methods of requests and overrides: canonical, lower-case, odd.
    const METHODS: [&str; 10] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "PROPFIND", "get", "M-X"];
    /// Plain path segments of globs and targets.
    const PLAIN: [&str; 6] = ["a", "b", "api", "v1", "x.json", "A"];
    /// Awkward ones: regex metacharacters, encodings, parameters, dot segments, empty (`//`),
    /// characters a normalised path may not hold.
    const ODD: [&str; 30] = [
        "a;p=1", "a%3Bp", ".", "..", "%2e", "%2E%2e", "%2f", "%5C", "%41", "%", "~u", "\u{e9}", "%C3%A9", "a+b", "[x]",
        "(y)", "$", "^", "x|y", "{2}", "", "\\", "%20", "%23", "%3F", "%00", ".;p", "..%3Bp", "%2E;", "%7F",
    ];
    /// Wildcard segments of globs.
    const WILD: [&str; 9] = ["*", "**", "a*", "*.json", "*a*", "v*", "**x", "a*a", "*.*"];
    const BINARIES: [&str; 3] = ["/usr/bin/git", "/usr/bin/ssh", "/usr/bin/curl"];

    #[derive(Debug, Clone)]
    struct Rule {
        method: Option<&'static str>,
        /// `None`: no `path:` key.
        path: Option<String>,
    }

    #[derive(Debug, Clone)]
    enum Kind {
        /// No `protocol:` (a tcp endpoint).
        Implicit,
        Tcp,
        Access(&'static str),
        Rules(Vec<Rule>),
    }

    #[derive(Debug, Clone)]
    struct Endpoint {
        host: String,
        ports: Vec<u16>,
        kind: Kind,
        deny: Vec<Rule>,
        audit: Option<bool>,
        tls_skip: bool,
    }

    #[derive(Debug, Clone)]
    struct Policy {
        /// Each network policy: endpoints, and `binaries:` when some.
        policies: Vec<(Vec<Endpoint>, Vec<&'static str>)>,
        /// A credential bound to this host pattern (the decisions must not depend on it).
        credential: Option<String>,
    }

    fn host_pattern() -> impl Strategy<Value = String> {
        let wildcard = select(&["", "", "*.", "**."][..]);
        (wildcard, prop::collection::vec(select(&LABELS[..]), 1..3))
            .prop_map(|(w, labels)| format!("{w}{}", labels.join(".")))
    }

    fn glob() -> impl Strategy<Value = String> {
        let segment =
            prop_oneof![4 => select(&PLAIN[..]), 1 => select(&ODD[..]), 2 => select(&WILD[..]), 2 => Just("**")];
        prop_oneof![
            1 => select(&["*", "**", "/", "/**"][..]).prop_map(str::to_owned),
            6 => (prop::collection::vec(segment, 1..5), any::<bool>())
                .prop_map(|(segments, slash)| format!("/{}{}", segments.join("/"), if slash { "/" } else { "" })),
        ]
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (prop::option::of(select(&RULE_METHODS[..])), prop::option::of(glob()))
            .prop_map(|(method, path)| Rule { method, path })
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        let kind = prop_oneof![
            1 => Just(Kind::Implicit),
            1 => Just(Kind::Tcp),
            3 => select(&["read-only", "read-write", "full"][..]).prop_map(Kind::Access),
            5 => prop::collection::vec(rule(), 1..4).prop_map(Kind::Rules),
        ];
        (
            host_pattern(),
            prop::collection::vec(select(&PORTS[..]), 1..3),
            kind,
            prop::collection::vec(rule(), 0..3),
            prop::option::of(any::<bool>()),
            any::<bool>(),
        )
            .prop_map(|(host, ports, kind, deny, audit, tls_skip)| Endpoint {
                host,
                ports,
                kind,
                deny,
                audit,
                tls_skip,
            })
    }

    fn policy() -> impl Strategy<Value = Policy> {
        let binaries = prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(select(&BINARIES[..]), 1..3)];
        let one = (prop::collection::vec(endpoint(), 1..4), binaries);
        (prop::collection::vec(one, 1..4), prop::option::of(host_pattern()))
            .prop_map(|(policies, credential)| Policy { policies, credential })
    }

    /// A rule as a YAML flow mapping.
    fn rule_yaml(rule: &Rule) -> String {
        let mut keys = Vec::new();
        if let Some(m) = rule.method {
            keys.push(format!("method: '{m}'"));
        }
        if let Some(p) = &rule.path {
            keys.push(format!("path: '{}'", p.replace('\'', "''")));
        }
        format!("{{ {} }}", keys.join(", "))
    }

    impl Policy {
        /// The policy file; keys the parser would refuse together are left out.
        fn yaml(&self) -> String {
            let mut out = String::from("version: 1\nnetwork_policies:\n");
            for (pi, (endpoints, binaries)) in self.policies.iter().enumerate() {
                let _ = writeln!(out, "  p{pi}:\n    endpoints:");
                for e in endpoints {
                    let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
                    let _ = write!(out, "      - {{ host: '{}', ports: [{}]", e.host, ports.join(", "));
                    let rest = match &e.kind {
                        Kind::Implicit => false,
                        Kind::Tcp => {
                            out.push_str(", protocol: tcp");
                            false
                        }
                        Kind::Access(access) => {
                            let _ = write!(out, ", protocol: rest, access: {access}");
                            true
                        }
                        Kind::Rules(rules) => {
                            let rules: Vec<String> =
                                rules.iter().map(|r| format!("{{ allow: {} }}", rule_yaml(r))).collect();
                            let _ = write!(out, ", protocol: rest, rules: [{}]", rules.join(", "));
                            true
                        }
                    };
                    if rest && !e.deny.is_empty() {
                        let deny: Vec<String> = e.deny.iter().map(rule_yaml).collect();
                        let _ = write!(out, ", deny_rules: [{}]", deny.join(", "));
                    }
                    match e.audit {
                        Some(audit) if rest => {
                            out.push_str(if audit { ", enforcement: audit" } else { ", enforcement: enforce" })
                        }
                        _ => {}
                    }
                    let skippable =
                        matches!(e.kind, Kind::Access("full")) && e.deny.is_empty() && e.audit != Some(true);
                    if e.tls_skip && skippable {
                        out.push_str(", tls: skip");
                    }
                    out.push_str(" }\n");
                }
                if !binaries.is_empty() {
                    let list: Vec<String> = binaries.iter().map(|b| format!("{{ path: {b} }}")).collect();
                    let _ = writeln!(out, "    binaries: [{}]", list.join(", "));
                }
            }
            if let Some(host) = &self.credential {
                let _ = writeln!(out, "credentials:\n  TOKEN: {{ hosts: ['{host}'] }}");
            }
            out
        }

        fn endpoints(&self) -> Vec<&Endpoint> {
            self.policies.iter().flat_map(|(endpoints, _)| endpoints).collect()
        }
    }

    /// How a connection is made: which endpoint it aims at, the labels that stand for a
    /// wildcard, how the host is then spoilt, which port and executable.
    #[derive(Debug, Clone)]
    struct Connection {
        endpoint: usize,
        fill: Vec<&'static str>,
        spoil: u8,
        port: usize,
        binary: Option<&'static str>,
        requests: Vec<Request>,
    }

    /// A request: a target near one of the endpoint's globs (or made of pieces), spoilt.
    #[derive(Debug, Clone)]
    struct Request {
        method: &'static str,
        overrides: Vec<&'static str>,
        glob: Option<usize>,
        words: Vec<&'static str>,
        spoil: u8,
        query: bool,
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop_oneof![4 => select(&PLAIN[..]), 1 => select(&ODD[..])]
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            select(&METHODS[..]),
            prop::collection::vec(select(&METHODS[..]), 0..2),
            prop::option::of(any::<usize>()),
            prop::collection::vec(segment(), 0..4),
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(method, overrides, glob, words, spoil, query)| Request {
                method,
                overrides,
                glob,
                words,
                spoil,
                query,
            })
    }

    fn connection() -> impl Strategy<Value = Connection> {
        (
            any::<usize>(),
            prop::collection::vec(select(&["x", "a", "b-c", "y_z", "9"][..]), 1..3),
            any::<u8>(),
            any::<usize>(),
            prop::option::of(select(&BINARIES[..])),
            prop::collection::vec(request(), 1..5),
        )
            .prop_map(|(endpoint, fill, spoil, port, binary, requests)| Connection {
                endpoint,
                fill,
                spoil,
                port,
                binary,
                requests,
            })
    }

    /// The host a connection asks for: one the pattern covers, often spoilt.
    fn host(pattern: &str, c: &Connection) -> String {
        let (depth, suffix) = match (pattern.strip_prefix("**."), pattern.strip_prefix("*.")) {
            (Some(suffix), _) => (c.fill.len(), suffix),
            (None, Some(suffix)) => (1, suffix),
            (None, None) => (0, pattern),
        };
        let mut labels: Vec<String> = c.fill.iter().take(depth).map(|l| (*l).to_owned()).collect();
        labels.push(suffix.to_owned());
        let host = labels.join(".");
        // A third of them spoilt.
        synthetic::spoil_host(&host, usize::from(c.spoil) % (3 * synthetic::HOST_SPOILS))
    }

    /// The target a request sends: a glob with its wildcards filled in, or the words alone.
    fn target(globs: &[String], r: &Request) -> String {
        let mut words = r.words.iter().copied().cycle();
        let mut path = String::new();
        match r.glob.filter(|_| !globs.is_empty()).map(|g| &globs[g % globs.len()]) {
            Some(glob) if glob.starts_with('/') => {
                for segment in glob[1..].split('/') {
                    if segment == "**" {
                        // Zero or more segments.
                        for w in &r.words {
                            path.push('/');
                            path.push_str(w);
                        }
                    } else {
                        path.push('/');
                        path.push_str(&segment.replace('*', words.next().unwrap_or("w")));
                    }
                }
            }
            _ => {
                for w in &r.words {
                    path.push('/');
                    path.push_str(w);
                }
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        let mut path = match r.spoil % 24 {
            0 => format!("/x/..{path}"),
            1 => format!("/%2e{path}"),
            2 => path.replacen('/', "//", 1),
            3 => format!("{path}/."),
            4 => format!("{path}/"),
            5 => path.replacen('a', "%61", 1),
            6 => path.replacen('/', "/;q/", 1),
            7 => format!("{path}#frag"),
            8 => format!("{path}%2Fz"),
            _ => path,
        };
        if r.query {
            path.push_str("?page=2&q=a%2Fb");
        }
        path
    }

    /// The globs of an endpoint's rules, to aim requests at.
    fn globs(e: &Endpoint) -> Vec<String> {
        let rules = match &e.kind {
            Kind::Rules(rules) => rules.as_slice(),
            _ => &[],
        };
        rules.iter().chain(&e.deny).filter_map(|r| r.path.clone()).collect()
    }

    proptest! {
        // regorus evaluates slowly (more so in debug builds): 96 cases take a few seconds in
        // `cargo test`; PROPTEST_CASES=3000 searches for two minutes.
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn decider_agrees_with_rego_on_generated_policies(
            policy in policy(),
            connections in prop::collection::vec(connection(), 1..6),
        ) {
            let yaml = policy.yaml();
            let compiled = parse_str("generated.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            let pair = Pair::new(&format!("generated policy\n{yaml}\n"), &compiled);
            let endpoints = policy.endpoints();
            for (i, c) in connections.iter().enumerate() {
                let e = endpoints[c.endpoint % endpoints.len()];
                let host = host(&e.host, c);
                // Mostly one of its ports, sometimes another.
                let port = *e.ports.get(c.port % (4 * e.ports.len() + 1) / 4).unwrap_or(&8080);
                let network = NetworkInput { host: &host, port, binary: c.binary.map(std::path::Path::new) };
                let case = format!("connection {i}");
                let Some(endpoint) = pair.network(&network, &case).endpoint_ref else {
                    continue;
                };
                // The globs of the endpoint that allowed it (which may be another than aimed at).
                let globs = endpoints.get(ordinal(&compiled, endpoint)).map(|e| globs(e)).unwrap_or_default();
                for r in &c.requests {
                    let target = target(&globs, r);
                    pair.request(endpoint, network, r.method, &target, &case);
                    pair.readings(endpoint, network, r.method, &r.overrides, &target, &case);
                }
            }
        }
    }

    /// Cases to run: `PROPTEST_CASES`, else 96.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96)
    }

    /// The position in file order of the endpoint `endpoint` names.
    fn ordinal(policy: &sandbox_policy::CompiledPolicy, endpoint: sandbox_policy::EndpointRef) -> usize {
        let before: usize =
            policy.network_policies().iter().take(endpoint.policy as usize).map(|p| p.endpoints.len()).sum();
        before + endpoint.endpoint as usize
    }
}

/// `leash policy eval` prints what the proxy's decider decides; its JSON must be, field for
/// field, what the Rego reference gives for the same input: allowed and refused connections,
/// refused executables, requests through allowed and refused connections, paths without a
/// canonical form, and a method or a path alone.
#[test]
fn policy_eval_prints_the_deciders_verdict_in_the_references_shape() {
    let policy = parse_str("features.yaml", FEATURES).unwrap_or_else(|e| panic!("{e}"));
    let decider = Decider::new(&policy);
    let hosts = ["api.github.com", "github.com", "x.githubusercontent.com", "db.example", "evil.example", "BAD HOST"];
    let binaries = [None, Some(Path::new("/usr/bin/git")), Some(Path::new("/usr/bin/curl"))];
    let requests = [
        (None, None),
        (Some("GET"), Some("/repos/o/r")),
        (Some("DELETE"), Some("/repos/o/r")),
        (Some("GET"), Some("/admin/x")),
        (Some("GET"), Some("/a/../admin")),
        (Some("POST"), None),
        (None, Some("/user")),
    ];
    let mut kinds = BTreeMap::new();
    for host in hosts {
        for port in [22, 443, 5432] {
            for binary in binaries {
                for (method, path) in requests {
                    let ours = decider.eval_json(host, port, method, path, binary);
                    let theirs = sandbox_policy::rego::eval_json(&policy, host, port, method, path, binary)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(ours, theirs, "{host}:{port} {method:?} {path:?} from {binary:?}");
                    let kind = (ours["network"]["allow"] == true, ours["request"]["allow"].as_bool());
                    *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
                }
            }
        }
    }
    // Connections allowed and refused, and requests allowed and refused through allowed ones.
    for kind in ["(true, None)", "(false, None)", "(true, Some(true))", "(true, Some(false))", "(false, Some(false))"] {
        assert!(kinds.contains_key(kind), "no case of {kind}: {kinds:?}");
    }
}
