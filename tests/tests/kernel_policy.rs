//! `kernel:` policies (BPF-LSM) on this host. Where the kernel refuses BPF-LSM programs (the
//! hosts here: EPERM for every BTF-attached program), `leash run` must refuse such a policy
//! (exit 125) unless `--allow-degraded`, and the LSM probe must report every check as refused by
//! the kernel rather than pass it. Where BPF-LSM works, the same tests check enforcement. The
//! full per-hook checks run in VMs (`cargo xtask vm-test`, suite `lsm`).

use std::process::Command;

use leash_tests::*;

/// Whether this kernel runs BPF-LSM programs, according to `leash doctor`.
fn bpf_lsm_available() -> bool {
    let out = leash(&["doctor", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().iter().find(|r| r["layer"] == "BPF LSM").unwrap()["available"].as_bool().unwrap()
}

fn kernel_policy(dir: &Scratch, secret: &std::path::Path) -> std::path::PathBuf {
    dir.file(
        "kernel.yaml",
        &format!(
            "version: 1\nnetwork_policies: {{}}\nkernel:\n  exec: {{ allow: [/usr/bin/**, /bin/**] }}\n  deny_open: [{}]\n  deny: [ptrace, bpf, mount, userns, perf_event, raw_socket, packet_socket, kill_outside, kernel_module]\n",
            secret.display()
        ),
    )
}

#[test]
fn kernel_rules_without_bpf_lsm_are_refused_unless_degraded() {
    require_root();
    let dir = Scratch::new("kernel-policy");
    let secret = dir.file("secret", "token");
    let policy = kernel_policy(&dir, &secret);
    let out = leash_run(&policy, &[], &["/bin/cat", secret.to_str().unwrap()]);
    if bpf_lsm_available() {
        // Enforced: the agent starts, and the deny-listed file stays closed to it.
        assert_eq!(out.status.code(), Some(1), "cat must fail on the deny-listed file: {}", stderr(&out));
        assert!(!stdout(&out).contains("token"));
        assert!(stderr(&out).contains("lsm_file_open"), "no audit line: {}", stderr(&out));
        return;
    }
    assert_eq!(out.status.code(), Some(125), "a kernel: policy without BPF-LSM must be refused: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("syscall policy (BPF-LSM)") && err.contains("--allow-degraded"), "{err}");
    assert!(!stdout(&out).contains("token"), "the agent must not have run");

    // Degraded on purpose: it runs, and says plainly what is not enforced.
    let out = leash_run(&policy, &["--allow-degraded"], &["/bin/cat", secret.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not enforced: syscall policy (BPF-LSM)"), "{}", stderr(&out));
}

#[test]
fn bad_kernel_sections_fail_before_anything_starts() {
    require_root();
    let dir = Scratch::new("kernel-policy-bad");
    let policy = dir
        .file("p.yaml", "version: 1\nnetwork_policies: {}\nkernel:\n  exec: { allow: [/nonexistent-leash-dir/*] }\n");
    let out = leash_run(&policy, &["--allow-degraded"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("matches no executable"), "{}", stderr(&out));
    for (yaml, needle) in [
        ("kernel: { unix: { allow: [relative.sock] } }", "unix socket path"),
        ("kernel: { unix: { allow: ['@'] } }", "abstract socket name"),
        ("kernel: { deny: [teleport] }", "teleport"),
    ] {
        let policy = dir.file("q.yaml", &format!("version: 1\nnetwork_policies: {{}}\n{yaml}\n"));
        let out = leash(&["policy", "check", policy.to_str().unwrap()]).output().unwrap();
        assert!(!out.status.success(), "{yaml} was accepted");
        assert!(stderr(&out).contains(needle), "{yaml}: {}", stderr(&out));
    }
}

#[test]
fn lsm_probe_reports_refusal_instead_of_passing() {
    require_root();
    let probe = env!("CARGO_BIN_EXE_lsm_probe");
    let out = Command::new(probe).output().unwrap();
    let text = stdout(&out);
    if bpf_lsm_available() {
        assert_eq!(out.status.code(), Some(0), "{text}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "the probe must not pass without BPF-LSM: {text}");
    for check in
        ["packet-socket", "exec-memfd", "open-deny-listed-hardlink", "kill-outside", "io_uring-connect-not-proxy"]
    {
        assert!(text.contains(&format!("lsm:{check} REFUSED-BY-KERNEL")), "{check} missing: {text}");
    }
    assert!(!text.contains(" PASS "), "{text}");
}
