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
//! is listed, and let go once it has no name left (link count 0).
//!
//! What this does not close: between a replacement and the next look, the new file can be
//! opened.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::fs_root::FsRoot;
use super::lsm_rules::{FileId, LsmRules};

/// How many files one sandbox holds at most: the paths' current files, and replaced ones that
/// still have a name. A replaced file beyond it is let go, oldest first (said once).
const HELD_MAX: usize = 1024;

/// The files a sandbox's open deny list names, each held open.
#[derive(Debug, Default)]
pub struct DenyOpenFiles {
    /// The paths, in the order the policy names them.
    paths: Vec<PathBuf>,
    /// Every file refused now: what a path names (`current`) or named before and still has a
    /// name. With the path it was found at, for reports.
    held: BTreeMap<FileId, Held>,
    /// Whether replaced files were let go for [`HELD_MAX`] (said once).
    overflowed: bool,
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
        let found = look_up(root, &paths)?;
        self.held.retain(|_, h| paths.contains(&h.path));
        self.paths = paths;
        self.take(found);
        Ok(())
    }

    /// The same files, held through new descriptors.
    pub fn try_clone(&self) -> Result<Self> {
        let mut held = BTreeMap::new();
        for (id, h) in &self.held {
            let file = h.file.try_clone().context("kernel.deny_open: holding a file twice")?;
            held.insert(*id, Held { path: h.path.clone(), file, seen: h.seen, current: h.current });
        }
        Ok(DenyOpenFiles { paths: self.paths.clone(), held, overflowed: self.overflowed })
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

    /// Looks every path up again; whether the set of refused files changed. A lookup that fails
    /// for another reason than a missing file is an error, and changes nothing.
    pub fn refresh(&mut self, root: &FsRoot) -> Result<bool> {
        let found = look_up(root, &self.paths)?;
        let before: Vec<FileId> = self.held.keys().copied().collect();
        self.take(found);
        Ok(self.held.keys().copied().ne(before))
    }

    /// Takes what the paths name now: those files are current, the others replaced; a replaced
    /// file with no name left is out of everyone's reach and let go.
    fn take(&mut self, found: Vec<(FileId, PathBuf, File)>) {
        let tick = self.held.values().map(|h| h.seen).max().unwrap_or(0) + 1;
        for held in self.held.values_mut() {
            held.current = false;
        }
        for (id, path, file) in found {
            let held = self.held.entry(id).or_insert(Held { path, file, seen: tick, current: true });
            held.seen = tick;
            held.current = true;
        }
        self.held.retain(|_, h| h.current || h.file.metadata().is_ok_and(|m| m.nlink() > 0));
        self.bound();
    }

    /// Lets go of the oldest replaced files beyond [`HELD_MAX`].
    fn bound(&mut self) {
        while self.held.len() > HELD_MAX {
            let oldest = self.held.iter().filter(|(_, h)| !h.current).min_by_key(|(_, h)| h.seen).map(|(id, _)| *id);
            let Some(oldest) = oldest else { return };
            self.held.remove(&oldest);
            if !self.overflowed {
                self.overflowed = true;
                crate::say!(
                    "leash: warning: kernel.deny_open: over {HELD_MAX} replaced files still have names; the oldest are no longer refused"
                );
            }
        }
    }
}

/// What each of `paths` names in `root` now, open; a path that names nothing is left out.
fn look_up(root: &FsRoot, paths: &[PathBuf]) -> Result<Vec<(FileId, PathBuf, File)>> {
    let mut found = Vec::new();
    for path in paths {
        match root.open_path(path) {
            Ok(file) => {
                let meta = file.metadata().with_context(|| format!("kernel.deny_open: {}", path.display()))?;
                found.push((FileId::from_meta(&meta), path.clone(), file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("kernel.deny_open: reading {}", path.display())),
        }
    }
    Ok(found)
}

/// A sandbox's BPF-LSM rules as in force, and the files its open deny list holds: what
/// `leash run` and the node daemon keep per sandbox to follow replaced files.
#[derive(Debug)]
pub struct RulesInForce {
    rules: LsmRules,
    files: DenyOpenFiles,
}

impl RulesInForce {
    /// `rules` as just put in force, their open deny list's files held from now on in `root`.
    /// Whether the list must be put in force again ([`RulesInForce::rules`]): a file was
    /// replaced since `rules` were made.
    pub fn new(rules: &LsmRules, root: &FsRoot) -> Result<(Self, bool)> {
        let files = DenyOpenFiles::open(root, &rules.deny_open_paths)?;
        let mut in_force = RulesInForce { rules: rules.clone(), files };
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
        let mut next = RulesInForce { rules: rules.clone(), files };
        next.follow();
        Ok(next)
    }

    /// Looks the paths up again; whether the rules changed and must be put in force again.
    pub fn refresh(&mut self, root: &FsRoot) -> Result<bool> {
        if self.files.is_empty() {
            return Ok(false);
        }
        self.files.refresh(root)?;
        Ok(self.follow())
    }

    /// Putting these rules in force failed, maybe halfway: the next [`RulesInForce::refresh`]
    /// puts them in force again.
    pub fn undo(&mut self) {
        self.rules.deny_open.clear();
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
