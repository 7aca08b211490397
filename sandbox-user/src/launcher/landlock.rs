//! The filesystem and process-isolation layer: a Landlock ruleset built in the parent and
//! enforced by the child right before exec (`landlock_restrict_self` on the prepared fd is
//! async-signal-safe, building the ruleset is not).
//!
//! The agent always gets a Landlock domain, even when the policy has no `filesystem_policy`
//! (then with one rule allowing everything under `/`): a process inside a domain cannot ptrace,
//! `pidfd_getfd` or read the memory of processes outside it, so the agent cannot borrow an
//! unconfined process of its own uid to get around the network layer. On ABI 6+ the domain is
//! also scoped: no signals and no abstract unix sockets to processes outside it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI,
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
    /// The access rights of a read-write rule in this ruleset (for rules added in the child).
    pub read_write: u64,
    /// The directories the agent gets new and empty (`/tmp`, ...) that the policy names, with
    /// the rights it gives them: their rules must be added again once the new mounts exist,
    /// since a rule follows the directory it was made on, now hidden under the mount.
    pub emptied: Vec<(PathBuf, u64)>,
    /// Paths the policy names that do not exist here (nothing to allow).
    pub skipped: Vec<PathBuf>,
}

/// What Landlock will do for this run.
pub enum Domain {
    /// This kernel has no Landlock (the reason says why).
    Unavailable(String),
    Enforced(Prepared),
}

/// Builds the ruleset: `rules` when the policy has them (working directory read-write when
/// asked, `extra_read_only` — leash's own files for the agent — readable), else isolation only.
/// `hard_requirement` on a kernel without Landlock is an error.
pub fn prepare(rules: Option<&FilesystemRules>, workdir: &Path, extra_read_only: &[PathBuf]) -> Result<Domain> {
    let abi_num = match kernel_abi() {
        Ok(v) => v,
        Err(why) => {
            if rules.is_some_and(|r| r.compatibility == LandlockCompat::HardRequirement) {
                bail!("filesystem layer (Landlock) is required by landlock.compatibility: hard_requirement, but {why}");
            }
            return Ok(Domain::Unavailable(why));
        }
    };
    let abi = abi_for(abi_num);
    let mut skipped = Vec::new();
    let (read_only, read_write) = match rules {
        Some(rules) => {
            let mut existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
                let (here, missing): (Vec<PathBuf>, Vec<PathBuf>) = paths.iter().cloned().partition(|p| p.exists());
                skipped.extend(missing);
                here
            };
            let mut read_only = existing(&rules.read_only);
            read_only.extend(extra_read_only.iter().cloned());
            let mut read_write = existing(&rules.read_write);
            if rules.include_workdir {
                read_write.push(workdir.to_path_buf());
            }
            (read_only, read_write)
        }
        // Isolation only: every right everywhere, but inside a domain.
        None => (Vec::new(), vec![PathBuf::from("/")]),
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .context("Landlock: handling filesystem access")?;
    if abi_num >= 6 {
        ruleset = ruleset.scope(Scope::AbstractUnixSocket | Scope::Signal).context("Landlock: scoping the domain")?;
    }
    let created = ruleset
        .create()
        .context("Landlock: creating the ruleset")?
        .add_rules(path_beneath_rules(&read_only, AccessFs::from_read(abi)))
        .context("Landlock: adding read-only paths")?
        .add_rules(path_beneath_rules(&read_write, AccessFs::from_all(abi)))
        .context("Landlock: adding read-write paths")?;
    let fd: Option<OwnedFd> = created.into();
    let (read_bits, write_bits) = (AccessFs::from_read(abi).bits(), AccessFs::from_all(abi).bits());
    let mut emptied: Vec<(PathBuf, u64)> = super::mount_ns::emptied()
        .filter_map(|dir| {
            let bits = if read_write.iter().any(|p| p == dir) {
                write_bits
            } else if read_only.iter().any(|p| p == dir) {
                read_bits
            } else {
                return None;
            };
            Some((dir.to_path_buf(), bits))
        })
        .collect();
    // `/proc/cpuinfo`, `/dev/pts/ptmx`: names that stay in the new instances.
    let beneath = |p: &&PathBuf| super::mount_ns::remounted().any(|dir| p.starts_with(dir) && p.as_path() != dir);
    emptied.extend(read_only.iter().filter(beneath).map(|p| (p.clone(), read_bits)));
    emptied.extend(read_write.iter().filter(beneath).map(|p| (p.clone(), write_bits)));
    match fd {
        Some(fd) => Ok(Domain::Enforced(Prepared { fd, read_write: write_bits, emptied, skipped })),
        None if rules.is_some_and(|r| r.compatibility == LandlockCompat::HardRequirement) => {
            bail!("filesystem layer (Landlock) is required but the ruleset could not be created")
        }
        None => Ok(Domain::Unavailable("the Landlock ruleset could not be created".into())),
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
