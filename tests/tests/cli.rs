//! `leash doctor` and `leash policy`: what users run before `leash run`.

use leash_tests::*;

#[test]
fn doctor_reports_every_layer_and_its_exit_code_agrees() {
    require_root();
    let out = leash(&["doctor", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let rows = rows.as_array().expect("an array of rows");
    let layers: Vec<&str> = rows.iter().map(|r| r["layer"].as_str().unwrap()).collect();
    assert_eq!(layers, ["cgroup v2", "bpffs", "BTF", "cgroup programs", "BPF LSM", "Landlock", "socket diagnostics"]);
    let available = |name: &str| rows.iter().find(|r| r["layer"] == name).unwrap()["available"].as_bool().unwrap();
    // The network layer is what `leash run` needs on every host these tests run on.
    for layer in ["cgroup v2", "bpffs", "cgroup programs", "socket diagnostics"] {
        assert!(available(layer), "{layer} should work on this host: {rows:?}");
    }
    for r in rows {
        assert!(!r["detail"].as_str().unwrap().is_empty(), "every row says why: {r}");
    }
    let all = rows.iter().all(|r| r["available"].as_bool().unwrap());
    assert_eq!(out.status.success(), all, "exit 0 exactly when every layer works");

    let table = leash(&["doctor"]).output().unwrap();
    assert_eq!(stdout(&table).lines().count(), 7, "{}", stdout(&table));
}

#[test]
fn doctor_sees_a_host_without_cgroup_v2() {
    require_root();
    let scratch = Scratch::new("doctor");
    let mountinfo = scratch.file("mountinfo", "25 30 0:23 / /sys rw shared:7 - sysfs sysfs rw\n");
    let bpffs_mounts = || {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines().filter(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf ")).count()
    };
    let before = bpffs_mounts();
    let out = leash(&["doctor", "--json"]).env("LEASH_MOUNTINFO", &mountinfo).output().unwrap();
    assert!(!out.status.success());
    // A mountinfo that lists no bpffs must not make leash mount one over the host's (hiding its pins).
    assert_eq!(bpffs_mounts(), before, "leash mounted a bpffs over /sys/fs/bpf");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["layer"], "cgroup v2");
    assert_eq!(rows[0]["available"], false);
    assert!(rows[0]["detail"].as_str().unwrap().contains("cgroup v2"));
}

#[test]
fn policy_check_accepts_the_shipped_policies_and_locates_errors() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let default = root.join("policies/default.yaml");
    let out = leash(&["policy", "check", default.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for entry in std::fs::read_dir(root.join("policies/examples")).unwrap() {
        let p = entry.unwrap().path();
        let out = leash(&["policy", "check", p.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}: {}", p.display(), stderr(&out));
    }

    let scratch = Scratch::new("check");
    let bad = scratch.file("bad.yaml", "version: 1\nnetwork_policies:\n  gh:\n    name: gh\n    endpoints:\n      - { host: api.github.com, port: 443, protocl: rest }\n");
    let out = leash(&["policy", "check", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("{}:6:", bad.display())), "{err}");
    assert!(err.contains("protocl"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn policy_eval_prints_the_decision() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let default = root.join("policies/default.yaml");
    let eval = |host: &str, port: &str| -> serde_json::Value {
        let out =
            leash(&["policy", "eval", default.to_str().unwrap(), "--host", host, "--port", port]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let allowed = eval("api.anthropic.com", "443");
    assert_eq!(allowed["allow"], true, "{allowed}");
    assert_eq!(allowed["network"]["policy"], "anthropic", "{allowed}");
    assert_eq!(allowed["network"]["rule"], "network_policies.anthropic.endpoints[0]", "{allowed}");
    assert_eq!(eval("api.anthropic.com", "80")["allow"], false);
    assert_eq!(eval("evil.example", "443")["allow"], false);

    // With a method and path, the request decision and the rule that made it.
    let example = root.join("policies/examples/github-readonly.yaml");
    let request = |method: &str, path: &str| -> serde_json::Value {
        let out = leash(&[
            "policy",
            "eval",
            example.to_str().unwrap(),
            "--host",
            "api.github.com",
            "--port",
            "443",
            "--method",
            method,
            "--path",
            path,
            "--binary",
            "/usr/bin/git",
        ])
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let get = request("GET", "/repos/o/r");
    assert_eq!(get["request"]["allow"], true, "{get}");
    let delete = request("DELETE", "/repos/o/r");
    assert_eq!(delete["request"]["allow"], false, "{delete}");
    assert!(delete["request"]["rule"].as_str().is_some_and(|r| !r.is_empty()), "{delete}");
}

/// `leash policy eval` judges every reading the proxy judges: each request below is one the
/// proxy refuses (tests/proxy_escapes.rs), and eval must say deny and name the reading.
#[test]
fn policy_eval_denies_what_the_proxy_denies_and_names_the_reading() {
    let scratch = Scratch::new("eval-readings");
    let policy = scratch.file(
        "p.yaml",
        "version: 1\nnetwork_policies:\n  api:\n    name: api\n    endpoints:\n      - host: api.example.test\n        port: 443\n        protocol: rest\n        access: full\n        deny_rules:\n          - { method: DELETE, path: \"/**\" }\n          - { method: \"*\", path: \"/admin/**\" }\n          - { method: \"*\", path: \"/settings\" }\n",
    );
    let eval = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["policy", "eval", policy.to_str().unwrap(), "--host", "api.example.test", "--port", "443"];
        all.extend_from_slice(args);
        let out = leash(&all).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("eval prints JSON")
    };
    let control = eval(&["--method", "GET", "--path", "/repos/x"]);
    assert_eq!((control["allow"].as_bool(), control["reading"].as_str()), (Some(true), Some("as sent")), "{control}");
    let cases: [(&[&str], &str); 4] = [
        (&["--method", "POST", "--path", "/repos/x", "--header", "X-HTTP-Method-Override: delete"], "method override"),
        (&["--method", "GET", "--path", "/admin;v=1/users"], "without ;parameters"),
        (&["--method", "GET", "--path", "/settings/"], "without the trailing slash"),
        (&["--method", "delete", "--path", "/repos/x"], "as sent"),
    ];
    for (args, reading) in cases {
        let d = eval(args);
        assert_eq!(d["allow"].as_bool(), Some(false), "{args:?}: {d}");
        assert_eq!(d["reading"].as_str(), Some(reading), "{args:?}: {d}");
    }
}
