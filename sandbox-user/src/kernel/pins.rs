//! Layout of leash's objects in bpffs:
//!
//! ```text
//! <bpffs>/leash/sandboxes/<sandbox name>/<program name>   pinned bpf_link of one attachment
//! ```

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
    let root = sandboxes_root(bpffs);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    let mut names = Vec::new();
    for e in entries {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}
