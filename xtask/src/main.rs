//! `cargo xtask`: the project's own build steps, in plain Rust.
//!
//! - `setup`: install what building the eBPF programs needs (nightly rust-src, bpf-linker built
//!   against rustc's own LLVM). Idempotent; seconds when already done. Every task that builds
//!   runs it first when something is missing, so a fresh clone needs no separate step.
//! - `build`: build `leash` (and its embedded eBPF object); `--release` builds it statically
//!   ([`static_build`]), `--release --dynamic` as a dynamically linked program.
//! - `test`: build, then run every test suite (the test binaries run as root: they load eBPF
//!   into this kernel; as a normal user, through sudo as cargo's test runner), against the debug
//!   build; the static release build is built too, for the tests that run both.
//! - `install`: build `leash` (release, static unless `--dynamic`) and install it
//!   (`/usr/local/bin` by default).
//! - `fuzz`: the `cargo fuzz` targets of `fuzz/`, each for a while on its corpus (nightly;
//!   installs cargo-fuzz when missing); fails on a crash, naming the input.
//! - `bench`: the benchmarks, each printing ratios against a peer measured in the same run.
//! - `image`: leash's container image as an OCI archive, built without a registry.
//! - `vm-test`: the test suites inside VMs booting Debian's cloud kernels, one row per kernel.
//! - `node-test`: deploy/'s DaemonSet and runner pod run by containerd and runc inside VMs.
//! - `run`: one command under `leash run` inside a VM (default: the demo agent).
//!
//! Root only where needed: run as a normal user, xtask builds as that user and elevates only the
//! steps that need root through sudo (see [`privilege`]); run as root, it runs everything directly.

mod bench;
mod fuzz;
mod image;
mod node_test;
mod privilege;
mod setup;
mod static_build;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "leash's build, test, install and VM tasks",
    after_help = "From a fresh clone, each of these does all its own set-up:\n  \
        cargo xtask run        boot a VM and run the demo agent under leash (needs qemu; fetched/installed when missing)\n  \
        cargo xtask test       every test on this kernel (the test binaries run as root through sudo)\n  \
        cargo xtask install    build leash (release) and install it into /usr/local/bin\n\n\
        Run them as your own user: builds stay yours, and only the steps that need root use sudo."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain this build needs (nightly rust-src, bpf-linker); every other
    /// task does this itself when something is missing.
    Setup,
    /// Build the leash binary: debug, or --release (statically linked, into target/static).
    Build {
        #[arg(long)]
        release: bool,
        /// With --release: link dynamically (target/release/leash), for a host whose users come
        /// from NSS sources that only the host's own C library should load.
        #[arg(long, requires = "release")]
        dynamic: bool,
    },
    /// Build and run all tests. The test binaries run as root (they load eBPF programs into this
    /// kernel): as a normal user, through `sudo` as cargo's test runner; the build stays yours.
    Test {
        /// Extra arguments for the test binaries (a name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build leash (release, statically linked) and install it as PREFIX/bin/leash (sudo only
    /// when PREFIX is not writable), then print the command to run next.
    Install {
        /// Installation prefix: the binary goes to PREFIX/bin/leash.
        #[arg(long, value_name = "PREFIX", default_value = "/usr/local")]
        prefix: PathBuf,
        /// Link leash dynamically: its user and host lookups then use every NSS module the host
        /// configures through the host's C library (a static leash asks `getent` for users the
        /// local files lack, and resolves host names from /etc/hosts and DNS only).
        #[arg(long)]
        dynamic: bool,
    },
    /// Run each fuzz target (or one) for a while on its corpus in fuzz/corpus; fails on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// Run the benchmarks (release build, root).
    Bench(bench::BenchArgs),
    /// Build leash's container image (an OCI archive) from the static binary, no registry needed.
    Image(image::ImageArgs),
    /// Run the test suites inside VMs (qemu) booting each kernel of the matrix; one row per kernel.
    VmTest(vm::VmTestArgs),
    /// Run deploy/'s DaemonSet and runner pod with containerd and runc in VMs (6.1 and 7 by default).
    NodeTest(node_test::NodeTestArgs),
    /// Boot a VM with the project directory shared at the same path and run CMD under `leash run`.
    Run(vm::RunArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release: false, .. } => build(false),
        Task::Build { release: true, dynamic: true } => build(true),
        Task::Build { release: true, dynamic: false } => {
            setup::ensure()?;
            let bins = static_build::build_leash()?;
            println!("build: {} (statically linked)", bins.path("leash").display());
            Ok(())
        }
        Task::Test { args } => test(&args),
        Task::Install { prefix, dynamic } => install(&prefix, dynamic),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Image(args) => {
            setup::ensure()?;
            image::run(args)
        }
        Task::VmTest(args) => {
            setup::ensure()?;
            vm::vm_test(args)
        }
        Task::NodeTest(args) => {
            setup::ensure()?;
            node_test::run(args)
        }
        Task::Run(args) => {
            setup::ensure()?;
            vm::run(args)
        }
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
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args(["build", "-p", "sandbox-user", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

/// `cargo xtask test`: set-up when missing, the build as the invoking user, then the tests with
/// their binaries run as root (directly when xtask is root, else through sudo as the runner).
fn test(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let target = root.join("target");
    privilege::ensure_sudo("run the tests (they load eBPF programs and create cgroups)")?;
    // A run interrupted before its clean-up left root's files behind: give them back first.
    privilege::return_to_user(&target)?;
    build(false)?;
    // The release build as installed, for the tests that run it beside the debug build (how a
    // static leash looks users up differs from a dynamic one).
    let released = static_build::build_leash()?;
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .env("LEASH_BIN", target.join("debug/leash"))
        .env("LEASH_STATIC_BIN", released.path("leash"))
        .args(["test", "-p", "sandbox-common", "-p", "sandbox-policy", "-p", "sandbox-user", "-p", "leash-tests", "--"])
        .args(args);
    if !privilege::is_root() {
        let (var, runner) = privilege::sudo_test_runner()?;
        println!("xtask: building as this user; the test binaries run as root ({var}=\"{runner}\")");
        cmd.env(var, runner);
    }
    let result = run_cmd(&mut cmd);
    let returned = privilege::return_to_user(&target);
    result?;
    returned
}

/// `cargo xtask install`: set-up when missing, a release build as the invoking user, then
/// `PREFIX/bin/leash` (through sudo only when PREFIX is not writable by this user).
fn install(prefix: &Path, dynamic: bool) -> Result<()> {
    if !prefix.is_absolute() {
        bail!("--prefix must be an absolute path, not {}", prefix.display());
    }
    let bin_dir = prefix.join("bin");
    let writable = privilege::is_root() || writable_by_me(&bin_dir);
    if !writable {
        privilege::ensure_sudo(&format!("write {}", bin_dir.display()))?;
    }
    setup::ensure()?;
    let linked = if dynamic { "dynamically linked" } else { "statically linked" };
    println!("install: building leash (release, {linked}; a few minutes the first time) ...");
    let built = if dynamic {
        run_cmd(cargo().current_dir(workspace_root()).args([
            "build",
            "--release",
            "-p",
            "sandbox-user",
            "--bin",
            "leash",
        ]))?;
        workspace_root().join("target/release/leash")
    } else {
        static_build::build_leash()?.path("leash")
    };
    let dest = bin_dir.join("leash");
    let mut cmd = if writable { Command::new("install") } else { privilege::as_root("install") };
    cmd.args(["-D", "-m", "0755"]).arg(&built).arg(&dest);
    run_cmd(&mut cmd)?;
    let version = Command::new(&dest)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("install: {} installed ({version})", dest.display());
    // sudo's secure_path usually holds /usr/local/bin and /usr/bin, not a home directory.
    let on_sudo_path =
        ["/usr/local/bin", "/usr/bin", "/usr/local/sbin", "/usr/sbin"].iter().any(|d| Path::new(d) == bin_dir);
    let leash = if on_sudo_path { "leash".to_owned() } else { dest.display().to_string() };
    println!();
    println!("Next:");
    let next = [
        (format!("sudo {leash} doctor"), "which layers this host can enforce"),
        (format!("cd your-project && sudo {leash} run -- claude"), "the default policy; --policy FILE for your own"),
    ];
    let width = next.iter().map(|(cmd, _)| cmd.len()).max().unwrap_or(0);
    for (cmd, what) in next {
        println!("  {cmd:width$}   # {what}");
    }
    Ok(())
}

/// True when this user can create files in `dir` (or in its nearest existing ancestor).
fn writable_by_me(dir: &Path) -> bool {
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".leash-install-probe-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn nix_is_root() -> bool {
    privilege::is_root()
}
