//! Builds the eBPF object from `sandbox-ebpf` (nightly, bpf-linker) so the `leash` binary can
//! embed it. Missing tools fail the build with one line that names the fix.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    if let Some(missing) = missing_tool() {
        eprintln!(
            "error: {missing} is missing: run `cargo xtask setup` (installs the eBPF toolchain), then build again"
        );
        return ExitCode::FAILURE;
    }
    let package = aya_build::Package {
        name: "sandbox-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../sandbox-ebpf"),
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        eprintln!("error: building the eBPF programs failed: {err:#}");
        return ExitCode::FAILURE;
    }
    match generation_name() {
        Ok(name) => println!("cargo:rustc-env=LEASH_GENERATION={name}"),
        Err(e) => {
            eprintln!("error: reading the built eBPF object: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The name of the kernel-side generation this object makes (`kernel/generation.rs`): a hash of
/// the object, computed here so that no run spends time on it. FNV-1a: a name, not a security
/// boundary.
fn generation_name() -> std::io::Result<String> {
    let out = std::env::var_os("OUT_DIR").ok_or_else(|| std::io::Error::other("OUT_DIR is not set"))?;
    let object = std::fs::read(std::path::Path::new(&out).join("leash-ebpf"))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("gen-{h:016x}"))
}

/// The first tool the eBPF build needs that this machine lacks.
fn missing_tool() -> Option<&'static str> {
    println!("cargo:rerun-if-env-changed=PATH");
    let linker_ok = Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success());
    if !linker_ok {
        return Some("bpf-linker");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match sysroot {
        None => Some("the nightly Rust toolchain"),
        Some(root) if !std::path::Path::new(&root).join("lib/rustlib/src/rust/library/core").exists() => {
            Some("the nightly rust-src component")
        }
        Some(_) => None,
    }
}
