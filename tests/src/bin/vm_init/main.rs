//! `vm_init`: PID 1 of the test VMs that `cargo xtask vm-test` and `cargo xtask run` boot.
//!
//! It mounts what leash needs (proc, sysfs, devtmpfs, cgroup2, bpffs, securityfs, tmpfs on /tmp
//! and /run), brings `lo` up, loads the kernel modules the image lists, then does what the kernel
//! command line asks and powers the VM off:
//!
//! ```text
//! leash.suite=doctor,net    run these suites (doctor, net, lsm); print `LEASH-RESULT <name> PASS|FAIL <detail>`
//!                           per check, then `LEASH-VERDICT PASS|FAIL`
//! leash.run                 run /etc/leash-vm/argv under `leash run` (xtask run), stream its
//!                           output and the audit trail (`LEASH-AUDIT <json>`), then print
//!                           `LEASH-EXIT <status>`
//! ```
//!
//! A suite is a function returning named checks; add one to [`suite`] to extend the VM tests.
//! The `node` suite (`node.rs`, `cargo xtask node-test`) runs containers, and runc cannot pivot
//! out of an initramfs: for it, PID 1 first makes a tmpfs copy of the image its root.
//! The image is built by xtask (`xtask/src/vm/initramfs.rs`), which also writes the files under
//! `/etc/leash-vm/`.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod learn;
mod node;
mod rotation;

const LEASH: &str = "/bin/leash";
const NETPROBE: &str = "/bin/netprobe";
const LSM_PROBE: &str = "/bin/lsm_probe";
/// Files xtask puts in the image for this boot.
const CONFIG_DIR: &str = "/etc/leash-vm";
/// The longest one command of a check may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

fn main() {
    // The kernel starts init with almost no environment.
    std::env::set_var("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    std::env::set_var("HOME", "/root");
    if let Err(e) = root_on_tmpfs_for_containers() {
        println!("LEASH-RESULT boot:tmpfs-root FAIL {e}");
    }
    let setup = prepare_system();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    println!("LEASH-KERNEL {}", kernel_release());
    if cmdline.split_whitespace().any(|w| w == "leash.run") {
        run_checks(vec![setup]);
        let status = run_command();
        println!("LEASH-EXIT {status}");
    } else {
        let names = param(&cmdline, "leash.suite").unwrap_or_else(|| "doctor,net,lsm".into());
        let mut checks = vec![setup];
        for name in names.split(',').filter(|n| !n.is_empty()) {
            checks.extend(suite(name));
        }
        let passed = run_checks(checks);
        println!("LEASH-VERDICT {}", if passed { "PASS" } else { "FAIL" });
    }
    power_off();
}

/// Where the image is copied before it becomes the root.
const TMPFS_ROOT: &str = "/.tmpfs-root";
/// A file of the root once it is the tmpfs.
const ON_TMPFS: &str = "/.root-on-tmpfs";

/// runc pivots into each container's root, and pivot_root(2) refuses a process whose root is the
/// initramfs itself (rootfs has no parent mount). When the `node` suite is to run, PID 1 first
/// does what an initramfs's switch_root does: it moves the image into a tmpfs, makes that the
/// root and starts itself again there.
fn root_on_tmpfs_for_containers() -> Result<(), String> {
    if Path::new(ON_TMPFS).exists() {
        return Ok(());
    }
    let _ = std::fs::create_dir_all("/proc");
    mount("proc", "/proc", "proc", 0, "").map_err(|e| format!("mount proc: {e}"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // SAFETY: umount2 of a path we mounted.
    unsafe { libc::umount2(c"/proc".as_ptr(), 0) };
    let wants_containers = param(&cmdline, "leash.suite").is_some_and(|s| s.split(',').any(|n| n == "node"));
    if !wants_containers {
        return Ok(());
    }
    std::fs::create_dir_all(TMPFS_ROOT).map_err(|e| e.to_string())?;
    mount("tmpfs", TMPFS_ROOT, "tmpfs", 0, "mode=0755").map_err(|e| format!("mount tmpfs: {e}"))?;
    move_tree(Path::new("/"), Path::new(TMPFS_ROOT))?;
    std::fs::write(format!("{TMPFS_ROOT}{ON_TMPFS}"), "").map_err(|e| e.to_string())?;
    let c = |s: &str| CString::new(s).expect("no NUL");
    // SAFETY: plain chdir/mount/chroot calls with valid NUL-terminated paths.
    unsafe {
        if libc::chdir(c(TMPFS_ROOT).as_ptr()) != 0
            || libc::mount(c(".").as_ptr(), c("/").as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) != 0
            || libc::chroot(c(".").as_ptr()) != 0
            || libc::chdir(c("/").as_ptr()) != 0
        {
            return Err(format!("switching root: {}", std::io::Error::last_os_error()));
        }
    }
    use std::os::unix::process::CommandExt as _;
    Err(format!("exec /init: {}", Command::new("/init").exec()))
}

/// Copies the tree at `from` into `to` (files, directories, symlinks, device nodes), removing
/// each file once copied so that the image is not held twice in memory.
fn move_tree(from: &Path, to: &Path) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let source = entry.path();
        if source == Path::new(TMPFS_ROOT) {
            continue;
        }
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&source).map_err(|e| e.to_string())?;
        let kind = meta.file_type();
        let err = |e: std::io::Error| format!("{}: {e}", source.display());
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(err)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err)?;
            move_tree(&source, &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source).map_err(err)?, &target).map_err(err)?;
        } else if kind.is_char_device() || kind.is_block_device() {
            let path = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: mknod with a valid path and the source node's mode and device number.
            if unsafe { libc::mknod(path.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
                return Err(format!("mknod {}: {}", target.display(), std::io::Error::last_os_error()));
            }
        } else {
            std::fs::copy(&source, &target).map_err(err)?;
            let _ = std::fs::remove_file(&source);
        }
    }
    Ok(())
}

/// The checks of suite `name`.
fn suite(name: &str) -> Vec<Check> {
    match name {
        "doctor" => doctor_suite(),
        "net" => net_suite(),
        "lsm" => lsm_suite(),
        "kernel" => kernel_suite(),
        "generation" => generation_suite(),
        "daemon" => daemon_suite(),
        "syscallbench" => syscallbench_suite(),
        "node" => node::node_suite(),
        "learn" => learn::learn_suite(),
        // Boots, mounts and powers off: what the KVM probe boot needs.
        "none" => Vec::new(),
        other => {
            let other = other.to_owned();
            vec![Check::new(format!("suite:{other}"), move || Err(format!("no suite named {other}")))]
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

/// One named check: `Ok(detail)` passes, `Err(detail)` fails.
struct Check {
    name: String,
    run: Box<dyn FnOnce() -> Result<String, String>>,
}

impl Check {
    fn new(name: impl Into<String>, run: impl FnOnce() -> Result<String, String> + 'static) -> Self {
        Check { name: name.into(), run: Box::new(run) }
    }
}

/// Runs every check, printing one `LEASH-RESULT` line each; true when all passed.
fn run_checks(checks: Vec<Check>) -> bool {
    let mut all = true;
    for check in checks {
        let started = Instant::now();
        let outcome = (check.run)();
        let secs = started.elapsed().as_secs_f32();
        let (verdict, detail) = match outcome {
            Ok(d) => ("PASS", d),
            Err(d) => {
                all = false;
                ("FAIL", d)
            }
        };
        let detail = detail.replace('\n', " | ");
        println!("LEASH-RESULT {} {verdict} {detail} ({secs:.1}s)", check.name);
    }
    all
}

/// `leash doctor --json`, printed; one check per layer. Landlock may be missing before 5.13.
fn doctor_suite() -> Vec<Check> {
    let rows = match output(Command::new(LEASH).args(["doctor", "--json"])) {
        Ok(out) => {
            println!("leash doctor --json: {}", out.stdout.trim());
            match serde_json::from_str::<serde_json::Value>(&out.stdout) {
                Ok(serde_json::Value::Array(rows)) => rows,
                _ => return vec![Check::new("doctor", move || Err(format!("not a JSON array: {}", out.describe())))],
            }
        }
        Err(e) => return vec![Check::new("doctor", move || Err(e))],
    };
    let landlock_optional = kernel_before(5, 13);
    rows.into_iter()
        .map(|row| {
            let layer = row["layer"].as_str().unwrap_or("?").to_owned();
            let name = format!("doctor:{}", layer.to_lowercase().replace(' ', "-"));
            Check::new(name, move || {
                let detail = row["detail"].as_str().unwrap_or("").to_owned();
                match row["available"].as_bool() {
                    Some(true) => Ok(detail),
                    Some(false) if layer == "Landlock" && landlock_optional => {
                        Ok(format!("missing, as expected before 5.13: {detail}"))
                    }
                    _ => Err(detail),
                }
            })
        })
        .collect()
}

/// The network layer: with an allow-nothing policy, the agent reaches the proxy and nothing else.
fn net_suite() -> Vec<Check> {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => return vec![Check::new("net:listener", move || Err(format!("binding 127.0.0.1:0: {e}")))],
    };
    let target = listener.local_addr().expect("listener address");
    serve_forever(listener, None);
    // Transparent mode off: a connect elsewhere is refused by the kernel (transparent_checks
    // covers the other mode).
    let policy = match write_policy(
        "allow-nothing.yaml",
        "version: 1\nnetwork:\n  transparent: false\nnetwork_policies: {}\n",
    ) {
        Ok(p) => p,
        Err(e) => return vec![Check::new("net:policy", move || Err(e))],
    };
    let target_for_transparent = target;
    let target = target.to_string();
    // Without Landlock (before 5.13) leash must refuse to start unless told to run degraded.
    let no_landlock = kernel_before(5, 13);
    let run_args = move |policy: &str| -> Vec<String> {
        let mut args = vec!["run".to_owned(), "--policy".to_owned(), policy.to_owned()];
        if no_landlock {
            args.push("--allow-degraded".into());
        }
        args.push("--".into());
        args
    };
    let (a1, a2) = (run_args(&policy), run_args(&policy));
    let (t1, t2) = (target.clone(), target);
    let mut checks = vec![
        Check::new("net:outside-reaches-listener", move || expect_probe(&[], &["tcp", &t1], "ok")),
        Check::new("net:sandbox-reaches-proxy", move || expect_probe(&strs(&a1), &["tcp", "proxy"], "ok")),
        Check::new("net:sandbox-direct-denied", move || expect_probe(&strs(&a2), &["tcp", &t2], "err EPERM")),
    ];
    checks.extend(transparent_checks(&target_for_transparent, no_landlock));
    let args = run_args(&policy);
    checks.push(Check::new("net:killed-leash-takes-a-detached-agent-process", move || killed_leash_check(&args)));
    if no_landlock {
        checks.push(Check::new("net:refuses-without-landlock", move || {
            let out = output(Command::new(LEASH).args(["run", "--policy", &policy, "--", NETPROBE, "tcp", "proxy"]))?;
            if out.status == Some(125) && out.stdout.trim().is_empty() {
                Ok("exit 125 without --allow-degraded".into())
            } else {
                Err(format!("want exit 125 and no agent output, got {}", out.describe()))
            }
        }));
    }
    checks
}

/// SIGKILL of leash kills a process the agent detached (a session of its own, so no
/// parent-death signal reaches it): leash's watchdog empties the sandbox cgroup, with
/// `cgroup.kill` from 5.14, and before that by freezing it and signalling pid by pid.
fn killed_leash_check(run_args: &[String]) -> Result<String, String> {
    use std::io::BufRead as _;
    let mut leash = Command::new(LEASH)
        .args(run_args)
        .args([LSM_PROBE, "--detached-hold", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting leash: {e}"))?;
    let mut lines = std::io::BufReader::new(leash.stdout.take().ok_or("no stdout")?).lines();
    let detached = lines
        .find_map(|l| l.ok()?.strip_prefix("DETACHED ")?.trim().parse::<i32>().ok())
        .ok_or("the agent never said which process it detached")?;
    let _ = leash.kill();
    let _ = leash.wait();
    let dead = || {
        std::fs::read_to_string(format!("/proc/{detached}/stat"))
            .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dead() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if dead() {
        Ok(format!("process {detached} died with leash"))
    } else {
        end_process(detached);
        Err(format!("process {detached}, detached by the agent, outlived a SIGKILLed leash by 10 s"))
    }
}

/// Transparent mode on this kernel (connect4/6 and sendmsg4/6 rewriting, recvmsg4/6 restoring
/// the resolver's address; with BPF-LSM, the baseline's proxy-only rule letting redirected
/// sockets through): a direct GET to an allowed address arrives through the proxy, one to an
/// unlisted address does not; DNS to a loopback resolver address is answered by leash, for
/// allowed names only, shown as from the address asked (nothing listens there).
fn transparent_checks(unlisted: &std::net::SocketAddr, no_landlock: bool) -> Vec<Check> {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => return vec![Check::new("net:transparent-listener", move || Err(format!("binding: {e}")))],
    };
    let allowed = listener.local_addr().expect("listener address");
    serve_forever(listener, Some("transparent-ok".into()));
    let yaml = format!(
        "version: 1\nnetwork:\n  transparent: true\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      \
         - {{ host: 127.0.0.1, port: {}, protocol: rest, access: full, allowed_ips: [127.0.0.0/8] }}\n      \
         - {{ host: allowed.test, port: 443 }}\n",
        allowed.port()
    );
    let policy = match write_policy("transparent.yaml", &yaml) {
        Ok(p) => p,
        Err(e) => return vec![Check::new("net:transparent-policy", move || Err(e))],
    };
    let probe = move |name: &'static str, args: Vec<String>, want: String| {
        let policy = policy.clone();
        Check::new(name, move || {
            let mut cmd = Command::new(LEASH);
            cmd.args(["run", "--policy", &policy]);
            if no_landlock {
                cmd.arg("--allow-degraded");
            }
            let out = output(cmd.arg("--").arg(NETPROBE).args(&args))?;
            match out.stdout.lines().find(|l| l.starts_with("GET") || l.starts_with("dns")) {
                Some(line) if line.trim() == want => Ok(format!("netprobe {} -> {line}", args.join(" "))),
                _ => Err(format!("netprobe {}: want {want:?}, got {}", args.join(" "), out.describe())),
            }
        })
    };
    let resolver = "127.0.0.153:53".to_owned();
    vec![
        probe(
            "net:transparent-allowed",
            vec!["direct-get".into(), allowed.to_string()],
            "GET 200 transparent-ok".into(),
        ),
        probe("net:transparent-unlisted", vec!["direct-get".into(), unlisted.to_string()], "GET 0".into()),
        probe(
            "net:transparent-dns-allowed",
            vec!["dns".into(), resolver.clone(), "allowed.test".into()],
            "dns rcode=0 answers=1 from=127.0.0.153".into(),
        ),
        probe(
            "net:transparent-dns-refused",
            vec!["dns".into(), resolver, "c2VjcmV0.exfil.test".into()],
            "dns rcode=3 answers=0 from=127.0.0.153".into(),
        ),
    ]
}

/// The BPF-LSM layer, through `lsm_probe` (leash run does not use it yet): each denial inside a
/// registered cgroup, the same action outside it. The probe prints the `LEASH-RESULT` lines; each
/// becomes a check here.
fn lsm_suite() -> Vec<Check> {
    let out = match output(&mut Command::new(LSM_PROBE)) {
        Ok(out) => out,
        Err(e) => return vec![Check::new("lsm:probe", move || Err(e))],
    };
    let mut checks = Vec::new();
    for line in out.stdout.lines() {
        let Some(rest) = line.strip_prefix("LEASH-RESULT ") else {
            println!("{line}");
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (name, verdict, detail) = (
            parts.next().unwrap_or("lsm:?").to_owned(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_owned(),
        );
        let pass = verdict == "PASS";
        checks.push(Check::new(name, move || if pass { Ok(detail) } else { Err(detail) }));
    }
    // A probe that died, or exited non-zero without saying which check failed, fails the suite.
    if checks.is_empty() || (out.status != Some(0) && !out.stdout.contains(" FAIL ")) {
        let what = out.describe();
        checks.push(Check::new("lsm:probe", move || Err(format!("lsm_probe: {what}"))));
    }
    checks
}

/// One set of BPF-LSM links per host, whatever the number of sandboxes, and none without one:
/// counts the kernel's links to leash's LSM programs with 0, 1 and 16 `leash run` sandboxes
/// alive (each with a `kernel:` policy), and after they ended.
fn generation_suite() -> Vec<Check> {
    const POLICY: &str = "/tmp/generation-policy.yaml";
    const K: usize = 16;
    if let Err(e) = std::fs::write(POLICY, "version: 1\nkernel:\n  deny: [ptrace, bpf]\n") {
        return vec![Check::new("generation:policy", move || Err(e.to_string()))];
    }
    let before = lsm_links();
    let start = || {
        Command::new(LEASH)
            .args(["run", "--quiet", "--allow-degraded", "--policy", POLICY, "--", LSM_PROBE, "--hold", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut runs = Vec::new();
    let mut counts = Vec::new();
    for k in [1, K] {
        while runs.len() < k {
            match start() {
                Ok(child) => runs.push(child),
                Err(e) => return vec![Check::new("generation:start", move || Err(e.to_string()))],
            }
        }
        // Each run is registered once its agent holds (the LSM programs are attached by then).
        let deadline = Instant::now() + Duration::from_secs(60);
        while holding_agents() < k && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        counts.push((k, holding_agents(), lsm_links()));
    }
    for run in &runs {
        // SAFETY: plain kill(2) of a child of ours.
        unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    }
    for mut run in runs {
        let _ = run.wait();
    }
    let hooks = generation_lsm_programs();
    // A kernel that cannot attach a detached LSM program again (5.10) keeps the links once a
    // sandbox (of this suite or an earlier one) had them attached.
    let sticky = std::fs::read_dir("/sys/fs/bpf/leash")
        .into_iter()
        .flatten()
        .flatten()
        .any(|g| g.path().join("lsm-sticky").is_dir());
    let kept = if sticky { hooks } else { 0 };
    // The kernel frees an unpinned link after its last descriptor closes, not always by the time
    // the process holding it has been reaped: give it a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = lsm_links();
    while after != kept && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = lsm_links();
    }
    let mut checks = vec![Check::new("generation:none-before", move || {
        let detail = format!("{before} leash LSM links before any sandbox (sticky kernel: {sticky})");
        if before == 0 || before == kept {
            Ok(detail)
        } else {
            Err(detail)
        }
    })];
    for (k, holding, links) in counts {
        checks.push(Check::new(format!("generation:links-with-{k}"), move || {
            let detail =
                format!("{k} sandboxes ({holding} agents holding): {links} leash LSM links, {hooks} LSM programs");
            if holding == k && links == hooks && hooks > 0 {
                Ok(detail)
            } else {
                Err(detail)
            }
        }));
    }
    checks.push(Check::new("generation:none-after", move || {
        let detail = format!("{after} leash LSM links after the sandboxes ended (sticky kernel: {sticky})");
        if after == kept {
            Ok(detail)
        } else {
            Err(detail)
        }
    }));
    checks
}

/// The kernel's links to programs named `leash_lsm_*` (the probe program excepted).
fn lsm_links() -> usize {
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .collect();
    aya::programs::loaded_links()
        .filter_map(|l| l.ok())
        .filter(|l| names.get(&l.program_id()).is_some_and(|n| n.starts_with("leash_lsm") && n != "leash_lsm_probe"))
        .count()
}

/// The LSM programs the host's generation verified (pinned under `progs/`).
fn generation_lsm_programs() -> usize {
    let Ok(generations) = std::fs::read_dir("/sys/fs/bpf/leash") else { return 0 };
    generations
        .flatten()
        .filter(|g| g.file_name().to_string_lossy().starts_with("gen-"))
        .flat_map(|g| std::fs::read_dir(g.path().join("progs")).into_iter().flatten().flatten())
        .filter(|p| p.file_name().to_string_lossy().starts_with("leash_lsm_"))
        .count()
}

/// How many `lsm_probe --hold` agents run.
fn holding_agents() -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .flatten()
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"lsm_probe")) && args.get(1) == Some(&&b"--hold"[..])
            })
        })
        .count()
}

/// `leash run` with a `kernel:` policy: the unprivileged agent (`lsm_probe --agent`) tries each
/// forbidden thing; each must fail, and the BPF-LSM denials must appear in the audit log. Some
/// attempts are stopped earlier by another layer (DAC, seccomp, Landlock); those are checked for
/// failure only.
fn kernel_suite() -> Vec<Check> {
    const AUDIT: &str = "/tmp/kernel-audit.jsonl";
    let prepared = kernel_fixtures();
    let (host, other, outside, policy) = match prepared {
        Ok(p) => p,
        Err(e) => return vec![Check::new("kernel:fixtures", move || Err(e))],
    };
    // 5.10: no Landlock and no userns_create hook; both are reported and run degraded.
    let degraded = kernel_before(6, 1);
    let mut args = vec!["run".to_owned(), "--policy".into(), policy, "--audit-log".into(), AUDIT.into()];
    if degraded {
        args.push("--allow-degraded".into());
    }
    args.extend(["--".into(), LSM_PROBE.into(), "--agent".into(), outside.to_string()]);
    let late = bind_when_agent_started(LATE_SOCKET);
    let out = output(Command::new(LEASH).args(&args));
    drop(late);
    let baseline = baseline_unix_checks(degraded);
    // The control: the same passed-in sockets, used outside any sandbox, reach the host.
    let control = fd_control("kernel");
    end_process(outside);
    drop((host, other));
    let out = match out {
        Ok(o) => o,
        Err(e) => return vec![Check::new("kernel:run", move || Err(e))],
    };
    let audit = std::fs::read_to_string(AUDIT).unwrap_or_default();
    let mut checks = match agent_checks("kernel", &out, degraded, true) {
        Ok(checks) => checks,
        Err(failed) => return std::iter::once(failed).chain(control).collect(),
    };
    if degraded {
        let reported =
            out.stderr.contains("not enforced: syscall policy (BPF-LSM)") && out.stderr.contains("userns_create");
        let detail = "leash reports the missing userns_create hook as not enforced".to_owned();
        checks.push(Check::new("kernel:degraded-reported", move || if reported { Ok(detail) } else { Err(detail) }));
    }
    checks.extend(control);
    checks.extend(baseline);
    // Transparent mode under BPF-LSM: the agent's own connect elsewhere reached the proxy (the
    // baseline's proxy-only rule let it through to the redirect) and was refused there.
    let redirected = audit
        .lines()
        .any(|l| l.contains("\"client_mode\":\"redirected\"") && l.contains(":47002") && l.contains("\"status_id\":2"));
    checks.push(Check::new("kernel:transparent-connect-refused-by-proxy", move || {
        if redirected {
            Ok("the redirected connect to 127.0.0.1:47002 was refused by the proxy (audit)".into())
        } else {
            Err("no audit line of a refused redirected connect to 127.0.0.1:47002".into())
        }
    }));
    // Denials made by the BPF-LSM programs themselves (not by DAC, seccomp or Landlock first).
    let mut hooks = vec![
        "lsm_bprm_check_security",
        "lsm_file_open",
        "lsm_socket_connect",
        "lsm_socket_sendmsg",
        "lsm_unix_stream_connect",
        "lsm_mmap_file",
        "lsm_file_mprotect",
    ];
    if degraded {
        // With Landlock (5.13+), its own mount hook refuses first.
        hooks.push("lsm_mount");
    } else {
        hooks.push("lsm_userns_create");
    }
    if kernel_before(6, 12) {
        // From 6.12 Landlock's signal scoping refuses the signal before the BPF-LSM hook runs.
        hooks.push("lsm_task_kill");
    }
    for hook in hooks {
        let count = audit.lines().filter(|l| l.contains(&format!("\"hook\":\"{hook}\""))).count();
        let detail = format!("{count} audit records from {hook}");
        checks.push(Check::new(
            format!("kernel:audit-{hook}"),
            move || {
                if count > 0 {
                    Ok(detail)
                } else {
                    Err(detail)
                }
            },
        ));
    }
    checks.extend(rotation::leash_run_checks());
    checks
}

/// A host unix socket at `path` (mode 0777), bound once a process of a leash sandbox runs in a
/// mount namespace of its own: after leash looked for host sockets to cover, so only BPF-LSM
/// stands between the agent and this one. Held until dropped.
struct LateSocket {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LateSocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind_when_agent_started(path: &'static str) -> LateSocket {
    use std::sync::atomic::Ordering;
    let _ = std::fs::remove_file(path);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let host_ns = std::fs::read_link("/proc/1/ns/mnt").ok();
        let mut listener = None;
        while !stopped.load(Ordering::Relaxed) {
            if listener.is_none() {
                let started = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("leash-")
                        && std::fs::read_to_string(e.path().join("cgroup.procs")).is_ok_and(|procs| {
                            procs.lines().any(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() != host_ns)
                        })
                });
                if started {
                    listener = std::os::unix::net::UnixListener::bind(path).ok();
                    set_mode(path, 0o777);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    LateSocket { stop, thread: Some(thread) }
}

/// `leash run` with a policy without `kernel:` (the baseline): a host socket bound after the
/// agent started is refused by BPF-LSM, the agent's own sockets work.
fn baseline_unix_checks(degraded: bool) -> Vec<Check> {
    let policy = match write_policy("baseline.yaml", "version: 1\nnetwork_policies: {}\n") {
        Ok(p) => p,
        Err(e) => return vec![Check::new("kernel:baseline-policy", move || Err(e))],
    };
    let mut args = vec!["run", "--policy", &policy];
    if degraded {
        args.push("--allow-degraded");
    }
    args.extend(["--", LSM_PROBE, "--unix-agent"]);
    let late = bind_when_agent_started(LATE_SOCKET);
    let out = output(Command::new(LEASH).args(&args));
    drop(late);
    let out = match out {
        Ok(o) => o,
        Err(e) => return vec![Check::new("kernel:baseline-run", move || Err(e))],
    };
    let want = [
        ("unix-connect-host", "ECONNREFUSED"),
        ("unix-connect-host-bound-later", "EPERM"),
        ("unix-connect-own", "ok"),
        ("unix-sendto-own", "ok"),
        ("exec-copy", "ok"),
    ];
    outcome_checks("kernel:baseline", &out, &want)
}

/// One check `<prefix>-<name>` per (name, outcome) of `want` against the `AGENT <name> <outcome>`
/// lines of `out`.
fn outcome_checks(prefix: &str, out: &Output, want: &[(&str, &str)]) -> Vec<Check> {
    want.iter()
        .map(|&(name, want)| {
            let got = out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("AGENT {name} ")).map(str::to_owned))
                .unwrap_or_else(|| format!("missing ({})", out.describe()));
            let pass = got == want;
            let detail =
                if pass { format!("{got} (want {want})") } else { format!("{got} (want {want}); {}", out.describe()) };
            Check::new(format!("{prefix}-{name}"), move || if pass { Ok(detail) } else { Err(detail) })
        })
        .collect()
}

/// `lsm_probe --fd-client` as root outside any sandbox: each use of the passed-in sockets works.
fn fd_control(suite: &'static str) -> Vec<Check> {
    let out = output(Command::new(LSM_PROBE).arg("--fd-client"));
    let text = match out {
        Ok(o) => o.stdout,
        Err(e) => return vec![Check::new("kernel:control-fd-client", move || Err(e))],
    };
    ["passed-fds-received", "passed-tcp-send", "passed-udp-sendto", "passed-tcp-connect"]
        .into_iter()
        .map(|name| {
            let ok = text.lines().any(|l| l == format!("AGENT {name} ok"));
            let detail = format!("outside a sandbox: {name} {}", if ok { "ok" } else { "did not succeed" });
            Check::new(format!("{suite}:control-{name}"), move || if ok { Ok(detail) } else { Err(detail) })
        })
        .collect()
}

/// The kernel suite again, through the node daemon: `leash daemon` (BPF-LSM attached once for
/// the VM), a fake pod's container cgroup, and `leash confine` as nobody running the same agent.
/// On a kernel without a hook the policy needs (5.10: `userns_create`) the daemon must refuse.
fn daemon_suite() -> Vec<Check> {
    const SOCKET: &str = "/run/leash-daemon.sock";
    let (host, other, outside, policy) = match kernel_fixtures() {
        Ok(p) => p,
        Err(e) => return vec![Check::new("daemon:fixtures", move || Err(e))],
    };
    // `leash confine` makes no mount namespace: the late socket may as well be bound now.
    let late = std::os::unix::net::UnixListener::bind(LATE_SOCKET);
    set_mode(LATE_SOCKET, 0o777);
    let setup = (|| -> Result<(std::process::Child, String), String> {
        std::fs::create_dir_all("/tmp/daemon-policies").map_err(|e| e.to_string())?;
        // The kernel suite's policy, with the rotated files' paths listed too.
        let text = std::fs::read_to_string(&policy).map_err(|e| e.to_string())?;
        let listed = format!("deny_open: [{SECRET}, {}]", rotation::DENY_OPEN);
        let text = text.replace(&format!("deny_open: [{SECRET}]"), &listed);
        if !text.contains(&listed) {
            return Err("the kernel policy has no deny_open list to extend".into());
        }
        std::fs::write("/tmp/daemon-policies/default.yaml", text).map_err(|e| e.to_string())?;
        // A cgroupfs-driver containerd container of a burstable pod.
        let container =
            format!("/sys/fs/cgroup/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{}", "ab".repeat(32));
        std::fs::create_dir_all(&container).map_err(|e| format!("fake pod cgroup: {e}"))?;
        let mut daemon = Command::new(LEASH)
            .args([
                "daemon",
                "--socket",
                SOCKET,
                "--policies",
                "/tmp/daemon-policies",
                "--state-dir",
                "/run/leash-state",
            ])
            .args(["--default-policy", "default", "--gc-interval-ms", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting leash daemon: {e}"))?;
        let mut err = BufReader::new(daemon.stderr.take().ok_or("no stderr")?);
        let mut log = String::new();
        while !log.contains("serving the Confine API") {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                return Err(format!("leash daemon exited: {log}"));
            }
            log.push_str(&line);
        }
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
        });
        Ok((daemon, container))
    })();
    let (mut daemon, container) = match setup {
        Ok(d) => d,
        Err(e) => return vec![Check::new("daemon:start", move || Err(e))],
    };
    // 5.10 has no Landlock: leash confine refuses to start without it unless told.
    let no_landlock = !std::fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|l| l.contains("landlock"));
    let refusal = no_landlock.then(|| output(confine_as_nobody(&container, SOCKET).args(["--", "/usr/bin/true"])));
    let out =
        output(confine_as_nobody(&container, SOCKET).args(no_landlock.then_some("--allow-degraded")).arg("--").args([
            LSM_PROBE,
            "--agent",
            &outside.to_string(),
        ]));
    let control = fd_control("daemon");
    // The daemon follows a pod's replaced files (5.10: it refuses the policy, checked below).
    let rotation = (!kernel_before(6, 1)).then(|| rotation::confine_checks(&container, SOCKET));
    let baseline = daemon_baseline_checks(&container, no_landlock);
    let _ = daemon.kill();
    let _ = daemon.wait();
    end_process(outside);
    drop((host, other));
    let out = match out {
        Ok(o) => o,
        Err(e) => return vec![Check::new("daemon:confine", move || Err(e))],
    };
    let landlock_check = refusal.map(|r| {
        Check::new("daemon:refuses-without-landlock", move || {
            let r = r?;
            let detail = r.describe();
            if r.status == Some(125) && r.stderr.contains("Landlock") {
                Ok(detail)
            } else {
                Err(detail)
            }
        })
    });
    if kernel_before(6, 1) {
        // No userns_create hook: the policy cannot be enforced whole, and the daemon says no.
        let refused = out.status == Some(125) && out.stderr.contains("userns_create");
        let detail = out.describe();
        let mut checks =
            vec![Check::new("daemon:refuses-missing-hook", move || if refused { Ok(detail) } else { Err(detail) })];
        checks.extend(landlock_check);
        checks.extend(baseline);
        return checks;
    }
    drop(late);
    let mut checks = agent_checks("daemon", &out, false, false).unwrap_or_else(|failed| vec![failed]);
    checks.extend(control);
    checks.extend(rotation.into_iter().flatten());
    checks.extend(baseline);
    checks
}

/// `leash confine --socket SOCKET` as nobody in the fake pod's container cgroup `container`
/// (through `podclient`); the caller adds `-- COMMAND`.
fn confine_as_nobody(container: &str, socket: &str) -> Command {
    let mut cmd = Command::new("/bin/podclient");
    cmd.args(["--cgroup", container, "exec", "65534", "--", LEASH, "confine", "--socket", socket]);
    cmd
}

/// The node's policy without `kernel:` (the daemon reloads it): the baseline holds under
/// `leash confine` too. There is no mount namespace there, so a host socket the pod can see (a
/// docker.sock mounted into it) is refused by BPF-LSM; the agent's own sockets work.
fn daemon_baseline_checks(container: &str, no_landlock: bool) -> Vec<Check> {
    const SOCKET: &str = "/run/leash-daemon.sock";
    if let Err(e) = std::fs::write("/tmp/daemon-policies/default.yaml", "version: 1\nnetwork_policies: {}\n") {
        return vec![Check::new("daemon:baseline-policy", move || Err(e.to_string()))];
    }
    // The daemon looks at its policies every 100 ms (--gc-interval-ms), slower under emulation:
    // until the new one is in force a copied binary is refused (the old one's exec list).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = output(
            Command::new("/bin/podclient")
                .args(["--cgroup", container, "exec", "65534", "--", LEASH, "confine", "--socket", SOCKET])
                .args(no_landlock.then_some("--allow-degraded"))
                .args(["--", LSM_PROBE, "--unix-agent"]),
        );
        let reloaded = out.as_ref().is_ok_and(|o| o.stdout.contains("AGENT exec-copy ok"));
        if reloaded || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return vec![Check::new("daemon:baseline-confine", move || Err(e))],
    };
    let want = [
        ("unix-connect-host", "EPERM"),
        ("unix-connect-host-bound-later", "EPERM"),
        ("unix-connect-own", "ok"),
        ("unix-sendto-own", "ok"),
        // The reloaded policy is the one in force: it has no exec list.
        ("exec-copy", "ok"),
    ];
    outcome_checks("daemon:baseline", &out, &want)
}

/// One check per attempt `lsm_probe --agent` reported (`AGENT <name> <outcome>` lines) against
/// [`agent_expectations`]; the failed check `<suite>:agent-ran` when it reported nothing.
fn agent_checks(suite: &str, out: &Output, degraded: bool, own_mounts: bool) -> Result<Vec<Check>, Check> {
    let outcomes: std::collections::HashMap<String, String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("AGENT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if outcomes.is_empty() {
        let what = out.describe();
        return Err(Check::new(format!("{suite}:agent-ran"), move || Err(format!("no AGENT lines: {what}"))));
    }
    Ok(agent_expectations(degraded, own_mounts)
        .into_iter()
        .map(|(name, want)| {
            let got = outcomes.get(name).cloned().unwrap_or_else(|| "missing".into());
            let pass = want.contains(&got.as_str());
            let detail = format!("{got} (want {})", want.join(" or "));
            Check::new(format!("{suite}:{name}"), move || if pass { Ok(detail) } else { Err(detail) })
        })
        .collect())
}

/// Kills and reaps child `pid`.
fn end_process(pid: i32) {
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The kernel suite's fixtures live outside `/tmp` and `/run`, which are private to the agent
/// under `leash run`.
const FIXTURES: &str = "/var/leash-kernel";
const SECRET: &str = "/var/leash-kernel/secret";
const HOST_SOCKET: &str = "/var/leash-kernel/host-agent.sock";
const LATE_SOCKET: &str = "/var/leash-kernel/late.sock";

/// The kernel suite's fixtures: a secret with a hard link and a symlink, a unix socket and a TCP
/// listener of the host, a process of the agent's uid outside the sandbox, and the policy.
fn kernel_fixtures() -> Result<(std::os::unix::net::UnixListener, TcpListener, i32, String), String> {
    std::fs::create_dir_all(FIXTURES).map_err(|e| format!("{FIXTURES}: {e}"))?;
    set_mode(FIXTURES, 0o755);
    let (link, symlink) = (format!("{FIXTURES}/secret-link"), format!("{FIXTURES}/secret-symlink"));
    for p in [SECRET, &link, &symlink, HOST_SOCKET, LATE_SOCKET, "/tmp/kernel-audit.jsonl"] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(SECRET, "token\n").map_err(|e| format!("secret: {e}"))?;
    set_mode(SECRET, 0o644);
    std::fs::hard_link(SECRET, &link).map_err(|e| format!("hard link: {e}"))?;
    std::os::unix::fs::symlink(SECRET, &symlink).map_err(|e| format!("symlink: {e}"))?;
    let host = std::os::unix::net::UnixListener::bind(HOST_SOCKET).map_err(|e| format!("host socket: {e}"))?;
    set_mode(HOST_SOCKET, 0o777);
    let other = TcpListener::bind("127.0.0.1:47002").map_err(|e| format!("listener: {e}"))?;
    fd_passer()?;
    // A process of the agent's own uid outside the sandbox, for kill and ptrace.
    // SAFETY: the child only drops to nobody and pauses until killed.
    let outside = unsafe { libc::fork() };
    if outside == 0 {
        // SAFETY: as above.
        unsafe {
            libc::setgid(65534);
            libc::setuid(65534);
            loop {
                libc::pause();
            }
        }
    }
    let policy = write_policy(
        "kernel.yaml",
        &format!(
            // A `binaries:` rule (for an address nothing listens on): no process of the sandbox
            // may then attach to another.
            "version: 1\nnetwork_policies:\n  probe_only:\n    name: probe_only\n    endpoints: [{{ host: 127.0.0.1, port: 47009, protocol: tcp }}]\n    binaries: [{{ path: /bin/lsm_probe }}]\nkernel:\n  exec: {{ allow: [/bin/lsm_probe, /usr/bin/true] }}\n  deny_open: [{SECRET}]\n  unix: {{ allow: [{FD_PASSER}] }}\n  deny: [ptrace, bpf, mount, userns, perf_event, raw_socket, packet_socket, kill_outside, kernel_module]\n"
        ),
    )?;
    Ok((host, other, outside, policy))
}

const FD_PASSER: &str = "/var/leash-fdpass/pass.sock";

/// A root helper outside any sandbox on [`FD_PASSER`] (which the kernel policy lists): to each
/// caller it passes, over `SCM_RIGHTS`, a TCP socket connected to the host's listener on 47002,
/// a UDP socket and an unconnected TCP socket — sockets created outside the sandbox.
fn fd_passer() -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let dir = std::path::Path::new(FD_PASSER).parent().ok_or("no parent")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("fd passer dir: {e}"))?;
    let _ = std::fs::remove_file(FD_PASSER);
    let listener = std::os::unix::net::UnixListener::bind(FD_PASSER).map_err(|e| format!("fd passer: {e}"))?;
    set_mode(FD_PASSER, 0o777);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sockets = (|| -> std::io::Result<_> {
                let tcp = std::net::TcpStream::connect("127.0.0.1:47002")?;
                let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let unconnected = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Stream,
                    nix::sys::socket::SockFlag::empty(),
                    None,
                )?;
                Ok((tcp, udp, unconnected))
            })();
            let Ok((tcp, udp, unconnected)) = sockets else { continue };
            let fds = [tcp.as_raw_fd(), udp.as_raw_fd(), unconnected.as_raw_fd()];
            let iov = [std::io::IoSlice::new(b"s")];
            let _ =
                sendmsg::<()>(stream.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None);
        }
    });
    Ok(())
}

/// What each attempt of `lsm_probe --agent` must end in under the kernel suite's policy;
/// `own_mounts` when the agent has leash run's mount namespace (not under `leash confine`).
fn agent_expectations(degraded: bool, own_mounts: bool) -> Vec<(&'static str, &'static [&'static str])> {
    let denied: &'static [&'static str] = &["EPERM", "EACCES"];
    vec![
        ("copy-self", &["ok"]),
        ("exec-listed", &["ok"]),
        ("exec-copy", &["EPERM"]),
        ("exec-memfd", &["EPERM"]),
        ("exec-via-ld.so", &["EPERM"]),
        ("open-secret", &["EPERM"]),
        ("open-secret-hardlink", &["EPERM"]),
        ("open-secret-symlink", &["EPERM"]),
        ("open-other", &["ok"]),
        ("kill-outside", &["EPERM"]),
        ("kill-leash", denied),
        ("ptrace-outside", denied),
        // The policy has a `binaries:` rule: not even the agent's own child.
        ("ptrace-own-child", denied),
        // leash run's agent has a procfs of its own, which shows leash not at all.
        ("read-leash-environ", if own_mounts { &["ENOENT"] } else { denied }),
        // Bound before the agent started: covered with /dev/null in leash run's mount namespace.
        ("unix-connect-host", if own_mounts { &["ECONNREFUSED"] } else { &["EPERM"] }),
        ("unix-connect-host-bound-later", &["EPERM"]),
        ("unix-connect-own", &["ok"]),
        ("unix-sendto-own", &["ok"]),
        // Transparent mode (the policies do not turn it off): the connect is redirected to the
        // proxy, which refuses it (checked in leash run's audit log).
        ("tcp-connect-not-proxy", &["ok"]),
        // Before 6.1 there is no hook: leash says so (checked below) and the agent may.
        ("userns-create", if degraded { &["ok", "EPERM"] } else { denied }),
        ("mount-tmpfs", denied),
        ("bpf-map-create", denied),
        // leash's seccomp filter answers these first (EAFNOSUPPORT, ENOSYS).
        ("packet-socket", &["EPERM", "EAFNOSUPPORT"]),
        ("io_uring-connect", &["EPERM", "ENOSYS"]),
        ("leave-cgroup", denied),
        ("double-fork-stays", &["ok"]),
        // binaries: honest: the allowed program runs, but maps no library of the agent's own.
        ("loader-env-none", &["ok"]),
        ("copy-libm", &["ok"]),
        ("ld-preload-own-library", &["EPERM"]),
        ("mmap-exec-own-file", &["EPERM"]),
        ("mprotect-exec-own-file", &["EPERM"]),
        ("mmap-exec-anonymous", &["ok"]),
        // Sockets created outside and passed in reach nothing (the proxy is elsewhere).
        ("passed-fds-received", &["ok"]),
        ("passed-tcp-send", &["EPERM"]),
        ("passed-udp-sendto", &["EPERM"]),
        ("passed-tcp-connect", &["EPERM"]),
    ]
}

/// `cargo xtask bench syscall`: runs `/bin/syscallbench`, relaying its output line by line as it
/// comes (progress, `LEASH-BENCH` lines, the table); passes when it exits 0 after its figures.
fn syscallbench_suite() -> Vec<Check> {
    vec![Check::new("bench:syscall", || {
        let mut child = Command::new("/bin/syscallbench")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting /bin/syscallbench: {e}"))?;
        let mut figures = 0;
        for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
            figures += usize::from(line.starts_with("LEASH-BENCH "));
            println!("{line}");
        }
        match child.wait().map_err(|e| e.to_string())?.code() {
            Some(0) if figures > 0 => Ok(format!("{figures} LEASH-BENCH lines")),
            status => Err(format!("syscallbench exited with {status:?} after {figures} LEASH-BENCH lines")),
        }
    })]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs netprobe (under `leash <leash_args>` when given) and compares its last stdout line.
fn expect_probe(leash_args: &[&str], probe: &[&str], want: &str) -> Result<String, String> {
    let mut cmd = if leash_args.is_empty() {
        Command::new(NETPROBE)
    } else {
        let mut c = Command::new(LEASH);
        c.args(leash_args).arg(NETPROBE);
        c
    };
    cmd.args(probe);
    let out = output(&mut cmd)?;
    let last = out.stdout.lines().last().unwrap_or("").trim();
    if last == want {
        Ok(format!("netprobe {} -> {last}", probe.join(" ")))
    } else {
        Err(format!("netprobe {}: want {want:?}, got {}", probe.join(" "), out.describe()))
    }
}

/// Writes a policy under /tmp (mode 0644 so the sandboxed user can read it too).
fn write_policy(name: &str, yaml: &str) -> Result<String, String> {
    let path = format!("/tmp/{name}");
    std::fs::write(&path, yaml).map_err(|e| format!("writing {path}: {e}"))?;
    set_mode(&path, 0o644);
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// `xtask run`: one command under `leash run`

/// Runs `/etc/leash-vm/argv` (NUL-separated) under `leash run` with the policy the image carries,
/// in the shared project directory, with demo listeners up. Returns leash's exit status.
fn run_command() -> i32 {
    let argv: Vec<String> = std::fs::read(format!("{CONFIG_DIR}/argv"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default();
    if argv.is_empty() {
        println!("vm_init: {CONFIG_DIR}/argv is empty");
        return 125;
    }
    let cwd = read_config("cwd").unwrap_or_else(|| "/".into());
    if let Some(share) = read_config("share") {
        mount_share(&share);
    }
    // Two local services the demo talks to: one the demo policy allows, one it does not.
    for port in [8080u16, 8081] {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => serve_forever(l, Some(format!("hello from 127.0.0.1:{port}\n"))),
            Err(e) => println!("vm_init: cannot listen on 127.0.0.1:{port}: {e}"),
        }
    }
    let policy = format!("{CONFIG_DIR}/policy.yaml");
    let audit = "/tmp/leash-audit.jsonl";
    let mut leash_args = vec!["run", "--policy", &policy, "--audit-log", audit];
    if kernel_before(5, 13) {
        println!("vm_init: this kernel has no Landlock: adding --allow-degraded");
        leash_args.push("--allow-degraded");
    }
    println!("vm_init: leash {} -- {}", leash_args.join(" "), argv.join(" "));
    let status = Command::new(LEASH)
        .args(&leash_args)
        .arg("--")
        .args(&argv)
        .current_dir(if Path::new(&cwd).is_dir() { &cwd } else { "/" })
        .status();
    let code = match status {
        Ok(s) => s.code().unwrap_or(128),
        Err(e) => {
            println!("vm_init: starting {LEASH}: {e}");
            125
        }
    };
    // The audit trail: one short line each on the terminal, the JSON in the console log.
    if let Ok(text) = std::fs::read_to_string(audit) {
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            match event["message"].as_str() {
                Some(message) => println!("audit: {message}"),
                None => println!("audit: {line}"),
            }
            println!("LEASH-AUDIT {line}");
        }
    }
    code
}

/// Mounts the project directory xtask shares over virtiofs (tag `leash`) at `path`.
fn mount_share(path: &str) {
    if let Err(e) = std::fs::create_dir_all(path) {
        println!("vm_init: creating {path}: {e}");
    }
    match mount("leash", path, "virtiofs", libc::MS_RDONLY, "") {
        Ok(()) => println!("vm_init: {path} mounted read-only from the host"),
        Err(e) => println!("vm_init: mounting the shared project directory at {path}: {e}"),
    }
}

fn read_config(name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("{CONFIG_DIR}/{name}")).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

// ---------------------------------------------------------------------------------------------
// System setup

/// Mounts filesystems, loads modules and brings `lo` up; the result is the `boot:setup` check.
fn prepare_system() -> Check {
    let mut problems = Vec::new();
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 9] = [
        ("proc", "/proc", "proc", 0, ""),
        ("sysfs", "/sys", "sysfs", 0, ""),
        ("devtmpfs", "/dev", "devtmpfs", 0, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", 0, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", 0, "mode=0755"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, ""),
        ("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"),
        ("securityfs", "/sys/kernel/security", "securityfs", 0, ""),
        ("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(source, target, fstype, flags, data) {
            // tracefs is a convenience for debugging; everything else leash needs.
            if fstype != "tracefs" {
                problems.push(format!("mount {fstype} on {target}: {e}"));
            }
        }
    }
    for dir in ["/dev/pts", "/dev/shm"] {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = mount("devpts", "/dev/pts", "devpts", 0, "mode=0620,ptmxmode=0666");
    let _ = mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777");
    problems.extend(load_modules());
    if let Err(e) = loopback_up() {
        problems.push(format!("bringing lo up: {e}"));
    }
    Check::new("boot:setup", move || {
        if problems.is_empty() {
            Ok("mounted proc sysfs devtmpfs tmpfs cgroup2 bpffs securityfs; lo up".into())
        } else {
            Err(problems.join("; "))
        }
    })
}

/// Loads each module named in `/etc/leash-vm/kernel-modules` (the socket diagnostics `leash run`
/// needs) and `/etc/leash-vm/modules` (what `xtask run` needs), one path per line, in dependency
/// order.
fn load_modules() -> Vec<String> {
    let list = ["kernel-modules", "modules"]
        .map(|f| std::fs::read_to_string(format!("{CONFIG_DIR}/{f}")).unwrap_or_default())
        .concat();
    let mut problems = Vec::new();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("opening module {path}: {e}"));
                continue;
            }
        };
        let params = CString::default();
        // SAFETY: finit_module reads the open file and a NUL-terminated parameter string.
        let rc = unsafe {
            libc::syscall(libc::SYS_finit_module, std::os::fd::AsRawFd::as_raw_fd(&file), params.as_ptr(), 0)
        };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            problems.push(format!("loading module {path}: {err}"));
        }
    }
    problems
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (source, target, fstype, data) = (c(source), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets IFF_UP on `lo` with SIOCGIFFLAGS/SIOCSIFFLAGS.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is valid. The name fits in IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a socket and req a valid ifreq for these two ioctls.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

fn power_off() -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: sync and reboot have no memory-safety preconditions; PID 1 may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Not PID 1 (a manual run) or no permission: just leave.
    std::process::exit(0)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Serves connections on `listener` in a thread: answers `body` (an HTTP 200) when given, else
/// just accepts and closes.
fn serve_forever(listener: TcpListener, body: Option<String>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Some(body) = body.clone() {
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(match conn.try_clone() {
                        Ok(c) => c,
                        Err(_) => return,
                    });
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        }
    });
}

/// What a finished command printed.
struct Output {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        let status = self.status.map_or("killed".to_owned(), |s| format!("exit {s}"));
        format!("{status}, stdout {:?}, stderr {:?}", self.stdout.trim(), self.stderr.trim())
    }
}

/// Runs `cmd` to completion (killing it after [`COMMAND_TIMEOUT`]) and collects its output.
fn output(cmd: &mut Command) -> Result<Output, String> {
    let what = format!("{:?}", cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            let _ = tx.send(text);
        });
        rx
    };
    let out = pipe(child.stdout.take().map(|s| Box::new(s) as _));
    let err = pipe(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {}s", COMMAND_TIMEOUT.as_secs()));
            }
        }
    };
    let wait = Duration::from_secs(5);
    Ok(Output {
        status,
        stdout: out.recv_timeout(wait).unwrap_or_default(),
        stderr: err.recv_timeout(wait).unwrap_or_default(),
    })
}

/// The value of `key=value` on the kernel command line.
fn param(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// True when the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have < (major, minor)
}

fn set_mode(path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}
