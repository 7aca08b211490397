//! The files a sandbox may never open (`kernel.deny_open`, leash's own secrets), kept current.
//!
//! The policy names paths; the kernel refuses (device, inode) pairs. A file replaced while the
//! sandbox runs is another inode: a service-account token that kubelet rotates (a new
//! `..<timestamp>/token` and a swapped `..data` link), a credentials file an editor or a login
//! tool writes aside and renames over the old one. A path that did not exist at the start names
//! no inode at all. So the paths are looked up again on a short tick (the caller's), and the
//! sandbox's list follows when one names another file: only the entries that changed are
//! written, so a look costs the maps nothing when nothing changed and little when something did.
//!
//! The files found before stay refused as long as any name reaches them: an agent that owns the
//! old file could have hard-linked it before the replacement, and an old token is often still
//! valid. Each is held open (`O_PATH`) so that its inode number cannot go to a new file while it
//! is listed, and let go once it has no name left (link count 0). None is let go while it has
//! one: a sandbox that keeps more replaced files alive than its bound (an agent renaming listed
//! files aside, so that letting the oldest go would hand them back) is to be ended
//! ([`TooManyReplaced`]).
//!
//! A path whose lookup fails at the start is an error (the agent does not start; the daemon
//! refuses to confine). Later (a loop, a directory made a file) it keeps the files it named,
//! said once; the other paths go on being followed, and a reload is not refused for it.
//!
//! What this does not close: a new file can be opened before it is at the path (kubelet writes
//! the new token into a new directory, then swaps the link; an editor writes a file aside, then
//! renames it), and between a replacement and the next look; an agent that watches the
//! directory wins that race. Following narrows what a replaced file exposes; it does not make a
//! rotating secret safe to leave in the agent's reach.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::fs_root::FsRoot;
use super::lsm_rules::{FileId, LsmRules};

/// How many replaced files that still have a name a sandbox of the node daemon keeps alive at
/// most: the deny map is the node's (`MAX_INODE_RULES` entries for every sandbox), and a pod's
/// projected token is on a read-only volume whose old files kubelet deletes.
pub const REPLACED_MAX_NODE: usize = 16;

/// The same for `leash run`, whose files are the user's own (a tool keeping numbered backups of
/// a credentials file leaves old ones with names).
pub const REPLACED_MAX_RUN: usize = 256;

/// A sandbox kept more replaced files alive than its bound: it is to be ended.
#[derive(Debug)]
pub struct TooManyReplaced(pub usize);

impl std::fmt::Display for TooManyReplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {} replaced kernel.deny_open files still have names (renamed aside); letting one go would hand it back",
            self.0
        )
    }
}

impl std::error::Error for TooManyReplaced {}

/// The files a sandbox's open deny list names, each held open.
#[derive(Debug)]
pub struct DenyOpenFiles {
    /// The paths, in the order the policy names them.
    paths: Vec<PathBuf>,
    /// Every file refused now: what a path names (`current`) or named before and still has a
    /// name. With the path it was found at, for reports.
    held: BTreeMap<FileId, Held>,
    /// The paths whose last lookup failed (each said once when it starts failing).
    failing: Vec<PathBuf>,
    /// How many replaced files may be kept alive ([`TooManyReplaced`] beyond).
    replaced_max: usize,
}

#[derive(Debug)]
struct Held {
    path: PathBuf,
    file: File,
    current: bool,
}

impl DenyOpenFiles {
    /// Looks `paths` up in `root`. A path that does not exist is looked up again on every
    /// refresh; one whose lookup fails otherwise is an error.
    pub fn open(root: &FsRoot, paths: &[PathBuf], replaced_max: usize) -> Result<Self> {
        for path in paths {
            look_up(root, path)?;
        }
        Ok(Self::looked_up(root, paths, replaced_max))
    }

    /// [`DenyOpenFiles::open`], a path whose lookup fails being said and looked up again on
    /// every refresh.
    pub fn looked_up(root: &FsRoot, paths: &[PathBuf], replaced_max: usize) -> Self {
        let mut files = DenyOpenFiles { paths: Vec::new(), held: BTreeMap::new(), failing: Vec::new(), replaced_max };
        files.replace_paths(root, paths);
        files
    }

    /// Follows another list of paths (a reload): what the new paths name, plus the replaced
    /// files of paths that stay listed.
    pub fn replace_paths(&mut self, root: &FsRoot, paths: &[PathBuf]) {
        let mut listed: Vec<PathBuf> = Vec::new();
        for p in paths {
            if !listed.contains(p) {
                listed.push(p.clone());
            }
        }
        self.held.retain(|_, h| listed.contains(&h.path));
        self.failing.retain(|p| listed.contains(p));
        self.paths = listed;
        self.refresh(root);
    }

    /// The same files, held through new descriptors.
    pub fn try_clone(&self) -> Result<Self> {
        let mut held = BTreeMap::new();
        for (id, h) in &self.held {
            let file = h.file.try_clone().context("kernel.deny_open: holding a file twice")?;
            held.insert(*id, Held { path: h.path.clone(), file, current: h.current });
        }
        Ok(DenyOpenFiles {
            paths: self.paths.clone(),
            held,
            failing: self.failing.clone(),
            replaced_max: self.replaced_max,
        })
    }

    /// The files to refuse, with the path each was found at.
    pub fn denied(&self) -> BTreeMap<FileId, PathBuf> {
        self.held.iter().map(|(id, h)| (*id, h.path.clone())).collect()
    }

    /// The paths that name no file now (not those whose lookup fails).
    pub fn missing(&self) -> Vec<PathBuf> {
        let named = |p: &PathBuf| self.held.values().any(|h| h.current && &h.path == p);
        self.paths.iter().filter(|p| !named(p) && !self.failing.contains(p)).cloned().collect()
    }

    /// Whether there are paths to follow at all.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// More replaced files are kept alive than the bound: the sandbox is to be ended.
    pub fn overflowed(&self) -> Option<TooManyReplaced> {
        let replaced = self.held.values().filter(|h| !h.current).count();
        (replaced > self.replaced_max).then_some(TooManyReplaced(self.replaced_max))
    }

    /// Looks every path up again: what a path names now is current, the files it named before
    /// are replaced (and let go once no name reaches them). A path whose lookup fails keeps its
    /// files (said once, until it succeeds again).
    pub fn refresh(&mut self, root: &FsRoot) {
        let mut found = Vec::new();
        let mut failed = Vec::new();
        for path in &self.paths {
            match look_up(root, path) {
                Ok(file) => found.extend(file),
                Err(e) => {
                    let refused = self.held.values().any(|h| &h.path == path);
                    if !self.failing.contains(path) && refused {
                        crate::say!("leash: warning: {e:#}; the files found there before stay refused");
                    } else if !self.failing.contains(path) {
                        crate::say!("leash: warning: {e:#}");
                    }
                    failed.push(path.clone());
                }
            }
        }
        for held in self.held.values_mut() {
            held.current &= failed.contains(&held.path);
        }
        for (id, path, file) in found {
            self.held.entry(id).or_insert(Held { path, file, current: true }).current = true;
        }
        self.held.retain(|_, h| h.current || h.file.metadata().is_ok_and(|m| m.nlink() > 0));
        self.failing = failed;
    }
}

/// What `path` names in `root` now, open; `None` when it names nothing.
fn look_up(root: &FsRoot, path: &Path) -> Result<Option<(FileId, PathBuf, File)>> {
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
    /// The open deny list as the maps hold it (what the last change wrote).
    written: BTreeMap<FileId, PathBuf>,
    /// Writing the rules whole failed, maybe halfway: the next change writes them whole again.
    stale: bool,
}

/// What [`RulesInForce::refresh`] asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Write {
    /// The maps hold the rules.
    Nothing,
    /// Write the open deny list's changes ([`RulesInForce::deny_open_changes`]).
    DenyOpen,
    /// Write the rules whole (the last attempt failed).
    Whole,
}

impl RulesInForce {
    /// `rules` with their open deny list's files looked up in `root` and held from now on; the
    /// caller puts [`RulesInForce::rules`] in force, then calls [`RulesInForce::written`].
    pub fn new(rules: &LsmRules, root: &FsRoot, replaced_max: usize) -> Result<Self> {
        let files = DenyOpenFiles::open(root, &rules.deny_open_paths, replaced_max)?;
        let mut in_force = RulesInForce { rules: rules.clone(), files, written: BTreeMap::new(), stale: true };
        in_force.follow();
        Ok(in_force)
    }

    /// The rules to put in force.
    pub fn rules(&self) -> &LsmRules {
        &self.rules
    }

    /// Whether there are paths to follow.
    pub fn follows_files(&self) -> bool {
        !self.files.is_empty()
    }

    /// Whether a refresh has nothing to do: no path to look up, nothing to write again.
    pub fn idle(&self) -> bool {
        self.files.is_empty() && !self.stale
    }

    /// These for other rules (a reload), keeping the replaced files of paths still listed. Self
    /// is unchanged: the caller puts the new ones in force whole and keeps them, or keeps self.
    pub fn replaced(&self, rules: &LsmRules, root: &FsRoot) -> Result<Self> {
        let mut files = self.files.try_clone()?;
        files.replace_paths(root, &rules.deny_open_paths);
        let mut next = RulesInForce { rules: rules.clone(), files, written: BTreeMap::new(), stale: true };
        next.follow();
        Ok(next)
    }

    /// Looks the paths up again; what the caller is to write.
    pub fn refresh(&mut self, root: &FsRoot) -> Write {
        if !self.files.is_empty() {
            self.files.refresh(root);
            self.follow();
        }
        if self.stale {
            Write::Whole
        } else if self.written != self.rules.deny_open {
            Write::DenyOpen
        } else {
            Write::Nothing
        }
    }

    /// The open deny list's files to add to the maps and to remove from them.
    pub fn deny_open_changes(&self) -> (Vec<FileId>, Vec<FileId>) {
        let added = self.rules.deny_open.keys().filter(|id| !self.written.contains_key(id)).copied().collect();
        let removed = self.written.keys().filter(|id| !self.rules.deny_open.contains_key(id)).copied().collect();
        (added, removed)
    }

    /// The rules (or their deny list's changes) were written.
    pub fn written(&mut self) {
        self.written = self.rules.deny_open.clone();
        self.stale = false;
    }

    /// Writing the rules whole failed, maybe halfway: the next refresh asks to write them whole.
    pub fn undo(&mut self) {
        self.stale = true;
    }

    /// More replaced files are kept alive than the bound: the sandbox is to be ended (after what
    /// the files hold now is put in force).
    pub fn overflowed(&self) -> Option<TooManyReplaced> {
        self.files.overflowed()
    }

    /// Makes the rules' open deny list what the files are.
    fn follow(&mut self) {
        self.rules.deny_open = self.files.denied();
        self.rules.missing_deny_open = self.files.missing();
    }
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
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("token")], REPLACED_MAX_NODE).unwrap();
        let first = id(&v.join("token"));
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [first]);
        files.refresh(&FsRoot::Own);
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [first], "nothing changed");

        std::fs::create_dir(v.join("..ts2")).unwrap();
        std::fs::write(v.join("..ts2/token"), "two").unwrap();
        std::os::unix::fs::symlink("..ts2", v.join("..data_tmp")).unwrap();
        std::fs::rename(v.join("..data_tmp"), v.join("..data")).unwrap();
        files.refresh(&FsRoot::Own);
        let second = id(&v.join("token"));
        assert_ne!(first, second);
        assert!(files.denied().contains_key(&second), "the new token is refused");
        assert!(files.denied().contains_key(&first), "the old token still has a name: still refused");

        std::fs::remove_dir_all(v.join("..ts1")).unwrap();
        files.refresh(&FsRoot::Own);
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [second], "no name left: let go");
    }

    /// The agent hard-linked the old file before it was replaced by a rename: the old inode
    /// stays refused while the link exists.
    #[test]
    fn a_replaced_file_with_a_link_left_stays_refused() {
        let d = dir("link");
        let v = &d.0;
        std::fs::write(v.join("creds"), "old").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("creds")], REPLACED_MAX_NODE).unwrap();
        let old = id(&v.join("creds"));
        std::fs::hard_link(v.join("creds"), v.join("kept")).unwrap();
        std::fs::write(v.join("creds.tmp"), "new").unwrap();
        std::fs::rename(v.join("creds.tmp"), v.join("creds")).unwrap();
        files.refresh(&FsRoot::Own);
        let new = id(&v.join("creds"));
        assert!(files.denied().contains_key(&new) && files.denied().contains_key(&old));
        std::fs::remove_file(v.join("kept")).unwrap();
        files.refresh(&FsRoot::Own);
        assert!(!files.denied().contains_key(&old), "the last name went: let go");
    }

    #[test]
    fn a_path_that_appears_later_is_refused_from_then_on() {
        let d = dir("later");
        let v = &d.0;
        let mut files =
            DenyOpenFiles::open(&FsRoot::Own, &[v.join("later"), v.join("later")], REPLACED_MAX_NODE).unwrap();
        assert!(files.denied().is_empty());
        assert_eq!(files.missing(), [v.join("later")]);
        std::fs::write(v.join("later"), "x").unwrap();
        files.refresh(&FsRoot::Own);
        assert_eq!(files.denied().keys().copied().collect::<Vec<_>>(), [id(&v.join("later"))]);
        assert!(files.missing().is_empty());
    }

    /// The agent renames the listed file aside (it keeps its name, so it stays refused) and
    /// puts new ones at the path, again and again: the first is never let go, and past the
    /// bound the sandbox is to be ended.
    #[test]
    fn renaming_files_aside_never_frees_the_first_and_ends_the_sandbox() {
        let d = dir("churn");
        let v = &d.0;
        std::fs::write(v.join("creds"), "secret").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("creds")], REPLACED_MAX_NODE).unwrap();
        let secret = id(&v.join("creds"));
        for i in 0..=REPLACED_MAX_NODE {
            assert!(files.overflowed().is_none(), "round {i}: ended too soon");
            std::fs::rename(v.join("creds"), v.join(format!("aside-{i}"))).unwrap();
            std::fs::write(v.join("creds"), "junk").unwrap();
            files.refresh(&FsRoot::Own);
            assert!(files.denied().contains_key(&secret), "round {i}: the secret was let go");
            assert!(files.denied().contains_key(&id(&v.join("creds"))), "round {i}: the new file is refused");
        }
        assert!(files.overflowed().is_some(), "past the bound the sandbox is to be ended");
    }

    /// Files renamed over the path leave no name behind: they never count towards the bound,
    /// and only what changed is to be written.
    #[test]
    fn only_the_changes_are_written() {
        let d = dir("changes");
        let v = &d.0;
        std::fs::write(v.join("f"), "1").unwrap();
        let rules = LsmRules { deny_open_paths: vec![v.join("f")], ..Default::default() };
        let mut in_force = RulesInForce::new(&rules, &FsRoot::Own, REPLACED_MAX_NODE).unwrap();
        // Kept open: its inode number must not go to one of the files below.
        let _first = File::open(v.join("f")).unwrap();
        assert_eq!(in_force.refresh(&FsRoot::Own), Write::Whole, "not written yet");
        in_force.written();
        assert_eq!(in_force.refresh(&FsRoot::Own), Write::Nothing);
        let first = id(&v.join("f"));
        for i in 0..=REPLACED_MAX_NODE + 4 {
            std::fs::write(v.join("f.new"), i.to_string()).unwrap();
            std::fs::rename(v.join("f.new"), v.join("f")).unwrap();
            assert_eq!(in_force.refresh(&FsRoot::Own), Write::DenyOpen);
            let (added, removed) = in_force.deny_open_changes();
            assert_eq!(added, [id(&v.join("f"))]);
            assert_eq!(removed.len(), 1);
            in_force.written();
            assert!(in_force.overflowed().is_none());
        }
        assert!(!in_force.rules().deny_open.contains_key(&first));
        in_force.undo();
        assert_eq!(in_force.refresh(&FsRoot::Own), Write::Whole, "a failed write is written whole again");
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
        let mut files =
            DenyOpenFiles::open(&FsRoot::Own, &[v.join("sub/token"), v.join("other")], REPLACED_MAX_NODE).unwrap();
        let token = id(&v.join("sub/token"));
        std::fs::rename(v.join("sub"), v.join("sub-aside")).unwrap();
        std::fs::write(v.join("sub"), "not a directory").unwrap();
        std::fs::write(v.join("other.new"), "o2").unwrap();
        std::fs::rename(v.join("other.new"), v.join("other")).unwrap();
        files.refresh(&FsRoot::Own);
        let denied = files.denied();
        assert!(denied.contains_key(&token), "the token is still refused");
        assert!(denied.contains_key(&id(&v.join("other"))), "the other path was followed");
        assert!(files.missing().is_empty(), "the failing path is not missing: it keeps its file");
        // At the start, a path whose lookup fails is an error.
        assert!(DenyOpenFiles::open(&FsRoot::Own, &[v.join("sub/token")], REPLACED_MAX_NODE).is_err());
    }

    /// A reload that drops a path drops its files, old and new; one that keeps it keeps them.
    #[test]
    fn a_reload_keeps_the_replaced_files_of_paths_still_listed() {
        let d = dir("reload");
        let v = &d.0;
        std::fs::write(v.join("a"), "a").unwrap();
        std::fs::write(v.join("b"), "b").unwrap();
        let mut files = DenyOpenFiles::open(&FsRoot::Own, &[v.join("a"), v.join("b")], REPLACED_MAX_NODE).unwrap();
        let old_a = id(&v.join("a"));
        std::fs::hard_link(v.join("a"), v.join("a-link")).unwrap();
        std::fs::write(v.join("a.new"), "a2").unwrap();
        std::fs::rename(v.join("a.new"), v.join("a")).unwrap();
        files.replace_paths(&FsRoot::Own, &[v.join("a")]);
        let denied = files.denied();
        assert!(denied.contains_key(&old_a) && denied.contains_key(&id(&v.join("a"))));
        assert!(!denied.contains_key(&id(&v.join("b"))), "b is no longer listed");
    }
}
