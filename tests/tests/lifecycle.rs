//! The sandbox's life: exit codes, cleanup after a normal exit, and bad input that must leave
//! nothing behind. SIGKILL of leash (the agent dies with it, the next run reaps what is left) is
//! attacked in `seams.rs`.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;

use leash_tests::*;

/// One test at a time: the cleanup checks count what every run leaves behind.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RUNS.lock().unwrap_or_else(|e| e.into_inner())
}

fn empty_policy(scratch: &Scratch) -> std::path::PathBuf {
    scratch.file("p.yaml", &policy_allowing(&[]))
}

#[test]
fn exit_status_environment_and_identity_pass_through() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("env");
    let policy = scratch.file(
        "p.yaml",
        "version: 1\nnetwork_policies: {}\ncredentials:\n  GITHUB_TOKEN: { hosts: [api.github.com] }\n",
    );
    let mut cmd = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", "id -u; env; exit 7"]);
    cmd.env("GITHUB_TOKEN", "ghp_real_secret_value");
    let out = cmd.output().expect("leash");
    assert_eq!(out.status.code(), Some(7), "the agent's exit status: {}", stderr(&out));
    let text = stdout(&out);
    let uid: u32 = text.lines().next().unwrap().trim().parse().unwrap();
    assert_ne!(uid, 0, "the agent must not run as root");
    assert!(text.contains("GITHUB_TOKEN=leash:resolve:env:GITHUB_TOKEN"), "{text}");
    assert!(
        !text.contains("ghp_real_secret_value") && !stderr(&out).contains("ghp_real_secret_value"),
        "secret leaked"
    );
    assert!(text.lines().any(|l| l.starts_with("HTTPS_PROXY=http://127.0.0.1:")), "{text}");
    assert!(text.lines().any(|l| l == "NO_PROXY="), "{text}");
}

/// The agent starts with no signal blocked and SIGPIPE at its default, whatever leash does with
/// them (it ignores SIGPIPE, and blocks every signal while it clones the agent, which shares its
/// memory until exec). What its invoker ignored, it still ignores, as with env(1).
#[test]
fn the_agent_starts_with_a_clean_signal_state() {
    require_root();
    let scratch = Scratch::new("signals");
    let policy = empty_policy(&scratch);
    let out = leash_run(&policy, &["--quiet"], &["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    let mask = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "signals blocked in the agent: {text}");
    assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored in the agent: {text}");
}

#[test]
fn a_normal_exit_leaves_no_cgroup_or_pins() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("clean");
    let policy = empty_policy(&scratch);
    let child =
        leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", "sleep 0.3"]).spawn().unwrap();
    let pid = child.id();
    assert!(wait_until(5, || !sandbox_cgroups_of(pid).is_empty()), "the sandbox cgroup never appeared");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(sandbox_cgroups_of(pid).is_empty(), "cgroup left behind: {:?}", sandbox_cgroups_of(pid));
    let bpffs = bpffs_root().expect("leash mounts bpffs");
    let pins = bpffs.join("leash/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left behind: {left:?}");
    let trust = std::path::Path::new("/run/leash");
    let left: Vec<_> = std::fs::read_dir(trust)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "CA bundle directory left behind: {left:?}");
}

/// What the agent prints of its trust files: their directory, how many certificates its bundle
/// holds, and the mount the directory is (its options, filesystem type and source).
const TRUST_REPORT: &str = "d=$(dirname \"$SSL_CERT_FILE\")\n\
     echo \"dir=$d\"\n\
     echo \"certs=$(grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\")\"\n\
     echo \"mount=$(awk -v d=\"$d\" '$5 == d' /proc/self/mountinfo)\"\n\
     echo end\n";

/// The report's fields, read from `out` up to its `end` line.
fn trust_report(out: impl std::io::BufRead) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    for line in out.lines().map_while(Result::ok).take_while(|l| l != "end") {
        if let Some((k, v)) = line.split_once('=') {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    fields
}

/// A mountinfo line's options, filesystem type and source.
fn mount_fields(line: &str) -> (Vec<&str>, &str, &str) {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let options = fields.get(5).map(|o| o.split(',').collect()).unwrap_or_default();
    let after = fields.iter().position(|f| *f == "-").map(|i| &fields[i + 1..]).unwrap_or(&[]);
    (options, after.first().copied().unwrap_or(""), after.get(1).copied().unwrap_or(""))
}

/// `leash run` writes the agent's CA bundle, certificate and truststore in a tmpfs of their own
/// that is mounted nowhere on the host: the agent finds them where its environment says, in a
/// read-only mount, while the host has no such directory, and nothing is left to remove after.
/// Under a filesystem policy, so that the agent reads them through the Landlock rule leash made
/// on that tmpfs before it was mounted.
#[test]
fn the_agents_trust_files_are_in_a_filesystem_only_its_namespace_mounts() {
    require_root();
    let scratch = Scratch::new("trust-mount");
    let policy = scratch.file(
        "p.yaml",
        &format!(
            "{}filesystem_policy: {{ read_only: [/usr, /lib, /lib64, /bin, /etc, /proc, /dev] }}\n",
            policy_allowing(&[])
        ),
    );
    let script = format!("{TRUST_REPORT}sleep 3");
    let mut child = leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let report = trust_report(std::io::BufReader::new(child.stdout.take().unwrap()));
    let dir = report.get("dir").cloned().unwrap_or_default();
    // While the agent runs.
    let on_host = std::path::Path::new(&dir).exists();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(dir.starts_with("/run/leash/"), "{report:?}");
    assert!(report.get("certs").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 0), "{report:?}");
    let (options, fs, source) = mount_fields(report.get("mount").map(String::as_str).unwrap_or(""));
    assert_eq!((fs, source), ("tmpfs", "leash"), "the trust directory is not leash's own tmpfs: {report:?}");
    assert!(options.contains(&"ro") && options.contains(&"noexec"), "{report:?}");
    assert!(!on_host, "{dir} is on the host's filesystem while the agent runs");
}

/// Starts `cmd` with fsopen(2) refused, as a seccomp profile without the new mount API would.
fn refusing_fsopen(cmd: &mut std::process::Command) -> &mut std::process::Command {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;
    const FSOPEN: u32 = 430;
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let filter = [
        stmt(load, 4),
        jump(ARCH, 0, 3),
        stmt(load, 0),
        jump(FSOPEN, 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: prctl(2) between fork and exec, with a filter the kernel copies.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
            match libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    }
}

/// Where the new mount API is refused, the trust files are written in a host directory instead,
/// which the agent finds at the same path, read-only, and which leash removes when it exits.
#[test]
fn where_the_new_mount_api_is_refused_the_trust_files_are_a_host_directory_removed_at_exit() {
    require_root();
    let scratch = Scratch::new("trust-fallback");
    let policy = empty_policy(&scratch);
    let mut cmd = leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", TRUST_REPORT]);
    let out = refusing_fsopen(&mut cmd).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = trust_report(out.stdout.as_slice());
    let dir = report.get("dir").cloned().unwrap_or_default();
    assert!(dir.starts_with("/run/leash/"), "{report:?}");
    assert!(report.get("certs").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 0), "{report:?}");
    let (options, _, source) = mount_fields(report.get("mount").map(String::as_str).unwrap_or(""));
    assert_ne!(source, "leash", "the premise: fsopen was refused, so no tmpfs of leash's: {report:?}");
    assert!(options.contains(&"ro"), "{report:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was left on the host");
}

/// Runs leash expecting failure before exec; returns stderr and checks nothing was left behind.
fn refused(cmd: &mut std::process::Command, code: i32) -> String {
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error expected, got: {err}");
    assert!(sandbox_cgroups_of(pid).is_empty(), "a refused run left a cgroup");
    let trust_dirs: Vec<_> = std::fs::read_dir("/run/leash")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(trust_dirs.is_empty(), "a refused run left its CA bundle directory: {trust_dirs:?}");
    err
}

#[test]
fn bad_input_is_refused_with_one_line_and_exit_125() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("bad");
    // A warm start first: on one, the TLS material and the trust files are being made on another
    // thread before the policy is read, and a refused start must still leave none of them.
    let out = leash_run(&empty_policy(&scratch), &[], &["/bin/true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let malformed = scratch.file("malformed.yaml", "version: 1\nnetwork_policies: [unclosed\n");
    let err = refused(&mut leash(&["run", "--policy", malformed.to_str().unwrap(), "--", "/bin/true"]), 125);
    assert!(err.contains("malformed.yaml:"), "{err}");

    let unknown = scratch.file("unknown.yaml", "version: 1\nnetwork_policies: {}\nsurprise: true\n");
    let err = refused(&mut leash(&["run", "--policy", unknown.to_str().unwrap(), "--", "/bin/true"]), 125);
    assert!(err.contains("unknown.yaml:3:") && err.contains("surprise"), "{err}");

    let root = scratch.file("root.yaml", "version: 1\nnetwork_policies: {}\nprocess: { run_as_user: root }\n");
    refused(&mut leash(&["run", "--policy", root.to_str().unwrap(), "--", "/bin/true"]), 125);

    let policy = empty_policy(&scratch);
    let err = refused(&mut leash(&["run", "--policy", policy.to_str().unwrap()]), 125);
    assert!(err.to_lowercase().contains("cmd") || err.contains("command"), "{err}");

    let mut not_root = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/true"]);
    not_root.uid(65534).gid(65534);
    let err = refused(&mut not_root, 125);
    assert!(err.contains("root"), "{err}");

    // A host without cgroup v2, simulated with a mountinfo that has no cgroup2 entry.
    let mountinfo = scratch.file("mountinfo", "25 30 0:23 / /sys rw shared:7 - sysfs sysfs rw\n");
    let mut no_cgroup2 = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/true"]);
    no_cgroup2.env("LEASH_MOUNTINFO", &mountinfo);
    let err = refused(&mut no_cgroup2, 125);
    assert!(err.contains("cgroup v2"), "{err}");
}

#[test]
fn missing_and_non_executable_commands_get_127_and_126() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("exec");
    let policy = empty_policy(&scratch);
    let out = leash_run(&policy, &[], &["/nonexistent/agent"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let script = scratch.file("not-exec.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = leash_run(&policy, &[], &[script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

#[test]
fn a_policy_needing_a_missing_layer_is_refused_unless_degraded() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("degraded");
    let policy = scratch.file("kernel.yaml", "version: 1\nnetwork_policies: {}\nkernel:\n  deny: [ptrace]\n");
    let out = leash_run(&policy, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("syscall policy (BPF-LSM)"), "{}", stderr(&out));
    let out = leash_run(&policy, &["--allow-degraded"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not enforced: syscall policy (BPF-LSM)"), "{}", stderr(&out));
}

/// Inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Inodes of the listening TCP sockets on the host (`/proc/net/tcp`, state 0A).
fn listening_inodes() -> Vec<u64> {
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// The watchdog holds the proxy's listening socket (so no one else can take the port while the
/// sandbox lives), and the agent does not: neither leash's end of the watchdog's socket nor the
/// proxy's own reaches it (the agent's start marks every descriptor above 2 close-on-exec,
/// `child.rs`).
#[test]
fn the_watchdog_holds_the_proxy_socket_and_the_agent_does_not() {
    require_root();
    let _serial = serial();
    let scratch = Scratch::new("listener");
    let policy = empty_policy(&scratch);
    let out = scratch.0.join("agent-sockets");
    let script = format!("ls -l /proc/$$/fd > {0}.tmp; mv {0}.tmp {0}; sleep 2", out.display());
    let child = leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .spawn()
        .unwrap();
    let leash_pid = child.id();
    assert!(wait_until(10, || out.exists()), "the agent never listed its descriptors");
    let watchdog = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().any(|l| l.split_whitespace().eq(["Name:", "leash-watchdog"]))
                && status.lines().any(|l| l.split_whitespace().eq(["PPid:".to_string(), leash_pid.to_string()]))
        })
        .expect("leash's watchdog is running");
    let listening = listening_inodes();
    assert!(socket_inodes(watchdog).iter().any(|i| listening.contains(i)), "the watchdog holds no listening socket");
    let agent_fds = std::fs::read_to_string(&out).unwrap();
    let agent_sockets: Vec<u64> =
        agent_fds.lines().filter_map(|l| l.split("socket:[").nth(1)?.split(']').next()?.parse().ok()).collect();
    assert!(!agent_sockets.iter().any(|i| listening.contains(i)), "the agent holds a listening socket: {agent_fds}");
    // Nor either end of the socket pair that tells the watchdog the sandbox (closing leash's end
    // is what sets the watchdog off; a copy in the agent would keep it asleep).
    let theirs: Vec<u64> = socket_inodes(watchdog).into_iter().chain(socket_inodes(leash_pid)).collect();
    assert!(!theirs.is_empty(), "leash and its watchdog hold no socket");
    assert!(!agent_sockets.iter().any(|i| theirs.contains(i)), "the agent holds a socket of leash's: {agent_fds}");
    assert!(child.wait_with_output().unwrap().status.success());
}

/// Where clone3(2) is refused (a container's default seccomp profile does), the agent still
/// starts, in its sandbox cgroup and nowhere else: it moves itself in before anything of its own
/// runs.
#[test]
fn the_agent_starts_in_its_cgroup_where_clone3_is_refused() {
    require_root();
    let _one = serial();
    let scratch = Scratch::new("no-clone3");
    let policy = empty_policy(&scratch);
    let probe = env!("CARGO_BIN_EXE_lsm_probe");
    let leash = leash_bin();
    let out = std::process::Command::new(probe)
        .arg("--no-clone3")
        .arg(&leash)
        .args(["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", "cat /proc/self/cgroup"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out).lines().find(|l| l.starts_with("0::")).map(str::to_owned).unwrap_or_default();
    assert!(line.starts_with("0::/leash-"), "the agent ran outside its sandbox cgroup: {line:?} {}", stderr(&out));
}
