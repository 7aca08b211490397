//! `syscallbench`: the syscall-path benchmark (issue 5), run as root inside a test VM (`vm_init`
//! suite `syscallbench`, started by `cargo xtask bench syscall`).
//!
//! Three loops, each timed in four modes:
//!
//! | loop | one op |
//! |---|---|
//! | `open_close` | `open("/tmp/syscallbench-open", O_RDONLY)` + `close` (a file on tmpfs) |
//! | `socket_close` | `socket(AF_INET, SOCK_DGRAM, 0)` + `close` |
//! | `fork_exec` | `fork`; the child `execve`s a 129-byte static ELF that only calls `exit(0)`; `waitpid` |
//!
//! | mode | the process running the loops |
//! |---|---|
//! | `a` | no BPF-LSM programs attached anywhere, no seccomp filter |
//! | `b` | leash's BPF-LSM programs attached (the host's [`Generation`]), the process inside a cgroup registered with a 100-entry policy that denies every `lsm_deny` flag ([`fill_policy`]) |
//! | `b1000` | as `b`, in another cgroup whose `deny_open` list has 1,000 files instead of 50: a long list must cost what a short one does |
//! | `c` | no BPF-LSM programs; a seccomp-BPF denylist of 45 rules ([`denylist_filter`]) of the kind a namespace supervisor installs, some conditioned on arguments |
//! | `outside` | leash's programs attached as in `b`, the process in no sandbox: what every other process on the host pays |
//! | `outside16` | as `outside`, with 16 sandboxes registered instead of one: what the host pays does not grow with the number of sandboxes |
//! | `node` | the node daemon's case: programs attached, a sandbox registered with descendants (cgroup level 1), the process in a plain cgroup at level 2 in no sandbox, so every hook walks its ancestors ([`node_round`]) |
//! | `plain` | nothing of leash loaded, the process in that same plain cgroup: what `node` is compared with, so that `node/plain` is leash's cost alone and not the cgroup's (in the test VMs the two cost the same) |
//! | `zero` | the host's generation loaded and pinned, no sandbox registered: no LSM program attached (measured once the kernel's worker has released the links, [`wait_detached`]), so it must cost what `a` does |
//! | `floor` | nothing of leash loaded; a do-nothing BPF-LSM program (`leash_lsm_probe`, `return 0`) attached to each hook leash's programs use: what the kernel charges for calling any BPF-LSM program there, the least `b` and `outside` can cost ([`attach_floor`]) |
//!
//! Every mode runs in a fresh worker process (this binary re-executed as `syscallbench worker ...`)
//! so all modes have the same address space to fork. Every worker sets `no_new_privs` (seccomp needs
//! it, and leash's agent has it too), so the modes differ only in the enforcement mechanism. A
//! worker checks its mode is in force before timing (an `AF_PACKET` socket must fail with EPERM in
//! `b` and `c` and not in the others), warms each loop up with a tenth of its iterations, then
//! times the loop and reports the mean ns per op (guest instructions per op under qemu -icount,
//! which `cargo xtask bench syscall` uses by default).
//!
//! The programs are attached host-wide, so `a` and `c` must run while they are not loaded: each
//! round loads them (a few seconds under TCG) for `b`, `outside` and `outside16`, runs `zero` once
//! the last sandbox is gone (the programs still pinned), and removes the generation for `a`, `c`
//! and then `floor`, alternating which half comes first (and the order within each half) from one round to the
//! next. Each worker times every loop `--samples` times; the figure per mode and loop is the
//! median of its `rounds x samples` timings.
//!
//! Output: progress lines, then one line per loop
//! `LEASH-BENCH <loop> a=<ns> b=<ns> c=<ns> b/a=<x> c/a=<y> b1000=<ns> b1000/b=<x>`, one line per loop
//! `LEASH-BENCH-OUTSIDE <loop> a=<ns> outside=<ns> outside/a=<x> outside16=<ns> outside16/outside=<x>
//! zero=<ns> zero/a=<x> floor=<ns> floor/a=<x> node=<ns> node/plain=<x>`, one line per loop
//! `LEASH-BENCH-SPREAD <loop> spread_a=<x> spread_b=.. spread_c=.. spread_outside=..` ((max - min) /
//! median of each mode's timings), and a table. Exit 1 on any failure (the reason on stdout,
//! `syscallbench: ...`). Before timing it waits for the VM to settle after boot ([`settle`]) and
//! runs one worker whose timings are dropped.
//!
//! ```text
//! syscallbench [--rounds N] [--samples N] [--open N] [--socket N] [--exec N]
//! ```

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{exit, Command};
use std::time::Instant;

use leash::kernel::cgroup::SandboxCgroup;
use leash::kernel::generation::Generation;
use leash::kernel::lsm::Registration;
use leash::kernel::lsm_rules::{FileId, LsmRules};
use leash::kernel::mounts::cgroup2_root;
use sandbox_common::{lsm_deny, lsm_rule};

use aya::programs::Lsm;
use leash::kernel::programs::OBJECT;
use sandbox_common::{map_names, program_names};

/// The file the open/close loop opens (on the VM's tmpfs).
const OPEN_PATH: &str = "/tmp/syscallbench-open";
/// The binary the fork+exec loop executes: [`exit_elf`], written at start.
const EXIT_BINARY: &str = "/tmp/syscallbench-exit";
const CGROUP_NAME: &str = "syscallbench";

/// Iteration counts, sized for about a minute in total under qemu TCG (one vCPU).
#[derive(Clone, Copy, Debug)]
struct Counts {
    /// Program loads, each followed (or preceded) by one worker per mode.
    rounds: u32,
    /// Timings of each loop per worker.
    samples: u32,
    open: u32,
    socket: u32,
    exec: u32,
}

const DEFAULT_COUNTS: Counts = Counts { rounds: 2, samples: 3, open: 10_000, socket: 10_000, exec: 300 };

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Leash,
    Leash1000,
    Seccomp,
    Outside,
    Outside16,
    Node,
    Plain,
    Zero,
    Floor,
}

impl Mode {
    const ALL: [Mode; 10] = [
        Mode::Bare,
        Mode::Leash,
        Mode::Leash1000,
        Mode::Seccomp,
        Mode::Outside,
        Mode::Outside16,
        Mode::Node,
        Mode::Plain,
        Mode::Zero,
        Mode::Floor,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "a",
            Mode::Leash => "b",
            Mode::Leash1000 => "b1000",
            Mode::Seccomp => "c",
            Mode::Outside => "outside",
            Mode::Outside16 => "outside16",
            Mode::Node => "node",
            Mode::Plain => "plain",
            Mode::Zero => "zero",
            Mode::Floor => "floor",
        }
    }

    fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether an `AF_PACKET` socket must be refused with EPERM in this mode.
    fn denies_packet_sockets(self) -> bool {
        matches!(self, Mode::Leash | Mode::Leash1000 | Mode::Seccomp)
    }

    /// Whether the worker moves into a cgroup of its own (whose `cgroup.procs` it is given).
    fn moves(self) -> bool {
        matches!(self, Mode::Leash | Mode::Leash1000 | Mode::Node | Mode::Plain)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loop {
    OpenClose,
    SocketClose,
    ForkExec,
}

impl Loop {
    const ALL: [Loop; 3] = [Loop::OpenClose, Loop::SocketClose, Loop::ForkExec];

    fn name(self) -> &'static str {
        match self {
            Loop::OpenClose => "open_close",
            Loop::SocketClose => "socket_close",
            Loop::ForkExec => "fork_exec",
        }
    }

    fn iterations(self, counts: &Counts) -> u32 {
        match self {
            Loop::OpenClose => counts.open,
            Loop::SocketClose => counts.socket,
            Loop::ForkExec => counts.exec,
        }
    }

    /// The issue's goal for `b/a`, where it sets one.
    fn goal(self) -> Option<f64> {
        (self == Loop::OpenClose).then_some(1.05)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("worker") { worker(&args[1..]) } else { bench(&args) };
    let _ = std::io::stdout().flush();
    if let Err(e) = outcome {
        println!("syscallbench: {e}");
        let _ = std::io::stdout().flush();
        exit(1);
    }
}

fn parse_counts(args: &[String]) -> Result<Counts, String> {
    let mut counts = DEFAULT_COUNTS;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: u32 = it
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{flag} needs a positive number"))?;
        match flag.as_str() {
            "--rounds" => counts.rounds = value,
            "--samples" => counts.samples = value,
            "--open" => counts.open = value,
            "--socket" => counts.socket = value,
            "--exec" => counts.exec = value,
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: syscallbench [--rounds N] [--samples N] [--open N] [--socket N] [--exec N]"
                ))
            }
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// The driver: rounds of every mode, medians, output

/// ns per op of each run, by mode and loop.
#[derive(Default)]
struct Samples {
    runs: Vec<(Mode, Loop, f64)>,
}

impl Samples {
    fn of(&self, mode: Mode, l: Loop) -> Vec<f64> {
        self.runs.iter().filter(|r| r.0 == mode && r.1 == l).map(|r| r.2).collect()
    }

    fn median(&self, mode: Mode, l: Loop) -> f64 {
        median(self.of(mode, l))
    }

    /// The median of the last `n` timings.
    fn recent(&self, mode: Mode, l: Loop, n: usize) -> f64 {
        let v = self.of(mode, l);
        median(v[v.len().saturating_sub(n)..].to_vec())
    }

    /// (max - min) / median over all timings: how much they disagree.
    fn spread(&self, mode: Mode, l: Loop) -> f64 {
        let v = self.of(mode, l);
        let (min, max) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (max - min) / self.median(mode, l)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let counts = parse_counts(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("run as root: it loads BPF-LSM programs and creates a cgroup".into());
    }
    println!(
        "syscallbench: {} rounds x {} samples of open/close x{}, socket/close x{}, fork+exec x{} in modes a, b, c, outside, outside16, zero, floor",
        counts.rounds, counts.samples, counts.open, counts.socket, counts.exec
    );
    write_file(OPEN_PATH, b"syscallbench\n", 0o644)?;
    write_file(EXIT_BINARY, &exit_elf(), 0o755)?;
    let root = cgroup2_root().map_err(|e| format!("{e:#}"))?;
    let cgroup = fresh_cgroup(&root, CGROUP_NAME)?;
    let procs = cgroup.path().join("cgroup.procs");

    settle();
    let started = Instant::now();
    // One worker runs first and its timings are dropped: caches the first run fills, and the
    // kernel's own work shortly after boot, would count against whichever mode ran first.
    println!("syscallbench: warm-up worker (mode a, timings dropped)");
    let warm_up = Counts { samples: 1, ..counts };
    let mut result = run_worker(Mode::Bare, &warm_up, &procs, &mut Samples::default());
    let mut samples = Samples::default();
    for r in 0..counts.rounds {
        if result.is_err() {
            break;
        }
        result = round(r, &counts, &cgroup, &procs, &mut samples);
        if result.is_err() {
            break;
        }
        let line: Vec<String> = Loop::ALL
            .iter()
            .map(|l| {
                let now = |m: Mode| samples.recent(m, *l, counts.samples as usize);
                let figures: Vec<String> = Mode::ALL.iter().map(|m| format!("{}={:.0}", m.name(), now(*m))).collect();
                format!("{} {}", l.name(), figures.join(" "))
            })
            .collect();
        println!(
            "syscallbench: round {}/{} ({:.1} s so far): {}",
            r + 1,
            counts.rounds,
            started.elapsed().as_secs_f64(),
            line.join("; ")
        );
    }
    let _ = std::fs::remove_file(OPEN_PATH);
    let _ = std::fs::remove_file(EXIT_BINARY);
    if let Err(e) = cgroup.remove() {
        println!("syscallbench: {e:#}");
    }
    result?;
    report(&counts, &samples);
    Ok(())
}

/// Waits until the VM has settled after boot, at most until it has been up 30 s, and says so:
/// until the kernel runs on its final clocksource (x86 kernels start on `tsc-early` and move to
/// `tsc` once the TSC's frequency is refined, a second or two after boot, which is when this
/// runs) and the CPU has been at least 90% idle over a 200 ms sleep. Without this wait, under qemu
/// -icount, every loop timed in the first second or so after the switch took 1.5 to 2 times as
/// long as later (all modes alike, the cause not pinned down); with it, the first timings match
/// the last ones.
fn settle() {
    const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let uptime = || read("/proc/uptime").split_whitespace().next().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let mut idle = 0.0;
    while uptime() < 30.0 {
        idle = idle_over_200ms();
        if read(CLOCKSOURCE).trim() == "tsc" && idle >= 0.9 {
            break;
        }
    }
    println!(
        "syscallbench: clocksource {}, CPU {:.0}% idle over 200 ms, up {:.1} s",
        read(CLOCKSOURCE).trim(),
        idle * 100.0,
        uptime()
    );
}

/// The share of the last 200 ms the CPUs were idle, from `/proc/stat`.
fn idle_over_200ms() -> f64 {
    // (busy, total) jiffies from the first line of /proc/stat.
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> =
            stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        (total - idle, total)
    };
    let (busy0, total0) = cpu();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (busy1, total1) = cpu();
    1.0 - (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64
}

/// Waits (at most 10 s) until the CPUs were at least 90% idle over 200 ms, so that work the
/// kernel deferred from what came before (freeing a loaded object's verifier state, releasing
/// links, removing cgroups) is not counted in the next mode's loops. Without it, the first modes
/// after leash's programs were loaded (`b`, `outside`) read about 1.5% above modes that run the
/// same code path later in the round (`b1000`, `outside16`).
fn quiet() {
    let until = Instant::now() + std::time::Duration::from_secs(10);
    while idle_over_200ms() < 0.9 {
        if Instant::now() > until {
            println!("syscallbench: the VM was still busy after 10 s; timing the next mode anyway");
            return;
        }
    }
}

/// One round: one worker per mode, in an order that alternates between rounds.
fn round(r: u32, counts: &Counts, cgroup: &SandboxCgroup, procs: &Path, samples: &mut Samples) -> Result<(), String> {
    let flip = r % 2 == 1;
    for loaded in [flip, !flip] {
        if loaded {
            let t = Instant::now();
            let mut programs = Generation::open_host()
                .and_then(Generation::with_lsm)
                .map_err(|e| format!("loading leash's LSM programs: {e:#}"))?;
            if r == 0 {
                println!(
                    "syscallbench: LSM programs loaded in {:.2} s; hooks [{}]",
                    t.elapsed().as_secs_f64(),
                    programs.lsm_hooks().map(|h| h.join(" ")).unwrap_or_default(),
                );
            }
            fill_policy(&mut programs, cgroup.id(), DENY_OPEN_SHORT, false)?;
            let modes = if flip { [Mode::Outside, Mode::Leash] } else { [Mode::Leash, Mode::Outside] };
            for mode in modes {
                run_worker(mode, counts, procs, samples)?;
            }
            // The first of the others has the long deny list: `b1000` runs in it.
            let more = more_sandboxes(&mut programs, K_SANDBOXES - 1)?;
            run_worker(Mode::Leash1000, counts, &more[0].path().join("cgroup.procs"), samples)?;
            run_worker(Mode::Outside16, counts, procs, samples)?;
            for c in more.iter().map(|c| c.id()).chain([cgroup.id()]) {
                programs.remove_entries(c).map_err(|e| format!("removing a benchmark cgroup: {e:#}"))?;
            }
            for c in more {
                c.remove().map_err(|e| format!("{e:#}"))?;
            }
            // No sandbox left: the LSM programs are detached, the generation stays pinned.
            let links = lsm_links();
            if links > 0 {
                println!(
                    "syscallbench: {links} LSM links stay attached with no sandbox (a kernel that cannot re-attach)"
                );
            }
            if links == 0 {
                wait_detached()?;
            }
            run_worker(Mode::Zero, counts, procs, samples)?;
            node_round(&mut programs, counts, samples)?;
            drop(programs);
            // `a` and `c` run with nothing of leash loaded: the next round loads it again.
            remove_generation()?;
        } else {
            let modes = if flip { [Mode::Seccomp, Mode::Bare] } else { [Mode::Bare, Mode::Seccomp] };
            for mode in modes {
                run_worker(mode, counts, procs, samples)?;
            }
            let floor = attach_floor()?;
            if r == 0 {
                println!("syscallbench: floor: the do-nothing program attached to {} hooks", floor.len());
            }
            run_worker(Mode::Floor, counts, procs, samples)?;
            drop(floor);
            plain_round(counts, samples)?;
        }
    }
    Ok(())
}

/// Mode `node`: a sandbox registered with descendants, as the node daemon registers pods (which
/// sets bit 1 of the levels with descendants until the generation goes), and the worker in a
/// plain cgroup two levels down, as a node's own services sit: each hook reads its ancestor at
/// level 1 and looks it up. Runs after `zero`, so `zero` sees no level bit.
fn node_round(programs: &mut Generation, counts: &Counts, samples: &mut Samples) -> Result<(), String> {
    let root = cgroup2_root().map_err(|e| format!("{e:#}"))?;
    let pod = fresh_cgroup(&root, "syscallbench-node")?;
    let (plain, inner) = plain_cgroup()?;
    fill_policy(programs, pod.id(), DENY_OPEN_SHORT, true)?;
    let result = run_worker(Mode::Node, counts, &inner.join("cgroup.procs"), samples);
    programs.remove_entries(pod.id()).map_err(|e| format!("removing the node benchmark's sandbox: {e:#}"))?;
    remove_plain(plain, &inner)?;
    pod.remove().map_err(|e| format!("{e:#}"))?;
    result
}

/// The plain cgroup `node` runs in (level 2), made fresh; its `cgroup.procs` and what to remove.
fn plain_cgroup() -> Result<(SandboxCgroup, std::path::PathBuf), String> {
    let root = cgroup2_root().map_err(|e| format!("{e:#}"))?;
    let _ = std::fs::remove_dir(root.join("leash-syscallbench-plain/inner"));
    let plain = fresh_cgroup(&root, "syscallbench-plain")?;
    let inner = plain.path().join("inner");
    std::fs::create_dir(&inner).map_err(|e| format!("creating {}: {e}", inner.display()))?;
    Ok((plain, inner))
}

/// Removes what [`plain_cgroup`] made.
fn remove_plain(plain: SandboxCgroup, inner: &Path) -> Result<(), String> {
    std::fs::remove_dir(inner).map_err(|e| format!("removing {}: {e}", inner.display()))?;
    plain.remove().map_err(|e| format!("{e:#}"))
}

/// Mode `plain`: the worker in `node`'s plain cgroup, nothing of leash loaded.
fn plain_round(counts: &Counts, samples: &mut Samples) -> Result<(), String> {
    let (plain, inner) = plain_cgroup()?;
    let result = run_worker(Mode::Plain, counts, &inner.join("cgroup.procs"), samples);
    remove_plain(plain, &inner)?;
    result
}

/// The cgroup `leash-<name>` under `root`, made anew (one a killed run left is removed first).
fn fresh_cgroup(root: &Path, name: &str) -> Result<SandboxCgroup, String> {
    let _ = std::fs::remove_dir(root.join(format!("leash-{name}")));
    SandboxCgroup::create(root, name).map_err(|e| format!("{e:#}"))
}

/// Sandboxes registered in `outside16`, counting the one of `b`.
const K_SANDBOXES: usize = 16;

/// `deny_open` entries of `b`'s policy and of `b1000`'s.
const DENY_OPEN_SHORT: usize = 50;
const DENY_OPEN_LONG: usize = 1000;

/// `n` more sandbox cgroups registered with `b`'s policy (nobody runs in them), but the first,
/// whose `deny_open` list is [`DENY_OPEN_LONG`] files long (`b1000` runs in it).
fn more_sandboxes(programs: &mut Generation, n: usize) -> Result<Vec<SandboxCgroup>, String> {
    let root = cgroup2_root().map_err(|e| format!("{e:#}"))?;
    let mut made = Vec::new();
    for i in 0..n {
        let c = fresh_cgroup(&root, &format!("{CGROUP_NAME}-{i}"))?;
        fill_policy(programs, c.id(), if i == 0 { DENY_OPEN_LONG } else { DENY_OPEN_SHORT }, false)?;
        made.push(c);
    }
    Ok(made)
}

/// The host generation's directory.
fn generation_dir() -> Result<std::path::PathBuf, String> {
    let bpffs = leash::kernel::mounts::bpffs_root().map_err(|e| format!("{e:#}"))?;
    Ok(leash::kernel::pins::root(&bpffs).join(leash::kernel::generation::this_generation()))
}

/// Mode `floor`: leash's do-nothing LSM program attached to every hook of leash's hook table
/// this kernel has, each from its own copy of the object (a program loads against one hook),
/// with every map shrunk to the least the kernel accepts. Attached until the copies are dropped.
fn attach_floor() -> Result<Vec<aya::Ebpf>, String> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("reading the kernel's BTF: {e}"))?;
    let mut attached = Vec::new();
    for hook in program_names::LSM_HOOKS.iter().map(|h| h.hook) {
        let mut loader = aya::EbpfLoader::new();
        loader.btf(None);
        for map in [
            map_names::SANDBOXES,
            map_names::COUNTERS,
            map_names::EVENT_SLOTS,
            map_names::EVENT_RINGS,
            map_names::SOCKET_OWNERS,
            map_names::LSM_SANDBOXES,
            map_names::LSM_EXEC_ALLOW,
            map_names::LSM_DENY_OPEN,
            map_names::LSM_UNIX_ALLOW,
            map_names::LSM_FILTER,
            map_names::LSM_DENY_OPEN_FILTER,
        ] {
            loader.map_max_entries(map, 1);
        }
        loader.map_max_entries(map_names::EVENTS, 4096);
        let mut ebpf = loader.load(OBJECT).map_err(|e| format!("loading the object for the floor: {e}"))?;
        let program: &mut Lsm = ebpf
            .program_mut(program_names::LSM_PROBE)
            .ok_or("no LSM probe program")?
            .try_into()
            .map_err(|e| format!("the LSM probe program: {e}"))?;
        // A hook this kernel lacks (userns_create before 6.1) has no leash program either.
        if program.load(hook, &btf).is_err() {
            continue;
        }
        program.attach().map_err(|e| format!("attaching the do-nothing program to {hook}: {e}"))?;
        attached.push(ebpf);
    }
    Ok(attached)
}

/// How many leash LSM links are attached (pinned in the generation's `lsm/`).
fn lsm_links() -> usize {
    generation_dir().ok().and_then(|d| std::fs::read_dir(d.join("lsm")).ok()).map(|d| d.count()).unwrap_or(0)
}

/// Waits until leash's `file_open` program runs no more on an open, with BPF run statistics on
/// meanwhile (off again before returning: they add to every program's run). The kernel releases
/// an unpinned link from a worker: on 6.12 that ran only during the next loop, so `zero` measured
/// the programs still attached (zero/a 1.05; 1.00 when measured a second later).
fn wait_detached() -> Result<(), String> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let path = generation_dir()?.join("progs").join("leash_lsm_file_open");
    let program =
        leash::kernel::attach::PinnedProgram::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let runs = || program.stats().map(|(_, runs)| runs).map_err(|e| format!("reading {}'s runs: {e}", path.display()));
    std::fs::write(STATS, "1").map_err(|e| format!("turning BPF run statistics on: {e}"))?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let detached = loop {
        let before = runs();
        let _ = std::fs::File::open(OPEN_PATH);
        match (before, runs()) {
            (Ok(b), Ok(a)) if a == b => break Ok(()),
            (Err(e), _) | (_, Err(e)) => break Err(e),
            _ if Instant::now() > deadline => {
                break Err("leash's LSM programs still run 10 s after their links went".into())
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    std::fs::write(STATS, "0").map_err(|e| format!("turning BPF run statistics off: {e}"))?;
    detached
}

/// Unpins the whole generation: nothing of leash stays loaded.
fn remove_generation() -> Result<(), String> {
    let dir = generation_dir()?;
    leash::kernel::pins::remove_tree(&dir).map_err(|e| format!("removing {}: {e:#}", dir.display()))
}

/// The sandbox policy of mode `b`, registered for `cgroup_id`: every `lsm_deny` flag, an exec
/// allowlist of 50 files holding the fork+exec loop's binary, an open deny list of `deny_open`
/// files not holding the file the open/close loop opens (with 50: 100 list entries), the unix
/// allowlist (empty) and the proxy-only rule, so every hook the loops reach does its full work.
/// With `descendants`, the cgroup (at level 1) is registered with its descendants, as the node
/// daemon registers a pod.
fn fill_policy(programs: &mut Generation, cgroup_id: u64, deny_open: usize, descendants: bool) -> Result<(), String> {
    const EXEC_LIST: usize = 50;
    let (exec_allowed, opened) = (Path::new(EXIT_BINARY), Path::new(OPEN_PATH));
    let dir = Path::new("/tmp/syscallbench-policy");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut rules = LsmRules {
        deny: lsm_deny::ALL,
        rules: lsm_rule::EXEC_ALLOWLIST | lsm_rule::DENY_OPEN | lsm_rule::UNIX_ALLOWLIST,
        ..Default::default()
    };
    let id = |p: &Path| FileId::of(p).map_err(|e| format!("stat {}: {e}", p.display()));
    rules.exec.insert(id(exec_allowed)?, exec_allowed.to_path_buf());
    for i in 0..EXEC_LIST + deny_open {
        let file = dir.join(format!("entry-{i}"));
        if !file.exists() {
            std::fs::write(&file, b"").map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
        let list = if rules.exec.len() < EXEC_LIST { &mut rules.exec } else { &mut rules.deny_open };
        list.insert(id(&file)?, file);
    }
    if rules.deny_open.contains_key(&id(opened)?) {
        return Err(format!("{} must not be deny-listed", opened.display()));
    }
    let registration = Registration {
        cgroup_id,
        level: 1,
        descendants,
        rules: &rules,
        proxy: Some(leash::kernel::programs::sandbox_net(std::net::SocketAddr::from(([127, 0, 0, 1], 9)), false)),
    };
    programs.register_lsm(&registration).map_err(|e| format!("registering the benchmark's cgroup: {e:#}"))
}

/// Runs one worker process in `mode` and records its timings.
fn run_worker(mode: Mode, counts: &Counts, procs: &Path, samples: &mut Samples) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    quiet();
    let mut cmd = Command::new(me);
    cmd.arg("worker").arg(mode.name());
    for n in [counts.samples, counts.open, counts.socket, counts.exec] {
        cmd.arg(n.to_string());
    }
    if mode.moves() {
        cmd.arg(procs);
    }
    let out = cmd.output().map_err(|e| format!("starting the {} worker: {e}", mode.name()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the {} worker failed ({}): {} {}",
            mode.name(),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    for l in Loop::ALL {
        let timings: Vec<f64> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix(l.name())?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .collect();
        if timings.len() != counts.samples as usize {
            return Err(format!(
                "the {} worker printed {} {} timings: {}",
                mode.name(),
                timings.len(),
                l.name(),
                stdout.trim()
            ));
        }
        samples.runs.extend(timings.into_iter().map(|ns| (mode, l, ns)));
    }
    Ok(())
}

fn report(counts: &Counts, samples: &Samples) {
    let m = |mode, l| samples.median(mode, l);
    for l in Loop::ALL {
        let a = m(Mode::Bare, l);
        println!(
            "LEASH-BENCH {} a={a:.0} b={:.0} c={:.0} b/a={:.3} c/a={:.3} b1000={:.0} b1000/b={:.3}",
            l.name(),
            m(Mode::Leash, l),
            m(Mode::Seccomp, l),
            m(Mode::Leash, l) / a,
            m(Mode::Seccomp, l) / a,
            m(Mode::Leash1000, l),
            m(Mode::Leash1000, l) / m(Mode::Leash, l)
        );
    }
    for l in Loop::ALL {
        let a = m(Mode::Bare, l);
        let (o, o16, z, f) = (m(Mode::Outside, l), m(Mode::Outside16, l), m(Mode::Zero, l), m(Mode::Floor, l));
        let (node, plain) = (m(Mode::Node, l), m(Mode::Plain, l));
        println!(
            "LEASH-BENCH-OUTSIDE {} a={a:.0} outside={o:.0} outside/a={:.3} outside16={o16:.0} outside16/outside={:.3} zero={z:.0} zero/a={:.3} floor={f:.0} floor/a={:.3} node={node:.0} node/plain={:.3}",
            l.name(),
            o / a,
            o16 / o,
            z / a,
            f / a,
            node / plain
        );
    }
    for l in Loop::ALL {
        let spreads: Vec<String> =
            Mode::ALL.iter().map(|mode| format!("spread_{}={:.3}", mode.name(), samples.spread(*mode, l))).collect();
        println!("LEASH-BENCH-SPREAD {} {}", l.name(), spreads.join(" "));
    }
    println!();
    println!(
        "syscall path, ns per op (median of {} rounds x {} samples; spread = (max-min)/median of the two modes compared)",
        counts.rounds, counts.samples
    );
    println!(
        "{:<13} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9}  goal",
        "loop", "iters", "a", "b", "c", "outside", "b/a", "c/a", "outside/a"
    );
    for l in Loop::ALL {
        let (a, b, c, o) = (m(Mode::Bare, l), m(Mode::Leash, l), m(Mode::Seccomp, l), m(Mode::Outside, l));
        let spread = |x: Mode, y: Mode| samples.spread(x, l).max(samples.spread(y, l)) * 100.0;
        let goal = match l.goal() {
            Some(g) => format!(
                "b/a <= {g}: {} (spread {:.1}%)",
                if b / a <= g { "met" } else { "NOT met" },
                spread(Mode::Bare, Mode::Leash)
            ),
            None => format!(
                "b <= c: {} (b-c {:+.1}%, spread {:.1}%)",
                if b <= c { "met" } else { "NOT met" },
                (b / c - 1.0) * 100.0,
                spread(Mode::Leash, Mode::Seccomp)
            ),
        };
        println!(
            "{:<13} {:>6} {a:>9.0} {b:>9.0} {c:>9.0} {o:>9.0} {:>7.3} {:>7.3} {:>9.3}  {goal}",
            l.name(),
            l.iterations(counts),
            b / a,
            c / a,
            o / a
        );
    }
}

fn write_file(path: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("writing {path}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {path}: {e}"))
}

/// A complete static x86-64 ELF executable: one `PT_LOAD` segment mapping the whole file at
/// 0x400000, whose code is `xor edi, edi; mov eax, 60; syscall` (exit(0)).
fn exit_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    let code: [u8; 9] = [0x31, 0xff, 0xb8, 60, 0, 0, 0, 0x0f, 0x05];
    let size = (EHDR + PHDR) as u64 + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + (EHDR + PHDR) as u64).to_le_bytes()); // e_entry: the code
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff: right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [EHDR, PHDR, 1, 0, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    for word in [0, BASE, BASE, size, size, 0x1000] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    debug_assert_eq!(elf.len() as u64, size);
    elf
}

// ---------------------------------------------------------------------------------------------
// The worker: one mode, three loops

/// `syscallbench worker <mode> <samples> <open> <socket> <exec> [<cgroup.procs>]`: sets the mode
/// up, checks it is in force, then prints `<loop> <ns per op>` per loop, `<samples>` times.
fn worker(args: &[String]) -> Result<(), String> {
    let mode = args.first().and_then(|m| Mode::from_name(m)).ok_or("worker: no mode")?;
    let n = |i: usize| -> Result<u32, String> {
        args.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| format!("worker: argument {i} is not a count"))
    };
    let counts = Counts { rounds: 1, samples: n(1)?, open: n(2)?, socket: n(3)?, exec: n(4)? };

    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()));
    }
    if mode.moves() {
        let procs = args.get(5).ok_or("worker: no cgroup.procs path")?;
        std::fs::write(procs, b"0").map_err(|e| format!("moving into the sandbox cgroup ({procs}): {e}"))?;
    }
    if mode == Mode::Seccomp {
        install_filter(&denylist_filter())?;
    }
    let packet = packet_socket();
    if (packet == Err(libc::EPERM)) != mode.denies_packet_sockets() {
        return Err(format!(
            "mode {} is not in force: an AF_PACKET socket {}",
            mode.name(),
            match packet {
                Ok(()) => "was created".to_owned(),
                Err(e) => format!("failed with {}", std::io::Error::from_raw_os_error(e)),
            }
        ));
    }

    let open_path = CString::new(OPEN_PATH).expect("no NUL");
    let exit_binary = CString::new(EXIT_BINARY).expect("no NUL");
    for sample in 0..counts.samples {
        for l in Loop::ALL {
            let iterations = l.iterations(&counts);
            let run = |n: u32| match l {
                Loop::OpenClose => open_close(&open_path, n),
                Loop::SocketClose => socket_close(n),
                Loop::ForkExec => fork_exec(&exit_binary, n),
            };
            if sample == 0 {
                run((iterations / 10).max(1))?;
            }
            let t = Instant::now();
            run(iterations)?;
            println!("{} {:.1}", l.name(), t.elapsed().as_nanos() as f64 / iterations as f64);
        }
    }
    Ok(())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn packet_socket() -> Result<(), i32> {
    // SAFETY: plain socket(2); closed at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    Ok(())
}

fn open_close(path: &CString, n: u32) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: a valid NUL-terminated path; the descriptor is closed at once.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("open {OPEN_PATH}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn socket_close(n: u32) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: plain socket(2); the descriptor is closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket(AF_INET, SOCK_DGRAM): {}", std::io::Error::last_os_error()));
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn fork_exec(binary: &CString, n: u32) -> Result<(), String> {
    let argv = [binary.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    for _ in 0..n {
        // SAFETY: the worker is single-threaded; the child only calls execve and _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: NUL-terminated path and NULL-terminated argv/envp prepared before fork.
            unsafe {
                libc::execve(binary.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(100 + errno().min(27));
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            let why = match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
                Some(code @ 100..=127) => format!("execve failed: {}", std::io::Error::from_raw_os_error(code - 100)),
                Some(code) => format!("exit {code}"),
                None => format!("wait status {status:#x}"),
            };
            return Err(format!("{EXIT_BINARY}: {why}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode c: a seccomp-BPF denylist in classic BPF

/// x86-64's `AUDIT_ARCH_X86_64`: EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// Set in the numbers of x32 system calls, which share the x86-64 arch value.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Not in the libc crate yet.
const CLONE_NEWTIME: u32 = 0x80;
/// The namespace flags of clone(2). CLONE_NEWTIME (0x80) is not among them: clone's low byte is
/// the exit signal, and only clone3 and unshare take that flag.
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;
const SOCK_TYPE_MASK: u32 = 0xf;

/// System calls the denylist refuses outright with EPERM: what a namespace supervisor denies an
/// agent (kernel and hardware control, other processes' memory, keys, mounts and namespaces,
/// io_uring, clock setting, host identity).
const DENIED: [libc::c_long; 41] = [
    libc::SYS_ptrace,
    libc::SYS_bpf,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_perf_event_open,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_personality,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_lookup_dcookie,
    libc::SYS_settimeofday,
];

/// Where a jump goes: the next instruction, or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    L(&'static str),
}

/// A classic-BPF program under construction, with forward jumps to labels.
#[derive(Default)]
struct Asm {
    code: Vec<(u16, u32, To, To)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn stmt(&mut self, code: u32, k: u32) {
        self.code.push((code as u16, k, To::Next, To::Next));
    }

    fn jump(&mut self, op: u32, k: u32, jt: To, jf: To) {
        self.code.push(((libc::BPF_JMP | op | libc::BPF_K) as u16, k, jt, jf));
    }

    /// `A = seccomp_data` word at `offset`.
    fn load(&mut self, offset: usize) {
        self.stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset as u32);
    }

    fn ret(&mut self, value: u32) {
        self.stmt(libc::BPF_RET | libc::BPF_K, value);
    }

    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }

    /// The program, every label resolved to a forward offset (classic BPF jumps only forward,
    /// by at most 255 instructions).
    fn finish(self) -> Vec<libc::sock_filter> {
        let at = |i: usize, to: To| -> u8 {
            match to {
                To::Next => 0,
                To::L(name) => {
                    let target =
                        self.labels.iter().find(|l| l.0 == name).unwrap_or_else(|| panic!("no label {name}")).1;
                    u8::try_from(target.checked_sub(i + 1).expect("forward jump")).expect("jump within 255")
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, k, jt, jf))| libc::sock_filter { code, jt: at(i, jt), jf: at(i, jf), k })
            .collect()
    }
}

/// The low 32 bits of system-call argument `n` in `struct seccomp_data` (little-endian).
fn arg(n: usize) -> usize {
    std::mem::offset_of!(libc::seccomp_data, args) + 8 * n
}

/// The mode-`c` filter: 45 rules. After the architecture check (anything but x86-64 kills the
/// process, x32 numbers get ENOSYS): `clone3` gets ENOSYS (its flags are behind a pointer, so
/// libc falls back to clone); `socket` is refused for AF_PACKET, AF_VSOCK, raw AF_INET/AF_INET6
/// and AF_NETLINK other than NETLINK_ROUTE; `clone` with a namespace flag and `unshare` with any
/// namespace flag are refused; then the 41 [`DENIED`] calls. Everything else is allowed.
/// The argument-checked calls come first, in seccomp's favour: socket and clone, which the loops
/// make, are decided after a few comparisons instead of after the whole list.
fn denylist_filter() -> Vec<libc::sock_filter> {
    use libc::{BPF_AND, BPF_JEQ, BPF_JGE, BPF_JSET};
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = Asm::default();
    p.load(std::mem::offset_of!(libc::seccomp_data, arch));
    p.jump(BPF_JEQ, AUDIT_ARCH_X86_64, To::Next, To::L("kill"));
    p.load(std::mem::offset_of!(libc::seccomp_data, nr));
    p.jump(BPF_JGE, X32_SYSCALL_BIT, To::L("enosys"), To::Next);
    p.jump(BPF_JEQ, libc::SYS_clone3 as u32, To::L("enosys"), To::Next);
    p.jump(BPF_JEQ, libc::SYS_socket as u32, To::L("socket"), To::Next);
    p.jump(BPF_JEQ, libc::SYS_clone as u32, To::L("clone"), To::Next);
    p.jump(BPF_JEQ, libc::SYS_unshare as u32, To::L("unshare"), To::Next);
    for nr in DENIED {
        p.jump(BPF_JEQ, nr as u32, To::L("deny"), To::Next);
    }
    p.ret(libc::SECCOMP_RET_ALLOW);

    p.label("socket");
    p.load(arg(0));
    p.jump(BPF_JEQ, libc::AF_PACKET as u32, To::L("deny"), To::Next);
    p.jump(BPF_JEQ, libc::AF_VSOCK as u32, To::L("deny"), To::Next);
    p.jump(BPF_JEQ, libc::AF_NETLINK as u32, To::L("netlink"), To::Next);
    p.jump(BPF_JEQ, libc::AF_INET as u32, To::L("inet"), To::Next);
    p.jump(BPF_JEQ, libc::AF_INET6 as u32, To::L("inet"), To::L("allow"));
    p.label("inet");
    p.load(arg(1));
    p.stmt(libc::BPF_ALU | BPF_AND | libc::BPF_K, SOCK_TYPE_MASK);
    p.jump(BPF_JEQ, libc::SOCK_RAW as u32, To::L("deny"), To::L("allow"));
    p.label("netlink");
    p.load(arg(2));
    p.jump(BPF_JEQ, libc::NETLINK_ROUTE as u32, To::L("allow"), To::L("deny"));

    p.label("clone");
    p.load(arg(0));
    p.jump(BPF_JSET, CLONE_NAMESPACES, To::L("deny"), To::L("allow"));
    p.label("unshare");
    p.load(arg(0));
    p.jump(BPF_JSET, CLONE_NAMESPACES | CLONE_NEWTIME, To::L("deny"), To::L("allow"));

    p.label("allow");
    p.ret(libc::SECCOMP_RET_ALLOW);
    p.label("deny");
    p.ret(eperm);
    p.label("enosys");
    p.ret(enosys);
    p.label("kill");
    p.ret(libc::SECCOMP_RET_KILL_PROCESS);
    p.finish()
}

/// Installs `filter` on this thread (no_new_privs is already set).
fn install_filter(filter: &[libc::sock_filter]) -> Result<(), String> {
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: prog points at a live, well-formed filter for the duration of the call.
    let rc =
        unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog, 0, 0) };
    if rc != 0 {
        return Err(format!("installing the seccomp filter: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
