//! Shaping events as OCSF 1.3 records (Network Activity 4001 for kernel verdicts, HTTP Activity
//! 4002 for proxy decisions) plus a one-line human summary of each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use sandbox_common::{DenyEvent, Hook};
use serde_json::{json, Value};

/// One decision of the proxy: a CONNECT (no path) or a request. Never holds a secret: `path`
/// is the request target as the agent sent it (placeholders, not values) and `credentials`
/// lists names only.
#[derive(Debug, Clone, Default)]
pub struct ProxyDecision {
    pub allowed: bool,
    pub method: String,
    pub host: String,
    pub port: u16,
    /// Request target (path and query) for request decisions.
    pub path: Option<String>,
    /// The network policy that decided, if any.
    pub policy: Option<String>,
    /// The rule that decided (`rules[0]`, `deny_rules[1]`, `access:read-only`, ...).
    pub rule: Option<String>,
    /// Short machine-readable reason (`no_matching_policy`, `allowed`, `audit_only`, ...).
    pub reason: String,
    /// The executable that opened the connection, when known.
    pub binary: Option<String>,
    /// Names of the credentials swapped into this request.
    pub credentials: Vec<String>,
    pub client: Option<std::net::SocketAddr>,
    /// Where the client connected when transparent mode redirected it to the proxy; `None` for
    /// an explicit proxy client (CONNECT or absolute-form).
    pub redirected_from: Option<std::net::SocketAddr>,
}

/// An answer of leash's resolver (transparent mode).
#[derive(Debug, Clone, Default)]
pub struct DnsDecision {
    pub allowed: bool,
    /// The name asked for, or `None` when it was not a host name.
    pub name: Option<String>,
    pub qtype: u16,
    /// The network policy whose endpoint covers the name.
    pub policy: Option<String>,
    pub client: Option<std::net::SocketAddr>,
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn metadata(log_name: &str) -> Value {
    json!({
        "version": "1.3.0",
        "log_name": log_name,
        "product": { "name": "leash", "vendor_name": "leash", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// `json` as one line, with what a terminal or a viewer acts on (DEL, C1 controls, line and
/// paragraph separators, bidi and zero-width characters; JSON escapes C0 already) written as a
/// JSON escape: the same value to a parser, no control to `tail -f` or a log viewer. Such
/// characters appear only inside strings, so the whole text can be rewritten.
pub fn json_line(json: &Value) -> String {
    let text = json.to_string();
    if !text.chars().any(crate::stderr::acted_on) {
        return text;
    }
    text.chars()
        .map(|c| if crate::stderr::acted_on(c) { format!("\\u{:04x}", c as u32) } else { c.to_string() })
        .collect()
}

fn protocol_name(protocol: u32) -> &'static str {
    match protocol {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "ipv6-icmp",
        262 => "mptcp",
        _ => "other",
    }
}

fn event_ip(event: &DenyEvent) -> Option<IpAddr> {
    match event.family {
        2 => Some(IpAddr::V4(Ipv4Addr::new(event.addr[0], event.addr[1], event.addr[2], event.addr[3]))),
        10 => Some(IpAddr::V6(Ipv6Addr::from(event.addr))),
        _ => None,
    }
}

fn comm(event: &DenyEvent) -> String {
    let end = event.comm.iter().position(|&b| b == 0).unwrap_or(event.comm.len());
    String::from_utf8_lossy(&event.comm[..end]).into_owned()
}

/// A kernel denial as OCSF JSON and a summary line.
pub fn kernel_denial(sandbox: &str, event: &DenyEvent) -> (Value, String) {
    let hook = Hook::from_u32(event.hook).map(Hook::name).unwrap_or("unknown");
    let ip = event_ip(event);
    let proto = protocol_name(event.protocol);
    let target = match (ip, hook) {
        (_, "sock_create") => format!("socket type {} protocol {proto}", event.sock_type),
        (Some(IpAddr::V6(v6)), _) => format!("[{v6}]:{}/{proto}", event.port),
        (Some(v4), _) => format!("{v4}:{}/{proto}", event.port),
        (None, _) => format!("non-IP packet/{proto}"),
    };
    let actor = if event.pid != 0 { format!("pid {} ({})", event.pid, comm(event)) } else { "packet".to_owned() };
    let line = printable(format!("denied {hook}: {actor} -> {target} [sandbox {sandbox}]"));
    let json = json!({
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "activity_id": if hook.starts_with("skb") { 6 } else { 1 },
        "type_uid": if hook.starts_with("skb") { 400106 } else { 400101 },
        "time": now_ms(),
        "severity_id": 3,
        "status_id": 2,
        "action_id": 2,
        "disposition_id": 2,
        "message": line,
        "metadata": metadata("kernel"),
        "actor": { "process": { "pid": event.pid, "name": comm(event), "user": { "uid": event.uid } } },
        "dst_endpoint": { "ip": ip.map(|i| i.to_string()), "port": event.port },
        "connection_info": {
            "protocol_num": event.protocol,
            "protocol_name": proto,
            "protocol_ver_id": match event.family { 2 => 4, 10 => 6, _ => 0 },
        },
        "unmapped": { "hook": hook, "sandbox": sandbox, "cgroup_id": event.cgroup_id, "sock_type": event.sock_type },
    });
    (json, line)
}

/// A connection to the proxy from a process outside its sandbox, refused before any byte was
/// read, as OCSF Network Activity (refuse) and a summary line.
pub fn outsider_refused(sandbox: &str, peer: std::net::SocketAddr) -> (Value, String) {
    let line = format!("denied proxy connection from {peer}: not from this sandbox [sandbox {sandbox}]");
    let json = refused_connection(sandbox, peer, &line, "proxy_serves_own_sandbox_only", None);
    (json, line)
}

/// The rule a connection from another local address than the proxy's breaks.
pub const OTHER_ADDRESS_RULE: &str = "proxy_serves_its_own_address_only";

/// A connection the sandbox made to its proxy from another local address (`pid` connected it),
/// refused before any byte was read, as OCSF Network Activity (refuse) and a summary line.
pub fn other_address_refused(sandbox: &str, peer: std::net::SocketAddr, pid: u32) -> (Value, String) {
    let line = format!(
        "denied proxy connection from {peer} (pid {pid}): connect from the proxy's own address [sandbox {sandbox}]"
    );
    let json = refused_connection(sandbox, peer, &line, OTHER_ADDRESS_RULE, Some(pid));
    (json, line)
}

/// A connection to the proxy from `peer`, refused unread under `rule`, opened by `pid` if known.
fn refused_connection(sandbox: &str, peer: std::net::SocketAddr, line: &str, rule: &str, pid: Option<u32>) -> Value {
    let mut json = json!({
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "activity_id": 5,
        "type_uid": 400105,
        "time": now_ms(),
        "severity_id": 3,
        "status_id": 2,
        "action_id": 2,
        "disposition_id": 2,
        "message": line,
        "metadata": metadata("proxy"),
        "src_endpoint": { "ip": peer.ip().to_string(), "port": peer.port() },
        "unmapped": { "sandbox": sandbox, "rule": rule },
    });
    if let Some(pid) = pid {
        json["actor"] = json!({ "process": { "pid": pid } });
    }
    json
}

/// The line standing for `count` refusal lines (`what`) a second's budget kept out of the log.
pub fn held_back(sandbox: &str, count: u64, what: &str) -> Value {
    let mut json = leash_notice(1, format!("{count} more {what} in one second not written one by one"));
    json["count"] = json!(count);
    json["unmapped"] = json!({ "sandbox": sandbox, "held_back": what });
    json
}

/// The last line a sandbox writes to its audit log once the log reached `limit` bytes
/// (`--audit-log-max`), so that a reader learns why the log stops.
pub fn audit_limit_reached(sandbox: &str, limit: u64) -> Value {
    let mut json = leash_notice(
        3,
        format!(
            "the audit log reached its limit of {limit} bytes for this sandbox; later events are counted in its \
             summary, not written, and the proxy allows nothing more"
        ),
    );
    json["unmapped"] = json!({ "sandbox": sandbox, "limit_bytes": limit });
    json
}

/// A line about the log itself, as an OCSF Base Event ("other" activity).
fn leash_notice(severity_id: u8, message: String) -> Value {
    json!({
        "class_uid": 0,
        "class_name": "Base Event",
        "category_uid": 0,
        "activity_id": 99,
        "type_uid": 99,
        "time": now_ms(),
        "severity_id": severity_id,
        "message": message,
        "metadata": metadata("leash"),
    })
}

/// A BPF-LSM denial as OCSF JSON (Process, File System or Network Activity by hook) and a
/// summary line naming the process, the hook, the target and the policy rule.
pub fn lsm_denial(sandbox: &str, event: &DenyEvent, target_name: Option<&std::path::Path>) -> (Value, String) {
    let hook = Hook::from_u32(event.hook);
    let hook_name = hook.map(Hook::name).unwrap_or("unknown");
    let path = c_bytes(&event.path);
    let file = || match target_name {
        Some(p) => format!("{} (dev {:#x} inode {})", p.display(), event.target_dev, event.target_ino),
        None => format!("dev {:#x} inode {}", event.target_dev, event.target_ino),
    };
    // The rule is the hook table's (`sandbox-common`), the socket families told apart.
    let rule = match hook {
        Some(Hook::LsmSocketCreate) => match (event.family, event.sock_type) {
            (17, _) => "packet_socket",
            (40, _) => "vsock",
            (16, _) => "netlink",
            _ => "raw_socket",
        },
        other => other.and_then(Hook::rule).unwrap_or("unknown"),
    };
    let (target, class) = match hook {
        Some(Hook::LsmExec) => (format!("exec {} ({})", lossy_or(&path, "?"), file()), 1007),
        Some(Hook::LsmOpen) => (format!("open {}", file()), 1001),
        Some(Hook::LsmMmap) => (format!("map executable {} (prot {:#x})", file(), event.protocol), 1001),
        Some(Hook::LsmMprotect) => (format!("mprotect executable {} (prot {:#x})", file(), event.protocol), 1001),
        Some(Hook::LsmKill) => (format!("signal {} to pid {}", event.protocol, event.target_pid), 1007),
        Some(Hook::LsmPtrace) => (format!("ptrace pid {} (mode {:#x})", event.target_pid, event.protocol), 1007),
        Some(Hook::LsmUnixConnect | Hook::LsmUnixSend) => (format!("unix socket {}", unix_name(&event.path)), 4001),
        Some(Hook::LsmConnect | Hook::LsmSendmsg) => {
            let ip = event_ip(event).map(|i| i.to_string()).unwrap_or_default();
            (format!("{ip} port {}", event.port), 4001)
        }
        Some(Hook::LsmSocketCreate) => {
            (format!("socket family {} type {} protocol {}", event.family, event.sock_type, event.protocol), 4001)
        }
        Some(Hook::LsmBpf) => (format!("bpf command {}", event.protocol), 1007),
        Some(Hook::LsmPerfEvent) => ("perf_event_open".to_owned(), 1007),
        Some(Hook::LsmMount) => (format!("mount (flags {:#x})", event.protocol), 1007),
        Some(Hook::LsmKernelModule) => (format!("kernel load (id {})", event.protocol), 1007),
        Some(Hook::LsmUserns) => ("new user namespace".to_owned(), 1007),
        _ => (String::new(), 1007),
    };
    let exe = std::fs::read_link(format!("/proc/{}/exe", event.pid)).ok().map(|p| p.display().to_string());
    let line = printable(format!(
        "denied {hook_name}: pid {} ({}) -> {target} (rule {rule}) [sandbox {sandbox}]",
        event.pid,
        comm(event)
    ));
    let class_name = match class {
        1001 => "File System Activity",
        4001 => "Network Activity",
        _ => "Process Activity",
    };
    let json = json!({
        "class_uid": class,
        "class_name": class_name,
        "category_uid": class / 1000,
        "activity_id": 99,
        "type_uid": class * 100 + 99,
        "time": now_ms(),
        "severity_id": 3,
        "status_id": 2,
        "action_id": 2,
        "disposition_id": 2,
        "message": line,
        "metadata": metadata("kernel"),
        "actor": { "process": {
            "pid": event.pid,
            "name": comm(event),
            "file": exe.map(|p| json!({ "path": p })),
            "user": { "uid": event.uid },
        } },
        "unmapped": {
            "hook": hook_name,
            "rule": rule,
            "target": target,
            "target_pid": event.target_pid,
            "sandbox": sandbox,
            "cgroup_id": event.cgroup_id,
        },
    });
    (json, line)
}

/// `line` with every control character escaped (`\n`, `\u{1b}`): a summary is printed on
/// stderr, and an agent's process name, file names or request must not split it or drive the
/// terminal.
fn printable(line: String) -> String {
    crate::stderr::printable(&line).into_owned()
}

/// The bytes of a NUL-terminated buffer.
fn c_bytes(buf: &[u8]) -> Vec<u8> {
    buf.iter().copied().take_while(|&b| b != 0).collect()
}

fn lossy_or(bytes: &[u8], fallback: &str) -> String {
    if bytes.is_empty() {
        fallback.to_owned()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// A unix socket address from an event: a path, or `@name` for an abstract socket.
fn unix_name(path: &[u8; 64]) -> String {
    match path.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&c_bytes(&path[1..]))),
        _ => String::from_utf8_lossy(&c_bytes(path)).into_owned(),
    }
}

/// A proxy decision as OCSF JSON and a summary line.
pub fn proxy_decision(sandbox: &str, d: &ProxyDecision) -> (Value, String) {
    let verdict = if d.allowed { "allowed" } else { "denied" };
    let why = match (&d.policy, &d.rule) {
        (Some(p), Some(r)) if d.allowed => format!("{p} {r}"),
        _ => d.reason.clone(),
    };
    let redirected = d.redirected_from.map(|to| format!(" redirected from {to}")).unwrap_or_default();
    let line = printable(format!(
        "{verdict} proxy {} {}:{}{}{redirected} ({why}) [sandbox {sandbox}]",
        d.method,
        d.host,
        d.port,
        d.path.as_deref().unwrap_or("")
    ));
    let json = json!({
        "class_uid": 4002,
        "class_name": "HTTP Activity",
        "category_uid": 4,
        "activity_id": 1,
        "type_uid": 400201,
        "time": now_ms(),
        "message": line,
        "metadata": metadata("proxy"),
        "http_request": { "http_method": d.method, "url": { "hostname": d.host, "port": d.port, "path": d.path } },
        "dst_endpoint": {
            "hostname": d.host,
            "port": d.port,
            "ip": d.redirected_from.map(|to| to.ip().to_string()),
        },
        "src_endpoint": d.client.map(|c| json!({ "ip": c.ip().to_string(), "port": c.port() })),
        "actor": { "process": { "file": d.binary.as_ref().map(|b| json!({ "path": b })) } },
        "firewall_rule": d.policy.as_ref().map(|p| json!({ "name": p, "desc": d.rule })),
        "unmapped": {
            "reason": d.reason,
            "rule": d.rule,
            "sandbox": sandbox,
            "credentials": d.credentials,
            "client_mode": if d.redirected_from.is_some() { "redirected" } else { "explicit" },
        },
    });
    (with_outcome(json, d.allowed), line)
}

/// `json` with OCSF's outcome fields (severity, status, action, disposition) for an allowed or
/// a denied decision.
fn with_outcome(mut json: Value, allowed: bool) -> Value {
    let (severity, verdict) = if allowed { (1, 1) } else { (3, 2) };
    if let Some(fields) = json.as_object_mut() {
        for (key, value) in
            [("severity_id", severity), ("status_id", verdict), ("action_id", verdict), ("disposition_id", verdict)]
        {
            fields.insert(key.to_owned(), value.into());
        }
    }
    json
}

/// An answer of leash's resolver as OCSF JSON (DNS Activity) and a summary line.
pub fn dns_decision(sandbox: &str, d: &DnsDecision) -> (Value, String) {
    let verdict = if d.allowed { "answered" } else { "refused" };
    let name = d.name.as_deref().unwrap_or("(not a host name)");
    let why = match &d.policy {
        Some(p) => p.clone(),
        None => "no_matching_policy".to_owned(),
    };
    let line = printable(format!("{verdict} dns {name} type {} ({why}) [sandbox {sandbox}]", d.qtype));
    let json = json!({
        "class_uid": 4003,
        "class_name": "DNS Activity",
        "category_uid": 4,
        "activity_id": 2,
        "type_uid": 400302,
        "time": now_ms(),
        "message": line,
        "metadata": metadata("proxy"),
        "query": { "hostname": d.name, "type": d.qtype },
        "rcode": if d.allowed { "NoError" } else { "NXDomain" },
        "src_endpoint": d.client.map(|c| json!({ "ip": c.ip().to_string(), "port": c.port() })),
        "firewall_rule": d.policy.as_ref().map(|p| json!({ "name": p })),
        "unmapped": { "sandbox": sandbox, "rule": if d.allowed { "allowed" } else { "no_matching_policy" } },
    });
    (with_outcome(json, d.allowed), line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(hook: Hook, family: u32, addr: [u8; 16], port: u16) -> DenyEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        DenyEvent {
            cgroup_id: 42,
            time_ns: 0,
            pid: 7,
            uid: 65534,
            hook: hook as u32,
            family,
            sock_type: 1,
            protocol: 6,
            addr,
            port,
            _pad: [0; 6],
            comm,
            target_ino: 0,
            target_dev: 0,
            target_pid: 0,
            path: [0; 64],
        }
    }

    #[test]
    fn lsm_denials_name_target_and_rule() {
        let mut e = event(Hook::LsmOpen, 0, [0; 16], 0);
        (e.target_dev, e.target_ino) = (0x800001, 1234);
        let (json, line) = lsm_denial("s1", &e, Some(std::path::Path::new("/var/run/secrets/token")));
        assert!(line.contains("open /var/run/secrets/token (dev 0x800001 inode 1234)"), "{line}");
        assert!(line.contains("rule kernel.deny_open"), "{line}");
        assert_eq!(json["class_uid"], 1001);
        assert_eq!(json["unmapped"]["hook"], "lsm_file_open");

        let mut e = event(Hook::LsmExec, 0, [0; 16], 0);
        e.path[..8].copy_from_slice(b"/tmp/evi");
        let (_, line) = lsm_denial("s1", &e, None);
        assert!(line.contains("exec /tmp/evi") && line.contains("kernel.exec.allow"), "{line}");

        let mut e = event(Hook::LsmMmap, 0, [0; 16], 0);
        (e.target_dev, e.target_ino, e.protocol) = (0x800001, 77, 5);
        let (json, line) = lsm_denial("s1", &e, Some(std::path::Path::new("/tmp/libm.so.6")));
        assert!(line.contains("denied lsm_mmap_file"), "{line}");
        assert!(line.contains("map executable /tmp/libm.so.6 (dev 0x800001 inode 77) (prot 0x5)"), "{line}");
        assert!(line.contains("rule kernel.exec.allow"), "{line}");
        assert_eq!(json["class_uid"], 1001);

        let mut e = event(Hook::LsmUnixConnect, 1, [0; 16], 0);
        e.path[..4].copy_from_slice(b"\0x11");
        let (json, line) = lsm_denial("s1", &e, None);
        assert!(line.contains("unix socket @x11") && line.contains("kernel.unix.allow"), "{line}");
        assert_eq!(json["class_uid"], 4001);

        let mut e = event(Hook::LsmKill, 0, [0; 16], 0);
        (e.target_pid, e.protocol) = (99, 9);
        let (_, line) = lsm_denial("s1", &e, None);
        assert!(line.contains("signal 9 to pid 99 (rule kill_outside)"), "{line}");
    }

    #[test]
    fn ipv4_connect_denial_reads_as_address_and_port() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let (json, line) = kernel_denial("s1", &event(Hook::Connect4, 2, addr, 8080));
        assert_eq!(line, "denied connect4: pid 7 (curl) -> 127.0.0.1:8080/tcp [sandbox s1]");
        assert_eq!(json["dst_endpoint"]["ip"], "127.0.0.1");
        assert_eq!(json["class_uid"], 4001);
        assert_eq!(json["disposition_id"], 2);
    }

    #[test]
    fn ipv6_denial_is_bracketed() {
        let (_, line) = kernel_denial("s1", &event(Hook::Connect6, 10, Ipv6Addr::LOCALHOST.octets(), 9));
        assert!(line.contains("[::1]:9/tcp"), "{line}");
    }

    #[test]
    fn proxy_denial_names_reason() {
        let d = ProxyDecision {
            allowed: false,
            method: "CONNECT".into(),
            host: "evil.example".into(),
            port: 443,
            reason: "no_matching_policy".into(),
            ..Default::default()
        };
        let (json, line) = proxy_decision("s1", &d);
        assert!(line.starts_with("denied proxy CONNECT evil.example:443 (no_matching_policy)"), "{line}");
        assert_eq!(json["action_id"], 2);
    }

    /// serde_json leaves DEL, C1 controls (U+009B is a one-byte CSI), U+2028/2029 and bidi
    /// controls as they are: an agent-made path reached `tail -f` of the log as a control.
    #[test]
    fn an_audit_line_carries_no_character_a_viewer_acts_on() {
        let value = json!({ "path": "/x\u{7f}\u{9b}2J\u{2028}\u{202e}cba", "ok": "é ✓" });
        let line = json_line(&value);
        assert!(!line.chars().any(crate::stderr::acted_on), "{line:?}");
        assert!(line.contains("\\u009b") && line.contains("é ✓"), "{line}");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value);
    }

    #[test]
    fn control_characters_in_agent_strings_are_escaped_in_summaries() {
        // Found writing the `ocsf` fuzz target: a process name (`prctl(PR_SET_NAME)`) or a path
        // with a newline or an escape split the stderr summary and could forge a line.
        let mut e = event(Hook::Connect4, 2, [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 443);
        e.comm[..5].copy_from_slice(b"a\nb\x1b[");
        let (json, line) = kernel_denial("s", &e);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("a\\u{a}b\\u{1b}["), "{line:?}");
        assert_eq!(json["message"], line);
        let d = ProxyDecision { method: "GET".into(), path: Some("/x\r\nleash: allowed".into()), ..Default::default() };
        let (_, line) = proxy_decision("s", &d);
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}

/// Agent-controlled strings (issue 16); the `ocsf` fuzz target feeds arbitrary bytes too.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_record_is_one_json_line_and_every_summary_is_printable(
            text in proptest::collection::vec(any::<u8>(), 0..40),
            hook in 1u32..23,
        ) {
            let s = String::from_utf8_lossy(&text).into_owned();
            let d = ProxyDecision {
                method: s.clone(), host: s.clone(), path: Some(s.clone()), reason: s.clone(),
                binary: Some(s.clone()), credentials: vec![s.clone()], ..Default::default()
            };
            let mut e = DenyEvent {
                cgroup_id: 1, time_ns: 0, pid: 7, uid: 0, hook, family: 1, sock_type: 1, protocol: 6,
                addr: [0; 16], port: 1, _pad: [0; 6], comm: [0; 16], target_ino: 0, target_dev: 0,
                target_pid: 0, path: [0; 64],
            };
            let n = text.len().min(16);
            e.comm[..n].copy_from_slice(&text[..n]);
            let n = text.len().min(64);
            e.path[..n].copy_from_slice(&text[..n]);
            let target: &std::path::Path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&text[..]).as_ref();
            for (json, line) in [proxy_decision(&s, &d), kernel_denial(&s, &e), lsm_denial(&s, &e, Some(target))] {
                let written = json.to_string();
                prop_assert!(!written.contains('\n'));
                let back: Value = serde_json::from_str(&written).expect("one JSON value");
                prop_assert!(back.is_object());
                prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
            }
        }
    }
}
