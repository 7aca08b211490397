//! Files `leash run` opens as root for the user — the policy, the credentials file, the audit
//! log — judged from the agent's side: could the agent have changed what a path leads to, planted
//! a link on the way, or read what is behind it? Mode bits, owners and the sticky bit of the file
//! and of every directory above it are read, with the agent's uid and groups. POSIX ACLs are not
//! evaluated.
//!
//! | file | refused when | otherwise |
//! |---|---|---|
//! | policy | a link the agent could have planted leads to a file it cannot read | reloaded on change, unless the agent can change it: then read once and frozen |
//! | credentials | the agent can read it, change it, or planted a link on the way | read by its resolved path |
//! | audit log | the agent can change it or the directory it is in, or it is a link | opened without following links |

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Who the agent is, for permission checks.
#[derive(Debug, Clone)]
pub struct AgentIds {
    pub uid: u32,
    /// The agent's primary and supplementary groups.
    pub gids: Vec<u32>,
}

const READ: u32 = 4;
const WRITE: u32 = 2;
const SEARCH: u32 = 1;

impl AgentIds {
    /// Whether the agent has `bit` on a file with this metadata (its owner always can: it may chmod).
    fn may(&self, meta: &Metadata, bit: u32) -> bool {
        if meta.uid() == self.uid {
            return true;
        }
        let mode = meta.mode();
        let class = if self.gids.contains(&meta.gid()) { (mode >> 3) & 7 } else { mode & 7 };
        class & bit != 0
    }

    /// Whether the agent can create a name in directory `dir`.
    pub fn can_create_in(&self, dir: &Metadata) -> bool {
        self.may(dir, WRITE) && self.may(dir, SEARCH)
    }

    /// Whether the agent can replace or remove the entry owned by `entry_uid` in directory `dir`.
    fn can_replace_in(&self, dir: &Metadata, entry_uid: Option<u32>) -> bool {
        if !self.can_create_in(dir) {
            return false;
        }
        // In a sticky directory (like /tmp) only an entry's owner may remove or rename it; a name
        // nobody holds yet can be taken by anyone.
        let sticky = dir.mode() & 0o1000 != 0 && dir.uid() != self.uid;
        !sticky || entry_uid.is_none_or(|owner| owner == self.uid)
    }
}

/// What a path looks like from the agent's side.
#[derive(Debug)]
pub struct Inspection {
    /// The path with every link resolved; leash opens this one.
    pub resolved: PathBuf,
    /// Why the agent could change what `resolved` holds (the file, or a directory above it).
    pub changeable: Option<String>,
    /// Whether the agent can read the file (search every directory, read the file).
    pub readable: bool,
    /// A link on the given path that sits in a directory the agent can write.
    pub planted_link: Option<PathBuf>,
}

/// Inspects an existing file at `path`.
pub fn inspect(path: &Path, agent: &AgentIds) -> Result<Inspection> {
    let absolute = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let planted_link = planted_link(&absolute, agent);
    let resolved = absolute.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    let meta = std::fs::metadata(&resolved).with_context(|| format!("reading {}", path.display()))?;
    let changeable = changeable_above(&resolved, Some(meta.uid()), agent)?.or_else(|| {
        agent.may(&meta, WRITE).then(|| format!("{} is writable by the agent (uid {})", resolved.display(), agent.uid))
    });
    let readable = searchable_to(&resolved, agent) && agent.may(&meta, READ);
    Ok(Inspection { resolved, changeable, readable, planted_link })
}

/// The first link among the prefixes of `absolute` whose directory the agent can write.
fn planted_link(absolute: &Path, agent: &AgentIds) -> Option<PathBuf> {
    let mut prefix = PathBuf::new();
    for component in absolute.components() {
        prefix.push(component);
        if !matches!(component, Component::Normal(_)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&prefix) else { return None };
        if !meta.file_type().is_symlink() {
            continue;
        }
        let dir = prefix.parent().and_then(|p| p.canonicalize().ok()).and_then(|p| std::fs::metadata(p).ok());
        if dir.is_none_or(|d| agent.can_replace_in(&d, Some(meta.uid()))) {
            return Some(prefix);
        }
    }
    None
}

/// Why the agent could replace the entry at `resolved` (owned by `entry_uid`, `None` when it does
/// not exist yet) or a directory above it.
fn changeable_above(resolved: &Path, entry_uid: Option<u32>, agent: &AgentIds) -> Result<Option<String>> {
    let mut owner_below = entry_uid;
    for dir in resolved.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if meta.uid() == agent.uid {
            return Ok(Some(format!("{} is owned by the agent (uid {})", dir.display(), agent.uid)));
        }
        if agent.can_replace_in(&meta, owner_below) {
            return Ok(Some(format!("{} is writable by the agent (uid {})", dir.display(), agent.uid)));
        }
        owner_below = Some(meta.uid());
    }
    Ok(None)
}

/// Whether the agent can search every directory above `resolved`.
fn searchable_to(resolved: &Path, agent: &AgentIds) -> bool {
    resolved.ancestors().skip(1).all(|d| std::fs::metadata(d).is_ok_and(|m| agent.may(&m, SEARCH)))
}

/// How `leash run` treats its policy file.
#[derive(Debug, PartialEq, Eq)]
pub enum PolicyFile {
    /// Nobody but root can change it: watched and reloaded from this resolved path.
    Watched(PathBuf),
    /// The agent could change it: what was read at start stays in force, and why.
    Frozen(String),
}

/// Decides how the policy at `path` is treated, or refuses it.
pub fn policy_file(path: &Path, agent: &AgentIds) -> Result<PolicyFile> {
    let seen = inspect(path, agent)?;
    if let Some(link) = &seen.planted_link {
        if !seen.readable {
            bail!(
                "refusing --policy {}: {} is a link in a directory the agent can write, to a file the agent cannot read",
                path.display(),
                link.display()
            );
        }
    }
    Ok(match seen.changeable {
        Some(why) => PolicyFile::Frozen(why),
        None if seen.planted_link.is_some() => {
            PolicyFile::Frozen("a link on its path is in a directory the agent can write".into())
        }
        None => PolicyFile::Watched(seen.resolved),
    })
}

/// Checks that the agent can neither read nor replace the credentials file; its resolved path.
pub fn credentials_file(path: &Path, agent: &AgentIds) -> Result<PathBuf> {
    let seen = inspect(path, agent).context("--credentials-file")?;
    let refuse = |why: String| -> Result<PathBuf> {
        bail!("refusing --credentials-file {}: {why}; keep it where only root can read and write it (owner root, mode 0600, in a directory only root can write)", path.display())
    };
    if let Some(link) = seen.planted_link {
        return refuse(format!("{} is a link in a directory the agent can write", link.display()));
    }
    if seen.readable {
        return refuse(format!("the agent (uid {}) can read it", agent.uid));
    }
    if let Some(why) = seen.changeable {
        return refuse(why);
    }
    Ok(seen.resolved)
}

/// Opens (creating, mode 0600) the audit log for appending, refusing one the agent could change
/// or have planted (a link, a hard link, a file of its own, a directory it can write), and one
/// root does not own (another user's, in a sticky directory, say).
pub fn open_audit_log(path: &Path, agent: &AgentIds) -> Result<File> {
    let refuse = |why: String| -> Result<File> {
        bail!(
            "refusing --audit-log {}: {why}; put it in a directory only root can write (e.g. /var/log/leash/)",
            path.display()
        )
    };
    let absolute = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return refuse("not a file path".into());
    };
    if let Some(link) = planted_link(parent, agent) {
        return refuse(format!("{} is a link in a directory the agent can write", link.display()));
    }
    let dir = parent.canonicalize().with_context(|| format!("resolving {}", parent.display()))?;
    let target = dir.join(name);
    let existing = std::fs::symlink_metadata(&target).ok();
    if existing.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return refuse("it is a symbolic link".into());
    }
    if let Some(why) = changeable_above(&target, Some(existing.as_ref().map_or(0, |m| m.uid())), agent)? {
        return refuse(why);
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&target)
        .with_context(|| format!("opening audit log {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("reading audit log {}", path.display()))?;
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.nlink() != 1 {
        return refuse("it has other hard links".into());
    }
    if meta.uid() == agent.uid || agent.may(&meta, WRITE) {
        return refuse(format!("the agent (uid {}) can write it", agent.uid));
    }
    // In a sticky directory anyone can create the name first, keep it and read what leash writes.
    if meta.uid() != 0 {
        return refuse(format!("it belongs to uid {}, not root", meta.uid()));
    }
    Ok(file)
}

/// Opens (creating it, mode 0700, when missing) the directory `--keep-home` names and gives it to
/// the agent (`uid`, `gid`): refused when it is a link, sits behind a link the agent planted,
/// belongs to someone else, or lies in a directory the agent gets empty. Returns the directory's
/// descriptor, through which it is owned and allowed (never by path again), and its absolute path.
pub fn kept_home(path: &Path, agent: &AgentIds, gid: u32) -> Result<(std::os::fd::OwnedFd, PathBuf)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let refuse = |why: String| -> Result<(std::os::fd::OwnedFd, PathBuf)> {
        bail!("refusing --keep-home {}: {why}", path.display())
    };
    let absolute = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return refuse("not a directory path".into());
    };
    if let Some(link) = planted_link(parent, agent) {
        return refuse(format!("{} is a link in a directory the agent can write", link.display()));
    }
    let dir = parent.canonicalize().with_context(|| format!("resolving {}", parent.display()))?;
    let target = dir.join(name);
    // A home where the agent's mount namespace has an empty directory would be hidden from it.
    if let Some(emptied) = super::mount_ns::emptied().find(|e| target.starts_with(e) || absolute.starts_with(e)) {
        return refuse(format!("the agent gets {} empty, so it would not see this home", emptied.display()));
    }
    let created = match std::fs::DirBuilder::new().mode(0o700).create(&target) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e).with_context(|| format!("creating --keep-home {}", path.display())),
    };
    let c_target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} contains a NUL byte", target.display()))?;
    // SAFETY: a NUL-terminated path; the descriptor is checked and then owned.
    let raw = unsafe {
        libc::open(c_target.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => refuse("it is a link or not a directory".into()),
            _ => Err(e).with_context(|| format!("opening --keep-home {}", path.display())),
        };
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let meta = File::from(fd.try_clone().context("duplicating the home's descriptor")?)
        .metadata()
        .with_context(|| format!("reading --keep-home {}", path.display()))?;
    let owner_ok = meta.uid() == agent.uid || (created && meta.uid() == 0);
    if !owner_ok {
        return refuse(format!("it belongs to uid {}, not the agent (uid {})", meta.uid(), agent.uid));
    }
    if created {
        // SAFETY: fchown on the descriptor just opened, never a path.
        if unsafe { libc::fchown(fd.as_raw_fd(), agent.uid, gid) } != 0 {
            return Err(std::io::Error::last_os_error()).context("giving --keep-home to the agent");
        }
    }
    Ok((fd, absolute))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const AGENT: AgentIds = AgentIds { uid: 65534, gids: Vec::new() };

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leash-hostfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_root_file_in_a_root_directory_is_watched_and_secret() {
        if !root() {
            return;
        }
        let dir = scratch("root");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.join("p.yaml");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(policy_file(&f, &AGENT).unwrap(), PolicyFile::Watched(f.canonicalize().unwrap()));
        assert!(credentials_file(&f, &AGENT).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(credentials_file(&f, &AGENT).unwrap_err().to_string().contains("can read it"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_agent_writable_directory_freezes_the_policy() {
        if !root() {
            return;
        }
        let dir = scratch("open");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = dir.join("p.yaml");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(policy_file(&f, &AGENT).unwrap(), PolicyFile::Frozen(_)));
        // Sticky: a root file in it cannot be replaced by the agent.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(policy_file(&f, &AGENT).unwrap(), PolicyFile::Watched(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_link_to_an_unreadable_file_is_refused() {
        if !root() {
            return;
        }
        let dir = scratch("link");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "root:x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("p.yaml");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        // Made by the agent: its own link in a sticky directory.
        std::os::unix::fs::lchown(&link, Some(AGENT.uid), None).unwrap();
        let err = policy_file(&link, &AGENT).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        assert!(!err.contains("root:x"));
        let log = dir.join("audit.log");
        std::os::unix::fs::symlink(&secret, &log).unwrap();
        assert!(open_audit_log(&log, &AGENT).unwrap_err().to_string().contains("symbolic link"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
