//! The filesystem layer: a Landlock ruleset built from `filesystem_policy` in the parent, and
//! enforced by the child right before exec (`landlock_restrict_self` on the prepared fd is
//! async-signal-safe, building the ruleset is not).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI,
};

use crate::policy::{FilesystemRules, LandlockCompat};

/// The Landlock ABI version this kernel offers, or why there is none.
pub fn kernel_abi() -> Result<i32, String> {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attribute only queries the version.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    if v >= 1 {
        return Ok(v as i32);
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel is built without Landlock".to_owned(),
        Some(libc::EOPNOTSUPP) => "Landlock is not enabled (add landlock to the lsm= boot parameter)".to_owned(),
        _ => format!("landlock_create_ruleset: {err}"),
    })
}

/// A ruleset ready for the child to enforce.
pub struct Prepared {
    pub fd: OwnedFd,
    /// Paths the policy names that do not exist here (nothing to allow).
    pub skipped: Vec<PathBuf>,
}

/// What the filesystem layer will do.
pub enum Filesystem {
    /// The policy has no `filesystem_policy`.
    NotRequested,
    /// Best effort on a kernel without Landlock: not enforced, with the reason.
    Unavailable(String),
    Enforced(Prepared),
}

/// Builds the ruleset for `rules`, with the working directory read-write when asked.
/// `hard_requirement` on a kernel without Landlock is an error.
pub fn prepare(rules: Option<&FilesystemRules>, workdir: &Path) -> Result<Filesystem> {
    let Some(rules) = rules else { return Ok(Filesystem::NotRequested) };
    let abi_num = match kernel_abi() {
        Ok(v) => v,
        Err(why) => {
            if rules.compatibility == LandlockCompat::HardRequirement {
                bail!("filesystem layer (Landlock) is required by landlock.compatibility: hard_requirement, but {why}");
            }
            return Ok(Filesystem::Unavailable(why));
        }
    };
    let abi = abi_for(abi_num);
    let mut skipped = Vec::new();
    let mut existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths.iter().filter(|p| { let ok = p.exists(); if !ok { skipped.push((*p).clone()); } ok }).cloned().collect()
    };
    let read_only = existing(&rules.read_only);
    let mut read_write = existing(&rules.read_write);
    if rules.include_workdir {
        read_write.push(workdir.to_path_buf());
    }
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .context("Landlock: handling filesystem access")?
        .create()
        .context("Landlock: creating the ruleset")?
        .add_rules(path_beneath_rules(&read_only, AccessFs::from_read(abi)))
        .context("Landlock: adding read-only paths")?
        .add_rules(path_beneath_rules(&read_write, AccessFs::from_all(abi)))
        .context("Landlock: adding read-write paths")?;
    let fd: Option<OwnedFd> = created.into();
    match fd {
        Some(fd) => Ok(Filesystem::Enforced(Prepared { fd, skipped })),
        None if rules.compatibility == LandlockCompat::HardRequirement => {
            bail!("filesystem layer (Landlock) is required but the ruleset could not be created")
        }
        None => Ok(Filesystem::Unavailable("the Landlock ruleset could not be created".into())),
    }
}

fn abi_for(v: i32) -> ABI {
    match v {
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        _ => ABI::V6,
    }
}
