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
    ExitCode::SUCCESS
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
