//! `bench start`: how long it takes to start a command with no network but a proxy, four ways.
//!
//! - (a) `leash run --policy <allow nothing> -- /bin/true`, warm: the host's generation of
//!   programs is pinned (any earlier run made it), so the run opens it, creates its cgroup,
//!   attaches, writes its entries, starts its proxy and the agent.
//! - (a0) the same, cold: every generation is unpinned first (untimed), so the run loads and
//!   verifies the whole object and pins it.
//! - (b) the recipe leash replaces, with the commands a supervisor runs: a network namespace, a
//!   veth pair with one end moved into it, addresses from 10.231.0.0/16 on both ends, links up,
//!   a default route, an nftables output chain inside the namespace that drops everything but the
//!   (would-be) proxy on the host end, `ip netns exec NS /bin/true`, then teardown. The whole
//!   sequence is timed. Nothing is ever sent to those addresses.
//! - (c) `bwrap --unshare-net --ro-bind / / -- /bin/true`: a namespace with no network at all.
//! - (d), (d0) with `--baseline PATH`: another leash binary, warm and cold, e.g. a build of the
//!   commit before. When its eBPF object is this build's (the two share a generation: a change
//!   to userland only), interleaved with the others like them. Otherwise in a block of its own
//!   after the others, beside bwrap again ((c')): two builds with different objects started in
//!   turn each retire the other's generation when their run ends, so interleaved every start
//!   would be cold.
//!
//! Peak RSS is wait4(2)'s `ru_maxrss` for leash's runs; it includes what leash's process held
//! between vfork and exec (this process's memory), so this process resets its own peak before
//! each start and prints its RSS, the figure's floor. The variants run interleaved (rotating
//! which goes first) so drift in the machine hits them alike, each timed start right after an
//! untimed one of its own kind, so no variant pays for the kernel work another left behind.
//! Each namespace and veth pair has a name unique to this process and iteration and is removed
//! even when a step fails; namespaces left by a killed earlier run are removed first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{faster_than, median, ms, percentile, run_quiet, Ctx};

/// The peer programs, by absolute path.
pub struct Tools {
    pub ip: PathBuf,
    pub nft: PathBuf,
    pub bwrap: PathBuf,
}

const NS_PREFIX: &str = "leash-bench-";
/// (c), as the issue words it; as root on Debian 12 it needs no further binds.
const BWRAP_ARGS: [&str; 6] = ["--unshare-net", "--ro-bind", "/", "/", "--", "/bin/true"];
/// The port the recipe's firewall lets through to the host end (where a proxy would listen).
const PROXY_PORT: u16 = 3128;
/// Commands one recipe iteration runs.
pub const RECIPE_COMMANDS: usize = 13;

/// One start, as measured: wall time, and the peak RSS of the process tree when it is leash.
struct Sample {
    wall: Duration,
    rss_kib: Option<u64>,
}

/// One way to start `/bin/true`; its argument numbers the iteration (for unique names).
type Variant<'a> = Box<dyn Fn(u32) -> Result<Sample> + 'a>;

pub fn run(ctx: &Ctx, tools: &Tools, baseline: Option<&Path>, iterations: u32, warmups: u32) -> Result<()> {
    preflight(tools)?;
    let bpffs = bpffs_mount()?;
    let timed = |f: &dyn Fn() -> Result<()>| -> Result<Sample> {
        let t = Instant::now();
        f()?;
        Ok(Sample { wall: t.elapsed(), rss_kib: None })
    };
    let mut variants: Vec<(String, Variant)> = vec![
        ("(a) leash run, warm (programs pinned)".into(), Box::new(|_| leash_true(ctx, &ctx.leash))),
        (
            "(a0) leash run, cold (no programs pinned)".into(),
            Box::new(|_| {
                remove_generations(&bpffs)?;
                leash_true(ctx, &ctx.leash)
            }),
        ),
        ("(b) netns + veth + nftables recipe".into(), Box::new(|k| timed(&|| recipe(&tools.ip, &tools.nft, k)))),
        ("(c) bwrap --unshare-net -- /bin/true".into(), Box::new(|_| timed(&|| bwrap_true(tools)))),
    ];
    let beside = match baseline {
        Some(path) => shares_generation(ctx, path, &bpffs)?,
        None => false,
    };
    if let (Some(path), true) = (baseline, beside) {
        println!("start: the baseline shares this build's eBPF object: interleaved with the others");
        variants.extend(baseline_variants(ctx, path, &bpffs));
    }
    println!(
        "start: {warmups} warm-up + {iterations} timed iterations of each variant, interleaved, each after an untimed one ..."
    );
    let mut samples = measure(&variants, warmups, iterations)?;
    check_recipe_cleanup(&tools.ip)?;
    if let (Some(path), false) = (baseline, beside) {
        // bwrap again in the baseline's block: this machine's speed drifts by more than the
        // difference being measured between blocks minutes apart, and each binary's ratio to
        // bwrap in its own block does not.
        let mut block = baseline_variants(ctx, path, &bpffs);
        block.push(("(c') bwrap, in the baseline's block".into(), Box::new(|_| timed(&|| bwrap_true(tools)))));
        println!("start: the baseline, in a block of its own ...");
        samples.extend(measure(&block, warmups, iterations)?);
        variants.extend(block);
    }

    println!();
    println!("start: wall time per start, {iterations} iterations after {warmups} warm-ups (ms); peak RSS (MiB)");
    println!("{:<48} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}", "", "median", "p90", "min", "max", "RSS med", "RSS max");
    let walls: Vec<Vec<Duration>> = samples.iter().map(|s| s.iter().map(|x| x.wall).collect()).collect();
    for (v, (name, _)) in variants.iter().enumerate() {
        let t = &walls[v];
        let max = t.iter().max().copied().unwrap_or_default();
        let min = t.iter().min().copied().unwrap_or_default();
        let mut rss: Vec<u64> = samples[v].iter().filter_map(|x| x.rss_kib).collect();
        rss.sort_unstable();
        let (rss_med, rss_max) = match (rss.get(rss.len() / 2), rss.last()) {
            (Some(m), Some(x)) => (format!("{:.1}", *m as f64 / 1024.0), format!("{:.1}", *x as f64 / 1024.0)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{name:<48} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {rss_med:>9} {rss_max:>9}",
            ms(median(t)),
            ms(percentile(t, 90)),
            ms(min),
            ms(max)
        );
    }
    let med = |v: usize| ms(median(&walls[v]));
    let (warm, cold, recipe_ms, bwrap_ms) = (med(0), med(1), med(2), med(3));
    let b_ratio = recipe_ms / warm;
    println!(
        "ratio (b)/(a) = {b_ratio:.2}: warm {} (goal >= 5: {})",
        faster_than(b_ratio, "the netns recipe"),
        if b_ratio >= 5.0 { "met" } else { "NOT met" }
    );
    let c_ratio = warm / bwrap_ms;
    println!(
        "ratio (a)/(c) = {c_ratio:.2}: warm leash against bwrap --unshare-net (goal <= 2: {})",
        if c_ratio <= 2.0 { "met" } else { "NOT met" }
    );
    println!("ratio (b)/(a0) = {:.2}: cold {}", recipe_ms / cold, faster_than(recipe_ms / cold, "the netns recipe"));
    if baseline.is_some() && beside {
        let (d, d0) = (med(4), med(5));
        println!(
            "ratio (d)/(a) = {:.2}, (d0)/(a0) = {:.2}: warm and cold against the baseline, interleaved \
             (its warm start against bwrap: {:.2})",
            d / warm,
            d0 / cold,
            d / bwrap_ms
        );
    } else if baseline.is_some() {
        let (d, d0, bwrap_beside) = (med(4), med(5), med(6));
        println!("ratio (d)/(a) = {:.2}, (d0)/(a0) = {:.2}: warm and cold against the baseline", d / warm, d0 / cold);
        println!(
            "ratio (d)/(c') = {:.2} against (a)/(c) = {c_ratio:.2}: each warm start against bwrap in its own block \
             (their quotient, {:.2}, is the baseline's warm time over this build's without the drift between blocks)",
            d / bwrap_beside,
            (d / bwrap_beside) / c_ratio
        );
    }
    let mut warm_rss: Vec<u64> = samples[0].iter().filter_map(|x| x.rss_kib).collect();
    warm_rss.sort_unstable();
    if let Some(max) = warm_rss.last() {
        let mib = *max as f64 / 1024.0;
        println!(
            "peak RSS of a warm run: {mib:.1} MiB (goal <= 16 MiB: {})",
            if mib <= 16.0 { "met" } else { "NOT met" }
        );
    }
    println!("(the recipe runs {RECIPE_COMMANDS} commands and starts no proxy; leash's time includes its proxy;");
    println!(" peak RSS is the largest of leash and the processes it waited for, from wait4(2), whose floor is");
    println!(" this harness's own RSS at each start: {:.1} MiB now)", own_rss_kib().unwrap_or(0) as f64 / 1024.0);
    println!("cleanup: `ip netns list` shows no benchmark namespace");
    Ok(())
}

/// Runs every variant `warmups + iterations` times, interleaved (the order rotating each round),
/// and keeps the timed samples of each. Each start is preceded by an untimed start of the same
/// variant: the kernel finishes part of a start's teardown after it returns (a network
/// namespace's in a kernel worker, for several milliseconds after `ip netns del` and bwrap's
/// exit), and that work then lands on the untimed start, never on another variant's timed one.
/// Every variant is so timed as it runs when started over and over.
fn measure(variants: &[(String, Variant)], warmups: u32, iterations: u32) -> Result<Vec<Vec<Sample>>> {
    let n = variants.len();
    let mut samples: Vec<Vec<Sample>> = (0..n).map(|_| Vec::new()).collect();
    let total = warmups + iterations;
    for i in 0..total {
        for j in 0..n {
            let v = (i as usize + j) % n;
            let (name, f) = &variants[v];
            f(2 * i).with_context(|| format!("start benchmark {name}, settling start {}", i + 1))?;
            let sample = f(2 * i + 1).with_context(|| format!("start benchmark {name}, iteration {}", i + 1))?;
            if i >= warmups {
                samples[v].push(sample);
            }
        }
        let done = i + 1;
        if done == warmups && warmups > 0 {
            println!("start: warm-ups done");
        } else if done > warmups && ((done - warmups).is_multiple_of(10) || done == total) {
            println!("start: {} of {iterations} timed iterations done", done - warmups);
        }
    }
    Ok(samples)
}

/// (d) and (d0): `baseline` warm, and cold (every generation unpinned first, untimed).
fn baseline_variants<'a>(ctx: &'a Ctx, baseline: &'a Path, bpffs: &'a Path) -> Vec<(String, Variant<'a>)> {
    vec![
        (format!("(d) baseline, warm: {}", baseline.display()), Box::new(move |_| leash_true(ctx, baseline))),
        (
            "(d0) baseline, cold".into(),
            Box::new(move |_| {
                remove_generations(bpffs)?;
                leash_true(ctx, baseline)
            }),
        ),
    ]
}

/// Whether `baseline` runs this build's generation of programs (a change to userland only): a
/// start of each, in turn, leaves the same generations pinned.
fn shares_generation(ctx: &Ctx, baseline: &Path, bpffs: &Path) -> Result<bool> {
    let generations = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(bpffs.join("leash"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gen-"))
            .collect();
        names.sort();
        names
    };
    leash_true(ctx, &ctx.leash)?;
    let ours = generations();
    leash_true(ctx, baseline)?;
    let theirs = generations();
    leash_true(ctx, &ctx.leash)?;
    Ok(ours == theirs && generations() == ours)
}

/// leash's bpffs: `/sys/fs/bpf`, the only one it uses (`kernel/mounts.rs`).
fn bpffs_mount() -> Result<PathBuf> {
    Ok(PathBuf::from("/sys/fs/bpf"))
}

/// Unpins every generation of leash's programs, so the next run starts cold. Nothing runs then.
fn remove_generations(bpffs: &Path) -> Result<()> {
    let root = bpffs.join("leash");
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("gen-") {
            remove_pins(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_pins(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_pins(&entry.path())?;
        } else {
            std::fs::remove_file(entry.path()).with_context(|| format!("unpinning {}", entry.path().display()))?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Checks what the recipe needs (see `recipe_preflight`) and that bwrap works here.
fn preflight(tools: &Tools) -> Result<()> {
    recipe_preflight(&tools.ip)?;
    run_quiet(Command::new(&tools.bwrap).args(BWRAP_ARGS))
        .context("bwrap --unshare-net does not work here, so it cannot be compared")?;
    Ok(())
}

/// Refuses when 10.231.0.0/16 is already in use here, and removes namespaces that a killed
/// earlier run left.
pub fn recipe_preflight(ip: &Path) -> Result<()> {
    for what in [&["-o", "-4", "addr", "show"][..], &["-4", "route", "show"][..]] {
        let out = Command::new(ip).args(what).output().context("running ip")?;
        if String::from_utf8_lossy(&out.stdout).contains("10.231.") {
            bail!(
                "10.231.0.0/16 is already used on this host (`ip {}`); the netns recipe needs it free",
                what.join(" ")
            );
        }
    }
    for ns in bench_namespaces(ip)? {
        let pid = ns.strip_prefix(NS_PREFIX).and_then(|rest| rest.split('-').next()).unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            println!("bench: removing network namespace {ns} left by an earlier run");
            let _ = run_quiet(Command::new(ip).args(["netns", "del", &ns]));
        }
    }
    Ok(())
}

/// Fails when a recipe iteration of this process left its network namespace behind.
pub fn check_recipe_cleanup(ip: &Path) -> Result<()> {
    let ours = format!("{NS_PREFIX}{}-", std::process::id());
    let leftovers: Vec<String> = bench_namespaces(ip)?.into_iter().filter(|ns| ns.starts_with(&ours)).collect();
    if !leftovers.is_empty() {
        bail!("network namespaces left behind: {}", leftovers.join(", "));
    }
    Ok(())
}

/// This process's resident set (VmRSS), KiB.
fn own_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// `leash run -- /bin/true` with `leash`: wall time and peak RSS.
fn leash_true(ctx: &Ctx, leash: &Path) -> Result<Sample> {
    // A child started with vfork (as `spawn` does) has this process's memory until its exec, and
    // the kernel carries that memory's peak RSS into the child's `ru_maxrss`: reset ours to what
    // it holds now, so that the figure is leash's (or this process's current RSS, a few MiB).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let mut child = Command::new(leash)
        .arg("run")
        .arg("--policy")
        .arg(&ctx.policy)
        .args(["--", "/bin/true"])
        // Cargo puts these in the environment of what it runs (openssl-probe); `sudo leash run`
        // has neither (sudo resets the environment). With SSL_CERT_DIR leash reads every file of
        // that directory for the system roots: about 2.5 ms of a start on Debian's 146 roots.
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .current_dir(&ctx.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", leash.display()))?;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain wait4(2) on our own child, which nothing else waits for.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("waiting for leash: {}", std::io::Error::last_os_error());
    }
    let wall = t.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("{} run failed (status {status:#x}): {}", leash.display(), err.trim());
    }
    Ok(Sample { wall, rss_kib: Some(usage.ru_maxrss as u64) })
}

fn bwrap_true(tools: &Tools) -> Result<()> {
    run_quiet(Command::new(&tools.bwrap).args(BWRAP_ARGS).stdin(Stdio::null()))
}

/// The names and addresses of recipe iteration `k`. Interface names stay within 15 bytes.
struct Names {
    ns: String,
    host: String,
    peer: String,
    host_addr: String,
    peer_addr: String,
}

fn names(k: u32) -> Names {
    let pid = std::process::id();
    let k = k % 100_000;
    let block = k % 16_384; // /30 blocks in 10.231.0.0/16
    let (x, y) = (block / 64, (block % 64) * 4);
    Names {
        ns: format!("{NS_PREFIX}{pid}-{k}"),
        host: format!("lb{pid:x}h{k}"),
        peer: format!("lb{pid:x}n{k}"),
        host_addr: format!("10.231.{x}.{}", y + 1),
        peer_addr: format!("10.231.{x}.{}", y + 2),
    }
}

/// What a recipe iteration has created so far; dropping it removes whatever is left.
struct Created<'a> {
    ip: &'a Path,
    names: &'a Names,
    ns: bool,
    link: bool,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        // Deleting the host end deletes its peer too; the namespace goes with its mount.
        if self.link {
            let _ = Command::new(self.ip).args(["link", "del", &self.names.host]).output();
        }
        if self.ns {
            let _ = Command::new(self.ip).args(["netns", "del", &self.names.ns]).output();
        }
    }
}

/// One iteration of (b), setup to teardown; `k` makes its names unique within this process.
pub fn recipe(ip_path: &Path, nft: &Path, k: u32) -> Result<()> {
    let n = names(k);
    let ip = |args: &[&str]| run_quiet(Command::new(ip_path).args(args));
    let mut created = Created { ip: ip_path, names: &n, ns: false, link: false };

    ip(&["netns", "add", &n.ns])?;
    created.ns = true;
    ip(&["link", "add", &n.host, "type", "veth", "peer", "name", &n.peer])?;
    created.link = true;
    ip(&["link", "set", &n.peer, "netns", &n.ns])?;
    ip(&["addr", "add", &format!("{}/30", n.host_addr), "dev", &n.host])?;
    ip(&["-n", &n.ns, "addr", "add", &format!("{}/30", n.peer_addr), "dev", &n.peer])?;
    ip(&["link", "set", &n.host, "up"])?;
    ip(&["-n", &n.ns, "link", "set", &n.peer, "up"])?;
    ip(&["-n", &n.ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &n.ns, "route", "add", "default", "via", &n.host_addr])?;
    nft_in(ip_path, nft, &n)?;
    run_quiet(Command::new(ip_path).args(["netns", "exec", &n.ns, "/bin/true"]).stdin(Stdio::null()))?;

    // Host end first: its deletion removes the pair at once, whereas a deleted namespace's
    // interfaces go away later, asynchronously.
    ip(&["link", "del", &n.host])?;
    created.link = false;
    ip(&["netns", "del", &n.ns])?;
    created.ns = false;
    Ok(())
}

/// Loads, inside the namespace, an output chain that drops everything except TCP to the proxy.
fn nft_in(ip: &Path, nft: &Path, n: &Names) -> Result<()> {
    let rules = format!(
        "table inet leash_bench {{\n  chain output {{\n    type filter hook output priority 0; policy drop;\n    ip daddr {} tcp dport {PROXY_PORT} accept\n  }}\n}}\n",
        n.host_addr
    );
    let mut child = Command::new(ip)
        .args(["netns", "exec", &n.ns])
        .arg(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip netns exec nft")?;
    let written = child.stdin.take().context("nft stdin")?.write_all(rules.as_bytes());
    let out = child.wait_with_output()?;
    written.context("writing the ruleset to nft")?;
    if !out.status.success() {
        bail!("nft -f - in {} failed ({}): {}", n.ns, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The benchmark's namespaces that `ip netns list` shows (any run's).
fn bench_namespaces(ip: &Path) -> Result<Vec<String>> {
    let out = Command::new(ip).args(["netns", "list"]).output().context("running ip netns list")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(NS_PREFIX))
        .map(str::to_owned)
        .collect())
}
