//! Sandbox names: `<owner pid>-<owner start time>`. The name alone tells whether the `leash`
//! process that owns a sandbox is still alive, so reaping needs no state file that a crash could
//! leave stale.

use std::fmt;

use super::proc_stat::start_time;

/// Identifies a sandbox and the leash process that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxId {
    pub owner_pid: u32,
    /// Start time of the owner in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub owner_start: u64,
}

impl SandboxId {
    /// The id of a sandbox owned by this process.
    pub fn for_self() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let owner_start = start_time(pid).ok_or_else(|| anyhow::anyhow!("cannot read this process's start time"))?;
        Ok(Self { owner_pid: pid, owner_start })
    }

    pub fn parse(name: &str) -> Option<Self> {
        let (pid, start) = name.split_once('-')?;
        Some(Self { owner_pid: pid.parse().ok()?, owner_start: start.parse().ok()? })
    }

    /// True while the process that created the sandbox runs (a reused pid has another start time).
    pub fn owner_alive(&self) -> bool {
        start_time(self.owner_pid) == Some(self.owner_start)
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.owner_pid, self.owner_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_id_round_trips_and_is_alive() {
        let id = SandboxId::for_self().unwrap();
        assert_eq!(SandboxId::parse(&id.to_string()), Some(id));
        assert!(id.owner_alive());
    }

    #[test]
    fn other_start_time_is_not_alive() {
        let mut id = SandboxId::for_self().unwrap();
        id.owner_start += 1;
        assert!(!id.owner_alive());
    }

    #[test]
    fn rejects_foreign_names() {
        assert_eq!(SandboxId::parse("abc"), None);
        assert_eq!(SandboxId::parse("12-x"), None);
    }
}
