//! One kernel side per host (`kernel/generation.rs`): the first run loads and pins a generation
//! of programs, later runs attach the same programs; concurrent cold starts load once; a leash
//! killed while making a generation leaves nothing a later run uses; a generation of another
//! build goes once nothing uses it; each sandbox gets its own denials and no other's; the
//! generation keeps the kernel's hooks on with links to an empty cgroup, gone with it.
//!
//! These tests remove the host's generation to force cold starts: they run one at a time, and
//! `cargo test` runs test binaries one after another.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leash_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_netprobe");

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RUNS.lock().unwrap_or_else(|e| e.into_inner())
}

fn leash_root() -> PathBuf {
    bpffs_root().expect("leash mounts bpffs").join("leash")
}

/// Names in `<bpffs>/leash` starting with `prefix`.
fn named(prefix: &str) -> Vec<String> {
    std::fs::read_dir(leash_root())
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect())
        .unwrap_or_default()
}

/// Removes every generation (and anything half-built) so the next run starts cold. Nothing runs.
fn remove_generations() {
    for name in named("gen-").into_iter().chain(named("building-")) {
        leash::kernel::pins::remove_tree(&leash_root().join(name)).unwrap();
    }
}

/// The one generation on the host.
fn the_generation() -> PathBuf {
    let all = named("gen-");
    assert_eq!(all.len(), 1, "expected one generation, found {all:?}");
    leash_root().join(&all[0])
}

/// Kernel id of the program pinned at `path`.
fn program_id(path: &Path) -> u32 {
    aya::programs::CgroupSockAddr::from_pin(path, aya::programs::CgroupSockAddrAttachType::Connect4)
        .and_then(|p| p.info())
        .map(|i| i.id())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Destination ports of the kernel's network denials in the audit log at `log`.
fn denied_ports(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["class_uid"] == 4001 && v["disposition_id"] == 2)
        .filter_map(|v| v["dst_endpoint"]["port"].as_u64())
        .collect()
}

/// `leash run` of `sh -c script` under `policy`, its audit log at `log`; stderr piped.
fn audited_run(policy: &Path, log: &Path, script: &str) -> Command {
    let mut command =
        leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--audit-log", log.to_str().unwrap()]);
    command.args(["--", "/bin/sh", "-c", script]).stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

fn run_true(policy: &Path) -> std::process::Output {
    leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/true"]).output().unwrap()
}

#[test]
fn a_second_run_attaches_the_programs_the_first_loaded() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("warm");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    remove_generations();
    let cold = run_true(&policy);
    assert!(cold.status.success(), "cold start: {}", stderr(&cold));
    let generation = the_generation();
    let loaded = program_id(&generation.join("progs/leash_connect4"));

    // The warm run's own link to its cgroup runs the program the cold run pinned.
    let warm = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sleep", "2"]).spawn().unwrap();
    let pid = warm.id();
    let link_path = || {
        let dir = leash_root().join("sandboxes");
        let sandbox = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{pid}-")))?;
        let name = format!("{}--leash_connect4", generation.file_name()?.to_string_lossy());
        Some(sandbox.path().join(name)).filter(|p| p.exists())
    };
    assert!(wait_until(5, || link_path().is_some()), "the warm run's connect4 link never appeared");
    let cgroup = sandbox_cgroups_of(pid).pop().expect("the warm run's cgroup");
    let linked = attached(&cgroup2_root().join(cgroup), BPF_CGROUP_INET4_CONNECT);
    let out = warm.wait_with_output().unwrap();
    assert!(out.status.success(), "warm run: {}", stderr(&out));
    assert_eq!(linked, vec![loaded], "the warm run's cgroup does not run the pinned connect4 program");
    assert_eq!(the_generation(), generation);
    assert_eq!(program_id(&generation.join("progs/leash_connect4")), loaded, "the warm run loaded again");
}

/// The kernel's attach types of two of the held programs (`enum bpf_attach_type`).
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// Ids of the programs attached to the cgroup at `cgroup` itself at `attach_type`.
fn attached(cgroup: &Path, attach_type: u32) -> Vec<u32> {
    let dir = std::fs::File::open(cgroup).unwrap_or_else(|e| panic!("opening {}: {e}", cgroup.display()));
    leash::kernel::attach::attached_to_cgroup(std::os::fd::AsFd::as_fd(&dir), attach_type).expect("BPF_PROG_QUERY")
}

/// The same of the hold cgroup.
fn held(attach_type: u32) -> Vec<u32> {
    attached(&cgroup2_root().join(leash::kernel::hold::CGROUP), attach_type)
}

/// Where the cgroup2 mount is a cgroup namespace's root (in a container), leash does not hold the
/// hooks: a cold run says so, and the hold tests check that refusal instead. The kernel gives
/// every cgroup but a hierarchy's root a `cgroup.type`.
fn hold_refused_here(policy: &Path) -> bool {
    if !cgroup2_root().join("cgroup.type").exists() {
        return false;
    }
    remove_generations();
    let out = run_true(policy);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("hooks are not held"), "held in a cgroup namespace: {}", stderr(&out));
    assert!(!the_generation().join("hold").exists(), "held in a cgroup namespace");
    true
}

/// `kernel/hold.rs`: the generation keeps each network program attached to a cgroup of its own
/// (so that sandboxes start without switching the kernel's hooks on), in which no process runs,
/// and those links go with the generation.
#[test]
fn the_generation_holds_the_hooks_in_an_empty_cgroup_and_lets_go_with_it() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("hold");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    if hold_refused_here(&policy) {
        return;
    }
    remove_generations();
    let out = run_true(&policy);
    assert!(out.status.success(), "{}", stderr(&out));
    let generation = the_generation();
    let pinned: Vec<String> = std::fs::read_dir(generation.join("hold"))
        .expect("the generation holds no hooks")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pinned.len(), 10, "one link per network program: {pinned:?}");
    // A former generation's links may still be being released (a kernel worker does it).
    let connect4 = program_id(&generation.join("progs/leash_connect4"));
    let egress = program_id(&generation.join("progs/leash_skb_egress"));
    let only_these =
        || held(BPF_CGROUP_INET4_CONNECT) == vec![connect4] && held(BPF_CGROUP_INET_EGRESS) == vec![egress];
    assert!(
        wait_until(5, only_these),
        "the held programs are not the generation's: connect4 {:?} (want {connect4}), egress {:?} (want {egress})",
        held(BPF_CGROUP_INET4_CONNECT),
        held(BPF_CGROUP_INET_EGRESS)
    );
    let procs = std::fs::read_to_string(cgroup2_root().join(leash::kernel::hold::CGROUP).join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), "", "a process runs in the hold cgroup");

    // A second run neither loads nor holds again.
    let out = run_true(&policy);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(held(BPF_CGROUP_INET4_CONNECT), vec![connect4], "a warm run held the hooks again");

    // The kernel puts an unpinned link away from a work queue, soon after.
    remove_generations();
    let released = || held(BPF_CGROUP_INET4_CONNECT).is_empty() && held(BPF_CGROUP_INET_EGRESS).is_empty();
    assert!(wait_until(5, released), "the hooks stay held with no generation pinned");
}

/// Holding is refused where a process runs in the hold cgroup or below it (its network would be
/// cut), said once, and not tried again by later runs (each try takes the host's lock).
#[test]
fn the_hooks_are_not_held_where_a_process_runs_below_the_hold_cgroup_and_that_is_said_once() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("holdbusy");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    if hold_refused_here(&policy) {
        return;
    }
    remove_generations();
    let cgroup = cgroup2_root().join(leash::kernel::hold::CGROUP);
    match std::fs::create_dir(&cgroup) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("creating {}: {e}", cgroup.display()),
    }
    // In a cgroup below it, where the programs would apply as well.
    let below = cgroup.join("busy");
    let _ = std::fs::create_dir(&below);
    let mut sleeper = Command::new("/bin/sleep");
    sleeper.arg("30");
    in_cgroup(&mut sleeper, &below);
    let mut sleeper = sleeper.spawn().expect("a process below the hold cgroup");
    let first = run_true(&policy);
    let second = run_true(&policy);
    let generation = the_generation();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(wait_until(5, || std::fs::remove_dir(&below).is_ok()), "{} stays", below.display());
    assert!(first.status.success() && second.status.success(), "{}{}", stderr(&first), stderr(&second));
    assert!(stderr(&first).contains("hooks are not held"), "not said: {}", stderr(&first));
    assert!(!stderr(&second).contains("hooks are not held"), "said again: {}", stderr(&second));
    assert!(!generation.join("hold").exists(), "held with a process in the hold cgroup");
    assert!(wait_until(5, || held(BPF_CGROUP_INET4_CONNECT).is_empty()), "attached with a process in the hold cgroup");
    // The next generation holds them again.
    remove_generations();
    let out = run_true(&policy);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(the_generation().join("hold").is_dir(), "not held once the cgroup was empty: {}", stderr(&out));
}

/// Attack: the hold cgroup has every network program attached and no sandbox entry, so a
/// process put there (only root can) is not a way around the programs: it is denied, as a
/// process of a sandbox with no entry is.
#[test]
fn a_process_in_the_hold_cgroup_reaches_nothing() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("holdin");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    if hold_refused_here(&policy) {
        return;
    }
    let out = run_true(&policy);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(the_generation().join("hold").is_dir(), "the generation does not hold the hooks: {}", stderr(&out));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut child, mut out) = sandboxed_client(&cgroup2_root().join(leash::kernel::hold::CGROUP), port, "plain");
    let line = next_line(&mut out);
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(line.is_empty() && !status.success(), "connected from the hold cgroup (port {line:?}, {status})");
    let accepted = listener.accept();
    assert!(
        accepted.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the listener was reached from the hold cgroup: {accepted:?}"
    );
}

#[test]
fn eight_cold_starts_at_once_all_run_and_leave_one_generation() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("cold8");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    remove_generations();
    let runs: Vec<Child> = (0..8)
        .map(|_| {
            leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/true"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "a concurrent cold start failed: {}", stderr(&out));
    }
    the_generation();
    assert!(named("building-").is_empty(), "half-built generations left: {:?}", named("building-"));
}

#[test]
fn a_leash_killed_while_making_a_generation_leaves_nothing_a_later_run_uses() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("killgen");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let programs = ["leash_connect4", "leash_connect6", "leash_sendmsg4", "leash_skb_egress", "leash_skb_ingress"];
    let mut interrupted = 0;
    for delay_ms in (2..60).step_by(4) {
        remove_generations();
        let mut run = leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = run.kill();
        let _ = run.wait();
        // Whatever the moment: a published generation is whole, or there is none.
        let published = named("gen-");
        if published.is_empty() {
            interrupted += 1;
        }
        for generation in published {
            for program in programs {
                let pin = leash_root().join(&generation).join("progs").join(program);
                assert!(pin.exists(), "killed after {delay_ms} ms: {generation} is published without {program}");
            }
        }
    }
    assert!(interrupted > 0, "no kill landed before the generation was published: the test proved nothing");
    let out = run_true(&policy);
    assert!(out.status.success(), "the run after the kills: {}", stderr(&out));
    assert!(named("building-").is_empty(), "half-built generations left: {:?}", named("building-"));
    the_generation();
}

#[test]
fn a_generation_of_another_build_goes_when_its_last_run_ends() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("oldgen");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    remove_generations();
    // A run of "the old build": its generation is renamed under it, as if another build made it.
    let old =
        leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/sleep", "3"]).spawn().unwrap();
    let pid = old.id();
    assert!(wait_until(5, || !sandbox_cgroups_of(pid).is_empty()), "the old run never started");
    let current = the_generation();
    let renamed = leash_root().join("gen-0000000000000001");
    std::fs::rename(&current, &renamed).unwrap();
    // The current build starts cold beside it, and leaves the old one to its last run.
    let out = run_true(&policy);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(renamed.exists(), "a generation was removed while a run of its build still held it");
    assert!(current.exists(), "the current generation must stay for the next run");
    let out = old.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!renamed.exists(), "the old generation stayed after its last run ended");
    assert!(current.exists(), "the newest generation must stay");
}

#[test]
fn each_sandbox_sees_its_own_denials_and_no_other() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("ownevents");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let (a, b) = (Listener::new("127.0.0.1:0"), Listener::new("127.0.0.1:0"));
    let start = |tag: &str, target: &Listener| {
        let log = scratch.0.join(format!("{tag}.jsonl"));
        // Each agent is denied, then stays while the other is denied too.
        let child = audited_run(&policy, &log, &format!("{PROBE} tcp {}; sleep 2", target.addr)).spawn().unwrap();
        (child, log)
    };
    let (run_a, log_a) = start("a", &a);
    let (run_b, log_b) = start("b", &b);
    for run in [run_a, run_b] {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (port_a, port_b) = (u64::from(a.addr.port()), u64::from(b.addr.port()));
    assert_eq!(denied_ports(&log_a), vec![port_a], "A's audit log");
    assert_eq!(denied_ports(&log_b), vec![port_b], "B's audit log");
}

/// `leash doctor` says which generation it found, and a second doctor finds it loaded.
#[test]
fn doctor_reports_the_generation() {
    require_root();
    let _serial = serial();
    remove_generations();
    let first = Command::new(leash_bin()).arg("doctor").output().unwrap();
    let second = Command::new(leash_bin()).arg("doctor").output().unwrap();
    assert!(stdout(&first).contains("loaded now"), "{}", stdout(&first));
    assert!(stdout(&second).contains("already loaded"), "{}", stdout(&second));
    // Whether the kernel's hooks are held (`hold.rs`): only a `leash run` holds them.
    assert!(stdout(&second).contains("hooks not held yet"), "{}", stdout(&second));
    let scratch = Scratch::new("doctorhold");
    let out = run_true(&scratch.file("p.yaml", &policy_allowing(&[])));
    assert!(out.status.success(), "{}", stderr(&out));
    let third = Command::new(leash_bin()).arg("doctor").output().unwrap();
    let expected = match cgroup2_root().join("cgroup.type").exists() {
        true => "hooks not held between sandboxes (refused",
        false => "hooks held between sandboxes in",
    };
    assert!(stdout(&third).contains(expected), "{}", stdout(&third));
}

/// Event rings are pooled (a ring is never inserted per run: that waits an RCU grace period). A
/// run that takes the ring of a leash killed while its agent was being denied gets none of that
/// sandbox's events, and takes it rather than adding a ring.
#[test]
fn a_reused_event_ring_carries_none_of_the_last_sandboxs_events() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("rings");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let (a, b) = (Listener::new("127.0.0.1:0"), Listener::new("127.0.0.1:0"));
    // A: denied again and again until its leash is killed, so its ring is busy when it dies.
    let log_a = scratch.0.join("a.jsonl");
    let mut run_a = audited_run(&policy, &log_a, &format!("while :; do {PROBE} tcp {}; done", a.addr)).spawn().unwrap();
    assert!(wait_until(20, || !denied_ports(&log_a).is_empty()), "A was never denied");
    let rings = the_generation().join("rings");
    let slots = || std::fs::read_dir(&rings).map(|d| d.count()).unwrap_or(0);
    let before = slots();
    run_a.kill().unwrap();
    run_a.wait().unwrap();

    let log_b = scratch.0.join("b.jsonl");
    let out_b = audited_run(&policy, &log_b, &format!("{PROBE} tcp {}; true", b.addr)).output().unwrap();
    assert!(out_b.status.success(), "{}", stderr(&out_b));
    let port_b = u64::from(b.addr.port());
    assert_eq!(denied_ports(&log_b), vec![port_b], "B's audit log has B's denial and nothing of A's");
    assert_eq!(slots(), before, "B took a free ring instead of adding one");
}

/// The BPF-LSM pre-filter (`LEASH_LSM_FILTER`) answers "not a sandbox" on a zero count without
/// looking the cgroup up, so a zero for a registered sandbox would switch its BPF-LSM rules off.
/// Tried as the attack would go: two sandboxes whose ids share a slot, one registered twice
/// (a policy reload), one removed twice (a teardown and the reaper); the other must still count.
/// Real maps of the host's generation; no program needs to attach for this.
#[test]
fn the_lsm_prefilter_never_reads_zero_for_a_registered_sandbox() {
    let _one = serial();
    let mut generation = leash::kernel::generation::Generation::open_host().expect("the host's generation");
    // Ids no cgroup here has (cgroup ids are small inode numbers), sharing one slot.
    let a: u64 = 0x7eed_0000_0000_1234;
    let b: u64 = a + u64::from(sandbox_common::LSM_FILTER_SLOTS);
    assert_eq!(sandbox_common::lsm_filter_slot(a), sandbox_common::lsm_filter_slot(b));
    let policy = sandbox_common::LsmPolicy::default();
    let counts = generation
        .with_lsm_maps(|maps| {
            let mut seen = vec![maps.filter_count(a)?];
            maps.add_sandbox(a, policy)?;
            maps.add_sandbox(b, policy)?;
            maps.add_sandbox(a, policy)?; // registered again: no second count
            seen.push(maps.filter_count(a)?);
            maps.remove_sandbox(a);
            maps.remove_sandbox(a); // removed again: no second decrement
            seen.push(maps.filter_count(b)?);
            let b_still_there = maps.entries().contains(&b);
            maps.remove_sandbox(b);
            seen.push(maps.filter_count(b)?);
            seen.push(u32::from(b_still_there));
            Ok(seen)
        })
        .expect("the LSM maps");
    let base = counts[0];
    assert_eq!(counts[1], base + 2, "two sandboxes in the slot count two, however often registered");
    assert_eq!(counts[2], base + 1, "b still counts after a is removed twice");
    assert_eq!(counts[4], 1, "b's entry is still there");
    assert_eq!(counts[3], base, "and the slot is back where it was once b is gone");
}

/// The open deny list's pre-filter (`LEASH_LSM_DENY_OPEN_FILTER`) answers "no sandbox denies this
/// file" on a zero count without the hash lookup, so a zero for a listed file would let the agent
/// open it. Tried as the attack would go: two sandboxes deny the same file, one writes its list
/// again (a policy reload), then drops the file from it, then is removed twice (a teardown and
/// the reaper); the other's entry must still count. Real maps of the host's generation.
#[test]
fn the_deny_open_prefilter_never_reads_zero_for_a_listed_file() {
    use leash::kernel::lsm_rules::{FileId, LsmRules};
    let _one = serial();
    let mut generation = leash::kernel::generation::Generation::open_host().expect("the host's generation");
    // Ids no cgroup here has, and a file no filesystem here has.
    let (a, b): (u64, u64) = (0x7eed_0000_0000_5678, 0x7eed_0000_0000_5679);
    let file = FileId { dev: 0x7ee_d001, ino: 0x7eed_0000_0000_9abc };
    let listed = LsmRules {
        rules: sandbox_common::lsm_rule::DENY_OPEN,
        deny_open: [(file, PathBuf::from("/listed"))].into(),
        ..Default::default()
    };
    let counts = generation
        .with_lsm_maps(|maps| {
            let count = |maps: &leash::kernel::lsm::LsmMaps| maps.deny_open_filter_count(file.ino);
            let mut seen = vec![count(maps)?];
            maps.replace_lists(a, &listed)?;
            maps.replace_lists(b, &listed)?;
            maps.replace_lists(a, &listed)?; // written again: no second count
            seen.push(count(maps)?);
            maps.replace_lists(a, &LsmRules::default())?; // a's list drops it
            seen.push(count(maps)?);
            maps.remove_sandbox(a);
            maps.remove_sandbox(a); // removed again: no second decrement
            seen.push(count(maps)?);
            maps.remove_sandbox(b);
            seen.push(count(maps)?);
            Ok(seen)
        })
        .expect("the LSM maps");
    let base = counts[0];
    assert_eq!(counts[1], base + 2, "two sandboxes denying the file count two, however often written");
    assert_eq!(counts[2], base + 1, "b's entry still counts after a dropped the file");
    assert_eq!(counts[3], base + 1, "and after a was removed twice");
    assert_eq!(counts[4], base, "the slot is back where it was once b is gone");
}

/// Removing a sandbox whose cgroup still holds a process (a kill that did not finish, a process
/// that escaped a single kill round) must not strip its confinement: the cgroup stays, and so do
/// its links. Once it is empty, removal takes everything.
#[test]
fn a_populated_sandbox_keeps_its_confinement_when_removal_is_attempted() {
    use leash::kernel::{generation::Generation, programs, sandbox::KernelSandbox};
    require_root();
    let _serial = serial();
    let mut generation = Generation::open_host().expect("the host's generation");
    let name = format!("removal-test-{}", std::process::id());
    let net = programs::sandbox_net("127.0.0.1:9".parse().unwrap(), false);
    let sandbox = KernelSandbox::create(&mut generation, &cgroup2_root(), &name, net).expect("sandbox");
    let cgroup = sandbox.cgroup().path().to_path_buf();
    let pins = leash::kernel::pins::sandbox_dir(&bpffs_root().unwrap(), &name);
    let mut held = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), held.id().to_string()).unwrap();

    let again = KernelSandbox::made(&name, cgroup.clone(), sandbox.cgroup().id());
    let refused = sandbox.remove(&mut generation);
    assert!(refused.is_err(), "a populated cgroup was removed");
    assert!(cgroup.is_dir(), "the cgroup is gone while its process lives");
    let links = std::fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0);
    assert!(links > 0, "the sandbox's links were removed while its process lives");

    held.kill().unwrap();
    held.wait().unwrap();
    again.remove(&mut generation).expect("removing the emptied sandbox");
    assert!(!cgroup.exists() && !pins.exists(), "the emptied sandbox left its cgroup or pins");
}

/// Makes `cmd` start in the cgroup at `cgroup` (it moves itself there before exec).
fn in_cgroup(cmd: &mut Command, cgroup: &Path) {
    use std::os::unix::process::CommandExt as _;
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: open, write and close only, between fork and exec; the path was prepared before.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let moved = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if moved {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A client in a sandbox cgroup, run by Python: it connects to `127.0.0.1:port` as `how` says,
/// prints its local port, closes the socket at the first line on stdin (`disconnect`: gives the
/// port up with `connect(AF_UNSPEC)` and keeps the socket) then prints `closed`, and exits at the
/// second.
fn sandboxed_client(cgroup: &Path, port: u16, how: &str) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    const CLIENT: &str = r#"
import socket, sys
port, how = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
if how == "other-address":
    s.bind(("127.0.0.2", 0))
s.connect(("127.0.0.1", port))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
if how == "disconnect":
    import ctypes
    unspecified = ctypes.create_string_buffer(16)
    assert ctypes.CDLL(None).connect(s.fileno(), unspecified, 16) == 0
else:
    s.close()
print("closed", flush=True)
sys.stdin.readline()
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", CLIENT, &port.to_string(), how]).stdin(Stdio::piped()).stdout(Stdio::piped());
    in_cgroup(&mut cmd, cgroup);
    let mut child = cmd.spawn().expect("python3");
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn next_line(out: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_string()
}

/// A sandbox that records connection owners, confined to a listener that never accepts (as a
/// busy proxy's queue would not), and its owner records. Removed when dropped, a failed test's
/// too (a test that panicked left its pins and cgroup on the host before).
struct OwnerTest {
    generation: leash::kernel::generation::Generation,
    proxy: std::net::SocketAddr,
    sandbox: Option<leash::kernel::sandbox::KernelSandbox>,
    owners: leash::kernel::programs::ConnectionOwners,
    listener: std::net::TcpListener,
}

impl OwnerTest {
    fn new(prefix: &str) -> Self {
        use leash::kernel::{generation::Generation, programs, sandbox::KernelSandbox};
        let mut generation = Generation::open_host().expect("the host's generation");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = listener.local_addr().unwrap();
        let name = format!("{prefix}-{}", std::process::id());
        let net = programs::sandbox_net(proxy, true);
        let sandbox = KernelSandbox::create(&mut generation, &cgroup2_root(), &name, net).expect("sandbox");
        let owners = generation.connection_owners(sandbox.cgroup().id()).unwrap();
        Self { generation, proxy, sandbox: Some(sandbox), owners, listener }
    }

    fn cgroup(&self) -> &std::path::Path {
        self.sandbox.as_ref().expect("the sandbox is there until removed").cgroup().path()
    }

    /// Removes the sandbox, which must succeed.
    fn remove(mut self) {
        let sandbox = self.sandbox.take().expect("removed once");
        sandbox.remove(&mut self.generation).expect("removing the sandbox");
    }
}

impl Drop for OwnerTest {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            let _ = sandbox.remove(&mut self.generation);
        }
    }
}

/// The proxy serves a connection only if the socket the kernel says is at its client end has a
/// record of the proxy's own sandbox (records are kept by socket cookie, and the map is shared by
/// every sandbox on the host). Against the kernel programs themselves, with listeners that never
/// accept (as a busy proxy's queue would not):
/// - a connection of sandbox A has a record naming its process, which A's check by socket finds;
/// - sandbox B's check of the same connection finds nothing (as the node daemon answers pod B,
///   which names A's socket, nothing);
/// - a connection from another local address (`127.0.0.2`) is not found at the proxy's own
///   address, where its port is free for another user to bind.
#[test]
fn a_record_counts_only_for_its_sandbox_and_the_socket_at_the_client_end() {
    require_root();
    let _serial = serial();
    let a = OwnerTest::new("owner-test-a");
    let b = OwnerTest::new("owner-test-b");
    let mut findings = Vec::new();
    for how in ["plain", "other-address"] {
        let (mut child, mut out) = sandboxed_client(a.cgroup(), a.proxy.port(), how);
        let port: u16 = next_line(&mut out).parse().expect("the client's port");
        std::thread::sleep(Duration::from_millis(50));
        let client = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let own = a.owners.connection(client, a.proxy);
        let other_sandbox = b.owners.connection(client, a.proxy);
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        assert_eq!(next_line(&mut out), "closed");
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        child.wait().unwrap();
        match how {
            "plain" if own.is_none_or(|o| o.pid != child.id()) => {
                findings.push(format!("the connection from port {port} was not found as A's: {own:?}"))
            }
            "plain" if other_sandbox.is_some() => {
                findings.push(format!("sandbox B's check found A's connection: {other_sandbox:?}"))
            }
            "plain" => {}
            _ if own.is_some() => findings.push(format!("{how}: found at 127.0.0.1:{port}: {own:?}")),
            _ => {}
        }
    }
    a.remove();
    b.remove();
    assert!(findings.is_empty(), "{findings:#?}");
}

/// The owner map is shared by every sandbox on the host and evicts its oldest records when
/// full, so a sandbox that opens and closes connections by the hundred thousand would push out
/// another sandbox's record of a connection its proxy has not accepted yet (which the proxy then
/// refuses as an outsider's). A record no proxy can take any more goes at once, so such a flood
/// leaves the map as it found it. Sandbox B makes 100,000 connections twice (the map holds
/// 65,536) while sandbox A's waits in its listener's queue, and A's record must still be found:
/// - to a listener that does not accept: past its queue's few, the SYNs are dropped and each
///   socket is closed unconnected (`cgroup/sock_release`);
/// - to a listener that accepts: each connection is made and reset (`cgroup_skb/egress`).
#[test]
fn a_flood_from_one_sandbox_evicts_no_record_of_another() {
    require_root();
    let _serial = serial();
    let a = OwnerTest::new("flood-test-a");
    let b = OwnerTest::new("flood-test-b");
    let (mut child, mut out) = sandboxed_client(a.cgroup(), a.proxy.port(), "plain");
    let port: u16 = next_line(&mut out).parse().expect("the client's port");
    let client = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let before = a.owners.connection(client, a.proxy);
    let script = format!("{PY_FLOOD}\nimport sys\nflood((\"127.0.0.1\", int(sys.argv[1])), int(sys.argv[2]))\n");
    let flood = || {
        let mut flood = Command::new("/usr/bin/python3");
        flood.args(["-c", &script, &b.proxy.port().to_string(), "100000"]);
        in_cgroup(&mut flood, b.cgroup());
        flood.status().expect("python3").success()
    };
    let unanswered = flood();
    let after_unanswered = a.owners.connection(client, a.proxy);
    let listener = b.listener.try_clone().unwrap();
    std::thread::spawn(move || listener.incoming().for_each(drop));
    let reset = flood();
    let after_reset = a.owners.connection(client, a.proxy);
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(next_line(&mut out), "closed");
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    child.wait().unwrap();
    a.remove();
    b.remove();
    assert!(unanswered && reset, "a flood did not run");
    assert!(before.is_some_and(|o| o.pid == child.id()), "A's connection was not recorded: {before:?}");
    assert_eq!(after_unanswered, before, "B's flood of unanswered connections evicted A's record");
    assert_eq!(after_reset, before, "B's flood of reset connections evicted A's record");
}

/// A socket can give its port up and stay open (`connect(AF_UNSPEC)`; a reset or a timeout does
/// the same). Another user who binds the port and connects to the proxy, also from a socket bound
/// to the loopback device (which a lookup on no device would not see), must not count as the
/// sandbox's connection: the socket at the client end is that user's, whose cookie the sandbox
/// never recorded. (Giving the port up with `connect(AF_UNSPEC)` also resets the connection,
/// which drops the record in `cgroup_skb/egress`; the test fails only with both defences gone.)
/// The sandbox's own connection, checked the same way first, counts.
#[test]
fn a_port_the_sandbox_gave_up_is_not_its_connection_any_more() {
    require_root();
    let _serial = serial();
    let test = OwnerTest::new("gave-up-test");
    let (proxy, owners) = (test.proxy, &test.owners);
    let mut findings = Vec::new();
    for on_device in [false, true] {
        let how = if on_device { "disconnect, taken on lo" } else { "disconnect" };
        let (mut child, mut out) = sandboxed_client(test.cgroup(), proxy.port(), "disconnect");
        let port: u16 = next_line(&mut out).parse().expect("the client's port");
        let client = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::thread::sleep(Duration::from_millis(50));
        let own = owners.connection(client, proxy);
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        assert_eq!(next_line(&mut out), "closed");
        // Another user (root outside the sandbox will do) takes the port and connects.
        let device = if on_device { "s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'lo')\n" } else { "" };
        let take = format!(
            "import socket, sys\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n{device}\
             s.bind(('127.0.0.1', {port}))\ns.connect(('127.0.0.1', {}))\nprint('connected', flush=True)\nsys.stdin.readline()",
            proxy.port()
        );
        let mut outsider = Command::new("/usr/bin/python3")
            .args(["-c", &take])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let taken = next_line(&mut std::io::BufReader::new(outsider.stdout.take().unwrap()));
        let theirs = owners.connection(client, proxy);
        let _ = writeln!(outsider.stdin.as_mut().unwrap());
        let _ = writeln!(child.stdin.as_mut().unwrap());
        let _ = (outsider.wait(), child.wait());
        if own.is_none_or(|o| o.pid != child.id()) {
            findings.push(format!("{how}: the sandbox's own connection was not recognised: {own:?}"));
        }
        if taken != "connected" {
            findings.push(format!("{how}: the outsider could not take the port: {taken:?}"));
        }
        if theirs.is_some() {
            findings.push(format!("{how}: another user's connection from the port counts as the sandbox's"));
        }
    }
    test.remove();
    assert!(findings.is_empty(), "{findings:#?}");
}

/// A bpffs mounted without `mode=` is world-writable (sticky). Another local user who makes
/// `leash/` there before leash does would own the directories leash pins every sandbox's links
/// into, and could unpin (detach) a sandbox's programs. leash refuses a `leash/` it did not make,
/// and a bpffs root whose entries any user can rename, before it makes anything there.
#[test]
fn a_pin_directory_another_user_made_first_is_refused() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::os::unix::process::CommandExt as _;
    require_root();
    let scratch = Scratch::new("bpffs-planted");
    let at = scratch.0.join("bpf");
    std::fs::create_dir(&at).unwrap();
    let bpffs = Bpffs::mount(&at);
    // Another user (not root, not the agent) gets there first.
    let made = Command::new("/bin/mkdir").arg(at.join("leash")).uid(4242).gid(4242).status().unwrap();
    assert!(made.success(), "control: a bpffs mounted without mode= lets any user make leash/");
    let refused = leash::kernel::generation::Generation::open_or_create(&at, "gen-planted").err();
    let refused = refused.map(|e| format!("{e:#}")).expect("leash used a pin directory uid 4242 made");
    assert!(refused.contains("belongs to uid 4242"), "{refused}");
    assert_eq!(std::fs::read_dir(at.join("leash")).unwrap().count(), 0, "leash made something in it");
    std::fs::remove_dir(at.join("leash")).unwrap();
    // A root whose entries any user can rename.
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = leash::kernel::pins::private_root(&at).err().map(|e| format!("{e:#}"));
    assert!(refused.as_deref().is_some_and(|e| e.contains("mode 777")), "{refused:?}");
    assert!(!at.join("leash").exists(), "leash made its directory in a root others can rename from");
    // The control: root's own directory, in the same bpffs with its default mode, is made 0700.
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let root = leash::kernel::pins::private_root(&at).expect("leash's own directory");
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
    drop(bpffs);
}

/// A bpffs mounted at a scratch directory (default mode: world-writable, sticky), unmounted on
/// drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(at: &Path) -> Self {
        let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mount(2) with valid NUL-terminated strings and no data.
        let r = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(r, 0, "mounting bpffs at {}: {}", at.display(), std::io::Error::last_os_error());
        Self(at.to_path_buf())
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2(2) of the mount this value made.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
