//! The first ten minutes: the README's first command runs with the default policy and no
//! credential set; credentials are required only when the policy says so; short values are
//! refused rather than matched everywhere; an agent user without a home gets a private one.

use leash_tests::*;

/// `leash run` with the built-in default policy, leash's environment stripped of credentials and
/// of sudo's variables (root without sudo: the agent runs as `nobody`).
fn leash_default(extra_env: &[(&str, &str)], cmd: &[&str]) -> std::process::Output {
    leash_default_with(&[], extra_env, cmd)
}

/// [`leash_default`] with `leash run` options.
fn leash_default_with(options: &[&str], extra_env: &[(&str, &str)], cmd: &[&str]) -> std::process::Output {
    let mut c = leash(&["run"]);
    c.args(options).arg("--").args(cmd);
    for var in ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "SUDO_UID", "SUDO_GID", "SUDO_USER"] {
        c.env_remove(var);
    }
    c.envs(extra_env.iter().copied());
    c.output().expect("running leash")
}

#[test]
fn the_default_policy_runs_with_no_credential_set() {
    require_root();
    let out = leash_default(&[], &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("credential GITHUB_TOKEN is not set"), "{err}");
    let out = leash_default(&[], &["/bin/sh", "-c", "echo token=${GITHUB_TOKEN-unset}"]);
    assert!(stdout(&out).contains("token=unset"), "no placeholder for a credential without a value: {}", stdout(&out));
}

#[test]
fn a_required_credential_that_is_absent_stops_the_run() {
    require_root();
    let scratch = Scratch::new("first-required");
    let policy = scratch.file(
        "policy.yaml",
        "version: 1\nnetwork_policies: {}\ncredentials:\n  API_TOKEN: { hosts: [api.example.test], required: true }\n",
    );
    let mut c = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/true"]);
    c.env_remove("API_TOKEN");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("API_TOKEN"), "{}", stderr(&out));
    let out = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/true"])
        .env("API_TOKEN", "a-real-length-token-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_short_credential_value_is_refused_and_a_real_one_keeps_path_and_home() {
    require_root();
    let out = leash_default(&[("GITHUB_TOKEN", "y")], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("GITHUB_TOKEN") && stderr(&out).contains("shorter than 8"), "{}", stderr(&out));
    let out = leash_default(
        &[("GITHUB_TOKEN", "ghp_0123456789abcdefghijABCDEFGHIJ012345")],
        &["/bin/sh", "-c", "echo path=${PATH:+set} home=${HOME:+set} token=$GITHUB_TOKEN"],
    );
    let text = stdout(&out);
    assert!(text.contains("path=set home=set"), "{text} {}", stderr(&out));
    assert!(text.contains("token=leash:resolve:env:GITHUB_TOKEN"), "{text}");
}

#[test]
fn an_agent_without_a_home_gets_a_private_one_that_goes_with_it() {
    require_root();
    // A stand-in for Claude Code's Bash tool: node makes its state directory under $HOME and runs
    // a shell command that writes there.
    let node = "const fs = require('fs'), os = require('os'), cp = require('child_process');\n\
                const dir = os.homedir() + '/.claude/shell-snapshots';\n\
                fs.mkdirSync(dir, { recursive: true });\n\
                cp.execSync('echo bash-ok > ' + dir + '/out && cat ' + dir + '/out', { stdio: 'inherit' });\n\
                console.log('home=' + os.homedir());";
    // Debian's node, which the agent's user can run (.ci/run installs nodejs).
    let node_bin = "/usr/bin/node";
    assert!(std::path::Path::new(node_bin).exists(), "{node_bin} must be installed");
    let out = leash_default(&[], &[node_bin, "-e", node]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text} {}", stderr(&out));
    assert!(text.contains("bash-ok"), "{text}");
    let home = text.lines().find_map(|l| l.strip_prefix("home=")).unwrap_or_default().to_owned();
    assert_ne!(home, "/nonexistent");
    // The next sandbox starts with an empty one: nothing of the first is left.
    let out = leash_default(&[], &["/bin/sh", "-c", "ls -A $HOME | wc -l"]);
    assert_eq!(stdout(&out).trim(), "0", "the private home outlived its sandbox: {}", stderr(&out));
    assert!(!std::path::Path::new(&home).join(".claude").exists(), "the private home is on the host");
}

/// `--keep-home DIR`: the home leash gives an agent without one is DIR, the agent's own, and
/// stays; a DIR leash could be tricked into handing over (a link to a root directory, another
/// user's directory, one the agent would not see) is refused and left as it was.
#[test]
fn keep_home_keeps_the_agents_home_and_refuses_what_is_not_its() {
    require_root();
    use std::os::unix::fs::MetadataExt as _;
    let scratch = Scratch::new("keep-home");
    let home = scratch.0.join("agent-home");
    let write = "echo kept > $HOME/state && echo home=$HOME";
    let keep = ["--keep-home", home.to_str().unwrap()];
    let out = leash_default_with(&keep, &[], &["/bin/sh", "-c", write]);
    assert_eq!(out.status.code(), Some(0), "{} {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("home={}", home.display())), "{}", stdout(&out));
    let meta = std::fs::metadata(&home).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o700), "the home is the agent's alone");
    assert_eq!(std::fs::read_to_string(home.join("state")).unwrap(), "kept\n");
    // The next run finds it again.
    let out = leash_default_with(&keep, &[], &["/bin/cat", &format!("{}/state", home.display())]);
    assert_eq!(stdout(&out), "kept\n", "{}", stderr(&out));

    // A link to a directory root owns: not followed, not handed over.
    let root_dir = scratch.0.join("roots");
    std::fs::create_dir(&root_dir).unwrap();
    let link = scratch.0.join("link-home");
    std::os::unix::fs::symlink(&root_dir, &link).unwrap();
    let other = scratch.0.join("others");
    std::fs::create_dir(&other).unwrap();
    std::os::unix::fs::chown(&other, Some(12345), None).unwrap();
    for (dir, why) in [
        (link.as_path(), "link"),
        (other.as_path(), "uid 12345"),
        (std::path::Path::new("/tmp/leash-kept-home"), "empty"),
    ] {
        let out = leash_default_with(&["--keep-home", dir.to_str().unwrap()], &[], &["/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "{}: {}", dir.display(), stderr(&out));
        assert!(stderr(&out).contains("refusing --keep-home") && stderr(&out).contains(why), "{}", stderr(&out));
    }
    assert_eq!(std::fs::metadata(&root_dir).unwrap().uid(), 0, "the link's target was handed to the agent");
    assert_eq!(std::fs::metadata(&other).unwrap().uid(), 12345);
    assert!(!std::path::Path::new("/tmp/leash-kept-home").exists());
}

#[test]
fn the_agent_ending_prints_what_was_denied_unless_quiet() {
    require_root();
    let probe = env!("CARGO_BIN_EXE_netprobe");
    let scratch = Scratch::new("first-summary");
    let policy = scratch.file("policy.yaml", "version: 1\nnetwork_policies: {}\n");
    let log = scratch.0.join("audit.jsonl");
    let script =
        format!("{probe} get proxy blocked.example.test:443; {probe} get proxy blocked.example.test:443; exit 3");
    let out = leash_run(&policy, &["--audit-log", log.to_str().unwrap()], &["/bin/sh", "-c", &script]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ended (exit 3)"), "{err}");
    assert!(err.contains("denied: 2 connection(s) and 0 request(s) at the proxy"), "{err}");
    assert!(err.contains("top denied destinations: blocked.example.test:443 (2)"), "{err}");
    assert!(err.contains(&format!("audit log: {}", log.display())), "{err}");
    let out = leash_run(&policy, &["--quiet"], &["/bin/sh", "-c", &script]);
    assert!(!stderr(&out).contains("ended (exit"), "--quiet still printed the summary: {}", stderr(&out));
}
