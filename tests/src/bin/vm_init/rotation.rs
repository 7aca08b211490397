//! Files of `kernel.deny_open` replaced while the agent runs: under `leash run` (part of the
//! `kernel` suite) and under `leash confine` (part of the `daemon` suite, the daemon following).
//!
//! `/var/leash-rotate/token` is laid out as kubelet lays out a projected service-account token
//! (`token -> ..data/token`, `..data -> ..ts1`). The agent (`lsm_probe --rotation-agent`) is
//! refused the token, hard-links the token's file (it owns it), and says it is ready; this side
//! then rotates the token as kubelet does (a new `..ts2/token`, a `..data_tmp` link renamed over
//! `..data`, the old directory removed), creates `later` (listed, missing at the start) and says
//! so. The agent must then be refused the new token, the old one through its link, and `later`;
//! `other`, not listed, stays readable. Before leash followed replaced files, the new token and
//! `later` were readable: the deny list held the inodes of the start.

use super::*;

const DIR: &str = "/var/leash-rotate";
const POLICY: &str = "/tmp/rotation-policy.yaml";
/// The listed paths, for a policy's `deny_open`.
pub const DENY_OPEN: &str = "/var/leash-rotate/token, /var/leash-rotate/later";
/// The agent's uid (`nobody`, whom `leash run` as root without sudo runs it as).
const AGENT_UID: u32 = 65534;

/// Under `leash run`, with a policy of its own; leash's denial lines name the file created
/// later by its path.
pub fn leash_run_checks() -> Vec<Check> {
    let mut stderr = String::new();
    let mut checks = checks("kernel", || {
        let mut cmd = Command::new(LEASH);
        cmd.args(["run", "--policy", POLICY]);
        if kernel_before(6, 1) {
            cmd.arg("--allow-degraded");
        }
        cmd.args(["--", LSM_PROBE, "--rotation-agent"]);
        let out = output(&mut cmd);
        if let Ok(out) = &out {
            stderr = out.stderr.clone();
        }
        out
    });
    let named = stderr.contains(&format!("-> open {DIR}/later ("));
    checks.push(Check::new("kernel:rotation-denial-named", move || {
        if named {
            Ok(format!("the denial of {DIR}/later names it"))
        } else {
            Err(format!("no denial line names {DIR}/later: {stderr}"))
        }
    }));
    checks
}

/// Under `leash confine` as nobody in `container`, with the daemon at `socket` (whose policy
/// lists [`DENY_OPEN`]).
pub fn confine_checks(container: &str, socket: &str) -> Vec<Check> {
    checks("daemon", || output(confine_as_nobody(container, socket).args(["--", LSM_PROBE, "--rotation-agent"])))
}

/// Prepares the directory, runs the agent with `run` while rotating, and checks what it saw.
fn checks(suite: &str, run: impl FnOnce() -> Result<Output, String>) -> Vec<Check> {
    let at = |name: &str| format!("{DIR}/{name}");
    let prepared = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(DIR);
        std::fs::create_dir_all(at("..ts1"))?;
        std::fs::write(at("..ts1/token"), "one\n")?;
        std::os::unix::fs::chown(at("..ts1/token"), Some(AGENT_UID), None)?;
        std::os::unix::fs::symlink("..ts1", at("..data"))?;
        std::os::unix::fs::symlink("..data/token", at("token"))?;
        std::fs::write(at("other"), "other\n")?;
        std::fs::write(POLICY, format!("version: 1\nnetwork_policies: {{}}\nkernel:\n  deny_open: [{DENY_OPEN}]\n"))
    })();
    if let Err(e) = prepared {
        return vec![Check::new(format!("{suite}:rotation-fixtures"), move || Err(e.to_string()))];
    }
    set_mode(DIR, 0o1777);
    set_mode(&at("..ts1/token"), 0o644);
    set_mode(&at("other"), 0o644);
    set_mode(POLICY, 0o644);

    // kubelet's side: once the agent is ready, rotate.
    let rotator = std::thread::spawn(move || -> Result<(), String> {
        let at = |name: &str| format!("{DIR}/{name}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Path::new(&at("ready")).exists() {
            if Instant::now() > deadline {
                return Err("the agent never said it was ready".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (|| -> std::io::Result<()> {
            std::fs::create_dir(at("..ts2"))?;
            std::fs::write(at("..ts2/token"), "two\n")?;
            std::os::unix::fs::symlink("..ts2", at("..data_tmp"))?;
            std::fs::rename(at("..data_tmp"), at("..data"))?;
            std::fs::remove_dir_all(at("..ts1"))?;
            std::fs::write(at("later"), "later\n")?;
            std::fs::write(at("rotated"), "")
        })()
        .map_err(|e| format!("rotating: {e}"))
    });
    let out = run();
    let rotated = rotator.join().unwrap_or_else(|_| Err("the rotating thread panicked".into()));
    let out = match (out, rotated) {
        (Ok(out), Ok(())) => out,
        (Err(e), _) | (_, Err(e)) => return vec![Check::new(format!("{suite}:rotation-run"), move || Err(e))],
    };
    let want = [
        ("token-before", "EPERM"),
        ("link-old", "ok"),
        ("token-after", "EPERM"),
        ("old-link-after", "EPERM"),
        ("later-after", "EPERM"),
        ("other-after", "ok"),
    ];
    want.into_iter()
        .map(|(name, expected)| {
            let line = format!("ROTATION {name} ");
            let got = out.stdout.lines().find_map(|l| l.strip_prefix(&line)).map(str::to_owned);
            let detail = format!("{name}: want {expected}, got {got:?} ({})", out.describe());
            let pass = got.as_deref() == Some(expected);
            Check::new(format!("{suite}:rotation-{name}"), move || {
                if pass {
                    Ok(format!("{name}: {expected}"))
                } else {
                    Err(detail)
                }
            })
        })
        .collect()
}
