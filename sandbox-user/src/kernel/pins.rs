//! The one layout of leash's objects in bpffs, shared by `leash run` and `leash daemon`:
//!
//! ```text
//! <bpffs>/leash/                                  flock(2)ed while a generation is made, opened or changed
//! <bpffs>/leash/<generation>/progs/<program>      every program, loaded and verified once per host
//! <bpffs>/leash/<generation>/maps/<map>           every map of the object
//! <bpffs>/leash/<generation>/lsm/<program>        the BPF-LSM links, only while a sandbox uses them
//! <bpffs>/leash/<generation>/rings/<slot>/        flock(2)ed by the `leash run` using event ring <slot>
//! <bpffs>/leash/<generation>/hold/<program>      a link of each network program to the empty cgroup `leash.hold` (`hold.rs`)
//! <bpffs>/leash/building-<pid>/...                a generation being made; renamed into place when whole
//! <bpffs>/leash/sandboxes/<name>/<generation>--<program>   one pinned cgroup link per program and sandbox
//! ```
//!
//! A generation is named after a hash of the eBPF object built into the binary (`gen-<hash>`),
//! so every leash built from the same object shares one. bpffs refuses names with a dot, hence
//! `--` between the generation and the program in a link's name. A `leash run` sandbox is named
//! after its owner (`<pid>-<start time>`, see `sandbox_id.rs`); a daemon sandbox by 16 hex
//! digits.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Between the generation and the program in a link's pin name.
pub const LINK_SEPARATOR: &str = "--";

/// Prefix of a generation's directory name.
pub const GENERATION_PREFIX: &str = "gen-";

/// Prefix of a generation being made (`building-<pid>`).
pub const BUILDING_PREFIX: &str = "building-";

/// The directory of a generation whose entries are the pooled event rings' slots.
pub const RINGS: &str = "rings";

/// `<bpffs>/leash`.
pub fn root(bpffs: &Path) -> PathBuf {
    bpffs.join("leash")
}

/// Makes `<bpffs>/leash` if missing (mode 0700) and checks it is leash's alone: a directory,
/// root's, and in a bpffs root no other user can rename it out of. Its mode is set to 0700 (no
/// other user may open it, so none can hold its lock). A bpffs mounted without `mode=` is
/// world-writable (sticky); one made by another user before leash, or behind a root another
/// user can rename entries of, would let that user swap the directories leash pins links into,
/// and so unpin (detach) a sandbox's programs.
pub fn private_root(bpffs: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    let top = std::fs::metadata(bpffs).with_context(|| format!("reading {}", bpffs.display()))?;
    // Its owner, and without the sticky bit anyone who may write it, can rename leash's entry.
    if top.uid() != 0 || (top.mode() & 0o022 != 0 && top.mode() & 0o1000 == 0) {
        bail!(
            "{} belongs to uid {} with mode {:o}: a user other than root could replace leash's pins there; \
             mount it as root's with mode=0700",
            bpffs.display(),
            top.uid(),
            top.mode() & 0o7777
        );
    }
    let root = root(bpffs);
    match std::fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
    }
    let meta = std::fs::symlink_metadata(&root).with_context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    if meta.uid() != 0 {
        bail!(
            "{} belongs to uid {}, not root: another user made it before leash; remove it (as root) and start again",
            root.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} root's alone", root.display()))?;
    }
    Ok(root)
}

/// `<bpffs>/leash/sandboxes`.
pub fn sandboxes_root(bpffs: &Path) -> PathBuf {
    root(bpffs).join("sandboxes")
}

/// The pin directory of one sandbox's links.
pub fn sandbox_dir(bpffs: &Path, name: &str) -> PathBuf {
    sandboxes_root(bpffs).join(name)
}

/// The pin name of sandbox link `program` of `generation`.
pub fn link_name(generation: &str, program: &str) -> String {
    format!("{generation}{LINK_SEPARATOR}{program}")
}

/// Names of the sandboxes that have a pin directory.
pub fn list(bpffs: &Path) -> Result<Vec<String>> {
    Ok(entries(&sandboxes_root(bpffs))?.iter().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

/// The entries of a pin directory; none when it does not exist.
pub fn entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// Unpins everything below `dir` and removes it (bpffs allows unlink and rmdir, not recursive
/// removal); a missing directory is not an error. Unpinning the last reference to a program or
/// map lets the kernel free it.
pub fn remove_tree(dir: &Path) -> Result<()> {
    for entry in entries(dir)? {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&path)?;
        } else {
            unpin(&path)?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Removes the pin at `path`. One already gone is not an error: two leash processes may remove
/// the same dead sandbox's pins at once (each `leash run` reaps what dead runs left), and the
/// second must not fail its own start for it.
pub fn unpin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unpinning {}", path.display())),
    }
}

/// Opens the map pinned at `path`.
pub fn open_map(path: &Path) -> Result<aya::maps::Map> {
    let data = aya::maps::MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}

/// An flock(2) on a directory in bpffs; released when dropped, or by the kernel when the holder
/// dies (so a killed leash never leaves the host locked).
pub struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Waits for the exclusive lock on `dir`.
    pub fn exclusive(dir: &Path) -> Result<Self> {
        Self::take(dir, libc::LOCK_EX).with_context(|| format!("locking {}", dir.display()))
    }

    /// Waits for a shared lock on `dir` (held by every process using a generation).
    pub fn shared(dir: &Path) -> Result<Self> {
        Self::take(dir, libc::LOCK_SH).with_context(|| format!("locking {} (shared)", dir.display()))
    }

    /// The exclusive lock on `dir` if nobody holds any lock on it now.
    pub fn try_exclusive(dir: &Path) -> Option<Self> {
        Self::take(dir, libc::LOCK_EX | libc::LOCK_NB).ok()
    }

    fn take(dir: &Path, operation: i32) -> std::io::Result<Self> {
        let file = File::open(dir)?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(Self { _dir: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Two removers of one dead sandbox's pins: the second finds them gone, and that is no error
    /// (it was, and a `leash run` reaping at the same moment as another refused to start).
    #[test]
    fn removing_what_another_process_removed_first_is_no_error() {
        let dir = std::env::temp_dir().join(format!("leash-pins-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let pin = dir.join("sub/link");
        std::fs::write(&pin, "").unwrap();
        super::unpin(&pin).expect("the first removal");
        super::unpin(&pin).expect("a removal of what is gone");
        super::remove_tree(&dir).expect("the tree");
        super::remove_tree(&dir).expect("a tree that is gone");
        assert!(!dir.exists());
    }
}
