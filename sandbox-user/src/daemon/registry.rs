//! The daemon's record of its sandboxes: one JSON file per sandbox in the state directory, so a
//! restarted daemon knows what its pinned links and map entries belong to (and whose they are).
//! A file is written before the sandbox's process is moved in and removed after everything
//! else of the sandbox is gone, so a crash at any point leaves a record for the next daemon to
//! finish the job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One sandbox the daemon created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 16 hex digits; the cgroup is `leash-<id>`, the pins `sandboxes/<id>/`.
    pub id: String,
    pub pod_uid: String,
    pub container_id: String,
    /// The sandbox cgroup's directory.
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub policy: String,
    pub proxy: SocketAddr,
    pub netns_cookie: u64,
    pub record_owners: bool,
    /// Transparent mode: the proxy's transparent listener and resolver ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<crate::kernel::programs::TransparentPorts>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// The records on disk and in memory.
pub struct Registry {
    dir: PathBuf,
    records: BTreeMap<String, SandboxRecord>,
}

impl Registry {
    /// Reads every record in `dir` (created if missing). Unreadable files are reported and left
    /// in place for a person to look at.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<SandboxRecord>(&bytes)?));
            match parsed {
                Ok(r) => {
                    records.insert(r.id.clone(), r);
                }
                Err(e) => crate::say!("leash daemon: warning: skipping state file {}: {e:#}", path.display()),
            }
        }
        Ok(Self { dir: dir.to_path_buf(), records })
    }

    /// Stores `record` (write to a temporary file, then rename: never a half-written record).
    pub fn insert(&mut self, record: SandboxRecord) -> Result<()> {
        let path = self.path(&record.id);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&record)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        self.records.insert(record.id.clone(), record);
        Ok(())
    }

    /// Takes sandbox `id` from its pod: no pod's request matches it any more (in memory at once,
    /// whatever storing it does).
    pub fn disown(&mut self, id: &str) -> Result<()> {
        let Some(record) = self.records.get_mut(id) else { return Ok(()) };
        record.pod_uid.clear();
        let record = record.clone();
        self.insert(record)
    }

    pub fn remove(&mut self, id: &str) -> Result<()> {
        self.records.remove(id);
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing state of sandbox {id}")),
        }
    }

    pub fn get(&self, id: &str) -> Option<&SandboxRecord> {
        self.records.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &SandboxRecord> {
        self.records.values()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The sandbox whose cgroup has id `cgroup_id`.
    pub fn by_cgroup(&self, cgroup_id: u64) -> Option<&SandboxRecord> {
        self.records.values().find(|r| r.cgroup_id == cgroup_id)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            pod_uid: "u".into(),
            container_id: "c".into(),
            cgroup: "/sys/fs/cgroup/x".into(),
            cgroup_id: 7,
            policy: "default".into(),
            proxy: "127.0.0.1:3128".parse().unwrap(),
            netns_cookie: 1,
            record_owners: false,
            transparent: None,
            created: 0,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_removal_is_final() {
        let dir = std::env::temp_dir().join(format!("leash-registry-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut reg = Registry::open(&dir).unwrap();
        reg.insert(record("aa")).unwrap();
        reg.insert(record("bb")).unwrap();
        std::fs::write(dir.join("garbage.json"), b"{").unwrap();
        let mut again = Registry::open(&dir).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again.get("aa"), Some(&record("aa")));
        again.remove("aa").unwrap();
        assert_eq!(Registry::open(&dir).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
