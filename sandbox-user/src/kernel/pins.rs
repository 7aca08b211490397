//! Layout of leash's objects in bpffs:
//!
//! ```text
//! <bpffs>/leash/sandboxes/<sandbox name>/<program name>   pinned bpf_link of one attachment
//! ```
//!
//! (The node daemon's layout, below `<bpffs>/leash/node`, is described in `node.rs`.) The
//! helpers at the end serve both.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `<bpffs>/leash/sandboxes`.
pub fn sandboxes_root(bpffs: &Path) -> PathBuf {
    bpffs.join("leash").join("sandboxes")
}

/// The pin directory of one sandbox.
pub fn sandbox_dir(bpffs: &Path, name: &str) -> PathBuf {
    sandboxes_root(bpffs).join(name)
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
/// removal); a missing directory is not an error. Unpinning the last link of a program set lets
/// the kernel free it, its maps and their entries.
pub fn remove_tree(dir: &Path) -> Result<()> {
    for entry in entries(dir)? {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&path)?;
        } else {
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Opens the map pinned at `path`.
pub fn open_map(path: &Path) -> Result<aya::maps::Map> {
    let data = aya::maps::MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}
