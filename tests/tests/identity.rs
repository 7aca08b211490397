//! Binary identity: a network policy with `binaries:` serves only the listed executables. The
//! proxy learns which executable opened each connection from the sandbox's eBPF programs.

use leash_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const PY: &str = "/usr/bin/python3";

/// CONNECT through the proxy from Python; prints the status code.
const PY_CONNECT: &str = r#"
import os, socket, sys
host, port = os.environ["HTTP_PROXY"].split("//")[1].rstrip("/").split(":")
s = socket.create_connection((host, int(port)), 3)
s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (sys.argv[1], sys.argv[1])).encode())
print("CONNECT", s.recv(200).split(b" ")[1].decode())
"#;

/// A policy `name` that allows `127.0.0.1:port` to `binary` alone.
fn only_for(name: &str, port: u16, binary: &std::path::Path) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  {name}:\n    name: {name}\n    endpoints:\n      - {{ host: 127.0.0.1, port: {port}, protocol: tcp }}\n    binaries:\n      - {{ path: {} }}\n",
        binary.display()
    )
}

#[test]
fn only_listed_binaries_use_a_policy_with_binaries() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "for netprobe only");
    let probe = std::fs::canonicalize(PROBE).unwrap();
    let scratch = Scratch::new("binaries");
    let policy = scratch.file("p.yaml", &only_for("probe_only", upstream.addr.port(), &probe));
    let log = scratch.0.join("audit.jsonl");
    let target = upstream.addr.to_string();
    let script = format!("{PROBE} get proxy {target}; {PY} -c '{PY_CONNECT}' {target}");
    let out = leash_run(&policy, &["--audit-log", log.to_str().unwrap()], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(
        text.contains("CONNECT 200 GET 200 for netprobe only"),
        "the listed binary must get through: {text} {}",
        stderr(&out)
    );
    assert!(text.contains("CONNECT 403"), "python is not listed and must be refused: {text}");
    assert_eq!(upstream.accepted(), 1, "only the listed binary's connection reaches the upstream");
    let audit = std::fs::read_to_string(&log).unwrap();
    assert!(audit.contains(&probe.display().to_string()), "the audit names the executable: {audit}");
    assert!(audit.contains("network_policies.probe_only.binaries"), "the refusal names the rule: {audit}");
}

/// The agent runs the listed executable under its own ptrace (`PTRACE_TRACEME`, then exec):
/// a tracer can write the tracee's memory, so the tracee is not trusted as that executable.
/// (With BPF-LSM a sandbox with `binaries:` rules cannot attach at all; a tracer attached before
/// a reload turned such rules on stays attached, and this is what catches it.)
#[test]
fn a_listed_executable_under_the_agents_ptrace_lends_nothing() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "for netprobe only");
    let probe = std::fs::canonicalize(PROBE).unwrap();
    let scratch = Scratch::new("binaries-traced");
    let policy = scratch.file("p.yaml", &only_for("probe_only", upstream.addr.port(), &probe));
    let target = upstream.addr.to_string();
    let traced = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
probe, target = sys.argv[1], sys.argv[2]
child = os.fork()
if child == 0:
    libc.ptrace(0, 0, 0, 0)  # PTRACE_TRACEME
    os.execv(probe, [probe, "get", "proxy", target])
os.waitpid(child, 0)  # stopped at its exec
libc.ptrace(7, child, 0, 0)  # PTRACE_CONT
os.waitpid(child, 0)
"#;
    let script = format!("{PY} -c '{traced}' {} {target}; echo untraced; {PROBE} get proxy {target}", probe.display());
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    let (under_trace, untraced) = text.split_once("untraced").unwrap_or_else(|| panic!("{text} {}", stderr(&out)));
    assert!(under_trace.contains("CONNECT"), "the traced probe did not run: {text} {}", stderr(&out));
    assert!(!under_trace.contains("CONNECT 200"), "a traced process was served as the listed executable: {text}");
    assert!(untraced.contains("CONNECT 200 GET 200"), "control: the same executable untraced is served: {text}");
    assert_eq!(upstream.accepted(), 1);
}

#[test]
fn a_listed_executable_exec_d_after_connect_lends_nothing_to_its_parent() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "for sleep only");
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    let scratch = Scratch::new("binaries-exec");
    let policy = scratch.file("p.yaml", &only_for("sleep_only", upstream.addr.port(), &sleep));
    let target = upstream.addr.to_string();
    let tries = "8";
    let out = leash_run(&policy, &[], &[PY, "-c", PY_EXEC_AFTER_CONNECT, &target, sleep.to_str().unwrap(), tries]);
    let text = stdout(&out);
    assert!(text.contains("through "), "the attack did not run: {text} {}", stderr(&out));
    assert!(text.contains("through 0"), "python used sleep's rights: {text} {}", stderr(&out));
    assert_eq!(upstream.accepted(), 0);
}

/// Holds a connection to the proxy, floods the proxy with connects (each one a record in the
/// kernel's owner map, which every sandbox on the host shares and which evicts its oldest
/// records when full), then asks for the target on the held connection; prints the status.
const PY_FLOOD_THEN_CONNECT: &str = r#"
import os, socket, sys, time
host, port = os.environ["HTTP_PROXY"].split("//")[1].rstrip("/").split(":")
proxy = (host, int(port))
held = socket.create_connection(proxy, 3)
time.sleep(0.3)
flood(proxy, int(sys.argv[2]))
held.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (sys.argv[1], sys.argv[1])).encode())
print("CONNECT", held.recv(200).split(b" ")[1].decode())
"#;

/// The kernel's owner map is shared by every sandbox on the host and evicts its oldest records
/// when full. An admitted connection's `binaries:` identity must not depend on its record staying
/// there: the agent holds a connection, makes 100,000 more (the map holds 65,536), and only then
/// asks for the target, which the policy allows to its executable alone. Either of two things
/// keeps it: the proxy learns the identity at accept, and a socket that resets its connection
/// takes its record out of the map (`cgroup_skb/egress`), so the flood fills nothing. With
/// neither (the proxy reading the kernel's record again at the request, reset sockets' records
/// left to be evicted) it read "CONNECT 403".
#[test]
fn a_flood_of_connections_takes_no_admitted_connections_identity_away() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "for python only");
    let python = std::fs::canonicalize(PY).unwrap();
    let scratch = Scratch::new("binaries-flood");
    let policy = scratch.file("p.yaml", &only_for("python_only", upstream.addr.port(), &python));
    let target = upstream.addr.to_string();
    let script = format!("{PY_FLOOD}{PY_FLOOD_THEN_CONNECT}");
    let out = leash_run(&policy, &[], &[PY, "-c", &script, &target, "100000"]);
    let text = stdout(&out);
    assert!(text.contains("CONNECT 200"), "the held connection lost its identity: {text} {}", stderr(&out));
    assert_eq!(upstream.accepted(), 1);
}
