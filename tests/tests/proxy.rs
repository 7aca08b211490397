//! The first proxy: CONNECT to what the policy lists works, anything else is a 403; two
//! sandboxes at once each reach only their own proxy.

use leash_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_netprobe");

#[test]
fn listed_upstream_is_reached_and_unlisted_port_gets_403() {
    require_root();
    let allowed = Listener::http("127.0.0.1:0", "hello from upstream");
    let unlisted = Listener::http("127.0.0.1:0", "must not be reached");
    let scratch = Scratch::new("proxy");
    let policy = scratch.file("p.yaml", &policy_allowing(&[allowed.addr.port()]));
    let log = scratch.0.join("audit.jsonl");
    let script = format!("{PROBE} get proxy {}; {PROBE} get proxy {}", allowed.addr, unlisted.addr);
    let out = leash_run(&policy, &["--audit-log", log.to_str().unwrap()], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(
        text.contains("CONNECT 200 GET 200 hello from upstream"),
        "allowed upstream not reached: {text} {}",
        stderr(&out)
    );
    assert!(text.contains("CONNECT 403"), "unlisted port not refused: {text}");
    assert_eq!(unlisted.accepted(), 0, "the proxy dialled an upstream the policy does not list");
    let audit = std::fs::read_to_string(&log).expect("audit log");
    assert!(audit.contains("\"disposition_id\":2") && audit.contains(&unlisted.addr.port().to_string()), "{audit}");
}

#[test]
fn two_sandboxes_cannot_reach_each_others_proxy() {
    require_root();
    let scratch = Scratch::new("pair");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let addr_file = scratch.0.join("a-proxy");
    let done = scratch.0.join("b-done");
    // Sandbox A publishes its proxy address, then stays up until B is done.
    let script_a = format!(
        "echo ${{HTTP_PROXY#http://}} > {}; i=0; while [ ! -e {} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        addr_file.display(),
        done.display()
    );
    let mut a = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script_a])
        .spawn()
        .expect("starting sandbox A");
    assert!(
        wait_until(10, || std::fs::read_to_string(&addr_file).is_ok_and(|s| s.trim().contains(':'))),
        "sandbox A never started"
    );
    let a_proxy = std::fs::read_to_string(&addr_file).unwrap().trim().to_owned();
    let control = std::process::Command::new(PROBE).args(["tcp", &a_proxy]).output().expect("netprobe");
    assert_eq!(stdout(&control).trim(), "ok", "A's proxy must be reachable from outside the sandboxes");
    let script_b =
        format!("echo own=$({PROBE} tcp proxy); echo other=$({PROBE} tcp {a_proxy}); touch {}", done.display());
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", &script_b]);
    let _ = a.wait();
    let text = stdout(&out);
    assert!(text.contains("own=ok"), "B must reach its own proxy: {text} {}", stderr(&out));
    assert!(text.contains("other=err EPERM"), "B reached A's proxy at {a_proxy}: {text}");
}
