//! Learning a policy (`leash run --learn`, `leash policy suggest`) with real clients against a
//! local HTTPS upstream: the learning run writes a policy, `leash policy check` passes it, the
//! same session under it in enforce mode succeeds with nothing denied, and a request to a host
//! it did not learn is denied. The upstream is on loopback, so every learning run here passes
//! `--learn-allow-private`; one test checks that without it loopback is not learned.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leash_tests::upstream::Upstream;
use leash_tests::*;

/// A policy that allows nothing on the network: everything the agent does must be learned.
const NOTHING: &str = "version: 1\nnetwork_policies: {}\n";

fn describe(o: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o))
}

/// `leash run --policy POLICY --upstream-ca CA [extra] -- CMD`.
fn run(up: &Upstream, policy: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["--upstream-ca", up.ca_pem.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    leash_run(policy, &args, cmd)
}

/// Learns a policy from `cmd`, checks it, re-runs `cmd` under it, and returns its text.
fn learn_and_replay(up: &Upstream, scratch: &Scratch, cmd: &[&str]) -> (String, PathBuf) {
    let base = scratch.file("nothing.yaml", NOTHING);
    let learned = scratch.0.join("learned.yaml");
    let out = run(up, &base, &["--learn", learned.to_str().unwrap(), "--learn-allow-private"], cmd);
    assert!(out.status.success(), "learning run: {}", describe(&out));
    assert!(stderr(&out).contains("nothing was denied"), "learning denies nothing: {}", describe(&out));
    let text =
        std::fs::read_to_string(&learned).unwrap_or_else(|e| panic!("{}: {e}\n{}", learned.display(), describe(&out)));
    let check = leash(&["policy", "check"]).arg(&learned).output().expect("running leash policy check");
    assert!(check.status.success(), "policy check: {}\n{text}", describe(&check));

    let seen_before = up.count();
    let replay = run(up, &learned, &[], cmd);
    assert!(replay.status.success(), "enforce run under the learned policy:\n{text}\n{}", describe(&replay));
    assert!(
        stderr(&replay).contains("nothing was denied"),
        "the learned policy must deny nothing of the same session:\n{text}\n{}",
        describe(&replay)
    );
    assert!(up.count() > seen_before, "the replay reached the upstream");
    println!("learned policy:\n{text}");
    (text, learned)
}

/// Files and programs: learned where the kernel runs leash's fexit program (the VM suite `learn`
/// checks those), else left out with the reason named at the top of the file.
fn files_learned_or_refused(text: &str, program: &str) {
    if text.contains("Not learned: files and programs") {
        assert!(text.contains("refused leash's learning program"), "the reason is named:\n{text}");
        assert!(!text.contains("\nfilesystem_policy:"), "{text}");
    } else {
        assert!(text.contains("\nfilesystem_policy:"), "{text}");
        assert!(text.contains(&format!("- '{program}'")), "{program} was run:\n{text}");
    }
}

/// Under `policy`, a curl to `127.0.0.1` (a host the policy does not name) is denied.
fn new_host_is_denied(up: &Upstream, policy: &Path) {
    let url = format!("https://127.0.0.1:{}/new-host", up.port());
    let out = run(up, policy, &[], &["/usr/bin/curl", "-sS", "--fail", "--max-time", "10", &url]);
    assert!(!out.status.success(), "a host the policy did not learn was reached: {}", describe(&out));
    assert!(stderr(&out).contains("denied proxy CONNECT 127.0.0.1"), "{}", describe(&out));
    assert!(!up.seen().iter().any(|s| s.target == "/new-host"), "the new host's request reached the upstream");
}

#[test]
fn curl_round_trip_learns_rules_with_globs_and_no_query() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("learn-curl");
    let p = up.port();
    let script = format!(
        "set -e; curl -sS --fail --max-time 20 https://localhost:{p}/items/42 >/dev/null; \
         curl -sS --fail --max-time 20 -X POST -d note=1 'https://localhost:{p}/items/43/comments?token=sekrit-query' >/dev/null"
    );
    let (text, learned) = learn_and_replay(&up, &scratch, &["/bin/sh", "-c", &script]);
    assert!(text.contains("- allow: { method: 'POST', path: '/items/**/comments' }"), "{text}");
    assert!(text.contains("- allow: { method: 'GET', path: '/items/**' }"), "{text}");
    assert!(text.contains("binaries: [{ path: '/usr/bin/curl' }]"), "{text}");
    assert!(text.contains("allowed_ips: ['127.0.0.1/32'"), "{text}");
    assert!(text.contains("first request GET /items/**"), "{text}");
    assert!(!text.contains("sekrit") && !text.contains("token"), "a query string leaked into the policy:\n{text}");
    files_learned_or_refused(&text, "/usr/bin/curl");
    new_host_is_denied(&up, &learned);
}

#[test]
fn python_requests_round_trip_learns_read_only() {
    require_root();
    let probe = Command::new("/usr/bin/python3").args(["-c", "import requests"]).output().expect("running python3");
    assert!(probe.status.success(), "python3-requests is needed: {}", stderr(&probe));
    let up = Upstream::https();
    let scratch = Scratch::new("learn-python");
    let code = format!(
        "import requests\n\
         for path in ['/py/a', '/py/b/0b4f6c2e-9a8d-4c1e-b2f3-1234567890ab']:\n\
         \x20   r = requests.get('https://localhost:{p}' + path, timeout=20)\n\
         \x20   r.raise_for_status()\n\
         print(requests.head('https://localhost:{p}/py/a', timeout=20).status_code)\n",
        p = up.port()
    );
    let (text, learned) = learn_and_replay(&up, &scratch, &["/usr/bin/python3", "-c", &code]);
    assert!(text.contains("access: read-only"), "{text}");
    assert!(!text.contains("rules:"), "{text}");
    assert!(text.contains("binaries: [{ path: '/usr/bin/python3"), "{text}");
    new_host_is_denied(&up, &learned);
}

#[test]
fn node_round_trip_through_connect() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("learn-node");
    // Node 20's fetch ignores HTTPS_PROXY: the script opens the CONNECT tunnel itself and
    // trusts leash's CA through NODE_EXTRA_CA_CERTS, as leash sets it.
    let code = format!(
        "const http = require('http'), https = require('https'), tls = require('tls');\n\
         const proxy = new URL(process.env.HTTPS_PROXY);\n\
         const c = http.request({{ host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: 'localhost:{p}' }});\n\
         c.on('connect', (res, socket) => {{\n\
           if (res.statusCode !== 200) {{ console.log('CONNECT ' + res.statusCode); process.exit(4); }}\n\
           const r = https.request({{ host: 'localhost', port: {p}, path: '/node/7', method: 'PUT',\n\
               createConnection: () => tls.connect({{ socket, servername: 'localhost' }}) }}, resp => {{\n\
             resp.resume(); resp.on('end', () => {{ console.log('STATUS ' + resp.statusCode); process.exit(resp.statusCode === 200 ? 0 : 5); }});\n\
           }});\n\
           r.on('error', e => {{ console.log('ERR ' + e.message); process.exit(6); }});\n\
           r.end('{{}}');\n\
         }});\n\
         c.on('error', e => {{ console.log('ERR ' + e.message); process.exit(3); }});\n\
         c.end();\n",
        p = up.port()
    );
    let (text, learned) = learn_and_replay(&up, &scratch, &["/usr/bin/node", "-e", &code]);
    assert!(text.contains("- allow: { method: 'PUT', path: '/node/**' }"), "{text}");
    assert!(text.contains("binaries: [{ path: '/usr/bin/node"), "{text}");
    new_host_is_denied(&up, &learned);
}

#[test]
fn git_clone_round_trip() {
    require_root();
    let repos = Scratch::new("learn-git-repos");
    let work = repos.0.join("work");
    std::fs::create_dir(&work).expect("work dir");
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README"), "learned\n").expect("README");
    git(&["add", "README"], &work);
    git(&["commit", "-qm", "first"], &work);
    git(&["clone", "-q", "--bare", "work", "repo.git"], &repos.0);
    let up = Upstream::https_git(&repos.0);
    let scratch = Scratch::new("learn-git");
    let dest = scratch.0.join("clone");
    let url = format!("https://localhost:{}/repo.git", up.port());
    // The same session twice: each run clones afresh.
    let script = format!("rm -rf {d} && /usr/bin/git clone -q {url} {d} && cat {d}/README", d = dest.display());
    let (text, learned) = learn_and_replay(&up, &scratch, &["/bin/sh", "-c", &script]);
    assert!(text.contains("- allow: { method: 'POST', path: '/repo.git/git-upload-pack' }"), "{text}");
    assert!(text.contains("- allow: { method: 'GET', path: '/repo.git/info/refs' }"), "{text}");
    assert!(text.contains("binaries: [{ path: '/usr/lib/git-core/git-remote-http"), "{text}");
    new_host_is_denied(&up, &learned);
}

#[test]
fn loopback_is_not_learned_without_the_flag() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("learn-private");
    let base = scratch.file("nothing.yaml", NOTHING);
    let learned = scratch.0.join("learned.yaml");
    let url = format!("https://localhost:{}/private", up.port());
    let out = run(
        &up,
        &base,
        &["--learn", learned.to_str().unwrap()],
        &["/usr/bin/curl", "-sS", "--fail", "--max-time", "10", &url],
    );
    assert!(!out.status.success(), "loopback was opened by learning: {}", describe(&out));
    assert_eq!(up.count(), 0, "the request reached the upstream");
    let text = std::fs::read_to_string(&learned).expect("the learned file is written even so");
    assert!(text.contains("# not learned: localhost:") && text.contains("--learn-allow-private"), "{text}");
    assert!(text.contains("network_policies: {}"), "{text}");
}

#[test]
fn suggest_merge_keeps_comments_and_order() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("learn-suggest");
    let original = format!(
        "# team policy: do not reorder\nversion: 1\nnetwork_policies:\n  # the local API, reads only\n  local:\n    endpoints:\n      - host: localhost\n        port: {p}\n        protocol: rest\n        access: read-only   # reads\n        allowed_ips: [127.0.0.0/8]\n\n# who the agent runs as, last\nprocess:\n  run_as_user: nobody\n",
        p = up.port()
    );
    let policy = scratch.file("team.yaml", &original);
    let audit = scratch.0.join("audit.jsonl");
    let script = format!(
        "curl -sS --max-time 10 -X DELETE https://localhost:{p}/things/9 ; curl -sS --max-time 10 https://127.0.0.1:{p}/ip ; true",
        p = up.port()
    );
    let out = run(&up, &policy, &["--audit-log", audit.to_str().unwrap()], &["/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let merged_path = scratch.0.join("merged.yaml");
    let merge = leash(&["policy", "suggest", "--from"])
        .arg(&audit)
        .arg("--merge")
        .arg(&policy)
        .arg("--out")
        .arg(&merged_path)
        .output()
        .expect("running leash policy suggest");
    assert!(merge.status.success(), "{}", describe(&merge));
    let merged = std::fs::read_to_string(&merged_path).expect("merged file");
    let mut merged_lines = merged.lines();
    for line in original.lines() {
        assert!(merged_lines.any(|m| m == line), "original line {line:?} is missing or out of order:\n{merged}");
    }
    assert!(merged.contains("  127.0.0.1:"), "the new host is suggested:\n{merged}");
    assert!(merged.contains("#   - allow: { method: 'DELETE', path: '/things/**' }"), "{merged}");
    let check = leash(&["policy", "check"]).arg(&merged_path).output().expect("policy check");
    assert!(check.status.success(), "{}\n{merged}", describe(&check));
    let printed = leash(&["policy", "suggest", "--from"]).arg(&audit).output().expect("suggest");
    assert!(printed.status.success() && stdout(&printed).contains("version: 1"), "{}", describe(&printed));
}
