//! Root only where needed. xtask itself (and every cargo build it starts) runs as whoever
//! invoked it; only the steps that need root are elevated: the test binaries (they load eBPF
//! programs and create cgroups) run through `sudo` as cargo's test runner, and `apt-get install`
//! and installing into a system prefix go through `sudo`. Run as root (as CI does), nothing is
//! elevated and everything runs directly, as before.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run_cmd;

/// This process's real and effective ids: (uid, euid, gid), read from /proc/self/status.
fn ids() -> Option<(u32, u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str, index: usize| -> Option<u32> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(index)?.parse().ok()
    };
    Some((field("Uid:", 1)?, field("Uid:", 2)?, field("Gid:", 1)?))
}

/// True when xtask runs with effective uid 0.
pub fn is_root() -> bool {
    ids().is_some_and(|(_, euid, _)| euid == 0)
}

/// Makes sure `sudo` can run commands as root, asking for the password now (once, before any
/// long build) rather than in the middle of the work. `why` completes "root is needed to ...".
pub fn ensure_sudo(why: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    if !Command::new("sudo").arg("--version").output().is_ok_and(|o| o.status.success()) {
        bail!("root is needed to {why}, and sudo is not installed: install sudo, or run this as root");
    }
    if Command::new("sudo").args(["-n", "true"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    println!("xtask: root is needed to {why}: asking sudo (only that step runs as root)");
    let status = Command::new("sudo").arg("-v").status().context("running sudo -v")?;
    if !status.success() {
        bail!("sudo refused ({status}): root is needed to {why}; run this as a user with sudo rights, or as root");
    }
    Ok(())
}

/// `program` as root: directly when xtask is root, else through `sudo`.
pub fn as_root(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("--").arg(program);
        cmd
    }
}

/// The cargo runner for the host target that runs each test binary as root through `sudo`,
/// as `(variable, value)`: `CARGO_TARGET_<TRIPLE>_RUNNER`. `sudo -E` keeps `LEASH_BIN` and the
/// rest of the environment; the `SUDO_*` variables sudo adds are removed again so the tests see
/// what they see when run as root directly (CI): `leash run` would otherwise run their agents as
/// the invoking user, who owns the checkout and so every directory above the tests' files.
pub fn sudo_test_runner() -> Result<(String, String)> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let host = text
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV printed no host triple")?
        .trim()
        .to_owned();
    let var = format!("CARGO_TARGET_{}_RUNNER", host.to_uppercase().replace(['-', '.'], "_"));
    let value = "sudo -E -- env -u SUDO_UID -u SUDO_GID -u SUDO_USER -u SUDO_COMMAND".to_owned();
    Ok((var, value))
}

/// Gives back to the invoking user whatever under `dir` root left behind (scratch directories
/// of tests that ran as root, a crashed run's leftovers), so the next build and `cargo clean`
/// as that user work. Nothing to do when xtask is root or nothing there is root's; one `sudo
/// chown -R` of the top-most root-owned entries otherwise.
pub fn return_to_user(dir: &Path) -> Result<()> {
    let Some((uid, euid, gid)) = ids() else { return Ok(()) };
    if euid == 0 || !dir.exists() {
        return Ok(());
    }
    let mut foreign = Vec::new();
    collect_root_owned(dir, &mut foreign);
    if foreign.is_empty() {
        return Ok(());
    }
    println!("xtask: giving {} root-owned path(s) under {} back to uid {uid}", foreign.len(), dir.display());
    let mut cmd = as_root("chown");
    cmd.args(["-R", &format!("{uid}:{gid}"), "--"]).args(&foreign);
    run_cmd(&mut cmd)
}

/// The top-most root-owned entries under `dir` (not descending into them: the user may not be
/// able to list them).
fn collect_root_owned(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.uid() == 0 {
            out.push(path);
        } else if meta.is_dir() {
            collect_root_owned(&path, out);
        }
    }
}
