//! The node's policies: every `<NAME>.yaml` in the policies directory (a mounted ConfigMap),
//! compiled, and compiled again when the directory changes. A file that stops compiling keeps
//! its last good version in force (and the daemon says so): an edit never leaves a pod without
//! its policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::policy::{self, CompiledPolicy};

/// One policy as the daemon serves it.
pub struct NodePolicy {
    pub name: String,
    /// The text, for the pod's proxy (`policy` requests).
    pub yaml: String,
    pub compiled: CompiledPolicy,
}

pub struct PolicyStore {
    dir: PathBuf,
    policies: RwLock<BTreeMap<String, Arc<NodePolicy>>>,
    /// What the directory looked like at the last load.
    fingerprint: RwLock<Vec<(String, SystemTime, u64)>>,
}

impl PolicyStore {
    /// Loads `dir`; a missing directory is an empty store (every confine is then refused).
    pub fn open(dir: &Path) -> Self {
        let store = Self {
            dir: dir.to_path_buf(),
            policies: RwLock::new(BTreeMap::new()),
            fingerprint: RwLock::new(Vec::new()),
        };
        store.reload_if_changed();
        store
    }

    pub fn get(&self, name: &str) -> Option<Arc<NodePolicy>> {
        self.policies.read().ok()?.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.policies.read().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    /// Compiles the directory again when a file was added, removed or changed. Returns the
    /// names whose policy changed.
    pub fn reload_if_changed(&self) -> Vec<String> {
        let now = fingerprint(&self.dir);
        if self.fingerprint.read().map(|f| *f == now).unwrap_or(false) {
            return Vec::new();
        }
        let mut changed = Vec::new();
        let mut next = BTreeMap::new();
        let previous = self.policies.read().map(|p| p.clone()).unwrap_or_default();
        for (name, _, _) in &now {
            let path = self.dir.join(format!("{name}.yaml"));
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    crate::say!("leash daemon: warning: reading {}: {e}", path.display());
                    continue;
                }
            };
            if let Some(old) = previous.get(name).filter(|p| p.yaml == text) {
                next.insert(name.clone(), old.clone());
                continue;
            }
            match policy::parse_str(&path.display().to_string(), &text) {
                Ok(compiled) => {
                    changed.push(name.clone());
                    next.insert(name.clone(), Arc::new(NodePolicy { name: name.clone(), yaml: text, compiled }));
                }
                Err(e) => match previous.get(name) {
                    Some(old) => {
                        crate::say!("leash daemon: error: {e}; policy `{name}` keeps its previous version");
                        next.insert(name.clone(), old.clone());
                    }
                    None => crate::say!("leash daemon: error: {e}; policy `{name}` is not available"),
                },
            }
        }
        for name in previous.keys().filter(|n| !next.contains_key(*n)) {
            crate::say!("leash daemon: policy `{name}` was removed; pods using it keep their sandboxes");
            changed.push(name.clone());
        }
        if let Ok(mut p) = self.policies.write() {
            *p = next;
        }
        if let Ok(mut f) = self.fingerprint.write() {
            *f = now;
        }
        changed
    }
}

/// Policy names must be plain file stems (a ConfigMap key is `[-._a-zA-Z0-9]+`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Name, modification time and size of each `*.yaml` in `dir`, following the symlinks a
/// ConfigMap mount uses (its files point into a `..data` directory swapped on update).
fn fingerprint(dir: &Path) -> Vec<(String, SystemTime, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".yaml")?.to_owned();
            if !valid_name(&name) {
                return None;
            }
            let meta = std::fs::metadata(e.path()).ok()?;
            meta.is_file().then(|| (name, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_edit_keeps_the_last_good_version() {
        let dir = std::env::temp_dir().join(format!("leash-policies-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("default.yaml"), "version: 1\n").unwrap();
        std::fs::write(dir.join("..hidden.yaml"), "version: 1\n").unwrap();
        let store = PolicyStore::open(&dir);
        assert_eq!(store.names(), vec!["default".to_string()]);
        std::fs::write(dir.join("default.yaml"), "version: 1\nnot_a_key: 3\n").unwrap();
        store.reload_if_changed();
        assert_eq!(store.get("default").unwrap().yaml, "version: 1\n");
        std::fs::write(dir.join("other.yaml"), "version: 1\n").unwrap();
        assert_eq!(store.reload_if_changed(), vec!["other".to_string()]);
        std::fs::remove_file(dir.join("other.yaml")).unwrap();
        store.reload_if_changed();
        assert!(store.get("other").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_file_stems() {
        assert!(valid_name("default"));
        assert!(valid_name("ci-runner.v2"));
        assert!(!valid_name("../etc/passwd"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
    }
}
