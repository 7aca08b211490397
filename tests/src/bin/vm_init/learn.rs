//! The `learn` suite: `leash run --learn` learns the files and programs of a session
//! (`kernel.exec.allow`, `filesystem_policy:`), and the learned policy, enforced, lets the same
//! session run with nothing denied and refuses what it did not do.
//!
//! The agent is `lsm_probe --learn-agent`: it reads `/etc/passwd`, writes a file in
//! `/var/leash-learn`, makes, fills and removes a directory there, and runs the dynamic
//! `/usr/bin/true`. With `--extra` it also runs `/bin/leash` and writes in `/var/tmp`, neither of
//! which the learning run did: BPF-LSM must refuse the first (EPERM), Landlock the second (EACCES,
//! 6.1+; 5.10 has no Landlock and runs degraded).

use super::*;

/// lsm_probe's workspace (`agent::LEARN_DIR` there).
const LEARN_DIR: &str = "/var/leash-learn";
const BASE: &str = "/tmp/learn-base.yaml";
const LEARNED: &str = "/tmp/learned.yaml";
/// The agent's actions of a plain session.
const SESSION: [&str; 4] = ["read-system-file", "write-file", "write-in-made-directory", "run-dynamic"];

pub fn learn_suite() -> Vec<Check> {
    let prepared = std::fs::create_dir_all(LEARN_DIR)
        .and_then(|()| std::fs::write(BASE, "version: 1\nnetwork_policies: {}\n"))
        .map_err(|e| format!("fixtures: {e}"));
    if let Err(e) = prepared {
        return vec![Check::new("learn:fixtures", move || Err(e))];
    }
    set_mode(LEARN_DIR, 0o1777);
    let degraded = kernel_before(6, 1);
    let run = |policy: &str, extra: &[&str], agent: &[&str]| {
        let mut cmd = Command::new(LEASH);
        cmd.args(["run", "--policy", policy]).args(extra);
        if degraded {
            cmd.arg("--allow-degraded");
        }
        cmd.arg("--").arg(LSM_PROBE).arg("--learn-agent").args(agent);
        output(&mut cmd)
    };
    let learning = match run(BASE, &["--learn", LEARNED], &[]) {
        Ok(o) => o,
        Err(e) => return vec![Check::new("learn:run", move || Err(e))],
    };
    let text = std::fs::read_to_string(LEARNED).unwrap_or_default();
    println!("learned policy:\n{text}");
    let mut checks = Vec::new();
    let all_ok = SESSION.iter().all(|a| learning.stdout.contains(&format!("AGENT {a} ok")));
    let detail = format!("exit {:?}; {}", learning.status, learning.stdout.trim());
    let ran = learning.status == Some(0) && all_ok && learning.stderr.contains("nothing was denied");
    checks.push(verdict("learn:session-runs-with-nothing-denied", ran, detail));

    let parsed = leash::policy::parse_str(LEARNED, &text);
    let show = |paths: &[std::path::PathBuf]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    let exec: Vec<String> = parsed.as_ref().ok().and_then(|p| p.kernel()?.exec_allow.clone()).unwrap_or_default();
    let (read_only, writable) = match parsed.as_ref().ok().and_then(|p| p.filesystem()) {
        Some(fs) => (show(&fs.read_only), show(&fs.read_write)),
        None => (Vec::new(), Vec::new()),
    };
    checks.push(verdict(
        "learn:programs-run-are-learned",
        exec.iter().any(|p| p == LSM_PROBE) && exec.iter().any(|p| p == "/usr/bin/true"),
        format!("kernel.exec.allow {exec:?}"),
    ));
    checks.push(verdict(
        "learn:loader-is-not-a-program",
        !exec.iter().any(|p| p.contains("ld-linux")),
        format!("kernel.exec.allow {exec:?}"),
    ));
    checks.push(verdict(
        "learn:written-directory-is-learned",
        writable.iter().any(|p| p == LEARN_DIR) && !writable.iter().any(|p| p.contains("/tmp-")),
        format!("read_write {writable:?} (the directory made and removed is folded into its parent)"),
    ));
    checks.push(verdict(
        "learn:system-directory-read-is-learned",
        read_only.iter().any(|p| p == "/etc"),
        format!("read_only {read_only:?}"),
    ));

    let check = output(Command::new(LEASH).args(["policy", "check", LEARNED]));
    let passed = check.as_ref().is_ok_and(|o| o.status == Some(0));
    checks.push(verdict("learn:policy-check-passes", passed, describe(&check)));

    let replay = run(LEARNED, &[], &[]);
    let replayed = replay.as_ref().is_ok_and(|o| {
        o.status == Some(0)
            && SESSION.iter().all(|a| o.stdout.contains(&format!("AGENT {a} ok")))
            && o.stderr.contains("nothing was denied")
    });
    checks.push(verdict("learn:replay-enforced-denies-nothing", replayed, describe(&replay)));

    let extra = run(LEARNED, &[], &["--extra"]);
    let exec_refused = extra.as_ref().is_ok_and(|o| o.stdout.contains("AGENT extra-run EPERM"));
    checks.push(verdict("learn:unlearned-program-refused", exec_refused, describe(&extra)));
    let write_refused = extra.as_ref().is_ok_and(|o| o.stdout.contains("AGENT extra-write EACCES"));
    if degraded {
        let skipped = extra.as_ref().is_ok_and(|o| o.stderr.contains("not enforced: filesystem (Landlock)"));
        checks.push(verdict("learn:unlearned-write-unenforced-without-landlock", skipped, describe(&extra)));
    } else {
        checks.push(verdict("learn:unlearned-write-refused", write_refused, describe(&extra)));
    }
    checks
}

fn verdict(name: &str, pass: bool, detail: String) -> Check {
    Check::new(name, move || if pass { Ok(detail) } else { Err(detail) })
}

fn describe(o: &Result<Output, String>) -> String {
    match o {
        Ok(o) => format!("exit {:?}; stdout {}; stderr {}", o.status, o.stdout.trim(), o.stderr.trim()),
        Err(e) => e.clone(),
    }
}
