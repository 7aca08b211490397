//! The files a sandbox may never open (`kernel.deny_open`, leash's own secrets), kept current.
//!
//! The policy names paths; the kernel refuses (device, inode) pairs. A file replaced while the
//! sandbox runs is another inode: a service-account token that kubelet rotates (a new
//! `..<timestamp>/token` and a swapped `..data` link), a credentials file an editor or a login
//! tool writes aside and renames over the old one. A path that did not exist at the start names
//! no inode at all. So the paths are looked up again on a short tick (the caller's), and the
//! sandbox's list follows when one names another file.
//!
//! The files found before stay refused as long as any name reaches them: an agent that owns the
//! old file could have hard-linked it before the replacement, and an old token is often still
//! valid. Each is held open (`O_PATH`) so that its inode number cannot go to a new file while it
//! is listed, and let go once it has no name left (link count 0). None is let go while it has
//! one: an agent that renames listed files aside faster than [`REPLACED_MAX`] gets its sandbox
//! ended ([`TooManyReplaced`]), since refusing the oldest no longer would hand them back.
//!
//! A path whose lookup fails (a loop, a directory made a file) keeps the files it named; the
//! other paths go on being followed.
//!
//! What this does not close: a new file can be opened before it is at the path (kubelet writes
//! the new token into a new directory, then swaps the link; an editor writes a file aside, then
//! renames it), and between a replacement and the next look; an agent that watches the
//! directory wins that race. Following narrows what a replaced file exposes; it does not make a
//! rotating secret safe to leave in the agent's reach.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::fs_root::FsRoot;
use super::lsm_rules::{FileId, LsmRules};

/// How many replaced files that still have a name one sandbox holds at most, besides the paths'
/// current files. The deny map is the node's (`MAX_INODE_RULES` entries for every sandbox):
/// 2,048 sandboxes at this bound take about half of it.
pub const REPLACED_MAX: usize = 16;

/// A sandbox kept more than [`REPLACED_MAX`] replaced files alive: it is to be ended.
#[derive(Debug)]
pub struct TooManyReplaced;

impl std::fmt::Display for TooManyReplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {REPLACED_MAX} replaced kernel.deny_open files still have names (renamed aside faster than they could be followed)"
        )
    }
}

impl std::error::Error for TooManyReplaced {}

/// The files a sandbox's open deny list names, each held open.
#[derive(Debug, Default)]
pub struct DenyOpenFiles {
    /// The paths, in the order the policy names them.
    paths: Vec<PathBuf>,
    /// Every file refused now: what a path names (`current`) or named before and still has a
    /// name. With the path it was found at, for reports.
    held: BTreeMap<FileId, Held>,
    /// The paths whose last lookup failed (each said once when it starts failing).
    failing: Vec<PathBuf>,
}

#[derive(Debug)]
struct Held {
    path: PathBuf,
    file: File,
    /// When it was last found at its path (a tick count): the oldest replaced ones go first.
    seen: u64,
    current: bool,
}

impl DenyOpenFiles {
    /// Looks `paths` up in `root`. A path that does not exist is not an error: it is looked up
    /// again on every refresh.
    pub fn open(root: &FsRoot, paths: &[PathBuf]) -> Result<Self> {
        let mut files = DenyOpenFiles::default();
        files.replace_paths(root, paths)?;
        Ok(files)
    }

    /// Follows another list of paths (a reload): what the new paths name, plus the replaced
    /// files of paths that stay listed. On an error nothing changes.
    pub fn replace_paths(&mut self, root: &FsRoot, paths: &[PathBuf]) -> Result<()> {
        let paths = dedup(paths);
        let mut found = Vec::new();
        for path in &paths {
            if let Some(file) = look_up(root, path)? {
                found.push(file);
            }
        }
        self.held.retain(|_, h| paths.contains(&h.path));
        self.paths = paths;
        self.failing.clear();
        self.take(found, &[])?;
        Ok(())
    }

    /// The same files, held through new descriptors.
    pub fn try_clone(&self) -> Result<Self> {
        let mut held = BTreeMap::new();
        for (id, h) in &self.held {
            let file = h.file.try_clone().context("kernel.deny_open: holding a file twice")?;
            held.insert(*id, Held { path: h.path.clone(), file, seen: h.seen, current: h.current });
        }
        Ok(DenyOpenFiles { paths: self.paths.clone(), held, failing: self.failing.clone() })
    }

    /// The files to refuse, with the path each was found at.
    pub fn denied(&self) -> BTreeMap<FileId, PathBuf> {
        self.held.iter().map(|(id, h)| (*id, h.path.clone())).collect()
    }

    /// The paths that name no file now.
    pub fn missing(&self) -> Vec<PathBuf> {
        self.paths.iter().filter(|p| !self.held.values().any(|h| h.current && &h.path == *p)).cloned().collect()
    }

    /// Whether there are paths to follow at all.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Looks every path up again; whether the set of refused files changed. A path whose
    /// lookup fails keeps the files it named (said once, until it succeeds again).
    /// [`TooManyReplaced`] when the sandbox is to be ended.
    pub fn refresh(&mut self, root: &FsRoot) -> Result<bool> {
        let mut found = Vec::new();
        let mut failed = Vec::new();
        for path in &self.paths {
            match look_up(root, path) {
                Ok(file) => found.extend(file),
                Err(e) => {
                    if !self.failing.contains(path) {
                        crate::say!("leash: warning: {e:#}; the files found there before stay refused");
                    }
                    failed.push(path.clone());
                }
            }
        }
        let before: Vec<FileId> = self.held.keys().copied().collect();
        self.take(found, &failed)?;
        self.failing = failed;
        Ok(self.held.keys().copied().ne(before))
    }

    /// Takes what the paths name now: those files are current (and those of the `failing`
    /// paths stay so), the others replaced; a replaced file with no name left is out of
    /// everyone's reach and let go.
    fn take(&mut self, found: Vec<(FileId, PathBuf, File)>, failing: &[PathBuf]) -> Result<()> {
        let tick = self.held.values().map(|h| h.seen).max().unwrap_or(0) + 1;
        for held in self.held.values_mut() {
            held.current &= failing.contains(&held.path);
        }
        for (id, path, file) in found {
            let held = self.held.entry(id).or_insert(Held { path, file, seen: tick, current: true });
            held.seen = tick;
            held.current = true;
        }
        self.held.retain(|_, h| h.current || h.file.metadata().is_ok_and(|m| m.nlink() > 0));
        if self.held.values().filter(|h| !h.current).count() > REPLACED_MAX {
            return Err(TooManyReplaced.into());
        }
        Ok(())
    }
}

/// What `path` names in `root` now, open; `None` when it names nothing.
fn look_up(root: &FsRoot, path: &std::path::Path) -> Result<Option<(FileId, PathBuf, File)>> {
    let context = || format!("kernel.deny_open: looking up {}", path.display());
    match root.open_path(path) {
        Ok(file) => {
            let meta = file.metadata().with_context(context)?;
            Ok(Some((FileId::from_meta(&meta), path.to_path_buf(), file)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(context),
    }
}

/// A sandbox's BPF-LSM rules as in force, and the files its open deny list holds: what
/// `leash run` and the node daemon keep per sandbox to follow replaced files.
#[derive(Debug)]
pub struct RulesInForce {
    rules: LsmRules,
    files: DenyOpenFiles,
    /// Putting the rules in force failed, maybe halfway: the next refresh puts them again.
    dirty: bool,
}

impl RulesInForce {
    /// `rules` as just put in force, their open deny list's files held from now on in `root`.
    /// Whether the list must be put in force again ([`RulesInForce::rules`]): a file was
    /// replaced since `rules` were made.
    pub fn new(rules: &LsmRules, root: &FsRoot) -> Result<(Self, bool)> {
        let files = DenyOpenFiles::open(root, &rules.deny_open_paths)?;
        let mut in_force = RulesInForce { rules: rules.clone(), files, dirty: false };
        let changed = in_force.follow();
        Ok((in_force, changed))
    }

    /// The rules to put in force.
    pub fn rules(&self) -> &LsmRules {
        &self.rules
    }

    /// Whether there are paths to follow.
    pub fn follows_files(&self) -> bool {
        !self.files.is_empty()
    }

    /// These for other rules (a reload), keeping the replaced files of paths still listed. Self
    /// is unchanged: the caller keeps what it puts in force.
    pub fn replaced(&self, rules: &LsmRules, root: &FsRoot) -> Result<Self> {
        let mut files = self.files.try_clone()?;
        files.replace_paths(root, &rules.deny_open_paths)?;
        let mut next = RulesInForce { rules: rules.clone(), files, dirty: false };
        next.follow();
        Ok(next)
    }

    /// Looks the paths up again; whether the rules must be put in force (again): a path names
    /// another file, or the last attempt failed.
    pub fn refresh(&mut self, root: &FsRoot) -> Result<bool> {
        if !self.files.is_empty() {
            self.files.refresh(root)?;
        }
        Ok(self.follow() | std::mem::take(&mut self.dirty))
    }

    /// Putting these rules in force failed, maybe halfway: the next [`RulesInForce::refresh`]
    /// says to put them in force again.
    pub fn undo(&mut self) {
        self.dirty = true;
    }

    /// Makes the rules' open deny list what the files are; whether that changed it.
    fn follow(&mut self) -> bool {
        let denied = self.files.denied();
        let changed = denied != self.rules.deny_open;
        self.rules.deny_open = denied;
        self.rules.missing_deny_open = self.files.missing();
        changed
    }
}

fn dedup(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("leash-deny-open-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn id(path: &Path) -> FileId {
        FileId::of(path).unwrap()
    }

    /// kubelet's projected volume: `token -> ..data/token`, `..data -> ..<ts>`, the new
    /// timestamped directory written first, the `..data` link swapped by a rename, the old
    /// directory removed.
    #[test]
    fn a_rotated_token_is_followed_and_the_old_one_let_go() {
        let d = dir("rotate");
        let v = &d.0;
        std::fs::create_dir(v.join("..ts1")).unwrap();
        std::fs::write(v.join("..ts1/token"), "one").unwrap();
        std::os::unix::fs::symlink("..ts1", v.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", v.join("token")).unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("token")]).unwrap();
        let first = id(&v.join("token"));
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [first]);
        assert!(!files.refresh(&FsRoot::Own).unwrap(), "nothing changed");

        std::fs::create_dir(v.join("..ts2")).unwrap();
        std::fs::write(v.join("..ts2/token"), "two").unwrap();
        std::os::unix::fs::symlink("..ts2", v.join("..data_tmp")).unwrap();
        std::fs::rename(v.join("..data_tmp"), v.join("..data")).unwrap();
        assert!(files.refresh(&FsRoot::Own).unwrap(), "the path names another file");
        let second = id(&v.join("token"));
        assert_ne!(first, second);
        assert!(files.denied().contains_key(&second), "the new token is refused");
        assert!(files.denied().contains_key(&first), "the old token still has a name: still refused");

        std::fs::remove_dir_all(v.join("..ts1")).unwrap();
        assert!(files.refresh(&FsRoot::Own).unwrap());
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [second], "no name left: let go");
    }

    /// The agent hard-linked the old file before it was replaced by a rename: the old inode
    /// stays refused while the link exists.
    #[test]
    fn a_replaced_file_with_a_link_left_stays_refused() {
        let d = dir("link");
        let v = &d.0;
        std::fs::write(v.join("creds"), "old").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("creds")]).unwrap();
        let old = id(&v.join("creds"));
        std::fs::hard_link(v.join("creds"), v.join("kept")).unwrap();
        std::fs::write(v.join("creds.tmp"), "new").unwrap();
        std::fs::rename(v.join("creds.tmp"), v.join("creds")).unwrap();
        assert!(files.refresh(&FsRoot::Own).unwrap());
        let new = id(&v.join("creds"));
        assert!(files.denied().contains_key(&new) && files.denied().contains_key(&old));
        std::fs::remove_file(v.join("kept")).unwrap();
        files.refresh(&FsRoot::Own).unwrap();
        assert!(!files.denied().contains_key(&old), "the last name went: let go");
    }

    #[test]
    fn a_path_that_appears_later_is_refused_from_then_on() {
        let d = dir("later");
        let v = &d.0;
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("later"), v.join("later")]).unwrap();
        assert!(files.denied().is_empty());
        assert_eq!(files.missing(), [v.join("later")]);
        std::fs::write(v.join("later"), "x").unwrap();
        assert!(files.refresh(&FsRoot::Own).unwrap());
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [id(&v.join("later"))]);
        assert!(files.missing().is_empty());
    }

    /// The agent renames the listed file aside (it keeps its name, so it stays refused) and
    /// puts new ones at the path, again and again: the first is never let go; past the bound
    /// the sandbox is to be ended.
    #[test]
    fn renaming_files_aside_never_frees_the_first_and_ends_the_sandbox() {
        let d = dir("churn");
        let v = &d.0;
        std::fs::write(v.join("creds"), "secret").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("creds")]).unwrap();
        let secret = id(&v.join("creds"));
        let mut ended = None;
        for i in 0..=REPLACED_MAX {
            std::fs::rename(v.join("creds"), v.join(format!("aside-{i}"))).unwrap();
            std::fs::write(v.join("creds"), "junk").unwrap();
            match files.refresh(&FsRoot::Own) {
                Ok(_) => assert!(files.denied().contains_key(&secret), "round {i}: the secret was let go"),
                Err(e) => {
                    assert!(e.downcast_ref::<TooManyReplaced>().is_some(), "{e:#}");
                    ended = Some(i);
                    break;
                }
            }
        }
        assert_eq!(ended, Some(REPLACED_MAX), "the sandbox is ended once the bound is passed");
        assert!(files.denied().contains_key(&secret));
    }

    /// A path the agent breaks (its directory replaced by a file) keeps what it named; the
    /// other paths are still followed.
    #[test]
    fn a_path_that_fails_keeps_its_files_and_the_others_are_followed() {
        let d = dir("broken");
        let v = &d.0;
        std::fs::create_dir(v.join("sub")).unwrap();
        std::fs::write(v.join("sub/token"), "t").unwrap();
        std::fs::write(v.join("other"), "o").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("sub/token"), v.join("other")]).unwrap();
        let token = id(&v.join("sub/token"));
        std::fs::rename(v.join("sub"), v.join("sub-aside")).unwrap();
        std::fs::write(v.join("sub"), "not a directory").unwrap();
        std::fs::write(v.join("other.new"), "o2").unwrap();
        std::fs::rename(v.join("other.new"), v.join("other")).unwrap();
        assert!(files.refresh(&FsRoot::Own).unwrap());
        let denied = files.denied();
        assert!(denied.contains_key(&token), "the token is still refused");
        assert!(denied.contains_key(&id(&v.join("other"))), "the other path was followed");
        assert!(files.missing().is_empty(), "the failing path is not missing: it keeps its file");
    }

    /// A reload that drops a path drops its files, old and new; one that keeps it keeps them.
    #[test]
    fn a_reload_keeps_the_replaced_files_of_paths_still_listed() {
        let d = dir("reload");
        let v = &d.0;
        std::fs::write(v.join("a"), "a").unwrap();
        std::fs::write(v.join("b"), "b").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("a"), v.join("b")]).unwrap();
        let old_a = id(&v.join("a"));
        std::fs::hard_link(v.join("a"), v.join("a-link")).unwrap();
        std::fs::write(v.join("a.new"), "a2").unwrap();
        std::fs::rename(v.join("a.new"), v.join("a")).unwrap();
        files.replace_paths(&FsRoot::Own, &[v.join("a")]).unwrap();
        let denied = files.denied();
        assert!(denied.contains_key(&old_a) && denied.contains_key(&id(&v.join("a"))));
        assert!(!denied.contains_key(&id(&v.join("b"))), "b is no longer listed");
    }
}
