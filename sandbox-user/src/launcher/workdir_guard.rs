//! Names in the working directory that run code later, outside the sandbox (the policy's
//! `protect_in_workdir`: git's config and hooks, `.envrc`, editor task files, shell rc files),
//! made so the agent can neither change nor create them.
//!
//! Each name is walked from the working directory, component by component:
//! - an existing file or directory at the end of the name is made read-only for the agent;
//! - an existing directory on the way (`.git` for `.git/config`) becomes a mount point of its
//!   own, so that the agent can neither rename nor remove it (carrying the read-only entry away
//!   and leaving the name free);
//! - an existing file on the way is that: `.git` as a file (a worktree's or a submodule's
//!   "gitdir:" pointer) decides where git reads its config, so it is read-only itself;
//! - a missing component is **held**: leash creates it as an empty directory, mode 0555, owned
//!   by root, and the agent gets it read-only, so `.git/config` cannot be created under it. It
//!   is removed when the sandbox is gone (after its last process), if it is still the empty
//!   directory leash made (by leash's watchdog when leash was killed). An empty directory is
//!   invisible to `git status` and `git add`; git's repository discovery passes over a `.git`
//!   directory without `HEAD`.
//! - a link is left alone (a bind mount would follow it out of the working directory), and a
//!   missing name in a directory the agent cannot write is not held (it cannot create it).
//!
//! The read-only bind mounts themselves are made in the agent's mount namespace
//! (`mount_ns`). What this does not cover: a name created through a link, and a second run in
//! the same directory while the first removes what it held (the second then holds nothing).

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::host_files::AgentIds;

/// Where git also reads code-running config and hooks, for a repository whose `.git/config` is
/// protected: `commondir` (the directory git takes its config and hooks from), `config.worktree`
/// (with `extensions.worktreeConfig`); each submodule's own `config`, `hooks`, `commondir` and
/// `config.worktree` under `.git/modules` (a `git status` in the repository runs a submodule's
/// `core.fsmonitor`); and each linked worktree's `commondir` and `config.worktree` under
/// `.git/worktrees` (git run in that worktree, elsewhere, reads them). None can be held (git
/// refuses a repository where they are anything but what it expects): one that exists is
/// read-only, one the agent creates is named at exit, and so is a new submodule.
fn companions(modules: &BTreeSet<PathBuf>, worktrees: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(".git/commondir"), PathBuf::from(".git/config.worktree")];
    for module in modules {
        out.extend(["config", "hooks", "commondir", "config.worktree"].map(|name| module.join(name)));
    }
    for worktree in worktrees {
        out.extend(["commondir", "config.worktree"].map(|name| worktree.join(name)));
    }
    out
}

/// The linked worktrees' git directories, `.git/worktrees/<name>`, relative to `workdir`; `None`
/// when there are more than [`MAX_MODULES`].
fn worktrees(workdir: &Path) -> Option<BTreeSet<PathBuf>> {
    let dir = PathBuf::from(".git/worktrees");
    let Ok(entries) = std::fs::read_dir(workdir.join(&dir)) else { return Some(BTreeSet::new()) };
    let mut found = BTreeSet::new();
    for entry in entries.flatten() {
        if found.len() >= MAX_MODULES {
            return None;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.insert(dir.join(entry.file_name()));
        }
    }
    Some(found)
}

/// The git directories of the submodules under `.git/modules` of `workdir` and under each
/// linked worktree's `.git/worktrees/<name>/modules`, relative to it: a
/// directory holding `HEAD` is one (its own `modules/` is walked too, [`MODULE_DEPTH`] deep);
/// another is a part of a submodule's name (`libs/foo`). At most [`MAX_MODULES`] entries are
/// looked at; `None` when there were more.
fn modules(workdir: &Path) -> Option<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    // The repository's, and each linked worktree's (git keeps a worktree's submodules apart).
    let mut dirs = vec![(PathBuf::from(".git/modules"), 0)];
    for worktree in worktrees(workdir)? {
        dirs.push((worktree.join("modules"), 0));
    }
    let mut seen = 0;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(workdir.join(&dir)) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_MODULES {
                return None;
            }
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = dir.join(entry.file_name());
            if workdir.join(&path).join("HEAD").is_file() {
                if depth < MODULE_DEPTH {
                    dirs.push((path.join("modules"), depth + 1));
                }
                found.insert(path);
            } else {
                dirs.push((path, depth));
            }
        }
    }
    Some(found)
}

/// The `.git` (or its `config`) of each nested repository of `workdir`'s index (a gitlink:
/// `git status` in the repository looks into it, running its `core.fsmonitor`) that changed
/// since `since`: the agent can make one anywhere, and add it to the index, without touching a
/// protected name. An index that cannot be read whole is an error, never an empty list.
fn nested_repositories(workdir: &Path, since: std::time::SystemTime) -> Result<Vec<PathBuf>, String> {
    let changed = |p: &Path| {
        let ctime = |m: std::fs::Metadata| {
            std::time::UNIX_EPOCH + std::time::Duration::new(m.ctime() as u64, m.ctime_nsec() as u32)
        };
        std::fs::symlink_metadata(p).is_ok_and(|m| ctime(m) >= since)
    };
    let mut out: Vec<PathBuf> = super::git_index::listed_gitlinks(workdir)?
        .into_iter()
        .map(|link| workdir.join(link).join(".git"))
        .filter(|dot_git| changed(dot_git) || changed(&dot_git.join("config")))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// How many entries of `.git/modules` trees are looked at, and how deep submodules nest.
const MAX_MODULES: usize = 512;
const MODULE_DEPTH: usize = 3;

/// What the agent left in the working directory for whoever uses it next ([`WorkdirGuard::left_behind`]).
#[derive(Debug, PartialEq)]
pub enum Left {
    /// A name that runs code later, which the agent made.
    Created(PathBuf),
    /// What could not be checked, and why.
    Unchecked { what: &'static str, why: String },
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Created(path) => write!(
                f,
                "the agent created {}, which runs code for whoever uses this directory next; review it before running git or a shell here",
                path.display()
            ),
            Left::Unchecked { what, why } => write!(
                f,
                "leash could not check {what} of the repository the agent ran in ({why}); review the repository before running git here"
            ),
        }
    }
}

/// An empty directory leash created for a missing name, and its identity.
#[derive(Debug)]
struct Held {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// The working directory's protected names for one run.
#[derive(Debug)]
pub struct WorkdirGuard {
    /// Existing entries, read-only for the agent.
    read_only: Vec<PathBuf>,
    /// Existing directories on the way to a protected name (`.git` for `.git/config`): each is
    /// made a mount point of its own in the agent's namespace, which cannot be renamed or
    /// removed. Renamed, `.git` would carry its read-only `config` away and leave the name free
    /// for a new `.git/config`.
    parents: Vec<PathBuf>,
    /// Entries leash created; read-only for the agent and removed by [`WorkdirGuard::release`].
    held: Vec<Held>,
    /// The names as the policy gives them, joined to the working directory, and the
    /// [`REPORTED`] ones that were missing at start.
    names: Vec<PathBuf>,
    /// With `.git/config` protected: the working directory and its submodules at start
    /// ([`modules`]); a new one is named at exit.
    modules: Option<(PathBuf, BTreeSet<PathBuf>)>,
    /// With `.git/config` protected: when the agent was let in. A nested repository of the
    /// index (a gitlink) whose `.git` changed since is named at exit ([`nested_repositories`]).
    since: Option<std::time::SystemTime>,
    /// Whether dropping the guard removes the held directories: only until the agent may run.
    release_on_drop: bool,
}

impl WorkdirGuard {
    /// Protects `names` (relative to `workdir`) from an agent with ids `agent`.
    pub fn protect(workdir: &Path, names: &[PathBuf], agent: &AgentIds) -> Result<Self> {
        let mut names_in: Vec<PathBuf> = names.iter().map(|n| workdir.join(n)).collect();
        let too_many = |what: &str| {
            anyhow!(
                "{} has more than {MAX_MODULES} entries under .git/{what}, too many to protect each one's config; filesystem_policy.protect_in_workdir changes the list",
                workdir.display()
            )
        };
        let (modules, worktrees) = match names.iter().any(|n| n == Path::new(".git/config")) {
            true => (
                Some(modules(workdir).ok_or_else(|| too_many("modules"))?),
                worktrees(workdir).ok_or_else(|| too_many("worktrees"))?,
            ),
            false => (None, BTreeSet::new()),
        };
        let (existing, missing): (Vec<PathBuf>, Vec<PathBuf>) = modules
            .as_ref()
            .map(|m| companions(m, &worktrees))
            .unwrap_or_default()
            .into_iter()
            .partition(|c| std::fs::symlink_metadata(workdir.join(c)).is_ok());
        names_in.extend(missing.iter().map(|c| workdir.join(c)));
        let since = modules.as_ref().map(|_| std::time::SystemTime::now());
        let modules = modules.map(|m| (workdir.to_path_buf(), m));
        let mut guard = Self {
            read_only: Vec::new(),
            parents: Vec::new(),
            held: Vec::new(),
            names: names_in,
            modules,
            since,
            release_on_drop: true,
        };
        for name in names.iter().chain(&existing) {
            if let Err(e) = guard.protect_one(workdir, name, agent) {
                guard.release();
                return Err(e);
            }
        }
        Ok(guard)
    }

    fn protect_one(&mut self, workdir: &Path, name: &Path, agent: &AgentIds) -> Result<()> {
        let parts: Vec<Component<'_>> = name.components().collect();
        if parts.is_empty() || parts.iter().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("protect_in_workdir: {} is not a plain relative name", name.display());
        }
        let mut at = workdir.to_path_buf();
        for (i, part) in parts.iter().enumerate() {
            let parent = at.clone();
            at.push(part);
            if self.covers(&at) {
                return Ok(());
            }
            let last = i + 1 == parts.len();
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => return Ok(()),
                Ok(meta) if meta.is_dir() && !last => {
                    if !self.parents.contains(&at) {
                        self.parents.push(at.clone());
                    }
                    continue;
                }
                Ok(_) => {
                    self.read_only.push(at);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.hold(&parent, at, agent),
                Err(e) => return Err(e).with_context(|| format!("reading {}", at.display())),
            }
        }
        Ok(())
    }

    /// Whether `path` is at or under an entry already read-only or held.
    fn covers(&self, path: &Path) -> bool {
        self.read_only.iter().chain(self.held.iter().map(|h| &h.path)).any(|p| path.starts_with(p))
    }

    /// Creates the empty directory `path` in `parent`, unless the agent could not create it there.
    fn hold(&mut self, parent: &Path, path: PathBuf, agent: &AgentIds) -> Result<()> {
        let dir = std::fs::metadata(parent).with_context(|| format!("reading {}", parent.display()))?;
        if !agent.can_create_in(&dir) {
            return Ok(());
        }
        match std::fs::DirBuilder::new().mode(0o555).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "holding {} for the agent (so it cannot create it); filesystem_policy.protect_in_workdir changes the list",
                        path.display()
                    )
                })
            }
        }
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        self.held.push(Held { path, dev: meta.dev(), ino: meta.ino() });
        Ok(())
    }

    /// Every entry the agent gets read-only, existing and held.
    pub fn read_only(&self) -> impl Iterator<Item = &Path> {
        self.read_only.iter().map(PathBuf::as_path).chain(self.held.iter().map(|h| h.path.as_path()))
    }

    /// Existing directories on the way to protected names, to be made mount points (bound onto
    /// themselves) before the read-only entries below them.
    pub fn parents(&self) -> &[PathBuf] {
        &self.parents
    }

    /// Existing entries made read-only.
    pub fn existing(&self) -> &[PathBuf] {
        &self.read_only
    }

    /// Entries leash created and holds.
    pub fn held(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|h| h.path.as_path())
    }

    /// The held entries with their device and inode, for the watchdog to remove if leash dies.
    pub fn held_ids(&self) -> impl Iterator<Item = (u64, u64, &Path)> {
        self.held.iter().map(|h| (h.dev, h.ino, h.path.as_path()))
    }

    /// What the agent left that runs code later: names that exist now but were neither there at
    /// start nor held (a [`REPORTED`] name, or a protected one through a link), new submodules
    /// and changed nested repositories, and what could not be checked. Call it once no process of
    /// the sandbox is left.
    pub fn left_behind(&self) -> Vec<Left> {
        let mut out: Vec<Left> = self
            .names
            .iter()
            .filter(|n| !self.covers(n))
            .filter(|n| std::fs::symlink_metadata(n).is_ok())
            .map(|n| Left::Created(n.clone()))
            .collect();
        if let (Some((workdir, _)), Some(since)) = (&self.modules, self.since) {
            match nested_repositories(workdir, since) {
                Ok(nested) => out.extend(nested.into_iter().map(Left::Created)),
                Err(why) => out.push(Left::Unchecked { what: "the repositories nested in its index", why }),
            }
        }
        if let Some((workdir, before)) = &self.modules {
            match modules(workdir) {
                Some(now) => out.extend(now.difference(before).map(|m| Left::Created(workdir.join(m)))),
                None => out.push(Left::Unchecked {
                    what: "its submodules",
                    why: format!("more than {MAX_MODULES} entries under .git/modules"),
                }),
            }
        }
        out
    }

    /// Removes the held directories that are still the empty ones leash made. Call it once no
    /// process of the sandbox is left: a removed mount point stops protecting at once.
    pub fn release(&mut self) {
        for held in self.held.drain(..) {
            let same = std::fs::symlink_metadata(&held.path).is_ok_and(|m| m.dev() == held.dev && m.ino() == held.ino);
            if same {
                if let Err(e) = std::fs::remove_dir(&held.path) {
                    crate::say!("leash: warning: could not remove {}, held for the agent: {e}", held.path.display());
                }
            }
        }
    }
}

impl WorkdirGuard {
    /// Call before the agent starts: from then on only [`WorkdirGuard::release`], after the
    /// sandbox's last process, removes the held directories. A panic unwinding through leash
    /// while the agent's processes live must not free the names they are kept from (the
    /// watchdog removes them once it has emptied the cgroup).
    pub fn agent_may_run(&mut self) {
        self.release_on_drop = false;
    }
}

impl Drop for WorkdirGuard {
    fn drop(&mut self) {
        if self.release_on_drop {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentIds {
        AgentIds { uid: nix::unistd::geteuid().as_raw(), gids: vec![] }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leash-guard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_missing_name_is_held_at_its_first_missing_component_and_released() {
        let dir = scratch("missing");
        let names = [PathBuf::from(".git/config"), PathBuf::from(".git/hooks"), PathBuf::from(".envrc")];
        let mut guard = WorkdirGuard::protect(&dir, &names, &agent()).unwrap();
        let held: Vec<&Path> = guard.held().collect();
        assert_eq!(held, [dir.join(".git").as_path(), dir.join(".envrc").as_path()]);
        assert!(dir.join(".git").is_dir());
        guard.release();
        assert!(!dir.join(".git").exists() && !dir.join(".envrc").exists());
    }

    #[test]
    fn a_gitfile_is_read_only_itself() {
        let dir = scratch("gitfile");
        std::fs::write(dir.join(".git"), "gitdir: /elsewhere\n").unwrap();
        let guard = WorkdirGuard::protect(&dir, &[PathBuf::from(".git/config")], &agent()).unwrap();
        assert_eq!(guard.existing(), [dir.join(".git")]);
        assert_eq!(guard.held().count(), 0);
    }

    #[test]
    fn what_the_agent_replaced_is_not_removed() {
        let dir = scratch("replaced");
        let mut guard = WorkdirGuard::protect(&dir, &[PathBuf::from(".envrc")], &agent()).unwrap();
        std::fs::remove_dir(dir.join(".envrc")).unwrap();
        std::fs::create_dir(dir.join(".envrc")).unwrap();
        std::fs::write(dir.join(".envrc/kept"), "x").unwrap();
        guard.release();
        assert!(dir.join(".envrc/kept").exists());
    }

    #[test]
    fn once_the_agent_may_run_only_release_removes_what_is_held() {
        let dir = scratch("unwind");
        let mut guard = WorkdirGuard::protect(&dir, &[PathBuf::from(".envrc")], &agent()).unwrap();
        guard.agent_may_run();
        drop(guard);
        assert!(dir.join(".envrc").is_dir(), "dropping the guard (a panic's unwinding) freed the held name");
        let _ = std::fs::remove_dir(dir.join(".envrc"));
    }

    #[test]
    fn a_directory_on_the_way_is_fixed_and_commondir_is_reported_when_made() {
        let dir = scratch("parents");
        std::fs::create_dir_all(dir.join(".git/hooks")).unwrap();
        let names = [PathBuf::from(".git/config"), PathBuf::from(".git/hooks")];
        let guard = WorkdirGuard::protect(&dir, &names, &agent()).unwrap();
        assert_eq!(guard.parents(), [dir.join(".git")]);
        assert!(guard.left_behind().is_empty());
        std::fs::write(dir.join(".git/commondir"), "evil\n").unwrap();
        assert_eq!(guard.left_behind(), [Left::Created(dir.join(".git/commondir"))]);
    }

    #[test]
    fn a_submodules_config_is_read_only_and_a_new_submodule_is_named() {
        let dir = scratch("modules");
        for module in ["lib", "libs/foo"] {
            std::fs::create_dir_all(dir.join(".git/modules").join(module).join("hooks")).unwrap();
            std::fs::write(dir.join(".git/modules").join(module).join("config"), "[core]\n").unwrap();
            std::fs::write(dir.join(".git/modules").join(module).join("HEAD"), "ref: refs/heads/main\n").unwrap();
        }
        let guard = WorkdirGuard::protect(&dir, &[PathBuf::from(".git/config")], &agent()).unwrap();
        for name in ["lib/config", "lib/hooks", "libs/foo/config", "libs/foo/hooks"] {
            let path = dir.join(".git/modules").join(name);
            assert!(guard.existing().contains(&path), "{name}: {:?}", guard.existing());
        }
        assert!(guard.parents().contains(&dir.join(".git/modules/libs/foo")), "{:?}", guard.parents());
        std::fs::create_dir_all(dir.join(".git/modules/libs/new")).unwrap();
        std::fs::write(dir.join(".git/modules/libs/new/HEAD"), "x").unwrap();
        std::fs::write(dir.join(".git/modules/lib/commondir"), "../../elsewhere").unwrap();
        assert_eq!(
            guard.left_behind(),
            [Left::Created(dir.join(".git/modules/lib/commondir")), Left::Created(dir.join(".git/modules/libs/new"))]
        );
    }

    /// A linked worktree's submodules live under its own git directory,
    /// `.git/worktrees/<name>/modules`: git run in that worktree reads their config.
    #[test]
    fn a_linked_worktrees_submodules_are_read_only_too() {
        let dir = scratch("worktree-modules");
        let module = dir.join(".git/worktrees/wt/modules/sub");
        std::fs::create_dir_all(module.join("hooks")).unwrap();
        std::fs::write(module.join("config"), "[core]\n").unwrap();
        std::fs::write(module.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(dir.join(".git/worktrees/wt/commondir"), "../..\n").unwrap();
        let guard = WorkdirGuard::protect(&dir, &[PathBuf::from(".git/config")], &agent()).unwrap();
        for name in ["modules/sub/config", "modules/sub/hooks", "commondir"] {
            let path = dir.join(".git/worktrees/wt").join(name);
            assert!(guard.existing().contains(&path), "{name}: {:?}", guard.existing());
        }
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let dir = scratch("escape");
        assert!(WorkdirGuard::protect(&dir, &[PathBuf::from("../x")], &agent()).is_err());
        assert!(WorkdirGuard::protect(&dir, &[PathBuf::from("/etc/x")], &agent()).is_err());
    }
}
