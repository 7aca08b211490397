//! One sandbox's kernel state, the same for `leash run`, the node daemon and the reaper: its
//! cgroup, its entries in the generation's maps (network, counters; with `kernel:` rules, its
//! BPF-LSM registration) and its network programs' links, pinned under its name. Made entries
//! first and links second, so that a process is confined from the moment it enters the cgroup
//! (the caller puts it there last); removed once the cgroup is empty (the caller kills what is
//! left first): the cgroup, then entries and links, so that a cgroup that could not be removed
//! keeps its confinement.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sandbox_common::SandboxNet;

use super::cgroup::SandboxCgroup;
use super::deny_open::{RulesInForce, Write};
use super::generation::Generation;
use super::lsm::Registration;
use super::lsm_rules::LsmRules;

/// A sandbox's kernel state. Its cgroup is `leash-<name>`, its links are pinned under
/// `sandboxes/<name>/`.
#[derive(Debug, Clone)]
pub struct KernelSandbox {
    name: String,
    cgroup: SandboxCgroup,
}

impl KernelSandbox {
    /// Creates the cgroup `<parent>/leash-<name>`, writes its network entry `net` and attaches the
    /// generation's network programs. On failure, what was made is removed again.
    pub fn create(generation: &mut Generation, parent: &Path, name: &str, net: SandboxNet) -> Result<Self> {
        // Both names are claimed before anything is made: what a failure removes is this
        // sandbox's alone, never another's of the same name.
        generation.claim_pins(name)?;
        let cgroup = match SandboxCgroup::create(parent, name) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                let _ = generation.detach(name, None);
                return Err(e);
            }
        };
        let sandbox = Self { name: name.to_owned(), cgroup };
        let made = generation
            .add_entries(sandbox.cgroup.id(), net)
            .and_then(|()| generation.attach(sandbox.cgroup.path(), name, net.flags));
        if let Err(e) = made {
            return Err(match sandbox.remove(generation) {
                Ok(()) => e,
                Err(left) => e.context(format!("and removing what was made failed: {left:#}")),
            });
        }
        Ok(sandbox)
    }

    /// A sandbox made earlier (a record of the daemon's, a dead leash's cgroup), whose cgroup may
    /// be gone: what [`KernelSandbox::remove`] removes.
    pub fn made(name: &str, cgroup: PathBuf, cgroup_id: u64) -> Self {
        Self { name: name.to_owned(), cgroup: SandboxCgroup::known(cgroup, cgroup_id) }
    }

    /// Puts `rules` in force for the sandbox with BPF-LSM, its proxy (of `net`) the one IP
    /// address it may reach; attaches the programs if no other sandbox on the host had.
    pub fn enforce(&self, generation: &mut Generation, rules: &LsmRules, net: SandboxNet) -> Result<()> {
        generation.register_lsm(&self.registration(rules, net))
    }

    /// Replaces the sandbox's BPF-LSM rules (policy reload).
    pub fn update(&self, generation: &mut Generation, rules: &LsmRules, net: SandboxNet) -> Result<()> {
        generation.update_lsm(&self.registration(rules, net))
    }

    /// Writes what `in_force` asks after a look at its files: nothing, the open deny list's
    /// changes, or the rules whole (after a failed write). On failure the next look writes the
    /// rules whole.
    pub fn follow(
        &self,
        generation: &mut Generation,
        in_force: &mut RulesInForce,
        write: Write,
        net: SandboxNet,
    ) -> Result<()> {
        let written = match write {
            Write::Nothing => return Ok(()),
            Write::DenyOpen => {
                let (added, removed) = in_force.deny_open_changes();
                generation.change_deny_open(self.cgroup.id(), &added, &removed)
            }
            Write::Whole => self.update(generation, in_force.rules(), net),
        };
        match written {
            Ok(()) => in_force.written(),
            Err(_) => in_force.undo(),
        }
        written
    }

    fn registration<'a>(&self, rules: &'a LsmRules, net: SandboxNet) -> Registration<'a> {
        Registration { cgroup_id: self.cgroup.id(), level: 0, descendants: false, rules, proxy: Some(net) }
    }

    pub fn cgroup(&self) -> &SandboxCgroup {
        &self.cgroup
    }

    /// Removes the cgroup, then entries and links. A cgroup that still holds a process is not
    /// removed (the error says so), and its confinement stays: entries and links too.
    pub fn remove(self, generation: &mut Generation) -> Result<()> {
        let id = self.cgroup.id();
        self.cgroup.remove()?;
        generation.release(&self.name, id)
    }
}
