//! Installing the eBPF toolchain: nightly's `rust-src` (the BPF target builds `core` from
//! source) and `bpf-linker` linked against the very libLLVM that nightly rustc ships, so the
//! bitcode rustc emits is always readable by the linker.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run_cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs whatever is missing.
pub fn run() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if has_rust_src(&sysroot) {
        println!("setup: nightly rust-src present");
    } else {
        println!("setup: installing nightly rust-src ...");
        run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if bpf_linker_works() {
        println!("setup: bpf-linker present");
    } else {
        install_bpf_linker(&sysroot)?;
    }
    println!("setup: done");
    Ok(())
}

/// Fails with one line naming `cargo xtask setup` when something is missing.
pub fn check() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if !has_rust_src(&sysroot) {
        bail!("nightly rust-src is missing: run `cargo xtask setup`");
    }
    if !bpf_linker_works() {
        bail!("bpf-linker is missing: run `cargo xtask setup`");
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!("the nightly toolchain is missing: install it with `rustup toolchain install nightly --profile minimal`");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Builds bpf-linker against nightly's own `libLLVM.so.<ver>-rust-<ver>` through a prefix whose
/// `lib/` holds two symlinks to it.
fn install_bpf_linker(sysroot: &Path) -> Result<()> {
    let lib = find_libllvm(sysroot)?;
    let file = lib.file_name().context("libLLVM path has no file name")?.to_string_lossy().into_owned();
    let major = file
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .context("unexpected libLLVM file name")?
        .to_owned();
    let prefix = cache_dir().join(format!("llvm-prefix-{file}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_owned(), file.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against {} (a few minutes) ...", lib.display());
    run_cmd(
        Command::new("cargo")
            .args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let dir = sysroot.join("lib");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!("no libLLVM.so.*-rust-* in {}: is the nightly toolchain complete?", dir.display())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("leash")
}
