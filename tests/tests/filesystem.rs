//! The filesystem layer (Landlock): outside `read_write` the agent cannot write, inside it can;
//! a `hard_requirement` on a kernel without Landlock is refused rather than ignored.

use leash_tests::*;

/// Whether this kernel offers Landlock, according to `leash doctor`.
fn landlock_available() -> bool {
    let out = leash(&["doctor", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().iter().find(|r| r["layer"] == "Landlock").unwrap()["available"].as_bool().unwrap()
}

#[test]
fn writes_outside_read_write_paths_are_denied() {
    require_root();
    let allowed = Scratch::new("fs-rw");
    let forbidden = Scratch::new("fs-ro");
    let policy = allowed.file(
        "p.yaml",
        &format!(
            "version: 1\nnetwork_policies: {{}}\nlandlock: {{ compatibility: hard_requirement }}\nfilesystem_policy:\n  include_workdir: false\n  read_only: [/usr, /lib, /lib64, /bin, /etc, /proc, /dev]\n  read_write: [{}]\n",
            allowed.0.display()
        ),
    );
    let script = format!(
        "echo a > {a}/ok && echo wrote-allowed; echo b > {f}/no && echo wrote-forbidden; cat {f}/seen && echo read-forbidden; true",
        a = allowed.0.display(),
        f = forbidden.0.display()
    );
    forbidden.file("seen", "x");
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", &script]);
    if !landlock_available() {
        assert_eq!(out.status.code(), Some(125), "hard_requirement without Landlock must be refused");
        assert!(stderr(&out).contains("Landlock"), "{}", stderr(&out));
        return;
    }
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("wrote-allowed"), "{text} {}", stderr(&out));
    assert!(!text.contains("wrote-forbidden"), "wrote outside read_write: {text}");
    assert!(!text.contains("read-forbidden"), "read outside the policy: {text}");
    assert!(!forbidden.0.join("no").exists());
    // Outside the sandbox the same write works (the directory is world-writable).
    std::fs::write(forbidden.0.join("no"), "b").expect("control write");
}

/// The agent's `/tmp`, `/var/tmp` and `/dev/shm` are new, empty mounts: a policy naming them
/// read-write lets the agent use them (the rule made on the host's directory, hidden under the
/// mount, does not reach them), and one that does not name them keeps them closed.
#[test]
fn the_private_scratch_directories_follow_the_policy() {
    require_root();
    let scratch = Scratch::new("fs-scratch");
    let system = "read_only: [/usr, /lib, /lib64, /bin, /etc, /proc, /dev]";
    let with = scratch.file(
        "with.yaml",
        &format!(
            "version: 1\nnetwork_policies: {{}}\nfilesystem_policy:\n  {system}\n  read_write: [/tmp, /var/tmp, /dev/null]\n"
        ),
    );
    let without = scratch.file(
        "without.yaml",
        &format!(
            "version: 1\nnetwork_policies: {{}}\nfilesystem_policy:\n  {system}\n  read_write: [/var/tmp, /dev/null]\n"
        ),
    );
    let script = "echo a > /tmp/t && cat /tmp/t >/dev/null && echo wrote-in-tmp; \
                  echo b > /var/tmp/v && echo wrote-in-var-tmp; ls /tmp >/dev/null && echo listed-tmp; true";
    if !landlock_available() {
        return;
    }
    let out = leash_run(&with, &[], &["/bin/sh", "-c", script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for used in ["wrote-in-tmp", "wrote-in-var-tmp", "listed-tmp"] {
        assert!(text.contains(used), "{used} missing: {text} {}", stderr(&out));
    }
    let out = leash_run(&without, &[], &["/bin/sh", "-c", script]);
    let text = stdout(&out);
    assert!(text.contains("wrote-in-var-tmp"), "{text} {}", stderr(&out));
    assert!(!text.contains("wrote-in-tmp") && !text.contains("listed-tmp"), "/tmp is not in the policy: {text}");
}
