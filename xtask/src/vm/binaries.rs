//! The statically linked binaries a VM image carries: `leash` and every binary of the tests
//! crate (`vm_init`, `netprobe`, ...), built with `+crt-static` into `target/vm` so the normal
//! build's artefacts stay valid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The built binaries, by name.
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every executable the build left in the release directory (the tests crate's binaries
    /// and leash), sorted by name.
    pub fn all(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut bins = Vec::new();
        for name in target_binary_names()? {
            let path = self.path(&name);
            if path.is_file() {
                bins.push((name, path));
            }
        }
        bins.sort();
        Ok(bins)
    }
}

/// Builds leash and the test binaries statically (release) and checks that each is static.
pub fn build() -> Result<Binaries> {
    let bins = build_packages(&["sandbox-user", "leash-tests"])?;
    for needed in ["vm_init", "netprobe"] {
        if !bins.path(needed).is_file() {
            bail!("the static build left no {needed} in {}", bins.dir.display());
        }
    }
    Ok(bins)
}

/// Builds only leash statically (release), for the container image.
pub fn build_leash() -> Result<Binaries> {
    build_packages(&["sandbox-user"])
}

fn build_packages(packages: &[&str]) -> Result<Binaries> {
    let root = workspace_root();
    let target_dir = root.join("target/vm");
    let mut cmd = cargo();
    cmd.current_dir(&root).args(["build", "--release", "--target", TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.arg("--bins")
        .arg("--target-dir")
        .arg(&target_dir)
        // With --target, RUSTFLAGS reach only the target's crates, not build scripts; the eBPF
        // build inside sandbox-user's build script sets its own flags.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_cmd(&mut cmd)?;
    let bins = Binaries { dir: target_dir.join(TARGET).join("release") };
    for (name, path) in bins.all()? {
        if has_interpreter(&path)? {
            bail!("{name} ({}) is dynamically linked: the VM image has no libc to load it with", path.display());
        }
    }
    if !bins.path("leash").is_file() {
        bail!("the static build left no leash in {}", bins.dir.display());
    }
    Ok(bins)
}

/// The names of the binaries of the packages the VM image carries, read from their manifests.
fn target_binary_names() -> Result<Vec<String>> {
    let root = workspace_root();
    let mut names = Vec::new();
    for manifest in ["sandbox-user/Cargo.toml", "tests/Cargo.toml"] {
        let text = std::fs::read_to_string(root.join(manifest)).with_context(|| format!("reading {manifest}"))?;
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if let (true, Some(value)) = (in_bin, line.strip_prefix("name")) {
                if let Some(v) = value.trim_start().strip_prefix('=') {
                    names.push(v.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    Ok(names)
}

/// True when the ELF file at `path` names a program interpreter (PT_INTERP): it is dynamic.
pub fn has_interpreter(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes")) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        data.get(o..o + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == PT_INTERP)
    }))
}
