//! Real agent tools under `leash run`, with only the environment leash gives them: curl, Python
//! requests, git and Node reach a local HTTPS upstream through the sandbox's proxy, trusting
//! leash's CA through the variables leash sets, and credentials reach the upstream only as the
//! proxy swaps them in. The agent runs as `nobody`; everything it touches lives in a
//! world-accessible scratch directory.

use std::process::{Command, Output};

use leash_tests::upstream::Upstream;
use leash_tests::*;

const SECRET: &str = "agent-secret-51c0ffee";

/// Inspected `localhost:port` (loopback allowed), every method, with credential TOK bound to it.
fn agent_policy(port: u16) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - host: localhost\n        port: {port}\n        protocol: rest\n        access: full\n        allowed_ips: [127.0.0.0/8]\ncredentials:\n  TOK: {{ hosts: [localhost] }}\n"
    )
}

/// Runs `cmd` under `leash run` with the agent policy for `up`.
fn run_agent(up: &Upstream, scratch: &Scratch, cmd: &[&str]) -> Output {
    let policy = scratch.file("policy.yaml", &agent_policy(up.port()));
    let creds = scratch.secret_file("credentials", &format!("TOK={SECRET}\n"));
    let audit = scratch.0.join("audit.jsonl");
    leash_run(
        &policy,
        &[
            "--upstream-ca",
            up.ca_pem.to_str().unwrap(),
            "--credentials-file",
            creds.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        cmd,
    )
}

fn describe(o: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o))
}

/// Fails if the credential value shows up in leash's stderr or the audit log.
fn assert_secret_not_logged(o: &Output, scratch: &Scratch) {
    assert!(!stderr(o).contains(SECRET), "the credential value appears on leash's stderr:\n{}", stderr(o));
    let audit = std::fs::read_to_string(scratch.0.join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains(SECRET), "the credential value appears in the audit log:\n{audit}");
}

#[test]
fn curl_uses_the_proxy_and_leash_ca_and_cannot_go_direct() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("agent-curl");
    let p = up.port();
    let script = format!(
        "echo \"env-token=$TOK\"; curl -sS --max-time 20 -H \"Authorization: Bearer $TOK\" https://localhost:{p}/curl; echo; \
         if curl -sS --max-time 5 --noproxy '*' https://localhost:{p}/direct >/dev/null 2>&1; then echo direct=ok; else echo direct=refused; fi"
    );
    let out = run_agent(&up, &scratch, &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text.contains("env-token=leash:resolve:env:TOK"),
        "the agent must hold the placeholder, not the value: {}",
        describe(&out)
    );
    let json: serde_json::Value = text
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the upstream: {}", describe(&out)));
    assert_eq!(json["path"], "/curl", "{json}");
    assert_eq!(json["sni"], "localhost", "{json}");
    assert_eq!(
        json["headers"]["authorization"], "Bearer leash:resolve:env:TOK",
        "the echo comes back with the placeholder: {json}"
    );
    assert_eq!(up.last().and_then(|s| s.header("authorization").map(str::to_owned)), Some(format!("Bearer {SECRET}")));
    assert!(json["headers"]["user-agent"].as_str().unwrap_or("").starts_with("curl/"), "{json}");
    assert!(text.contains("direct=refused"), "curl reached the upstream without the proxy: {}", describe(&out));
    assert!(!up.seen().iter().any(|s| s.target == "/direct"), "a direct connection reached the upstream");
    assert_secret_not_logged(&out, &scratch);
}

#[test]
fn python_requests_uses_the_proxy_and_leash_ca() {
    require_root();
    let probe =
        Command::new("/usr/bin/python3").args(["-c", "import requests"]).output().expect("running /usr/bin/python3");
    if !probe.status.success() {
        let why = stderr(&probe);
        assert!(
            why.contains("No module named 'requests'"),
            "python3 fails for another reason than a missing module: {why}"
        );
        println!("skipped: module missing (python3-requests is not installed)");
        return;
    }
    let up = Upstream::https();
    let scratch = Scratch::new("agent-python");
    let code = format!(
        "import os, requests\n\
         r = requests.get('https://localhost:{p}/python', headers={{'Authorization': 'Bearer ' + os.environ['TOK']}}, timeout=20)\n\
         print(r.status_code)\n\
         print(r.text)\n",
        p = up.port()
    );
    let out = run_agent(&up, &scratch, &["/usr/bin/python3", "-c", &code]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.starts_with("200\n"), "{}", describe(&out));
    let json: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap_or("")).unwrap_or_default();
    assert_eq!(json["path"], "/python", "{}", describe(&out));
    assert_eq!(
        json["headers"]["authorization"], "Bearer leash:resolve:env:TOK",
        "the echo comes back with the placeholder: {json}"
    );
    assert_eq!(up.last().and_then(|s| s.header("authorization").map(str::to_owned)), Some(format!("Bearer {SECRET}")));
    assert!(json["headers"]["user-agent"].as_str().unwrap_or("").starts_with("python-requests/"), "{json}");
    assert_eq!(up.count(), 1);
    assert_secret_not_logged(&out, &scratch);
}

#[test]
fn git_clone_over_https_through_the_proxy() {
    require_root();
    let repos = Scratch::new("git-repos");
    let work = repos.0.join("work");
    std::fs::create_dir(&work).unwrap();
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README"), "cloned through leash\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-qm", "first"], &work);
    git(&["clone", "-q", "--bare", "work", "repo.git"], &repos.0);

    let up = Upstream::https_git(&repos.0);
    let scratch = Scratch::new("agent-git");
    let dest = scratch.0.join("clone");
    let url = format!("https://localhost:{}/repo.git", up.port());
    let out = run_agent(&up, &scratch, &["/usr/bin/git", "clone", "-q", &url, dest.to_str().unwrap()]);
    let seen = up.seen();
    let summary: Vec<String> =
        seen.iter().map(|s| format!("{} {} ({})", s.method, s.target, s.header("user-agent").unwrap_or(""))).collect();
    assert!(out.status.success(), "{}\nupstream saw {summary:?}", describe(&out));
    let discovery = seen
        .iter()
        .find(|s| s.method == "GET" && s.target == "/repo.git/info/refs?service=git-upload-pack")
        .unwrap_or_else(|| panic!("no ref discovery at the upstream: {summary:?}"));
    assert!(discovery.header("user-agent").unwrap_or("").starts_with("git/"), "{summary:?}");
    assert!(seen.iter().any(|s| s.method == "POST" && s.target == "/repo.git/git-upload-pack"), "{summary:?}");
    let readme = std::fs::read_to_string(dest.join("README"))
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", dest.display(), describe(&out)));
    assert_eq!(readme, "cloned through leash\n");
}

/// Whether this Node's fetch honours `NODE_USE_ENV_PROXY` (22.21+ on 22.x, 24.5+).
fn node_fetch_uses_env_proxy(version: &str) -> bool {
    let v: Vec<u32> = version.trim().trim_start_matches('v').split('.').map(|n| n.parse().unwrap_or(0)).collect();
    let (major, minor) = (v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0));
    major > 24 || (major == 24 && minor >= 5) || (major == 22 && minor >= 21)
}

#[test]
fn node_fetch_goes_through_the_proxy_or_fails_closed() {
    require_root();
    let version = Command::new("/usr/bin/node").arg("--version").output().expect("running /usr/bin/node");
    let version = stdout(&version).trim().to_owned();
    let up = Upstream::https();
    let scratch = Scratch::new("agent-node");
    let code = format!(
        "fetch('https://localhost:{p}/node', {{ headers: {{ authorization: 'Bearer ' + process.env.TOK }}, signal: AbortSignal.timeout(20000) }})\n\
           .then(async r => {{ console.log('STATUS ' + r.status); console.log(await r.text()); }})\n\
           .catch(e => {{ console.log('ERR ' + e.message + ' ' + (e.cause ? (e.cause.code || e.cause.message) : '')); process.exit(3); }});",
        p = up.port()
    );
    let out = run_agent(&up, &scratch, &["/usr/bin/node", "-e", &code]);
    let text = stdout(&out);
    if node_fetch_uses_env_proxy(&version) {
        assert!(out.status.success() && text.contains("STATUS 200"), "Node {version}: {}", describe(&out));
        let json: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap_or("")).unwrap_or_default();
        assert_eq!(json["path"], "/node", "{}", describe(&out));
        assert_eq!(
            json["headers"]["authorization"], "Bearer leash:resolve:env:TOK",
            "the echo comes back with the placeholder: {json}"
        );
        assert_eq!(
            up.last().and_then(|s| s.header("authorization").map(str::to_owned)),
            Some(format!("Bearer {SECRET}"))
        );
        assert_secret_not_logged(&out, &scratch);
    } else {
        println!("Node {version} cannot use a proxy for fetch (NODE_USE_ENV_PROXY needs 22.21+ or 24.5+): checking it fails closed");
        assert_eq!(out.status.code(), Some(3), "Node {version}'s direct fetch must fail: {}", describe(&out));
        assert!(text.contains("ERR"), "{}", describe(&out));
        assert_eq!(up.count(), 0, "Node {version}'s fetch reached the upstream without the proxy");
        println!("Node {version} fetch failed as expected: {}", text.trim());
    }
}
