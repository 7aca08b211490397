//! The node daemon's half of following the replaced files of an open deny list
//! ([`crate::kernel::deny_open`]), for the case the DaemonSet's own policy names: a pod's
//! service-account token, which kubelet rotates while the agent runs.
//!
//! Each sandbox's paths are looked up in the root directory of one of its own processes, on the
//! daemon's tick and without the node's lock (a pod decides how long a lookup in its filesystem
//! takes, and no other pod's request may wait on that); what changed is put in force under it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::kernel::deny_open::RulesInForce;
use crate::kernel::fs_root::FsRoot;

/// One sandbox's rules in force, and whether its last look failed (said once).
pub struct Entry {
    pub in_force: RulesInForce,
    pub failing: bool,
}

/// The sandboxes whose open deny list is followed, by id.
#[derive(Default)]
pub struct Followed {
    sandboxes: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
}

impl Followed {
    /// Follows sandbox `id`'s files from now on.
    pub fn add(&self, id: &str, in_force: RulesInForce) {
        if let Ok(mut all) = self.sandboxes.lock() {
            all.insert(id.to_owned(), Arc::new(Mutex::new(Entry { in_force, failing: false })));
        }
    }

    /// Stops following sandbox `id` (it is gone), letting its files go.
    pub fn forget(&self, id: &str) {
        if let Ok(mut all) = self.sandboxes.lock() {
            all.remove(id);
        }
    }

    /// Every followed sandbox, each locked on its own while it is looked at.
    pub fn all(&self) -> Vec<(String, Arc<Mutex<Entry>>)> {
        self.sandboxes.lock().map(|all| all.iter().map(|(id, e)| (id.clone(), e.clone())).collect()).unwrap_or_default()
    }
}

/// The root directory of a process in sandbox `id`'s cgroup `cgroup`, if it has one. The
/// process is checked to be in the sandbox after its root is open: a number that went to
/// another process meanwhile is not used.
pub fn root_of_sandbox(cgroup: &Path, id: &str) -> Option<FsRoot> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()).find_map(|pid| {
        let root = FsRoot::of_process(pid).ok()?;
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = now.lines().find_map(|l| l.strip_prefix("0::"))?;
        path.ends_with(&format!("/leash-{id}")).then_some(root)
    })
}
