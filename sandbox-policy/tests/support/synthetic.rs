//! Synthetic policies and inputs for the decision tests and the policy benchmark
//! (`tests/decisions.rs`, `examples/policy_bench.rs`). Deterministic: everything comes from a
//! fixed-seed SplitMix64, so a failure names an input that can be replayed.

#![allow(dead_code)]

use std::fmt::Write as _;

/// SplitMix64: small, fast and the same on every platform and crate version.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Path globs rules are drawn from.
pub const GLOBS: &[&str] = &[
    "/**",
    "/repos/**",
    "/repos/*/*/pulls",
    "/repos/*/*/actions/secrets/**",
    "/user",
    "/search/*",
    "/**/info/refs",
    "/**/git-upload-pack",
    "/v1/*.json",
    "/api/v*/items/**",
    "/admin/**",
    "/a/**/b",
];

/// Methods rules and requests are drawn from.
pub const METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "get", "*"];

/// Executables inputs are drawn from (`None` is also drawn).
pub const BINARIES: &[&str] =
    &["/usr/bin/git", "/usr/bin/ssh", "/usr/lib/git-core/git-remote-https", "/usr/bin/curl", "/usr/bin//git"];

/// A policy with `endpoints` endpoints (ten per network policy) covering every feature:
/// exact, `*.x` and `**.x` hosts, several ports, `rest` and `tcp`, the three `access` presets,
/// `rules`, `deny_rules`, `enforcement: audit`, `binaries`, and hosts listed by more than one
/// policy (so the first match in file order and `binaries` fall-through matter).
pub fn policy_yaml(endpoints: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::from("version: 1\nnetwork_policies:\n");
    let policies = endpoints.div_ceil(10);
    for p in 0..policies {
        let _ = writeln!(out, "  p{p}:\n    name: p{p}\n    endpoints:");
        for e in 0..10.min(endpoints - p * 10) {
            let n = p * 10 + e;
            // Every 17th endpoint repeats an earlier host, on a different policy.
            let host_n = if n % 17 == 16 { n - 16 } else { n };
            let host = match host_n % 10 {
                0..=5 => format!("svc{host_n}.team{}.example.com", host_n % 13),
                6 | 7 => format!("'*.zone{host_n}.example.net'"),
                _ => format!("'**.deep{host_n}.example.org'"),
            };
            let ports = match rng.below(4) {
                0 => "port: 443".to_owned(),
                1 => "ports: [80, 443]".to_owned(),
                2 => format!("ports: [443, {}]", 8000 + n % 7),
                _ => "port: 8443".to_owned(),
            };
            let _ = write!(out, "      - {{ host: {host}, {ports}");
            if rng.chance(10) {
                out.push_str(", protocol: tcp }\n");
                continue;
            }
            if rng.chance(5) {
                out.push_str(" }\n");
                continue;
            }
            out.push_str(", protocol: rest");
            let mut needs_requests = true;
            match rng.below(20) {
                0..=4 => {
                    out.push_str(", access: full");
                    needs_requests = false;
                }
                5..=8 => out.push_str(", access: read-only"),
                9..=10 => out.push_str(", access: read-write"),
                _ => {
                    out.push_str(", rules: [");
                    for r in 0..1 + rng.below(4) {
                        if r > 0 {
                            out.push_str(", ");
                        }
                        let _ = write!(out, "{{ allow: {{ {} }} }}", request_match(&mut rng));
                    }
                    out.push(']');
                }
            }
            if rng.chance(30) {
                out.push_str(", deny_rules: [");
                for r in 0..1 + rng.below(2) {
                    if r > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{{ {} }}", request_match(&mut rng));
                }
                out.push(']');
                needs_requests = true;
            }
            if rng.chance(20) {
                out.push_str(", enforcement: audit");
                needs_requests = true;
            }
            if !needs_requests && rng.chance(30) {
                out.push_str(", tls: skip");
            }
            out.push_str(" }\n");
        }
        match p % 10 {
            3 => out.push_str("    binaries: [{ path: /usr/bin/git }]\n"),
            7 => out.push_str("    binaries: [{ path: /usr/bin/ssh }, { path: /usr/lib/git-core/git-remote-https }]\n"),
            _ => {}
        }
    }
    out
}

/// `method: M, path: P` with either key sometimes left out.
fn request_match(rng: &mut Rng) -> String {
    let method = *rng.pick(&["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "'*'"]);
    let glob = *rng.pick(GLOBS);
    match rng.below(6) {
        0 => format!("method: {method}"),
        1 => format!("path: '{glob}'"),
        _ => format!("method: {method}, path: '{glob}'"),
    }
}

/// A host a pattern covers (`*.x` and `**.x` get random labels in front).
pub fn host_for(pattern: &str, rng: &mut Rng) -> String {
    if let Some(suffix) = pattern.strip_prefix("**.") {
        let labels: Vec<String> = (0..1 + rng.below(3)).map(|_| label(rng)).collect();
        format!("{}.{suffix}", labels.join("."))
    } else if let Some(suffix) = pattern.strip_prefix("*.") {
        format!("{}.{suffix}", label(rng))
    } else {
        pattern.to_owned()
    }
}

fn label(rng: &mut Rng) -> String {
    rng.pick(&["a", "b1", "x-y", "under_score", "api", "z9"]).to_string()
}

/// A host close to `host`, often one no pattern covers: other case, trailing dot, an extra,
/// missing or empty label, a character no host has, an over-long label, or nothing alike.
pub fn mutate_host(host: &str, rng: &mut Rng) -> String {
    match rng.below(10) {
        8 => format!("unrelated{}.example.com", rng.below(1000)),
        9 => spoil_host(host, 8),
        way => spoil_host(host, way),
    }
}

/// How many ways [`spoil_host`] knows.
pub const HOST_SPOILS: usize = 11;

/// `host` spoilt the `way`-th way (`way < HOST_SPOILS`, else unchanged): other case, trailing
/// dot, an extra, missing or empty label, a port, a label over or at the length limit, a
/// character no host has (the Kelvin sign, which folds to `k`), nothing, a label of `-`.
pub fn spoil_host(host: &str, way: usize) -> String {
    match way {
        0 => host.to_ascii_uppercase(),
        1 => format!("{host}."),
        2 => format!("extra.{host}"),
        3 => host.split_once('.').map_or(host.to_owned(), |(_, rest)| rest.to_owned()),
        4 => format!("a..{host}"),
        5 => format!("{host}:443"),
        6 => format!("{}.{host}", "l".repeat(64)),
        7 => format!("\u{212A}.{host}"),
        8 => String::new(),
        9 => format!("{}.{host}", "l".repeat(63)),
        10 => format!("-.{host}"),
        _ => host.to_owned(),
    }
}

/// A request target for a glob: `**` becomes zero to two segments, `*` a short word; often
/// mangled with dot segments, encodings, doubled slashes or a query.
pub fn target_for(glob: &str, rng: &mut Rng) -> String {
    let mut path = String::new();
    for segment in glob.trim_start_matches('/').split('/') {
        if segment == "**" {
            for _ in 0..rng.below(3) {
                path.push('/');
                path.push_str(word(rng));
            }
        } else {
            path.push('/');
            path.push_str(&segment.replace('*', word(rng)));
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    mangle(path, rng)
}

/// A random target from path words.
pub fn random_target(rng: &mut Rng) -> String {
    let mut path = String::new();
    for _ in 0..1 + rng.below(5) {
        path.push('/');
        path.push_str(word(rng));
    }
    mangle(path, rng)
}

/// Path segments targets are built from (the empty one makes `//`).
const WORDS: &[&str] = &[
    "repos",
    "o",
    "r",
    "actions",
    "secrets",
    "pulls",
    "user",
    "search",
    "info",
    "refs",
    "git-upload-pack",
    "v1",
    "x.json",
    "api",
    "v2",
    "items",
    "admin",
    "a",
    "b",
    "",
];

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len())]
}

fn mangle(path: String, rng: &mut Rng) -> String {
    let mut path = match rng.below(14) {
        0 => format!("/x/..{path}"),
        1 => format!("/%2e{path}"),
        2 => format!("/x/%2E%2e{path}"),
        3 => path.replacen('/', "//", 1),
        4 => format!("{path}/."),
        5 => format!("{path}%2Fz"),
        6 => format!("/..{path}"),
        7 => path.replacen('s', "%73", 1),
        8 => format!("{path}/"),
        9 => format!("{path}\\x"),
        _ => path,
    };
    // A `;parameter` on the segment before the last, which servers drop and rules do not.
    if rng.chance(30) {
        if let Some(at) = path.rfind('/').filter(|at| *at > 0) {
            path.insert_str(at, ";v=1");
        }
    }
    if rng.chance(20) {
        path.push_str("?page=2&q=a%2Fb");
    }
    path
}
