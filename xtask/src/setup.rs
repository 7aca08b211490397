//! Installing the eBPF toolchain: nightly's `rust-src` (the BPF target builds `core` from
//! source) and `bpf-linker` linked against the very libLLVM that nightly rustc ships, so the
//! bitcode rustc emits is always readable by the linker.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run_cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs whatever is missing (`cargo xtask setup`), saying what it found.
pub fn run() -> Result<()> {
    let started = std::time::Instant::now();
    let sysroot = match nightly_sysroot()? {
        Some(sysroot) => {
            println!("setup: nightly toolchain present");
            sysroot
        }
        None => install_nightly()?,
    };
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
        put_cargo_bin_on_path();
        if !bpf_linker_works() {
            bail!("bpf-linker was installed but does not run: is {} on PATH?", cargo_bin().display());
        }
    }
    println!("setup: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What every other task calls first: a quick look (well under a second when all is there), and
/// the whole of [`run`] only when something is missing.
pub fn ensure() -> Result<()> {
    put_cargo_bin_on_path();
    let missing = match nightly_sysroot()? {
        None => Some("the nightly toolchain"),
        Some(sysroot) if !has_rust_src(&sysroot) => Some("nightly rust-src"),
        Some(_) if !bpf_linker_works() => Some("bpf-linker"),
        Some(_) => None,
    };
    match missing {
        None => Ok(()),
        Some(what) => {
            println!("setup: {what} is missing; setting up the eBPF toolchain first (once per machine)");
            run()
        }
    }
}

/// The nightly toolchain's sysroot, or None when nightly is not installed.
fn nightly_sysroot() -> Result<Option<PathBuf>> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running rustup: install it from https://rustup.rs (leash builds with rustup's toolchains)")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())))
}

fn install_nightly() -> Result<PathBuf> {
    println!("setup: installing the nightly toolchain (minimal profile, with rust-src) ...");
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))?;
    nightly_sysroot()?.context("rustup installed nightly, but `rustup run nightly rustc` still fails")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

/// Puts cargo's bin directory on this process's PATH (for the builds xtask starts) when it is
/// not there: a bpf-linker just installed there must be found by sandbox-user's build script.
fn put_cargo_bin_on_path() {
    let bin = cargo_bin();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if bin.as_os_str().is_empty() || std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        // Single-threaded at this point: nothing else reads the environment concurrently.
        std::env::set_var("PATH", joined);
    }
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
