//! `bench confine`: the node daemon (`leash daemon`): how fast it confines a pod's process, how
//! much memory a sandbox costs it, and what the netns recipe it replaces costs per sandbox.
//!
//! The daemon runs as on a node but with things of its own: a bpffs instance mounted in the
//! scratch directory (its pins never meet those of other runs), a policies directory holding one
//! policy `default` (`version: 1`, nothing allowed) that every pod gets, and a state directory.
//! Its callers live in a fake kubelet tree below the cgroup2 mount,
//! `leashbench-<pid>/kubepods/burstable/pod<uid>/<id>` (the cgroupfs driver), which `podclient`
//! moves itself into:
//!
//! 1. latency: `podclient cycles N` forks a child, asks the daemon to confine it by pid, kills it,
//!    N times on one connection, after an untimed run of 100. A confine is timed from sending
//!    the request to reading the reply, which the daemon sends once the child is in its
//!    sandbox; the rate counts whole cycles. Removing the sandboxes of the killed children is the
//!    job of the daemon's garbage collection, off that path.
//! 2. memory: VmRSS of the daemon at start; then three rounds, each reading it idle (record
//!    empty) and while `podclient hold N` keeps N confined children. The allocator gives freed
//!    pages back to the kernel late, which moves VmRSS by up to megabytes between readings, more than
//!    1,000 sandboxes take; the rounds show that spread next to the per-sandbox median.
//! 3. the peer: the netns + veth + nftables recipe of `bench start` (`start::recipe`), setup to
//!    teardown, timed per sandbox after the daemon is gone. Without `ip` or `nft` its row is
//!    left out.
//!
//! At the end the daemon's record must empty through its garbage collection (polled for 10 s).
//! Everything is removed, on error too: the pod's processes (`cgroup.kill`), the daemon
//! (SIGTERM), the cgroup tree (deepest first), the bpffs mount. Nothing is sent over any network:
//! the listener each confine hands over is on loopback and nothing connects to it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::start::{check_recipe_cleanup, recipe, recipe_preflight, RECIPE_COMMANDS};
use super::{faster_than, field, median, ms, percentile, rss_kib, run_quiet, tail, Ctx};

/// Untimed confines run first.
const WARMUP_CYCLES: u32 = 100;
/// The goal for one confine's median latency.
const GOAL: Duration = Duration::from_millis(2);
/// How long the daemon may take to load its programs and listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon's garbage collection may take to empty its record.
const GC_TIMEOUT: Duration = Duration::from_secs(10);
/// The fake pod and container.
const POD_UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
const CONTAINER_ID: &str = "be1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1cbe1c";
/// Memory readings: each holds `--hold` sandboxes once.
const HOLD_ROUNDS: usize = 3;
/// Top cgroup of the fake kubelet tree; `-<pid>` follows.
const TREE_PREFIX: &str = "leashbench-";

/// `ip` and `nft`, for the peer.
pub struct RecipeTools {
    pub ip: PathBuf,
    pub nft: PathBuf,
}

pub struct Options {
    /// Timed confine cycles.
    pub cycles: u32,
    /// Sandboxes held for the memory reading.
    pub hold: u32,
    /// Timed and untimed recipe iterations.
    pub iterations: u32,
    pub warmups: u32,
}

/// One `podclient cycles` result.
struct Cycles {
    median_us: f64,
    p99_us: f64,
    per_sec: f64,
}

/// The peer's times per sandbox.
struct RecipeTimes {
    times: Vec<Duration>,
    per_sec: f64,
}

pub fn run(ctx: &Ctx, tools: Option<&RecipeTools>, opts: &Options) -> Result<()> {
    let podclient = ctx.leash.with_file_name("podclient");
    if !podclient.is_file() {
        bail!("{} is missing after the build", podclient.display());
    }
    println!("confine: starting leash daemon (its own bpffs; pods in a fake kubelet cgroup tree) ...");
    let node = Node::start(ctx, &podclient, opts.hold)?;
    let rss_start = rss_kib(node.pid())?;
    println!("confine: {WARMUP_CYCLES} warm-up confines ...");
    node.cycles(WARMUP_CYCLES)?;
    println!("confine: {} timed confines ...", opts.cycles);
    let confine = node.cycles(opts.cycles)?;
    let rounds = memory(&node, opts.hold)?;
    let said = node.warnings();
    node.stop()?;

    let peer = match tools {
        Some(tools) => Some(time_recipe(tools, opts.iterations, opts.warmups)?),
        None => None,
    };

    println!();
    println!(
        "confine: time per sandbox (ms), {} confines after {WARMUP_CYCLES} warm-ups; recipe {} iterations after {} warm-ups",
        opts.cycles, opts.iterations, opts.warmups
    );
    println!("{:<44} {:>8} {:>8} {:>8}", "", "median", "p99", "per s");
    let a = confine.median_us / 1e3;
    println!(
        "{:<44} {a:>8.3} {:>8.3} {:>8.0}",
        "(a) leash daemon: confine a pod's process",
        confine.p99_us / 1e3,
        confine.per_sec
    );
    match &peer {
        Some(p) => {
            let (b, p99) = (ms(median(&p.times)), ms(percentile(&p.times, 99)));
            println!("{:<44} {b:>8.3} {p99:>8.3} {:>8.1}", "(b) netns + veth + nftables recipe", p.per_sec);
        }
        None => println!("{:<44} (skipped: `ip` or `nft` is missing)", "(b) netns + veth + nftables recipe"),
    }
    println!("goal: confine median under {} ms: {}", ms(GOAL), if a < ms(GOAL) { "met" } else { "NOT met" });
    if let Some(p) = &peer {
        let ratio = ms(median(&p.times)) / a;
        println!(
            "ratio (b)/(a) = {ratio:.1} on the median: {}; {:.1} on the rate",
            faster_than(ratio, "the netns recipe"),
            confine.per_sec / p.per_sec
        );
    }
    println!("((a) is one request's round trip, the sandbox's removal left to the daemon's garbage collection;");
    println!(" its rate counts whole cycles: fork, confine, kill. (b) runs {RECIPE_COMMANDS} commands: setup,");
    println!(" `ip netns exec NS /bin/true`, teardown.)");

    println!();
    println!("confine: the daemon's memory (VmRSS, KiB); {HOLD_ROUNDS} rounds of holding {} sandboxes", opts.hold);
    let idle: Vec<u64> = rounds.iter().map(|r| r.idle).collect();
    let held: Vec<u64> = rounds.iter().map(|r| r.held).collect();
    let per: Vec<f64> = rounds.iter().map(|r| (r.held as f64 - r.idle as f64) / f64::from(opts.hold)).collect();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    println!("{:<44} {rss_start:>8}", "at start (programs just loaded)");
    println!("{:<44} {:>8}   rounds: {idle:?}", "idle (0 sandboxes), median", median(&idle));
    println!("{:<44} {:>8}   rounds: {held:?}", format!("with {} sandboxes, median", opts.hold), median(&held));
    println!("{:<44} {:>8.2}   rounds: {}", "per sandbox, median of (with - idle) / N", median(&per), list(&per));
    if per.iter().any(|&x| x <= 0.0) {
        println!("(a round with no growth: the daemon's memory per sandbox is below what VmRSS resolves with");
        println!(
            " {} sandboxes, since the allocator gives freed pages back to the kernel late and VmRSS moves by",
            opts.hold
        );
        println!(" up to megabytes between readings.)");
    }
    println!("(user memory only: each sandbox's cgroup, BPF links and map entries are kernel memory)");
    println!();
    let last = rounds.last().expect("HOLD_ROUNDS > 0");
    println!(
        "sandboxes on record after the run: {} ({} {:.1} s after the last held process ended; limit {GC_TIMEOUT:?})",
        last.left,
        if last.left == 0 { "the record emptied" } else { "still there" },
        last.drained_in.as_secs_f64()
    );
    for line in said {
        println!("note: {line}");
    }
    println!("cleanup: the daemon stopped, the cgroup tree removed, the bpffs unmounted");
    Ok(())
}

/// One round of the memory reading: VmRSS (KiB) of the daemon, and how its record emptied after.
struct Round {
    idle: u64,
    held: u64,
    /// Sandboxes on record `drained_in` after the held processes ended.
    left: usize,
    drained_in: Duration,
}

/// `HOLD_ROUNDS` times: with the daemon's record empty, reads its VmRSS, holds `hold` sandboxes
/// and reads it again, then waits (up to `GC_TIMEOUT`) for the record to empty.
fn memory(node: &Node, hold: u32) -> Result<Vec<Round>> {
    println!("confine: {HOLD_ROUNDS} rounds of holding {hold} confined processes ...");
    node.expect_empty("the confines")?;
    let mut rounds: Vec<Round> = Vec::new();
    for _ in 0..HOLD_ROUNDS {
        if let Some(r) = rounds.last().filter(|r| r.left > 0) {
            bail!("{} sandboxes still on record {GC_TIMEOUT:?} after a hold ended{}", r.left, node.stderr());
        }
        let idle = rss_kib(node.pid())?;
        let held = node.hold(hold)?;
        let (left, drained_in) = node.drain()?;
        rounds.push(Round { idle, held, left, drained_in });
    }
    Ok(rounds)
}

/// The recipe's setup-to-teardown time per sandbox.
fn time_recipe(tools: &RecipeTools, iterations: u32, warmups: u32) -> Result<RecipeTimes> {
    recipe_preflight(&tools.ip)?;
    println!("confine: {warmups} warm-up + {iterations} timed iterations of the netns recipe ...");
    let mut times = Vec::new();
    for k in 0..warmups + iterations {
        let t = Instant::now();
        recipe(&tools.ip, &tools.nft, k).with_context(|| format!("netns recipe, iteration {}", k + 1))?;
        if k >= warmups {
            times.push(t.elapsed());
        }
    }
    check_recipe_cleanup(&tools.ip)?;
    let total: Duration = times.iter().sum();
    Ok(RecipeTimes { per_sec: times.len() as f64 / total.as_secs_f64(), times })
}

/// The daemon under test, its directories and the fake pod's cgroup tree. `stop` removes all
/// of it and says what failed; dropping it removes what is left, quietly.
struct Node {
    daemon: Option<Child>,
    podclient: PathBuf,
    /// Scratch directory of this benchmark: socket, policies, state, bpffs, logs.
    dir: PathBuf,
    bpffs: Option<PathBuf>,
    /// `<cgroup2>/leashbench-<pid>`.
    tree: Option<PathBuf>,
    /// The container cgroup podclient enters.
    container: PathBuf,
}

impl Node {
    fn start(ctx: &Ctx, podclient: &Path, hold: u32) -> Result<Self> {
        let cgroup2 = cgroup2_mount()?;
        remove_stale_trees(&cgroup2);
        let dir = ctx.dir.join("confine");
        let tree = cgroup2.join(format!("{TREE_PREFIX}{}", std::process::id()));
        let container = tree.join(format!("kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"));
        let mut node =
            Node { daemon: None, podclient: podclient.to_path_buf(), dir, bpffs: None, tree: None, container };
        for sub in ["bpf", "policies", "state"] {
            std::fs::create_dir_all(node.dir.join(sub)).with_context(|| format!("creating {}", node.dir.display()))?;
        }
        std::fs::write(node.dir.join("policies/default.yaml"), "version: 1\n")?;
        let bpffs = node.dir.join("bpf");
        run_quiet(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))?;
        node.bpffs = Some(bpffs.clone());
        node.tree = Some(tree);
        std::fs::create_dir_all(&node.container).with_context(|| format!("creating {}", node.container.display()))?;

        let max_sandboxes = hold.max(2048).to_string();
        let daemon = Command::new(&ctx.leash)
            .arg("daemon")
            .arg("--socket")
            .arg(node.socket())
            .arg("--policies")
            .arg(node.dir.join("policies"))
            .arg("--state-dir")
            .arg(node.state())
            .arg("--bpffs")
            .arg(&bpffs)
            .args(["--default-policy", "default", "--max-sandboxes", &max_sandboxes])
            // One pod holds all of them here.
            .args(["--max-sandboxes-per-pod", &max_sandboxes])
            .stdin(Stdio::null())
            .stdout(File::create(node.dir.join("daemon.out"))?)
            .stderr(File::create(node.dir.join("daemon.err"))?)
            .spawn()
            .context("starting leash daemon")?;
        node.daemon = Some(daemon);
        let deadline = Instant::now() + START_TIMEOUT;
        while !node.socket().exists() {
            if let Some(status) = node.daemon.as_mut().expect("started").try_wait()? {
                bail!("leash daemon exited at start ({status}){}", node.stderr());
            }
            if Instant::now() >= deadline {
                bail!("leash daemon did not listen within {START_TIMEOUT:?}{}", node.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("leash.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon runs").id()
    }

    /// The daemon's stderr so far, formatted to end an error message.
    fn stderr(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.err")).unwrap_or_default();
        format!("; leash daemon's stderr: {}", tail(&text, 20))
    }

    /// What the daemon said on stderr that is not routine: warnings, missing kernel features.
    fn warnings(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("daemon.err")).unwrap_or_default();
        text.lines().filter(|l| l.contains("warning") || l.contains("not available")).map(str::to_owned).collect()
    }

    /// Starts `podclient COMMAND SOCKET n` in the fake container, its stdout and stderr going to
    /// `COMMAND.out` and `COMMAND.err` (returned), with a time limit for `n` confines.
    fn podclient(&self, command: &str, n: u32, stdin: Stdio) -> Result<(Child, PathBuf, PathBuf, Duration)> {
        let (out, err) = (self.dir.join(format!("{command}.out")), self.dir.join(format!("{command}.err")));
        let child = Command::new(&self.podclient)
            .arg("--cgroup")
            .arg(&self.container)
            .arg(command)
            .arg(self.socket())
            .arg(n.to_string())
            .stdin(stdin)
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting podclient {command}"))?;
        Ok((child, out, err, Duration::from_secs(30) + Duration::from_millis(5) * n))
    }

    /// Runs `podclient cycles n`.
    fn cycles(&self, n: u32) -> Result<Cycles> {
        let (child, out, err, timeout) = self.podclient("cycles", n, Stdio::null())?;
        let status = wait_bounded(child, timeout)?;
        let (line, errors) = (std::fs::read_to_string(&out)?, std::fs::read_to_string(&err)?);
        let Some(status) = status else {
            bail!("podclient cycles {n} did not finish within {timeout:?}{}", self.stderr());
        };
        if !status.success() {
            bail!("podclient cycles {n} failed ({status}): {}{}", tail(&errors, 10), self.stderr());
        }
        let failed = field(&line, "errors")?;
        if failed > 0.0 {
            bail!("{failed} of {n} confines failed: {}{}", tail(&errors, 10), self.stderr());
        }
        Ok(Cycles {
            median_us: field(&line, "median_us")?,
            p99_us: field(&line, "p99_us")?,
            per_sec: field(&line, "per_sec")?,
        })
    }

    /// Runs `podclient hold n`; once all are confined, reads the daemon's VmRSS (KiB) and checks
    /// its record holds them; then lets them go. Returns that VmRSS.
    fn hold(&self, n: u32) -> Result<u64> {
        let (mut child, out, err, timeout) = self.podclient("hold", n, Stdio::piped())?;
        let deadline = Instant::now() + timeout;
        let ready = loop {
            let text = std::fs::read_to_string(&out)?;
            if let Some(count) = text.lines().find_map(|l| l.strip_prefix("ready ")) {
                break count.trim().parse::<u32>().context("podclient's ready count")?;
            }
            if child.try_wait()?.is_some() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let errors = std::fs::read_to_string(&err).unwrap_or_default();
                bail!("podclient hold {n} never said ready: {}{}", tail(&errors, 10), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let rss = rss_kib(self.pid())?;
        let records = self.records()?;
        drop(child.stdin.take());
        let status = wait_bounded(child, Duration::from_secs(20))?;
        let errors = std::fs::read_to_string(&err)?;
        if ready != n || !errors.trim().is_empty() {
            bail!("podclient hold confined {ready} of {n}: {}{}", tail(&errors, 10), self.stderr());
        }
        if records != n as usize {
            bail!("the daemon had {records} sandboxes on record while {n} were held");
        }
        match status {
            Some(s) if s.success() => Ok(rss),
            Some(s) => bail!("podclient hold exited with {s}: {}", tail(&errors, 10)),
            None => bail!("podclient hold did not exit within 20 s of its input ending"),
        }
    }

    /// Sandboxes in the daemon's state directory.
    fn records(&self) -> Result<usize> {
        let dir = self.state();
        let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        Ok(entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
    }

    /// Fails unless the daemon's record empties within `GC_TIMEOUT` (after `what`).
    fn expect_empty(&self, what: &str) -> Result<()> {
        let (left, _) = self.drain()?;
        if left > 0 {
            bail!("{left} sandboxes still on record {GC_TIMEOUT:?} after {what} ended{}", self.stderr());
        }
        Ok(())
    }

    /// Waits up to `GC_TIMEOUT` for the daemon's record to empty; how many are left and when.
    fn drain(&self) -> Result<(usize, Duration)> {
        let start = Instant::now();
        loop {
            let left = self.records()?;
            if left == 0 || start.elapsed() >= GC_TIMEOUT {
                return Ok((left, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes everything, failing with the first step that did not work.
    fn stop(mut self) -> Result<()> {
        let tree = self.tree.clone();
        if let Some(tree) = &tree {
            kill_tree(tree)?;
        }
        let status = self.stop_daemon();
        if let Some(tree) = self.tree.take() {
            remove_tree(&tree)?;
        }
        if let Some(bpffs) = self.bpffs.take() {
            run_quiet(Command::new("umount").arg(&bpffs))?;
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("leash daemon exited with {s} on SIGTERM{}", self.stderr()),
            None => bail!("leash daemon did not stop within 5 s of SIGTERM and was killed{}", self.stderr()),
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; the daemon's exit status unless it had to be killed.
    fn stop_daemon(&mut self) -> Option<ExitStatus> {
        let mut daemon = self.daemon.take()?;
        if let Ok(Some(status)) = daemon.try_wait() {
            return Some(status);
        }
        // Our unreaped child, so its pid cannot have been reused.
        let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
        wait_bounded(daemon, Duration::from_secs(5)).ok().flatten()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tree) = &self.tree {
            let _ = kill_tree(tree);
        }
        self.stop_daemon();
        if let Some(tree) = self.tree.take() {
            let _ = remove_tree(&tree);
        }
        if let Some(bpffs) = self.bpffs.take() {
            let _ = Command::new("umount").arg(&bpffs).output();
        }
    }
}

/// Waits up to `timeout` for `child`; kills it when the time is up (and returns `None`).
fn wait_bounded(mut child: Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else { continue };
        if fs.split_whitespace().next() == Some("cgroup2") {
            let point = mount.split_whitespace().nth(4).context("a short line in /proc/self/mountinfo")?;
            if point.contains('\\') {
                bail!("the cgroup2 mount point {point:?} has escaped characters; mount it elsewhere");
            }
            return Ok(PathBuf::from(point));
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo; the daemon needs one")
}

/// Removes the trees of earlier runs whose process is gone.
fn remove_stale_trees(cgroup2: &Path) {
    let Ok(entries) = std::fs::read_dir(cgroup2) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(TREE_PREFIX) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            println!("confine: removing cgroup tree {name} left by an earlier run");
            let _ = kill_tree(&entry.path()).and_then(|()| remove_tree(&entry.path()));
        }
    }
}

/// Kills every process in `tree` and waits (up to 5 s) until it is empty.
fn kill_tree(tree: &Path) -> Result<()> {
    if !tree.exists() {
        return Ok(());
    }
    std::fs::write(tree.join("cgroup.kill"), "1").with_context(|| format!("writing {}/cgroup.kill", tree.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = std::fs::read_to_string(tree.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l == "populated 0") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes of {} did not exit within 5 s of cgroup.kill", tree.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes the cgroup `dir` and those below it, deepest first.
fn remove_tree(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        // The daemon's garbage collection may have removed a sandbox's cgroup meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
    }
}
