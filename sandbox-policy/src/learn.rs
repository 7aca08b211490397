//! What a run did on the network → the text of a policy that allows exactly that
//! (`leash run --learn`, `leash policy suggest`).
//!
//! Each host becomes one `network_policies:` entry; its ports become endpoints (ports with the
//! same settings share one, `ports: [..]`). An endpoint whose requests were seen is
//! `protocol: rest` with `access: read-only` when every request was GET, HEAD or OPTIONS, else
//! one `allow` rule per method and path seen (queries dropped, id-like segments — numbers, hex
//! ids, UUIDs, long tokens — written `**`); one only tunnelled is `protocol: tcp`. When one
//! executable made every connection to a host, the entry names it in `binaries:`. Every entry
//! carries a comment saying what it was learned from.
//!
//! A learning run also learns the files the agent opened and the programs it ran
//! (`learn_files.rs`), given with [`Learned::with_files`]; an audit log has no such records, so
//! `leash policy suggest` says at the top of the file that they were not learned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::hosts::IpNetwork;
use super::learn_files::{quote, LearnedFiles};
use super::normalize::normalize;
use super::readings::readings;

/// Methods that make an endpoint `access: read-only` when they are all it saw.
const READ_ONLY: [&str; 3] = ["GET", "HEAD", "OPTIONS"];
/// Segments at least this long made of letters and digits, with both, are taken for tokens.
const TOKEN_LEN: usize = 20;

/// One thing the agent did through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub host: String,
    pub port: u16,
    /// The executable that made the connection, when known.
    pub binary: Option<PathBuf>,
    pub seen: Seen,
}

/// What was seen of one connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A connection tunnelled without inspection.
    Tunnel { allowed_ips: Vec<IpNetwork> },
    /// A connection whose requests were inspected (each request is its own observation).
    Inspected { allowed_ips: Vec<IpNetwork> },
    /// A connection refused at CONNECT, so no request was seen (from an audit log).
    Refused,
    /// One request: its method, target as sent (the query is dropped here), the values of its
    /// method-override headers, and the credentials whose placeholders it carried.
    Request { method: String, target: String, overrides: Vec<String>, credentials: Vec<String> },
    /// Not learned, and why (a private address without `--learn-allow-private`).
    NotLearned { why: String },
}

/// What is known about one host:port.
#[derive(Debug, Default)]
struct Endpoint {
    tunnels: usize,
    inspected: usize,
    refused: usize,
    requests: usize,
    binaries: BTreeSet<Option<PathBuf>>,
    allowed_ips: BTreeSet<String>,
    rules: BTreeSet<(String, String)>,
    first_request: Option<String>,
}

/// Everything learned, by host then port, plus the credentials used and what was not learned.
#[derive(Debug, Default)]
pub struct Learned {
    hosts: BTreeMap<String, BTreeMap<u16, Endpoint>>,
    /// Credential name → hosts it was sent to.
    credentials: BTreeMap<String, BTreeSet<String>>,
    not_learned: BTreeMap<String, String>,
    /// Files and programs, or why they were not learned (`None`: not asked, an audit log).
    files: Option<Result<LearnedFiles, String>>,
}

impl Learned {
    /// Folds `observations` together.
    pub fn from_observations<'a>(observations: impl IntoIterator<Item = &'a Observation>) -> Self {
        let mut learned = Self::default();
        for o in observations {
            if let Seen::NotLearned { why } = &o.seen {
                learned.not_learned.entry(format!("{}:{}", o.host, o.port)).or_insert_with(|| why.clone());
                continue;
            }
            let e = learned.hosts.entry(o.host.clone()).or_default().entry(o.port).or_default();
            match &o.seen {
                Seen::Tunnel { allowed_ips } | Seen::Inspected { allowed_ips } => {
                    if matches!(o.seen, Seen::Tunnel { .. }) {
                        e.tunnels += 1;
                    } else {
                        e.inspected += 1;
                    }
                    e.allowed_ips.extend(allowed_ips.iter().map(ToString::to_string));
                    e.binaries.insert(o.binary.clone());
                }
                Seen::Refused => {
                    e.refused += 1;
                    e.binaries.insert(o.binary.clone());
                }
                Seen::Request { method, target, overrides, credentials } => {
                    e.requests += 1;
                    e.binaries.insert(o.binary.clone());
                    let rules = request_rules(method, target, overrides);
                    if e.first_request.is_none() {
                        e.first_request = rules.first().map(|(m, p)| format!("{m} {p}"));
                    }
                    e.rules.extend(rules);
                    for name in credentials {
                        learned.credentials.entry(name.clone()).or_default().insert(o.host.clone());
                    }
                }
                Seen::NotLearned { .. } => {}
            }
        }
        learned
    }

    /// Adds what the run did with files (`Err`: why that could not be learned).
    pub fn with_files(mut self, files: Result<LearnedFiles, String>) -> Self {
        self.files = Some(files);
        self
    }

    /// Whether nothing at all was learned.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.not_learned.is_empty()
    }

    /// The host:port pairs learned, for callers that treat some of them apart (`--merge`).
    pub fn endpoints(&self) -> Vec<(String, u16)> {
        self.hosts.iter().flat_map(|(h, ports)| ports.keys().map(move |p| (h.clone(), *p))).collect()
    }

    /// Removes `host:port` and returns its request rules as `(method, path)`.
    pub fn take(&mut self, host: &str, port: u16) -> Vec<(String, String)> {
        let Some(ports) = self.hosts.get_mut(host) else { return vec![] };
        let rules = ports.remove(&port).map(|e| e.rules.into_iter().collect()).unwrap_or_default();
        if ports.is_empty() {
            self.hosts.remove(host);
        }
        rules
    }

    /// A whole policy document: header comments, `version`, `network_policies`, `credentials`.
    pub fn document(&self, source: &str) -> String {
        let mut out = String::new();
        let files = self.files.as_ref().and_then(|f| f.as_ref().ok());
        let _ = match files {
            Some(_) => writeln!(
                out,
                "# Learned by leash from {source}: a policy that allows what the agent did on the network,\n\
                 # the files it opened and the programs it ran."
            ),
            None => {
                writeln!(
                    out,
                    "# Learned by leash from {source}: a policy that allows what the agent did on the network."
                )
            }
        };
        match &self.files {
            Some(Err(why)) => {
                let _ =
                    writeln!(out, "# Not learned: files and programs (`filesystem_policy:`, `kernel.exec`): {why}.");
            }
            None => out.push_str(NOT_LEARNED_NOTE),
            Some(Ok(_)) => {}
        }
        out.push_str("# Each entry says what it was learned from; review them before use.\n");
        for (target, why) in &self.not_learned {
            let _ = writeln!(out, "# not learned: {target}: {why}");
        }
        out.push_str("version: 1\n");
        if self.hosts.is_empty() {
            out.push_str("network_policies: {}\n");
        } else {
            out.push_str("network_policies:\n");
            out.push_str(&self.network_policies("  ", &BTreeSet::new()));
        }
        if !self.credentials.is_empty() {
            out.push_str("# credentials whose placeholders the agent sent, bound to the hosts it sent them to\n");
            out.push_str("credentials:\n");
            for (name, hosts) in &self.credentials {
                let hosts: Vec<String> = hosts.iter().map(|h| quote(h)).collect();
                let _ = writeln!(out, "  {name}: {{ hosts: [{}] }}", hosts.join(", "));
            }
        }
        if let Some(files) = files {
            files.write(&mut out);
        }
        out
    }

    /// The `network_policies:` entries, each key at `indent`, none named as one in `taken`.
    pub fn network_policies(&self, indent: &str, taken: &BTreeSet<String>) -> String {
        let mut used = taken.clone();
        let mut out = String::new();
        for (host, ports) in &self.hosts {
            let all: BTreeSet<&Option<PathBuf>> = ports.values().flat_map(|e| e.binaries.iter()).collect();
            let one_binary = match all.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(b)] => Some(b.clone()),
                _ => None,
            };
            let per_port_binaries = one_binary.is_none()
                && ports.len() > 1
                && ports.values().all(|e| e.binaries.len() == 1 && e.binaries.iter().all(Option::is_some));
            if per_port_binaries {
                for (port, e) in ports {
                    let binary = e.binaries.iter().next().cloned().flatten();
                    let single = BTreeMap::from([(*port, e)]);
                    let name = unique_name(&format!("{host}_{port}"), &mut used);
                    write_policy(&mut out, indent, &name, host, &single, binary.as_ref());
                }
            } else {
                let name = unique_name(host, &mut used);
                let ports: BTreeMap<u16, &Endpoint> = ports.iter().map(|(p, e)| (*p, e)).collect();
                write_policy(&mut out, indent, &name, host, &ports, one_binary.as_ref());
            }
        }
        out
    }
}

/// The header line about what an audit log cannot teach.
const NOT_LEARNED_NOTE: &str = "\
# Not learned: files and programs (`filesystem_policy:`, `kernel.exec`): an audit log records
# only denials. `leash run --learn` learns them; or add them by hand (see the README).
";

/// One `network_policies:` entry for `host` with its `ports`.
fn write_policy(
    out: &mut String,
    indent: &str,
    name: &str,
    host: &str,
    ports: &BTreeMap<u16, &Endpoint>,
    binary: Option<&PathBuf>,
) {
    // key, its keys, the endpoint list's items, an item's keys
    let (i1, i2, i3, i4) =
        (indent.to_owned(), format!("{indent}  "), format!("{indent}    "), format!("{indent}      "));
    let _ = writeln!(out, "{i1}{name}:");
    let _ = writeln!(out, "{i2}name: {name}");
    let _ = writeln!(out, "{i2}endpoints:");
    // Ports with the same settings share an endpoint.
    let mut bodies: Vec<(Vec<u16>, String, Vec<String>)> = Vec::new();
    for (port, e) in ports {
        let body = endpoint_body(e, *port, &i4);
        let comment = learned_from(*port, e);
        match bodies.iter_mut().find(|(_, b, _)| *b == body) {
            Some((ports, _, comments)) => {
                ports.push(*port);
                comments.push(comment);
            }
            None => bodies.push((vec![*port], body, vec![comment])),
        }
    }
    for (ports, body, comments) in bodies {
        for c in comments {
            let _ = writeln!(out, "{i3}# {c}");
        }
        let _ = writeln!(out, "{i3}- host: {}", quote(host));
        match ports.as_slice() {
            [one] => {
                let _ = writeln!(out, "{i4}port: {one}");
            }
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                let _ = writeln!(out, "{i4}ports: [{}]", list.join(", "));
            }
        }
        out.push_str(&body);
    }
    if let Some(b) = binary {
        let _ = writeln!(out, "{i2}# every connection to {host} was made by this executable");
        let _ = writeln!(out, "{i2}binaries: [{{ path: {} }}]", quote(&b.display().to_string()));
    }
}

/// An endpoint's keys after `host` and `port`, each line at `indent`.
fn endpoint_body(e: &Endpoint, port: u16, indent: &str) -> String {
    let mut out = String::new();
    let seen_http = e.requests > 0 || e.inspected > 0;
    if !seen_http && (e.tunnels > 0 || !HTTP_PORTS.contains(&port)) {
        let _ = writeln!(out, "{indent}protocol: tcp");
    } else {
        let _ = writeln!(out, "{indent}protocol: rest");
        let read_only = e.rules.iter().all(|(m, _)| READ_ONLY.contains(&m.as_str()));
        if read_only {
            let _ = writeln!(out, "{indent}access: read-only");
        } else {
            let _ = writeln!(out, "{indent}rules:");
            for (method, path) in &e.rules {
                let _ = writeln!(out, "{indent}  - allow: {{ method: {}, path: {} }}", quote(method), quote(path));
            }
        }
    }
    if !e.allowed_ips.is_empty() {
        let ips: Vec<String> = e.allowed_ips.iter().map(|ip| quote(ip)).collect();
        let _ = writeln!(out, "{indent}allowed_ips: [{}]", ips.join(", "));
    }
    out
}

/// Ports taken for HTTP(S) when no request was seen (a CONNECT refused in an audit log).
const HTTP_PORTS: [u16; 4] = [80, 443, 8080, 8443];

/// The comment saying what an endpoint was learned from.
fn learned_from(port: u16, e: &Endpoint) -> String {
    let mut parts = Vec::new();
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if e.tunnels > 0 {
        parts.push(count(e.tunnels, "tunnelled connection"));
    }
    if e.inspected > 0 {
        parts.push(count(e.inspected, "inspected connection"));
    }
    if e.refused > 0 {
        parts.push(count(e.refused, "refused CONNECT"));
    }
    if e.requests > 0 {
        parts.push(count(e.requests, "request"));
    }
    let mut text = format!("port {port}: learned from {}", parts.join(", "));
    if let Some(first) = &e.first_request {
        let _ = write!(text, "; first request {first}");
    }
    if e.requests == 0 && e.refused > 0 && e.tunnels == 0 && e.inspected == 0 {
        text.push_str("; refused at CONNECT, so no request was seen: protocol and access are guessed from the port");
    }
    if !e.allowed_ips.is_empty() {
        text.push_str("; allowed_ips: the private addresses it was let reach");
    }
    text
}

/// The `(method, path glob)` rules a request needs: one per reading the proxy judges, so the
/// request passes under every one of them. Paths that do not normalise are left out (the proxy
/// refuses them whatever the rules say).
pub fn request_rules(method: &str, target: &str, overrides: &[String]) -> Vec<(String, String)> {
    let Some(all) = readings(method, overrides.iter().map(String::as_str), target) else { return vec![] };
    let mut out: Vec<(String, String)> = Vec::new();
    for r in all {
        // Only a method a policy names as one: not `*` (every method), not `M-SEARCH` (the
        // file must parse), not whatever else the agent put in an override or `_method`.
        if r.method == "*" || r.method.parse::<crate::document::Method>().is_err() {
            continue;
        }
        let Ok(normalized) = normalize(&r.target) else { continue };
        let rule = (r.method.into_owned(), generalize(&normalized.path));
        if !out.contains(&rule) {
            out.push(rule);
        }
    }
    out
}

/// A normalised path with each run of id-like segments replaced by `**`.
pub fn generalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 && is_id_like(segment) {
            if out.last() != Some(&"**") {
                out.push("**");
            }
        } else {
            out.push(segment);
        }
    }
    let joined = out.join("/");
    if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    }
}

/// Numbers, hex ids (7+ digits, as git abbreviates), UUIDs, long letter-and-digit tokens, and
/// anything a glob would misread (`*`) or that holds a credential placeholder.
fn is_id_like(segment: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let hex_id = segment.len() >= 7 && hex(segment) && segment.bytes().any(|b| b.is_ascii_digit());
    let uuid =
        segment.len() == 36 && segment.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && { segment.split('-').all(hex) };
    let alnum = segment.bytes().filter(|b| b.is_ascii_alphanumeric()).count();
    let token = alnum >= TOKEN_LEN
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment.bytes().any(|b| b.is_ascii_alphabetic());
    digits || hex_id || uuid || token || segment.contains('*') || segment.contains("resolve:env:")
}

/// A network policy key made from `base`, not yet in `used` (which it joins).
fn unique_name(base: &str, used: &mut BTreeSet<String>) -> String {
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "_-.".contains(c) { c } else { '_' }).collect();
    let mut name = clean.clone();
    let mut n = 2;
    while used.contains(&name) {
        name = format!("{clean}_{n}");
        n += 1;
    }
    used.insert(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, method: &str, target: &str, binary: &str) -> Observation {
        Observation {
            host: host.into(),
            port: 443,
            binary: Some(binary.into()),
            seen: Seen::Request {
                method: method.into(),
                target: target.into(),
                overrides: vec![],
                credentials: vec![],
            },
        }
    }

    fn inspected(host: &str, port: u16, binary: Option<&str>) -> Observation {
        Observation {
            host: host.into(),
            port,
            binary: binary.map(PathBuf::from),
            seen: Seen::Inspected { allowed_ips: vec![] },
        }
    }

    #[test]
    fn id_like_segments_become_globs() {
        assert_eq!(generalize("/repos/o/r/issues/123"), "/repos/o/r/issues/**");
        assert_eq!(generalize("/a/123/456/b"), "/a/**/b");
        assert_eq!(generalize("/objects/3f2a9c1d"), "/objects/**");
        assert_eq!(generalize("/u/0b4f6c2e-9a8d-4c1e-b2f3-1234567890ab/x"), "/u/**/x");
        assert_eq!(generalize("/bot123456789ABCDEFghijklmn/send"), "/**/send");
        assert_eq!(generalize("/v1/messages"), "/v1/messages");
        assert_eq!(generalize("/deadbeef"), "/deadbeef", "hex without a digit is a word");
        assert_eq!(generalize("/"), "/");
    }

    #[test]
    fn rules_cover_every_reading_and_drop_the_query() {
        let rules = request_rules("GET", "/a/1/?token=secret", &[]);
        assert_eq!(rules, [("GET".to_owned(), "/a/**/".to_owned()), ("GET".to_owned(), "/a/**".to_owned())]);
        assert!(!format!("{rules:?}").contains("secret"));
        let overridden = request_rules("POST", "/x", &["delete".to_owned()]);
        assert!(overridden.contains(&("DELETE".to_owned(), "/x".to_owned())), "{overridden:?}");
        // The agent's `_method` becomes a rule's method only when it is one: this value would
        // have written `method: '*', path: '/**'` into the learned policy.
        let injected = "/x?_method=%27*%27%2C%20%22%5CU00000070%5CU00000061%5CU00000074%5CU00000068%22%3A%20%27%2F**%27%20%7D%20%23";
        assert_eq!(request_rules("POST", injected, &[]), [("POST".to_owned(), "/x".to_owned())]);
        assert_eq!(
            request_rules("POST", "/x?_method=delete", &[]),
            [("POST".to_owned(), "/x".to_owned()), ("DELETE".to_owned(), "/x".to_owned())]
        );
        // A method a policy cannot name is not learned (the learned file must parse), nor `*`.
        assert!(request_rules("M-SEARCH", "/", &[]).is_empty());
        assert_eq!(request_rules("POST", "/x?_method=*", &[]), [("POST".to_owned(), "/x".to_owned())]);
    }

    #[test]
    fn reads_only_become_read_only_and_writes_become_rules() {
        let seen = [
            inspected("api.example.com", 443, Some("/usr/bin/curl")),
            request("api.example.com", "GET", "/a", "/usr/bin/curl"),
            inspected("up.example.com", 443, Some("/usr/bin/curl")),
            request("up.example.com", "POST", "/items/42?x=1", "/usr/bin/curl"),
        ];
        let text = Learned::from_observations(&seen).document("a test");
        let policy = crate::parse_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains("access: read-only"), "{text}");
        assert!(text.contains("- allow: { method: 'POST', path: '/items/**' }"), "{text}");
        assert!(text.contains("binaries: [{ path: '/usr/bin/curl' }]"), "{text}");
        assert!(text.contains("first request POST /items/**"), "{text}");
        assert!(!text.contains("x=1"), "{text}");
        let d = crate::Decider::new(&policy);
        let curl = Some(std::path::Path::new("/usr/bin/curl"));
        let v = d.network("up.example.com", 443, curl);
        assert!(v.allow);
        let r = v.endpoint_ref.expect("endpoint");
        assert!(d.request(r, "POST", "/items/7").allow);
        assert!(!d.request(r, "DELETE", "/items/7").allow);
        assert!(!d.network("up.example.com", 443, Some(std::path::Path::new("/usr/bin/wget"))).allow);
        assert!(!d.network("other.example.com", 443, curl).allow);
    }

    #[test]
    fn tunnels_become_tcp_and_ports_with_the_same_settings_share_an_endpoint() {
        let tunnel = |port| Observation {
            host: "db.internal".into(),
            port,
            binary: None,
            seen: Seen::Tunnel { allowed_ips: vec!["10.0.0.5/32".parse().expect("network")] },
        };
        let text = Learned::from_observations(&[tunnel(5432), tunnel(5433)]).document("a test");
        crate::parse_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains("ports: [5432, 5433]") && text.contains("protocol: tcp"), "{text}");
        assert!(text.contains("allowed_ips: ['10.0.0.5/32']"), "{text}");
        assert!(!text.contains("binaries"), "{text}");
    }

    #[test]
    fn different_executables_per_port_split_the_host() {
        let seen =
            [inspected("h.example", 443, Some("/usr/bin/git")), inspected("h.example", 8443, Some("/usr/bin/curl"))];
        let text = Learned::from_observations(&seen).document("a test");
        crate::parse_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains("h.example_443:") && text.contains("h.example_8443:"), "{text}");
        let mixed = [inspected("h.example", 443, Some("/usr/bin/git")), inspected("h.example", 443, None)];
        let text = Learned::from_observations(&mixed).document("a test");
        assert!(!text.contains("binaries"), "{text}");
    }

    #[test]
    fn credentials_used_are_declared_and_nothing_learned_is_a_valid_file() {
        let seen = [Observation {
            host: "api.example.com".into(),
            port: 443,
            binary: None,
            seen: Seen::Request {
                method: "GET".into(),
                target: "/".into(),
                overrides: vec![],
                credentials: vec!["TOKEN".into()],
            },
        }];
        let text = Learned::from_observations(&seen).document("a test");
        let policy = crate::parse_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(policy.credentials().len(), 1);
        let empty = Learned::default().document("a test");
        crate::parse_str("empty.yaml", &empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
    }
}
