//! `cargo xtask`: the project's own build steps, in plain Rust.
//!
//! - `setup`: install what building the eBPF programs needs (nightly rust-src, bpf-linker built
//!   against rustc's own LLVM). Idempotent; seconds when already done.
//! - `build`: build `leash` (and its embedded eBPF object).
//! - `test`: build, then run every test suite (needs root: tests load eBPF into this kernel).
//! - `bench`: the benchmarks, each printing ratios against a peer measured in the same run.
//! - `vm-test`: the test suites inside VMs booting Debian's cloud kernels, one row per kernel.
//! - `run`: one command under `leash run` inside a VM (default: the demo agent).

mod bench;
mod setup;
mod vm;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain this build needs (nightly rust-src, bpf-linker).
    Setup,
    /// Build the leash binary (debug, or --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run all tests (as root: they load eBPF programs into this kernel).
    Test {
        /// Extra arguments for the test binaries (a name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (release build, root).
    Bench(bench::BenchArgs),
    /// Run the test suites inside VMs (qemu) booting each kernel of the matrix; one row per kernel.
    VmTest(vm::VmTestArgs),
    /// Boot a VM with the project directory shared at the same path and run CMD under `leash run`.
    Run(vm::RunArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => build(release),
        Task::Test { args } => test(&args),
        Task::Bench(args) => bench::run(args),
        Task::VmTest(args) => vm::vm_test(args),
        Task::Run(args) => vm::run(args),
    }
}

/// Runs `cmd`, failing with its name when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

fn build(release: bool) -> Result<()> {
    setup::check()?;
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args(["build", "-p", "sandbox-user", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    setup::check()?;
    if !nix_is_root() {
        bail!("the tests load eBPF programs and create cgroups: run them as root (sudo -E cargo xtask test)");
    }
    build(false)?;
    let root = workspace_root();
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .env("LEASH_BIN", root.join("target/debug/leash"))
        .args(["test", "-p", "sandbox-common", "-p", "sandbox-user", "-p", "leash-tests", "--"])
        .args(args);
    run_cmd(&mut cmd)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
