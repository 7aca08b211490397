//! Who the agent runs as. Never root: `process.run_as_user` from the policy, else the user who
//! invoked sudo (`SUDO_UID`/`SUDO_GID`), else `nobody`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{Gid, Uid};

use crate::accounts::{self, Account};

use crate::policy::RunAs;

/// The id that set*id(2) calls read as -1, "leave this id unchanged": an account with it would
/// leave the agent root.
const NOT_AN_ID: u32 = u32::MAX;

/// The unprivileged identity the agent gets, resolved before fork.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub name: String,
    pub home: PathBuf,
}

/// Resolves the agent's identity from the policy and the caller's sudo environment.
pub fn resolve(run_as: &RunAs) -> Result<Identity> {
    let user = match &run_as.user {
        Some(name) => lookup_user(name)?,
        None => match sudo_user()? {
            Some(u) => u,
            None => accounts::user_by_name("nobody")?
                .ok_or_else(|| anyhow!("user `nobody` does not exist on this host; set process.run_as_user"))?,
        },
    };
    if user.uid.is_root() {
        bail!("the agent never runs as root (resolved user `{}` has uid 0); set process.run_as_user to an unprivileged user", user.name);
    }
    if user.uid.as_raw() == NOT_AN_ID {
        bail!("user `{}` has uid {NOT_AN_ID}, which setuid(2) reads as \"leave unchanged\" (root); set process.run_as_user to another user", user.name);
    }
    let gid = match &run_as.group {
        Some(g) => lookup_group(g)?,
        None => match (run_as.user.as_ref(), std::env::var("SUDO_GID").ok().and_then(|g| g.parse::<u32>().ok())) {
            (None, Some(g))
                if g != 0
                    && std::env::var("SUDO_UID").ok().and_then(|u| u.parse::<u32>().ok())
                        == Some(user.uid.as_raw()) =>
            {
                Gid::from_raw(g)
            }
            _ => user.gid,
        },
    };
    if gid.as_raw() == 0 || gid.as_raw() == NOT_AN_ID {
        bail!(
            "the agent never runs with group root, nor gid {NOT_AN_ID} (\"leave unchanged\"); set process.run_as_group"
        );
    }
    // No supplementary groups: a `docker` or `wheel` membership of the invoking user would reach
    // host services the sandbox keeps the agent from.
    Ok(Identity { uid: user.uid, gid, groups: vec![gid], name: user.name, home: user.home })
}

/// Whether the agent's home directory exists and is its own (`nobody`'s `/nonexistent` is not).
pub fn home_usable(identity: &Identity) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(&identity.home).is_ok_and(|m| m.is_dir() && m.uid() == identity.uid.as_raw())
}

impl Identity {
    /// The agent's ids, for judging what it can read and write.
    pub fn ids(&self) -> super::host_files::AgentIds {
        super::host_files::AgentIds { uid: self.uid.as_raw(), gids: self.groups.iter().map(|g| g.as_raw()).collect() }
    }
}

fn lookup_user(name: &str) -> Result<Account> {
    let found = match name.parse::<u32>() {
        Ok(uid) => accounts::user_by_uid(Uid::from_raw(uid))?,
        Err(_) => accounts::user_by_name(name)?,
    };
    found.ok_or_else(|| anyhow!("process.run_as_user: no user `{name}` on this host"))
}

fn lookup_group(name: &str) -> Result<Gid> {
    let found = match name.parse::<u32>() {
        Ok(gid) => accounts::group_by_gid(Gid::from_raw(gid))?,
        Err(_) => accounts::group_by_name(name)?,
    };
    found.ok_or_else(|| anyhow!("process.run_as_group: no group `{name}` on this host"))
}

/// The user sudo was invoked by, unless that was root.
fn sudo_user() -> Result<Option<Account>> {
    let Some(uid) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse::<u32>().ok()) else {
        return Ok(None);
    };
    if uid == 0 {
        return Ok(None);
    }
    // An account the host does not know is an error, not `nobody`: the caller meant someone.
    accounts::user_by_uid(Uid::from_raw(uid))
        .context("looking up SUDO_UID")?
        .map(Some)
        .ok_or_else(|| anyhow!("SUDO_UID {uid} names no user on this host; set process.run_as_user"))
}
