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

#[test]
fn only_listed_binaries_use_a_policy_with_binaries() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "for netprobe only");
    let probe = std::fs::canonicalize(PROBE).unwrap();
    let scratch = Scratch::new("binaries");
    let policy = scratch.file(
        "p.yaml",
        &format!(
            "version: 1\nnetwork_policies:\n  probe_only:\n    name: probe_only\n    endpoints:\n      - {{ host: 127.0.0.1, port: {}, protocol: tcp }}\n    binaries:\n      - {{ path: {} }}\n",
            upstream.addr.port(),
            probe.display()
        ),
    );
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

#[test]
fn a_listed_executable_exec_d_after_connect_lends_nothing_to_its_parent() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "for sleep only");
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    let scratch = Scratch::new("binaries-exec");
    let policy = scratch.file(
        "p.yaml",
        &format!(
            "version: 1\nnetwork_policies:\n  sleep_only:\n    name: sleep_only\n    endpoints:\n      - {{ host: 127.0.0.1, port: {}, protocol: tcp }}\n    binaries:\n      - {{ path: {} }}\n",
            upstream.addr.port(),
            sleep.display()
        ),
    );
    let target = upstream.addr.to_string();
    let tries = "8";
    let out = leash_run(&policy, &[], &[PY, "-c", PY_EXEC_AFTER_CONNECT, &target, sleep.to_str().unwrap(), tries]);
    let text = stdout(&out);
    assert!(text.contains("through "), "the attack did not run: {text} {}", stderr(&out));
    assert!(text.contains("through 0"), "python used sleep's rights: {text} {}", stderr(&out));
    assert_eq!(upstream.accepted(), 0);
}
