//! Reaping sandboxes whose `leash run` died without cleaning up (SIGKILL, OOM, power loss of the
//! process): their processes are killed, their entries and pinned links removed and their cgroups
//! deleted. A sandbox whose owner still runs is never touched, so concurrent `leash run`s do not
//! disturb each other, and names that are not a `leash run`'s (the node daemon's) are left to the
//! daemon. Generations of other builds that nothing uses any more are removed too.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::cgroup::{self, SandboxCgroup};
use super::generation::{retire_unused, Generation};
use super::pins;
use super::sandbox::KernelSandbox;
use super::sandbox_id::SandboxId;

/// What one reaping pass removed.
#[derive(Debug, Default)]
pub struct Reaped {
    pub sandboxes: Vec<String>,
    pub generations: Vec<String>,
}

/// Removes every stale sandbox found under the cgroup root and the pin root, then the
/// generations no one uses.
pub fn reap_stale(cgroup_root: &Path, generation: &mut Generation, bpffs: &Path) -> Result<Reaped> {
    let mut names = BTreeSet::new();
    for (name, _) in cgroup::list(cgroup_root)? {
        names.insert(name);
    }
    for name in pins::list(bpffs)? {
        names.insert(name);
    }
    let mut reaped = Reaped::default();
    for name in names {
        // Names that are not a `leash run`'s are left alone.
        let Some(id) = SandboxId::parse(&name) else { continue };
        if id.owner_alive() {
            continue;
        }
        let cg_path = cgroup_root.join(format!("{}{name}", cgroup::PREFIX));
        let pin_dir = pins::sandbox_dir(bpffs, &name);
        let removed = if cg_path.exists() {
            SandboxCgroup::open(cg_path.clone()).and_then(|cg| {
                cg.kill_all(Duration::from_secs(5))?;
                KernelSandbox::made(&name, cg.path().to_path_buf(), cg.id()).remove(generation)
            })
        } else {
            pins::remove_tree(&pin_dir)
        };
        // Another leash may be reaping the same sandbox: what it removed first is not a failure
        // of this one, once nothing of the sandbox is left.
        if let Err(e) = removed {
            if cg_path.exists() || pin_dir.exists() {
                return Err(e);
            }
        }
        reaped.sandboxes.push(name);
    }
    reaped.generations = retire_unused(bpffs)?;
    Ok(reaped)
}
