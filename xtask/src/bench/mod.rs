//! `cargo xtask bench [start|connect|policy|proxy|dns|confine|all|syscall]`: benchmarks that each print ratios against a
//! peer measured in the same run, on this machine, as root (`all`: every one but `syscall`).
//!
//! - `start` (`start.rs`): wall time of `leash run -- /bin/true` against the netns + veth +
//!   nftables recipe a supervisor would run with `ip` and `nft`, and against
//!   `bwrap --unshare-net`.
//! - `connect` (`connect.rs`): loopback connect+close to the sandbox's proxy from inside the
//!   sandbox against the same loop outside it, alternating.
//! - `proxy` (`proxy.rs`): HTTPS keep-alive requests/s, added latency and memory for idle tunnels
//!   through leash's proxy against mitmproxy and squid-openssl (ssl-bump), same client and
//!   upstream.
//! - `dns` (`dns.rs`): allowed-name answers/s and latency from inside a transparent sandbox
//!   (leash's resolver) beside a resolver on loopback answering from memory.
//! - `confine` (`confine.rs`): the node daemon's confine latency and rate, and its memory per
//!   sandbox, against the netns + veth + nftables recipe's setup and teardown per sandbox.
//! - `syscall` (`syscall.rs`): open/close, socket/close and fork+exec loops inside a VM (no root
//!   needed) with no programs, with leash's BPF-LSM programs, and with a seccomp denylist.
//!
//! Every run is bounded (fixed iteration counts, timeouts on waits), sends traffic to loopback
//! only, and removes what it created: its scratch directory, every network namespace and veth
//! pair, every sandbox, every cgroup and bpffs mount.

mod confine;
mod connect;
mod dns;
mod proxy;
mod start;
mod syscall;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// Timed iterations of each start variant and of `confine`'s netns recipe (after the warm-ups).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Untimed start (and `confine` recipe) iterations run first.
    #[arg(long, default_value_t = 3)]
    warmups: u32,
    /// Connect rounds; each runs the loop once inside and once outside the sandbox.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Connects per loop in each round.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    connects: u32,
    /// Measured milliseconds of each proxy throughput run (1 and 64 connections, per proxy).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    proxy_ms: u64,
    /// Untimed milliseconds of requests before each proxy throughput run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    proxy_warmup_ms: u64,
    /// Idle tunnels held through each proxy for the memory reading.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    tunnels: u32,
    /// Timed confines (fork, confine by pid, kill), after 100 untimed ones.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    cycles: u32,
    /// Sandboxes the daemon holds at once for the memory reading (the kernel's maps hold 4,096).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=4096))]
    hold: u32,
    /// For `start`: another leash binary to time beside this one (cold and warm), e.g. a build of
    /// the previous commit, so "no slower than before" is a ratio from the same run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Kernel series for `syscall` (5.10, 6.1, 6.12, 7 or all); repeatable.
    #[arg(long = "kernel", value_name = "K", default_value = "6.12")]
    kernels: Vec<String>,
    /// For `syscall`: time with the guest's ordinary clock (host time, noisy on a busy host)
    /// instead of counting instructions (qemu -icount).
    #[arg(long)]
    wall_clock: bool,
    /// Install missing peer tools with apt-get (bubblewrap, nftables, iproute2, squid-openssl)
    /// and pip (mitmproxy, in a venv under ~/.cache/leash/bench).
    #[arg(long)]
    install_peers: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Start,
    Connect,
    /// Policy decisions/s on a 1,000-endpoint policy: the proxy's index vs the Rego interpreter.
    Policy,
    /// HTTPS requests/s, latency and idle-tunnel memory: leash's proxy vs mitmproxy and squid.
    Proxy,
    /// DNS answers/s and latency inside a transparent sandbox vs a resolver on loopback.
    Dns,
    /// leash daemon: confine latency and rate, memory per sandbox, vs the netns recipe per sandbox.
    Confine,
    All,
    /// Syscall loops in a VM: no programs vs leash's BPF-LSM programs vs a seccomp denylist.
    Syscall,
}

/// A program a benchmark compares against, and the Debian package that ships it.
struct Peer {
    program: &'static str,
    package: &'static str,
}

const START_PEERS: [Peer; 3] = [
    Peer { program: "ip", package: "iproute2" },
    Peer { program: "nft", package: "nftables" },
    Peer { program: "bwrap", package: "bubblewrap" },
];

/// What the benchmarks share: the binaries under test and a scratch directory.
pub struct Ctx {
    pub leash: PathBuf,
    pub connbench: PathBuf,
    /// Scratch directory (mode 0755); removed when `Ctx` drops.
    pub dir: PathBuf,
    /// A policy that allows no network destination at all.
    pub policy: PathBuf,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.which == Which::Policy {
        return policy();
    }
    if args.which == Which::Syscall {
        return syscall::run(&args.kernels, args.wall_clock);
    }
    if !crate::nix_is_root() {
        bail!("the benchmarks create cgroups, load eBPF programs and network namespaces: run them as root (sudo -E cargo xtask bench)");
    }
    let start = matches!(args.which, Which::Start | Which::All);
    let connect = matches!(args.which, Which::Connect | Which::All);
    let proxy = matches!(args.which, Which::Proxy | Which::All);
    let dns = matches!(args.which, Which::Dns | Which::All);
    let confine = matches!(args.which, Which::Confine | Which::All);
    let peers = if start { find_peers(&START_PEERS, args.install_peers)? } else { Vec::new() };
    let recipe = if confine { recipe_tools(args.install_peers)? } else { None };

    crate::setup::ensure()?;
    println!("bench: building (release; leash statically linked, as installed) ...");
    let leash = crate::static_build::build_leash()?.path("leash");
    run_cmd(cargo().current_dir(workspace_root()).args(["build", "--release", "-p", "leash-tests", "--bins"]))?;

    let ctx = prepare(leash)?;
    if start {
        let tool = |name: &str| peers.iter().find(|(n, _)| *n == name).map(|(_, p)| p.clone()).expect("peer was found");
        start::run(
            &ctx,
            &start::Tools { ip: tool("ip"), nft: tool("nft"), bwrap: tool("bwrap") },
            args.baseline.as_deref(),
            args.iterations,
            args.warmups,
        )?;
    }
    if connect {
        if start {
            println!();
        }
        connect::run(&ctx, args.rounds, args.connects)?;
    }
    if proxy {
        if start || connect {
            println!();
        }
        let opts = proxy::Options {
            duration: Duration::from_millis(args.proxy_ms),
            warmup: Duration::from_millis(args.proxy_warmup_ms),
            tunnels: args.tunnels,
            install: args.install_peers,
        };
        proxy::run(&ctx, &opts)?;
    }
    if dns {
        if start || connect || proxy {
            println!();
        }
        dns::run(&ctx)?;
    }
    if confine {
        if start || connect || proxy || dns {
            println!();
        }
        let opts = confine::Options {
            cycles: args.cycles,
            hold: args.hold,
            iterations: args.iterations,
            warmups: args.warmups,
        };
        confine::run(&ctx, recipe.as_ref(), &opts)?;
    }
    if args.which == Which::All {
        println!();
        policy()?;
    }
    Ok(())
}

/// The policy-decision benchmark (needs no root): runs `sandbox-policy/examples/policy_bench.rs`.
fn policy() -> Result<()> {
    crate::setup::ensure()?;
    println!("bench: policy decisions (release build) ...");
    run_cmd(cargo().current_dir(workspace_root()).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "sandbox-policy",
        "--example",
        "policy_bench",
    ]))
}

/// Finds each peer program, installing the missing ones' packages when `install` is set.
fn find_peers(peers: &[Peer], install: bool) -> Result<Vec<(&'static str, PathBuf)>> {
    let missing: Vec<&Peer> = peers.iter().filter(|p| find_program(p.program).is_none()).collect();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
        for p in &missing {
            println!("bench: `{}` not found; it is in the Debian package {}", p.program, p.package);
        }
        if !install {
            bail!(
                "missing peer programs: install them with `apt-get install {}`, or pass --install-peers",
                packages.join(" ")
            );
        }
        println!("bench: installing {} with apt-get ...", packages.join(" "));
        apt_install(&packages)?;
    }
    peers
        .iter()
        .map(|p| {
            find_program(p.program)
                .map(|path| (p.program, path))
                .with_context(|| format!("`{}` still not found after installing {}", p.program, p.package))
        })
        .collect()
}

/// `ip` and `nft` for `confine`'s peer: installed when `install` is set, else `None` (the peer
/// is skipped) when one is missing.
fn recipe_tools(install: bool) -> Result<Option<confine::RecipeTools>> {
    let wanted = &START_PEERS[..2]; // ip, nft
    if install {
        let found = find_peers(wanted, true)?;
        return Ok(Some(confine::RecipeTools { ip: found[0].1.clone(), nft: found[1].1.clone() }));
    }
    match (find_program("ip"), find_program("nft")) {
        (Some(ip), Some(nft)) => Ok(Some(confine::RecipeTools { ip, nft })),
        _ => {
            for p in wanted.iter().filter(|p| find_program(p.program).is_none()) {
                println!(
                    "bench: `{}` not found (Debian package {}); confine's netns recipe row is skipped",
                    p.program, p.package
                );
            }
            Ok(None)
        }
    }
}

/// Installs Debian `packages`, refreshing the package lists once if the first try fails.
fn apt_install(packages: &[&str]) -> Result<()> {
    let install = || {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .status()
            .context("running apt-get")
    };
    if !install()?.success() {
        println!("bench: apt-get install failed; refreshing the package lists and retrying ...");
        run_cmd(Command::new("apt-get").args(["update"]))?;
        if !install()?.success() {
            bail!("apt-get install {} failed", packages.join(" "));
        }
    }
    Ok(())
}

/// `name` on `$PATH`, or in the sbin and bin directories (`sudo` and cargo do not always keep
/// the sbin ones on the path).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Creates the scratch directory with the allow-nothing policy and a copy of `connbench` that the
/// agent's user can execute wherever the workspace lives.
fn prepare(leash: PathBuf) -> Result<Ctx> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let built_connbench = target.join("release/connbench");
    for bin in [&leash, &built_connbench] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }
    // Not under /tmp: the agent gets a private /tmp, and `connect` needs a file both sides see.
    let dir = target.join(format!("bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ctx = Ctx { leash, connbench: dir.join("connbench"), policy: dir.join("allow-nothing.yaml"), dir };
    std::fs::set_permissions(&ctx.dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(&ctx.policy, "version: 1\nnetwork_policies: {}\n")?;
    std::fs::copy(&built_connbench, &ctx.connbench).context("copying connbench")?;
    std::fs::set_permissions(&ctx.connbench, std::fs::Permissions::from_mode(0o755))?;
    Ok(ctx)
}

/// Nearest-rank percentile `p` (0..=100) of `samples`.
pub fn percentile<T: Copy + PartialOrd>(samples: &[T], p: u32) -> T {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let rank = (p as usize * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

pub fn median<T: Copy + PartialOrd>(samples: &[T]) -> T {
    percentile(samples, 50)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "leash is 5.2× faster than X" (or slower), from `peer / leash`.
pub fn faster_than(ratio: f64, peer: &str) -> String {
    if ratio >= 1.0 {
        format!("leash is {ratio:.1}× faster than {peer}")
    } else {
        format!("leash is {:.1}× slower than {peer}", 1.0 / ratio)
    }
}

/// Runs `cmd`, failing with its stderr when it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// VmRSS of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace().nth(1).context("no VmRSS value")?.parse().context("VmRSS is not a number")
}

/// The number after `"key":` in a one-line JSON object.
pub fn field(line: &str, key: &str) -> Result<f64> {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat).with_context(|| format!("no {key} in {line:?}"))? + pat.len();
    let num: String = line[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    num.parse().with_context(|| format!("{key} is not a number in {line:?}"))
}

/// The last `lines` lines of `text`, on lines of their own, to end an error message.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let t = all[all.len().saturating_sub(lines)..].join("\n");
    if t.trim().is_empty() {
        "(empty)".into()
    } else {
        format!("\n{t}")
    }
}
