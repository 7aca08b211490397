//! The node daemon's half of following the replaced files of an open deny list
//! ([`crate::kernel::deny_open`]), for the case the DaemonSet's own policy names: a pod's
//! service-account token, which kubelet rotates while the agent runs.
//!
//! Each sandbox's paths are looked up in the root directory its process had when it was confined
//! (held: a process of the sandbox that chroots elsewhere later does not move it), on the
//! daemon's tick, on a thread of its own and without the node's lock (a pod decides how long a
//! lookup in its filesystem takes, and no other pod's request may wait on that); what changed
//! is put in force under it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::kernel::deny_open::RulesInForce;
use crate::kernel::fs_root::FsRoot;

/// One sandbox's rules in force, the root its paths are looked up in, whether its last look
/// failed (said once), and whether it is being ended (tried once).
pub struct Entry {
    pub in_force: RulesInForce,
    pub root: FsRoot,
    pub failing: bool,
    pub ending: bool,
}

/// The sandboxes whose open deny list is followed, by id.
#[derive(Default)]
pub struct Followed {
    sandboxes: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
}

impl Followed {
    /// Follows sandbox `id`'s files from now on.
    pub fn add(&self, id: &str, in_force: RulesInForce, root: FsRoot) {
        if let Ok(mut all) = self.sandboxes.lock() {
            all.insert(id.to_owned(), Arc::new(Mutex::new(Entry { in_force, root, failing: false, ending: false })));
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
