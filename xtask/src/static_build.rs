//! The statically linked release build: `leash` as it is installed, benchmarked and put in the
//! container image, and for VM images every binary of the tests crate too (`vm_init`,
//! `netprobe`, ...). Built with `+crt-static` into `target/static`, so the normal build's
//! artefacts stay valid. Static, a warm `leash run` starts sooner (no dynamic loader); how a
//! static leash still looks users up as the host does is `sandbox-user/src/accounts.rs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd, workspace_root};

/// The host's target triple (rustc's `host:`): the static build is for this machine, and an
/// explicit `--target` keeps `+crt-static` away from build scripts and proc-macros.
fn host_target() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc).arg("-vV").output().context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find_map(|l| l.strip_prefix("host: ")) {
        Some(host) => Ok(host.trim().to_owned()),
        None => bail!("rustc -vV names no host target"),
    }
}

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

/// Builds only leash statically (release): what `install`, the bench and the container image take.
pub fn build_leash() -> Result<Binaries> {
    build_packages(&["sandbox-user"])
}

fn build_packages(packages: &[&str]) -> Result<Binaries> {
    let root = workspace_root();
    let target_dir = root.join("target/static");
    let mut cmd = cargo();
    let target = host_target()?;
    cmd.current_dir(&root).args(["build", "--release", "--target", &target]);
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
    let bins = Binaries { dir: target_dir.join(&target).join("release") };
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
/// Reads the headers only: the caller may be the bench, whose own peak RSS a child inherits.
pub fn has_interpreter(path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let read = |offset: usize, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset as u64).with_context(|| format!("reading {}", path.display()))?;
        Ok(buf)
    };
    let head = read(0, 64)?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let headers = read(phoff, phentsize * phnum)?;
    const PT_INTERP: u32 = 3;
    Ok(headers
        .chunks(phentsize.max(4))
        .any(|h| h.get(..4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == PT_INTERP)))
}
