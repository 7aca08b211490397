//! `lsm_probe`: checks leash's BPF-LSM programs end to end, as root inside a test VM
//! (`vm_init` suite `lsm`). It drives the library directly: it opens the host's [`Generation`], registers
//! a fresh cgroup with rules that deny every operation and set every list (exec allowlist, open
//! deny list, unix allowlist, proxy-only), and runs each action in a forked child twice — once
//! after the child moved itself into that cgroup, once outside it. Both children are root, so a
//! refusal inside comes from the LSM and not from missing capabilities. `leash run`'s own use of
//! the same programs (as an unprivileged agent) is checked by vm_init's `run` suite.
//!
//! Prints one `LEASH-RESULT lsm:<name> PASS|FAIL <detail>` line per check; vm_init relays them.
//! Expected outcome outside the cgroup, per action: success, or (where the kernel may lack the
//! family or refuse the bogus input) an error other than EPERM; see [`ACTIONS`].

use std::ffi::CString;
use std::io::Write as _;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;

use leash::kernel::cgroup::SandboxCgroup;
use leash::kernel::fs_root::FsRoot;
use leash::kernel::generation::Generation;
use leash::kernel::lsm::Registration;
use leash::kernel::lsm_rules::{add_system_libraries, FileId, LsmRules};
use leash::kernel::mounts::cgroup2_root;
use leash::kernel::programs::sandbox_net;
use sandbox_common::{lsm_deny, lsm_rule, UNIX_PATH_MAX};

/// One action: returns `Ok` or the errno it failed with. `sibling` is a process outside the
/// sandbox the action may target.
type Action = fn(sibling: i32) -> Result<(), i32>;

/// (name, action, hook that must be attached for the inside check to expect EPERM,
/// errnos acceptable outside besides success).
const ACTIONS: &[(&str, Action, &str, &[i32])] = &[
    // The family may be a module the VM cannot load (no modprobe): EAFNOSUPPORT outside.
    ("packet-socket", packet_socket, "socket_create", &[libc::EAFNOSUPPORT]),
    ("raw-socket", raw_socket, "socket_create", &[]),
    ("vsock-socket", vsock_socket, "socket_create", &[libc::EAFNOSUPPORT]),
    ("netlink-audit-socket", netlink_audit_socket, "socket_create", &[libc::EPROTONOSUPPORT]),
    ("bpf-map-create", bpf_map_create, "bpf", &[]),
    ("mount-tmpfs", mount_tmpfs, "sb_mount", &[]),
    // Software clock event; ENOENT/ENODEV if the kernel lacks perf (not under these kernels).
    ("perf-event-open", perf_event_open, "perf_event_open", &[libc::ENOENT, libc::ENODEV]),
    // A garbage "module": outside, the kernel reads it and rejects the contents (ENOEXEC et al.).
    (
        "finit-module",
        finit_module,
        "kernel_read_file",
        &[libc::ENOEXEC, libc::EINVAL, libc::EBADMSG, libc::EKEYREJECTED],
    ),
    ("init-module", init_module, "kernel_load_data", &[libc::ENOEXEC, libc::EINVAL, libc::EBADMSG, libc::EKEYREJECTED]),
    ("ptrace-attach", ptrace_attach, "ptrace_access_check", &[]),
    ("ptrace-traceme", ptrace_traceme, "ptrace_traceme", &[]),
    ("userns-create", userns_create, "userns_create", &[]),
];

/// Checks of the rules with lists and targets: (name, action, hook, errnos acceptable outside
/// besides success, whether the action is refused inside).
const RULE_ACTIONS: &[(&str, Action, &str, &[i32], bool)] = &[
    ("exec-listed", exec_listed, "bprm_check_security", &[], false),
    ("exec-dynamic-listed", exec_dynamic_listed, "bprm_check_security", &[], false),
    ("exec-unlisted-copy", exec_unlisted, "bprm_check_security", &[], true),
    ("exec-memfd", exec_memfd, "bprm_check_security", &[], true),
    ("exec-via-ld.so", exec_via_loader, "bprm_check_security", &[], true),
    ("open-deny-listed", open_secret, "file_open", &[], true),
    ("open-deny-listed-hardlink", open_secret_hardlink, "file_open", &[], true),
    ("open-deny-listed-symlink", open_secret_symlink, "file_open", &[], true),
    ("open-other-file", open_other, "file_open", &[], false),
    ("kill-outside", kill_outside, "task_kill", &[], true),
    ("kill-inside", kill_inside, "task_kill", &[], false),
    // `binaries:` rules (NO_ATTACH_INSIDE): no taking hold of the sandbox's other processes.
    ("ptrace-attach-inside", ptrace_attach_inside, "ptrace_access_check", &[], true),
    ("pidfd-getfd-inside", pidfd_getfd_inside, "ptrace_access_check", &[], true),
    ("unix-connect-unlisted", unix_connect_unlisted, "unix_stream_connect", &[], true),
    ("unix-connect-abstract", unix_connect_abstract, "unix_stream_connect", &[], true),
    ("unix-connect-listed", unix_connect_listed, "unix_stream_connect", &[], false),
    ("unix-connect-listed-name-linked-to-unlisted", unix_connect_listed_link, "unix_stream_connect", &[], true),
    ("unix-connect-own", unix_connect_own, "unix_stream_connect", &[], false),
    ("unix-sendto-unlisted", unix_sendto_unlisted, "unix_may_send", &[], true),
    ("unix-sendto-own", unix_sendto_own, "unix_may_send", &[], false),
    ("inet-connect-not-proxy", inet_connect_other, "socket_connect", &[], true),
    ("inet-connect-proxy", inet_connect_proxy, "socket_connect", &[], false),
    ("io_uring-connect-not-proxy", io_uring_connect_other, "socket_connect", &[libc::ENOSYS], true),
    ("mmap-exec-unlisted-file", mmap_exec_unlisted, "mmap_file", &[], true),
    ("mmap-exec-memfd", mmap_exec_memfd, "mmap_file", &[], true),
    ("mprotect-exec-unlisted-file", mprotect_exec_unlisted, "file_mprotect", &[], true),
    ("mmap-exec-system-library", mmap_exec_system_library, "mmap_file", &[], false),
    ("mmap-exec-anonymous", mmap_exec_anonymous, "mmap_file", &[], false),
    ("mmap-read-unlisted-file", mmap_read_unlisted, "mmap_file", &[], false),
    ("ld-preload-unlisted-library", preload_unlisted, "mmap_file", &[], true),
    ("ld-library-path-unlisted-libc", library_path_unlisted, "mmap_file", &[], true),
    ("sendto-passed-in-udp-not-proxy", passed_udp_sendto_other, "socket_sendmsg", &[], true),
    ("send-passed-in-connected-tcp", passed_tcp_send_other, "socket_sendmsg", &[], true),
    ("connect-passed-in-tcp-not-proxy", passed_tcp_connect_other, "socket_connect", &[], true),
    ("sendto-proxy-address-on-passed-in-tcp", passed_tcp_sendto_proxy_address, "socket_sendmsg", &[], true),
    ("send-connected-to-proxy", connected_proxy_send, "socket_sendmsg", &[], false),
];

const CGROUP_NAME: &str = "lsm-probe";
const TREE_CGROUP: &str = "lsm-probe-tree";
/// A static program the exec allowlist names: this probe, which exits at once given [`EXIT0`].
const LISTED_STATIC: &str = "/bin/lsm_probe";
const EXIT0: &str = "--exit0";
const DYNAMIC_PROGRAM: &str = "/usr/bin/true";
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
const UNLISTED_COPY: &str = "/tmp/lsm-probe-copy";
const SECRET: &str = "/tmp/lsm-probe-secret";
const SECRET_LINK: &str = "/tmp/lsm-probe-secret-link";
const SECRET_SYMLINK: &str = "/tmp/lsm-probe-secret-symlink";
const UNIX_UNLISTED: &str = "/tmp/lsm-probe-unlisted.sock";
const UNIX_LISTED: &str = "/tmp/lsm-probe-listed.sock";
/// A listed name that is a link to [`UNIX_UNLISTED`]: the peer, not the name given, is judged.
const UNIX_LISTED_LINK: &str = "/tmp/lsm-probe-listed-link.sock";
const UNIX_DGRAM: &str = "/tmp/lsm-probe-dgram.sock";
const ABSTRACT: &str = "lsm-probe-abstract";
/// Ports of the loopback listeners: the stand-in proxy, and another service.
const PROXY_PORT: u16 = 47001;
const OTHER_PORT: u16 = 47002;
const MOUNT_POINT: &str = "/tmp/lsm-probe-mnt";
/// A system library (root's, in the system library directories) and copies of libraries
/// outside them, as an agent would plant them.
const SYSTEM_LIBM: &str = "/lib/x86_64-linux-gnu/libm.so.6";
const SYSTEM_LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const LIBM_COPY: &str = "/tmp/lsm-probe-libm.so.6";
const LIBC_COPY_DIR: &str = "/tmp/lsm-probe-libdir";
/// Sockets made before the child joins the sandbox (a stand-in for sockets passed in over
/// `SCM_RIGHTS` or held by a process moved in: created in another cgroup) are at these fds.
const PASSED_UDP_FD: i32 = 100;
const PASSED_TCP_FD: i32 = 101;
const PASSED_UNCONNECTED_FD: i32 = 102;
const FAKE_MODULE: &str = "/tmp/lsm-probe-module.ko";

/// Exit status when this kernel refuses BPF-LSM programs altogether (the host here): every
/// check is reported as refused by the kernel, none as passed.
const EXIT_REFUSED_BY_KERNEL: i32 = 2;

fn main() {
    // The exec checks run this binary (and copies of it) with this argument.
    if std::env::args().nth(1).as_deref() == Some(EXIT0) {
        std::process::exit(0);
    }
    // vm_init's `kernel` suite runs this as the agent under `leash run`.
    // vm_init's control for the passed-in sockets: the same attempts outside any sandbox.
    if std::env::args().nth(1).as_deref() == Some("--fd-client") {
        agent::passed_sockets(&|name, r| println!("AGENT {name} {}", agent::outcome(r)));
        std::process::exit(0);
    }
    // vm_init's `generation` suite: an agent that stays for the given number of seconds.
    if std::env::args().nth(1).as_deref() == Some("--hold") {
        let secs: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(60);
        std::thread::sleep(std::time::Duration::from_secs(secs));
        std::process::exit(0);
    }
    // vm_init's `net` suite: an agent that leaves a process of a session of its own behind (as a
    // detached grandchild would), prints `DETACHED <pid>` and stays for the given seconds.
    if std::env::args().nth(1).as_deref() == Some("--detached-hold") {
        let secs: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(60);
        // SAFETY: fork in a single-threaded program; the child only calls setsid and sleeps.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: setsid(2) in the child.
                unsafe { libc::setsid() };
            }
            pid if pid > 0 => println!("DETACHED {pid}"),
            _ => std::process::exit(1),
        }
        std::thread::sleep(std::time::Duration::from_secs(secs));
        std::process::exit(0);
    }
    // vm_init's `kernel` suite: the unix sockets an agent under a policy without `kernel:` reaches.
    if std::env::args().nth(1).as_deref() == Some("--unix-agent") {
        let report = |name: &str, r| println!("AGENT {name} {}", agent::outcome(r));
        agent::unix(&report);
        // A copy of this probe runs: no `kernel:` exec list is in force (the baseline has none).
        let copied =
            std::fs::copy(LISTED_STATIC, agent::COPY).map_err(|e| e.raw_os_error().unwrap_or(255)).and_then(|_| {
                std::fs::set_permissions(agent::COPY, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .map_err(|e| e.raw_os_error().unwrap_or(255))
            });
        report("exec-copy", copied.and_then(|()| run_program(agent::COPY, &["lsm_probe", EXIT0])));
        std::process::exit(0);
    }
    // The node test's timer (busybox's date has no sub-second field): `--time PROGRAM ARGS...`
    // runs the program and prints `TIME <microseconds> <exit status>`.
    if std::env::args().nth(1).as_deref() == Some("--time") {
        let argv: Vec<String> = std::env::args().skip(2).collect();
        let started = std::time::Instant::now();
        let status = std::process::Command::new(&argv[0]).args(&argv[1..]).status();
        let code = status.map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
        println!("TIME {} {code}", started.elapsed().as_micros());
        std::process::exit(0);
    }
    // The node test's stand-in agent, in a runner container: `--attempt NAME [PID]` tries one
    // action of [`ACTIONS`] (on PID where it takes a target), `--attempt open PATH` opens a file,
    // `--attempt open-write PATH` creates or truncates one;
    // prints `AGENT <name> <outcome>`.
    if std::env::args().nth(1).as_deref() == Some("--attempt") {
        let name = std::env::args().nth(2).unwrap_or_default();
        let arg = std::env::args().nth(3).unwrap_or_default();
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(255);
        let outcome = if name == "open" {
            std::fs::File::open(&arg).map(drop).map_err(errno)
        } else if name == "open-write" {
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&arg).map(drop).map_err(errno)
        } else {
            match ACTIONS.iter().find(|a| a.0 == name) {
                Some(action) => (action.1)(arg.parse().unwrap_or(0)),
                None => {
                    eprintln!("lsm_probe: no action {name:?}");
                    std::process::exit(2);
                }
            }
        };
        println!("AGENT {name} {}", agent::outcome(outcome));
        std::process::exit(0);
    }
    // A container's default seccomp profile, as far as starting processes goes: `--no-clone3
    // PROGRAM ARGS...` runs the program with clone3(2) refused (ENOSYS), as Docker's and
    // containerd's default profiles refuse it to a process without CAP_SYS_ADMIN.
    if std::env::args().nth(1).as_deref() == Some("--no-clone3") {
        let argv: Vec<String> = std::env::args().skip(2).collect();
        refuse_clone3();
        let e = std::os::unix::process::CommandExt::exec(std::process::Command::new(&argv[0]).args(&argv[1..]));
        eprintln!("lsm_probe: exec {}: {e}", argv[0]);
        std::process::exit(127);
    }
    // vm_init's `learn` suite: what an agent does in a learning run and its replay;
    // `--learn-agent --extra` also tries what the learned policy must refuse.
    if std::env::args().nth(1).as_deref() == Some("--learn-agent") {
        agent::learning(std::env::args().nth(2).as_deref() == Some("--extra"));
        std::process::exit(0);
    }
    // vm_init's `kernel` suite: files of the open deny list replaced while the agent runs.
    if std::env::args().nth(1).as_deref() == Some("--rotation-agent") {
        agent::rotation();
        std::process::exit(0);
    }
    if std::env::args().nth(1).as_deref() == Some("--agent") {
        let outside: i32 = std::env::args().nth(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        agent::run(outside);
        std::process::exit(0);
    }
    // Before 5.11 every BPF map counts against its creator's RLIMIT_MEMLOCK and the user's
    // locked memory, which the host's pinned programs and maps already hold much of: the
    // checks' root children could not make a map outside a sandbox either. Raised as libbpf and
    // aya do on such kernels (aya used to, as a side effect of opening a pinned program).
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the local struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let code = match Generation::open_host().and_then(Generation::with_lsm) {
        Err(e) => {
            // Not a pass: say, per check, that this kernel cannot enforce it.
            let why = first_line(&format!("{e:#}")).to_owned();
            for name in ACTIONS.iter().map(|a| a.0).chain(RULE_ACTIONS.iter().map(|a| a.0)) {
                println!("LEASH-RESULT lsm:{name} REFUSED-BY-KERNEL BPF-LSM unavailable: {why}");
            }
            EXIT_REFUSED_BY_KERNEL
        }
        Ok(programs) => {
            if run(programs) {
                0
            } else {
                1
            }
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Installs a seccomp filter that makes clone3(2) fail with ENOSYS (x86-64), for this process
/// and everything it starts.
fn refuse_clone3() {
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        libc::sock_filter { code: LD_NR, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: JEQ, jt: 0, jf: 1, k: libc::SYS_clone3 as u32 },
        libc::sock_filter { code: RET, jt: 0, jf: 0, k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32 },
        libc::sock_filter { code: RET, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prctl with a filter that lives through the call.
    let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) };
    assert_eq!(r, 0, "installing the seccomp filter: {}", std::io::Error::last_os_error());
}

fn result(name: &str, pass: bool, detail: &str) {
    println!("LEASH-RESULT lsm:{name} {} {detail}", if pass { "PASS" } else { "FAIL" });
}

fn run(mut programs: Generation) -> bool {
    let attached: Vec<&str> = programs.lsm_hooks().map(|h| h.to_vec()).unwrap_or_default();
    // The reasons are known when this process made the generation (the suite's first run).
    let reason = |hook: &str| {
        let why = programs.unavailable().iter().find(|u| u.hook == hook).map(|u| verifier_summary(&u.reason));
        why.map(|w| format!("{hook} ({w})")).unwrap_or_else(|| hook.to_owned())
    };
    let missing: Vec<String> = sandbox_common::program_names::LSM_HOOKS
        .iter()
        .filter(|h| !attached.contains(&h.hook))
        .map(|h| reason(h.hook))
        .collect();
    // userns_create appeared in 6.1; fs_context_parse_param may be missing from some builds.
    let unexpected: Vec<&String> = missing
        .iter()
        .filter(|m| !(m.starts_with("userns_create") || m.starts_with("fs_context_parse_param")))
        .collect();
    // A hook that should verify and did not: its verifier log's end, for whoever reads the VM log.
    for u in programs.unavailable().iter().filter(|u| unexpected.iter().any(|m| m.starts_with(u.hook))) {
        let lines: Vec<&str> = u.reason.lines().collect();
        for line in &lines[lines.len().saturating_sub(80)..] {
            println!("lsm_probe: {}: {line}", u.hook);
        }
    }
    result(
        "attach",
        unexpected.is_empty(),
        &format!("attached [{}]; unavailable [{}]", attached.join(" "), missing.join("; ")),
    );

    let root = match cgroup2_root() {
        Ok(r) => r,
        Err(e) => {
            result("cgroup", false, &format!("{e:#}"));
            return false;
        }
    };
    let _ = std::fs::remove_dir(root.join(format!("leash-{CGROUP_NAME}")));
    let cgroup = match SandboxCgroup::create(&root, CGROUP_NAME) {
        Ok(c) => c,
        Err(e) => {
            result("cgroup", false, &format!("{e:#}"));
            return false;
        }
    };
    let mut events = programs.shared_events().ok();
    let fixtures = match Fixtures::create() {
        Ok(f) => f,
        Err(e) => {
            result("fixtures", false, &e);
            return false;
        }
    };
    let rules = fixtures.rules();
    let registration = Registration {
        cgroup_id: cgroup.id(),
        level: 1,
        descendants: false,
        rules: &rules,
        proxy: Some(sandbox_net(SocketAddr::from(([127, 0, 0, 1], PROXY_PORT)), false)),
    };
    if let Err(e) = programs.register_lsm(&registration) {
        result("register", false, &format!("{e:#}"));
        return false;
    }
    let procs = cgroup.path().join("cgroup.procs");
    let _ = std::fs::create_dir_all(MOUNT_POINT);
    let _ = std::fs::write(FAKE_MODULE, b"not an ELF module, just bytes for the kernel to refuse\n");

    let mut all = true;
    let mut expected_denials = 0;
    for (name, action, hook, outside_ok) in ACTIONS {
        let available = attached.contains(hook);
        let inside = in_child(action, Some(&procs));
        let outside = in_child(action, None);
        // Outside: success, or an error that is not EPERM and is listed for this action.
        let outside_pass = match outside {
            Ok(()) => true,
            Err(e) => outside_ok.contains(&e),
        };
        let inside_pass = if available {
            expected_denials += 1;
            inside == Err(libc::EPERM)
        } else {
            // No hook on this kernel: the sandbox gets what everyone gets.
            inside == outside
        };
        let pass = inside_pass && outside_pass;
        all &= pass;
        let note = if available { "" } else { " (hook unavailable on this kernel: not enforced)" };
        result(name, pass, &format!("inside {}, outside {}{note}", describe(inside), describe(outside)));
    }

    for (name, action, hook, outside_ok, denied) in RULE_ACTIONS {
        let available = attached.contains(hook);
        let inside = in_child(action, Some(&procs));
        let outside = in_child(action, None);
        let outside_pass = outside.is_ok() || outside_ok.contains(&outside.unwrap_err());
        let inside_pass = match (available, denied) {
            (true, true) => {
                expected_denials += 1;
                inside == Err(libc::EPERM)
            }
            (true, false) => inside.is_ok(),
            (false, _) => inside == outside,
        };
        let pass = inside_pass && outside_pass;
        all &= pass;
        let note = if available { "" } else { " (hook unavailable on this kernel: not enforced)" };
        result(name, pass, &format!("inside {}, outside {}{note}", describe(inside), describe(outside)));
    }

    // Fork and double fork stay in the sandbox; a child cannot leave through cgroup.procs of
    // another cgroup... as root it can, so that is checked by the `run` suite as the agent.
    let grandchild = in_child(&(double_fork_packet_socket as Action), Some(&procs));
    all &= grandchild == Err(libc::EPERM);
    result("double-fork-confined", grandchild == Err(libc::EPERM), &format!("grandchild: {}", describe(grandchild)));

    all &= check_descendants(&mut programs, &root, &rules);

    // A process in the sandbox keeps NETLINK_ROUTE (libc's address lookups use it).
    let route = in_child(&(netlink_route_socket as Action), Some(&procs));
    all &= route.is_ok();
    result("netlink-route-allowed", route.is_ok(), &format!("inside {}", describe(route)));

    all &= check_attach_from_outside(&procs, attached.contains(&"ptrace_access_check"));

    if let Some(ring) = events.as_mut() {
        let mut count = 0;
        while ring.next().is_some() {
            count += 1;
        }
        let pass = count >= expected_denials;
        all &= pass;
        result("deny-events", pass, &format!("{count} deny events for {expected_denials} denied actions"));
    }

    let _ = programs.remove_entries(cgroup.id());
    let after = in_child(&(packet_socket as Action), Some(&procs));
    let pass = after != Err(libc::EPERM);
    all &= pass;
    result("unregistered-allowed", pass, &format!("packet socket after remove_sandbox: {}", describe(after)));

    // Registered again at once, as a sandbox starting just after the last one ended is: the
    // kernel releases the links that removal unpinned from a worker, after the unpin returned,
    // and refuses a new link of the same program until then.
    let (pass, detail) = match programs.register_lsm(&registration) {
        Ok(()) => {
            let again = in_child(&(packet_socket as Action), Some(&procs));
            (again == Err(libc::EPERM), format!("packet socket: {}", describe(again)))
        }
        Err(e) => (false, format!("{e:#}")),
    };
    all &= pass;
    result("reattached-at-once", pass, &detail);
    let _ = programs.remove_entries(cgroup.id());

    drop(fixtures);
    let _ = std::fs::remove_file(FAKE_MODULE);
    let _ = std::fs::remove_dir(MOUNT_POINT);
    if let Err(e) = cgroup.remove() {
        println!("lsm_probe: {e:#}");
    }
    all
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A load error's first line and, when it carries a verifier log, the log's last lines, where
/// the verifier says what it refused.
fn verifier_summary(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= 1 {
        return first_line(s).to_owned();
    }
    let tail = &lines[lines.len().saturating_sub(6).max(1)..];
    format!("{} … {}", lines[0], tail.join(" | "))
}

fn describe(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("{} ({})", errno_name(e), std::io::Error::from_raw_os_error(e)),
    }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOEXEC => "ENOEXEC",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ENOENT => "ENOENT",
        libc::ENODEV => "ENODEV",
        libc::ENOSYS => "ENOSYS",
        libc::EBADMSG => "EBADMSG",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EXDEV => "EXDEV",
        libc::ESRCH => "ESRCH",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::EROFS => "EROFS",
        libc::EISDIR => "EISDIR",
        _ => "errno",
    }
}

/// Runs `action` in a forked root child, first moving the child into the cgroup whose
/// `cgroup.procs` is given. A sibling process (outside any sandbox) is there to be targeted.
fn in_child(action: &Action, procs: Option<&std::path::Path>) -> Result<(), i32> {
    // SAFETY: the sibling only sleeps; it is killed and reaped below.
    let sibling = unsafe { libc::fork() };
    if sibling == 0 {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: single-threaded at this point (aya starts no threads); the child only makes
    // syscalls and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if let Some(procs) = procs {
            if std::fs::write(procs, b"0").is_err() {
                // SAFETY: plain _exit.
                unsafe { libc::_exit(254) };
            }
        }
        let code = match action(sibling) {
            Ok(()) => 0,
            Err(e) if (1..254).contains(&e) => e,
            Err(_) => 253,
        };
        // SAFETY: plain _exit.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for and killing our own children.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::kill(sibling, libc::SIGKILL);
        libc::waitpid(sibling, std::ptr::null_mut(), 0);
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(code) => Err(code),
        None => Err(255),
    }
}

fn check(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(255))
    } else {
        Ok(rc)
    }
}

fn socket(family: i32, ty: i32, protocol: i32) -> Result<(), i32> {
    // SAFETY: plain socket(2); the descriptor leaks into a child that exits at once.
    check(unsafe { libc::socket(family, ty, protocol) } as _).map(drop)
}

fn packet_socket(_: i32) -> Result<(), i32> {
    socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
}

fn raw_socket(_: i32) -> Result<(), i32> {
    socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
}

fn vsock_socket(_: i32) -> Result<(), i32> {
    socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0)
}

fn netlink_audit_socket(_: i32) -> Result<(), i32> {
    socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT)
}

fn netlink_route_socket(_: i32) -> Result<(), i32> {
    socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)
}

fn bpf_map_create(_: i32) -> Result<(), i32> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries; rest zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1]);
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size given.
    check(unsafe {
        libc::syscall(libc::SYS_bpf, 0 /* BPF_MAP_CREATE */, attr.as_ptr(), std::mem::size_of_val(&attr))
    })
    .map(drop)
}

fn mount_tmpfs(_: i32) -> Result<(), i32> {
    let (src, dst, fs) =
        (CString::new("none").unwrap(), CString::new(MOUNT_POINT).unwrap(), CString::new("tmpfs").unwrap());
    // SAFETY: valid NUL-terminated strings; no data.
    check(unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } as _)?;
    // SAFETY: as above.
    unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    Ok(())
}

fn perf_event_open(_: i32) -> Result<(), i32> {
    // struct perf_event_attr, first version (64 bytes): type PERF_TYPE_SOFTWARE (1), size,
    // config PERF_COUNT_SW_CPU_CLOCK (0); flags: disabled, exclude_kernel, exclude_hv.
    let mut attr = [0u64; 8];
    attr[0] = 1 | (64u64 << 32);
    attr[5] = 1 | (1 << 5) | (1 << 6);
    // SAFETY: attr is a valid perf_event_attr of the size it declares; pid 0 = self, cpu -1.
    check(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) }).map(drop)
}

fn finit_module(_: i32) -> Result<(), i32> {
    let file = std::fs::File::open(FAKE_MODULE).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let params = CString::default();
    // SAFETY: an open regular file and an empty parameter string.
    check(unsafe { libc::syscall(libc::SYS_finit_module, std::os::fd::AsRawFd::as_raw_fd(&file), params.as_ptr(), 0) })
        .map(drop)
}

fn init_module(_: i32) -> Result<(), i32> {
    // Longer than an ELF header: shorter images are refused (ENOEXEC) before the LSM hook runs.
    let image = [0x5au8; 256];
    let params = CString::default();
    // SAFETY: a readable buffer of the given length and an empty parameter string.
    check(unsafe { libc::syscall(libc::SYS_init_module, image.as_ptr(), image.len(), params.as_ptr()) }).map(drop)
}

fn ptrace_attach(sibling: i32) -> Result<(), i32> {
    // SAFETY: plain ptrace(2); the tracee is detached when this child exits.
    check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, sibling, 0, 0) }).map(drop)
}

fn ptrace_traceme(_: i32) -> Result<(), i32> {
    // SAFETY: plain ptrace(2) on ourselves.
    check(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) }).map(drop)
}

fn userns_create(_: i32) -> Result<(), i32> {
    // SAFETY: plain unshare(2) in a single-threaded child.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as _).map(drop)
}

/// Files, sockets and listeners the rule checks use; removed on drop.
struct Fixtures {
    _listeners: (UnixListener, UnixListener, UnixListener, UnixDatagram, TcpListener, TcpListener),
}

/// The files [`Fixtures`] makes, removed before and after.
const FIXTURE_FILES: [&str; 9] = [
    UNLISTED_COPY,
    SECRET,
    SECRET_LINK,
    SECRET_SYMLINK,
    UNIX_UNLISTED,
    UNIX_LISTED,
    UNIX_LISTED_LINK,
    UNIX_DGRAM,
    LIBM_COPY,
];

impl Fixtures {
    fn create() -> Result<Self, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        for p in FIXTURE_FILES {
            let _ = std::fs::remove_file(p);
        }
        std::fs::copy(LISTED_STATIC, UNLISTED_COPY).map_err(|e| io("copying the probe", e))?;
        std::fs::write(SECRET, b"a service-account token\n").map_err(|e| io("writing the secret", e))?;
        std::fs::hard_link(SECRET, SECRET_LINK).map_err(|e| io("hard link", e))?;
        std::os::unix::fs::symlink(SECRET, SECRET_SYMLINK).map_err(|e| io("symlink", e))?;
        let unlisted = UnixListener::bind(UNIX_UNLISTED).map_err(|e| io("unix listener", e))?;
        let listed = UnixListener::bind(UNIX_LISTED).map_err(|e| io("unix listener", e))?;
        std::os::unix::fs::symlink(UNIX_UNLISTED, UNIX_LISTED_LINK).map_err(|e| io("socket link", e))?;
        let abstract_ = abstract_listener().map_err(|e| io("abstract listener", e))?;
        let dgram = UnixDatagram::bind(UNIX_DGRAM).map_err(|e| io("unix datagram socket", e))?;
        let proxy = TcpListener::bind(("127.0.0.1", PROXY_PORT)).map_err(|e| io("proxy listener", e))?;
        let other = TcpListener::bind(("127.0.0.1", OTHER_PORT)).map_err(|e| io("other listener", e))?;
        // Libraries an agent would plant: copies outside the system library directories.
        std::fs::copy(SYSTEM_LIBM, LIBM_COPY).map_err(|e| io("copying libm", e))?;
        std::fs::create_dir_all(LIBC_COPY_DIR).map_err(|e| io("library dir", e))?;
        std::fs::copy(SYSTEM_LIBC, format!("{LIBC_COPY_DIR}/libc.so.6")).map_err(|e| io("copying libc", e))?;
        // Sockets of this (unsandboxed) process that every child inherits: inside the sandbox
        // they are sockets created outside it, as one passed in over SCM_RIGHTS is.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| io("udp socket", e))?;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", OTHER_PORT)).map_err(|e| io("tcp connect", e))?;
        // SAFETY: plain socket(2); kept open for the life of the probe.
        let unconnected = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        for (fd, at) in
            [(udp.as_raw_fd(), PASSED_UDP_FD), (tcp.as_raw_fd(), PASSED_TCP_FD), (unconnected, PASSED_UNCONNECTED_FD)]
        {
            // SAFETY: dup2 of descriptors this process owns onto free numbers.
            if fd < 0 || unsafe { libc::dup2(fd, at) } != at {
                return Err(format!("placing the outside sockets: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(Fixtures { _listeners: (unlisted, listed, abstract_, dgram, proxy, other) })
    }

    /// Every operation denied; this probe and the dynamic program may run; the secret may not be
    /// opened; only the listed unix socket is reachable.
    fn rules(&self) -> LsmRules {
        let mut exec = BTreeMap::new();
        for p in [LISTED_STATIC, DYNAMIC_PROGRAM] {
            if let Ok(id) = FileId::of(std::path::Path::new(p)) {
                exec.insert(id, PathBuf::from(p));
            }
        }
        let mut deny_open = BTreeMap::new();
        if let Ok(id) = FileId::of(std::path::Path::new(SECRET)) {
            deny_open.insert(id, PathBuf::from(SECRET));
        }
        let key = |name: &str| {
            let mut path = [0u8; UNIX_PATH_MAX];
            path[..name.len()].copy_from_slice(name.as_bytes());
            (name.len() as u32, path)
        };
        // The system libraries, as `leash run` adds them to every exec list.
        let mut libraries = BTreeMap::new();
        if let Err(e) = add_system_libraries(&FsRoot::Own, &mut libraries) {
            println!("lsm_probe: system libraries: {e:#}");
        }
        LsmRules {
            deny: lsm_deny::ALL,
            rules: lsm_rule::EXEC_ALLOWLIST
                | lsm_rule::DENY_OPEN
                | lsm_rule::UNIX_ALLOWLIST
                | lsm_rule::NO_ATTACH_INSIDE
                | lsm_rule::NO_READ_FROM_OUTSIDE,
            exec,
            libraries,
            deny_open_paths: vec![PathBuf::from(SECRET)],
            deny_open,
            missing_deny_open: Vec::new(),
            unix: vec![key(UNIX_LISTED), key(UNIX_LISTED_LINK)],
        }
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        for p in FIXTURE_FILES {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(LIBC_COPY_DIR);
    }
}

/// A sandbox registered with descendants covers a process in a cgroup below it.
fn check_descendants(programs: &mut Generation, root: &std::path::Path, rules: &LsmRules) -> bool {
    let _ = std::fs::remove_dir(root.join(format!("leash-{TREE_CGROUP}")).join("sub"));
    let _ = std::fs::remove_dir(root.join(format!("leash-{TREE_CGROUP}")));
    let tree = match SandboxCgroup::create(root, TREE_CGROUP) {
        Ok(c) => c,
        Err(e) => {
            result("descendants", false, &format!("{e:#}"));
            return false;
        }
    };
    let sub = tree.path().join("sub");
    let registration = Registration { cgroup_id: tree.id(), level: 1, descendants: true, rules, proxy: None };
    let outcome = std::fs::create_dir(&sub)
        .map_err(|e| format!("creating {}: {e}", sub.display()))
        .and_then(|()| programs.register_lsm(&registration).map_err(|e| format!("{e:#}")))
        .map(|()| in_child(&(packet_socket as Action), Some(&sub.join("cgroup.procs"))));
    let pass = outcome == Ok(Err(libc::EPERM));
    result(
        "descendant-cgroup-confined",
        pass,
        &match outcome {
            Ok(r) => format!("packet socket in a cgroup below the sandbox: {}", describe(r)),
            Err(e) => e,
        },
    );
    let _ = programs.remove_entries(tree.id());
    let _ = std::fs::remove_dir(&sub);
    let _ = tree.remove();
    pass
}

fn abstract_listener() -> std::io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(ABSTRACT)?;
    UnixListener::bind_addr(&addr)
}

/// Runs `path` with `args` in a child and returns its outcome: the exec's errno, or the
/// program's exit status (0 is success).
fn run_program(path: &str, args: &[&str]) -> Result<(), i32> {
    let path_c = CString::new(path).unwrap();
    let args_c: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    exec_in_child(|| {
        let mut argv: Vec<*const libc::c_char> = args_c.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: NUL-terminated strings and null-terminated arrays.
        unsafe { libc::execve(path_c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    })
}

/// Forks; the child calls `exec` (which returns only on failure) and exits with the errno.
fn exec_in_child(exec: impl FnOnce()) -> Result<(), i32> {
    // SAFETY: the child only execs or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        exec();
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(250);
        // SAFETY: plain _exit.
        unsafe { libc::_exit(e.clamp(1, 250)) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(code) => Err(code),
        None => Err(255),
    }
}

fn exec_listed(_: i32) -> Result<(), i32> {
    run_program(LISTED_STATIC, &["lsm_probe", EXIT0])
}

fn exec_dynamic_listed(_: i32) -> Result<(), i32> {
    run_program(DYNAMIC_PROGRAM, &["true"])
}

fn exec_unlisted(_: i32) -> Result<(), i32> {
    run_program(UNLISTED_COPY, &["lsm_probe", EXIT0])
}

fn exec_via_loader(_: i32) -> Result<(), i32> {
    run_program(LOADER, &["ld.so", DYNAMIC_PROGRAM])
}

fn exec_memfd(_: i32) -> Result<(), i32> {
    let bytes = std::fs::read(LISTED_STATIC).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let name = CString::new("payload").unwrap();
    // SAFETY: plain memfd_create(2).
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), 0) } as _)? as i32;
    // SAFETY: writing our own buffer to our own fd.
    if unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) } != bytes.len() as isize {
        return Err(libc::EIO);
    }
    let empty = CString::default();
    let (arg0, arg1) = (CString::new("lsm_probe").unwrap(), CString::new(EXIT0).unwrap());
    exec_in_child(|| {
        let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: execveat(2) of an fd with AT_EMPTY_PATH and valid arrays.
        unsafe {
            libc::syscall(libc::SYS_execveat, fd, empty.as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
        };
    })
}

fn open_path(path: &str) -> Result<(), i32> {
    std::fs::File::open(path).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255))
}

fn open_secret(_: i32) -> Result<(), i32> {
    open_path(SECRET)
}

fn open_secret_hardlink(_: i32) -> Result<(), i32> {
    open_path(SECRET_LINK)
}

fn open_secret_symlink(_: i32) -> Result<(), i32> {
    open_path(SECRET_SYMLINK)
}

fn open_other(_: i32) -> Result<(), i32> {
    open_path("/etc/hosts")
}

fn kill_outside(sibling: i32) -> Result<(), i32> {
    // SAFETY: SIGCONT to a process that only pauses.
    check(unsafe { libc::kill(sibling, libc::SIGCONT) } as _).map(drop)
}

/// Runs `f` on a child of this process (in the same cgroup) that pauses until killed, then kills
/// and reaps it.
fn with_paused_child(f: impl FnOnce(i32) -> Result<(), i32>) -> Result<(), i32> {
    // SAFETY: the child only pauses until killed.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: no preconditions.
            unsafe { libc::pause() };
        }
    }
    let result = f(child);
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    result
}

fn kill_inside(_: i32) -> Result<(), i32> {
    // SAFETY: killing our own child (reaped by `with_paused_child`).
    with_paused_child(|child| check(unsafe { libc::kill(child, libc::SIGKILL) } as _).map(drop))
}

fn ptrace_attach_inside(_: i32) -> Result<(), i32> {
    // SAFETY: plain ptrace(2) of our own child, which is killed right after.
    with_paused_child(|child| check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, child, 0, 0) }).map(drop))
}

/// No process outside a sandbox but root attaches to one inside (`ptrace.rs`): a process of the
/// agent's uid elsewhere would drive the agent, or take its connection to the proxy, and be
/// served as the sandbox. Two `--hold` processes run as nobody, one in the sandbox and one
/// not; their parent, also nobody and outside (as their parent, Yama's scope 1 lets it),
/// attaches to each, takes a descriptor of each and reads each one's environment. Only the LSM
/// tells the two apart.
fn check_attach_from_outside(procs: &std::path::Path, hooked: bool) -> bool {
    const NOBODY: libc::uid_t = 65534;
    let hold = |into: Option<&std::path::Path>| -> i32 {
        // SAFETY: the child writes a file, drops to nobody and execs; _exit on any failure.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if into.is_some_and(|procs| std::fs::write(procs, b"0").is_err()) {
                // SAFETY: plain _exit.
                unsafe { libc::_exit(254) };
            }
            // SAFETY: dropping to nobody, then exec of this probe (listed in the exec allowlist).
            unsafe {
                if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                    libc::_exit(253);
                }
            }
            let _ = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(LISTED_STATIC).args(["--hold", "20"]),
            );
            // SAFETY: plain _exit.
            unsafe { libc::_exit(252) };
        }
        pid
    };
    let (mut report, mut results) = ([0i32; 6], [0u8; 24]);
    let mut fds = [0; 2];
    // SAFETY: a pipe for the attacher's four results.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    // SAFETY: the attacher forks, drops to nobody, makes four syscalls and exits.
    let attacher = unsafe { libc::fork() };
    if attacher == 0 {
        let (inside, outside) = (hold(Some(procs)), hold(None));
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: dropping to nobody; then ptrace(2), pidfd_open(2) and pidfd_getfd(2) of this
        // process's own children, which are killed before it exits.
        unsafe {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                libc::_exit(253);
            }
            let attach = |pid: i32| check(libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0)).err().unwrap_or(0);
            let take = |pid: i32| {
                check(libc::syscall(libc::SYS_pidfd_open, pid, 0))
                    .and_then(|pidfd| check(libc::syscall(libc::SYS_pidfd_getfd, pidfd, 1, 0)))
                    .err()
                    .unwrap_or(0)
            };
            let environ = |pid: i32| {
                let path = std::ffi::CString::new(format!("/proc/{pid}/environ")).unwrap_or_default();
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                check(fd as libc::c_long).err().unwrap_or(0)
            };
            let got = [take(outside), take(inside), attach(outside), attach(inside), environ(outside), environ(inside)];
            let bytes: Vec<u8> = got.iter().flat_map(|e| e.to_ne_bytes()).collect();
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            for pid in [inside, outside] {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: reading the attacher's results, then reaping it.
    unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], results.as_mut_ptr().cast(), results.len());
        libc::close(fds[0]);
        libc::waitpid(attacher, std::ptr::null_mut(), 0);
    }
    for (i, chunk) in results.chunks(4).enumerate() {
        report[i] = i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    let errno = |e: i32| if e == 0 { "ok".to_owned() } else { describe(Err(e)) };
    let [take_outside, take_inside, attach_outside, attach_inside, read_outside, read_inside] = report;
    let controls = take_outside == 0 && attach_outside == 0 && read_outside == 0;
    let refused = if hooked {
        take_inside == libc::EPERM && attach_inside == libc::EPERM && read_inside == libc::EACCES
    } else {
        true
    };
    let pass = controls && refused;
    result(
        "attach-from-outside",
        pass,
        &format!(
            "by nobody outside: pidfd_getfd outside {}, inside {}; PTRACE_ATTACH outside {}, inside {}; environ outside {}, inside {}{}",
            errno(take_outside),
            errno(take_inside),
            errno(attach_outside),
            errno(attach_inside),
            errno(read_outside),
            errno(read_inside),
            if hooked { "" } else { " (hook unavailable on this kernel: not enforced)" }
        ),
    );
    pass
}

fn pidfd_getfd_inside(_: i32) -> Result<(), i32> {
    with_paused_child(|child| {
        // SAFETY: pidfd_open(2) and pidfd_getfd(2) of our own child's stdin; both descriptors
        // leak into a child that exits at once.
        let pidfd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) })?;
        check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0) }).map(drop)
    })
}

fn unix_connect(path: &str) -> Result<(), i32> {
    std::os::unix::net::UnixStream::connect(path).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255))
}

fn unix_connect_unlisted(_: i32) -> Result<(), i32> {
    unix_connect(UNIX_UNLISTED)
}

fn unix_connect_listed(_: i32) -> Result<(), i32> {
    unix_connect(UNIX_LISTED)
}

fn unix_connect_abstract(_: i32) -> Result<(), i32> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(ABSTRACT).map_err(|_| libc::EINVAL)?;
    std::os::unix::net::UnixStream::connect_addr(&addr).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255))
}

fn unix_connect_listed_link(_: i32) -> Result<(), i32> {
    unix_connect(UNIX_LISTED_LINK)
}

/// Where this process binds a socket of its own (inside the sandbox when it runs there).
fn own_socket_path() -> String {
    let path = format!("/tmp/lsm-probe-own-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&path);
    path
}

fn unix_connect_own(_: i32) -> Result<(), i32> {
    let path = own_socket_path();
    let listener = UnixListener::bind(&path).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let result = unix_connect(&path);
    drop(listener);
    let _ = std::fs::remove_file(&path);
    result
}

fn unix_sendto_own(_: i32) -> Result<(), i32> {
    let path = own_socket_path();
    let receiver = UnixDatagram::bind(&path).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let socket = UnixDatagram::unbound().map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let result = socket.send_to(b"hello", &path).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255));
    drop(receiver);
    let _ = std::fs::remove_file(&path);
    result
}

fn unix_sendto_unlisted(_: i32) -> Result<(), i32> {
    let socket = UnixDatagram::unbound().map_err(|e| e.raw_os_error().unwrap_or(255))?;
    socket.send_to(b"hello", UNIX_DGRAM).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255))
}

fn inet_connect(port: u16) -> Result<(), i32> {
    std::net::TcpStream::connect(("127.0.0.1", port)).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255))
}

fn inet_connect_other(_: i32) -> Result<(), i32> {
    inet_connect(OTHER_PORT)
}

fn inet_connect_proxy(_: i32) -> Result<(), i32> {
    inet_connect(PROXY_PORT)
}

/// Maps the first page of `path` with `prot`; then, when `then` is not zero, mprotects it to
/// `then`.
fn map_file(path: &str, prot: i32, then: i32) -> Result<(), i32> {
    let file = std::fs::File::open(path).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    map_fd(file.as_raw_fd(), prot, then)
}

fn map_fd(fd: i32, prot: i32, then: i32) -> Result<(), i32> {
    // SAFETY: a fresh private mapping of an open file, unmapped below; never dereferenced.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE, fd, 0);
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(255));
        }
        let r = if then != 0 { check(libc::mprotect(p, 4096, then) as _).map(drop) } else { Ok(()) };
        libc::munmap(p, 4096);
        r
    }
}

fn mmap_exec_unlisted(_: i32) -> Result<(), i32> {
    map_file(LIBM_COPY, libc::PROT_READ | libc::PROT_EXEC, 0)
}

fn mprotect_exec_unlisted(_: i32) -> Result<(), i32> {
    map_file(LIBM_COPY, libc::PROT_READ, libc::PROT_READ | libc::PROT_EXEC)
}

fn mmap_read_unlisted(_: i32) -> Result<(), i32> {
    map_file(LIBM_COPY, libc::PROT_READ, 0)
}

fn mmap_exec_system_library(_: i32) -> Result<(), i32> {
    map_file(SYSTEM_LIBM, libc::PROT_READ | libc::PROT_EXEC, 0)
}

/// A JIT's memory: anonymous, written then made executable.
fn mmap_exec_anonymous(_: i32) -> Result<(), i32> {
    // SAFETY: a fresh anonymous mapping, unmapped below.
    unsafe {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let p = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(255));
        }
        let r = check(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) as _).map(drop);
        libc::munmap(p, 4096);
        r
    }
}

/// A library that never had a path: a memfd holding libm.
fn mmap_exec_memfd(_: i32) -> Result<(), i32> {
    let bytes = std::fs::read(SYSTEM_LIBM).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let name = CString::new("lib").unwrap();
    // SAFETY: plain memfd_create(2) and a write of our own buffer.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), 0) } as _)? as i32;
    if unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) } != bytes.len() as isize {
        return Err(libc::EIO);
    }
    map_fd(fd, libc::PROT_READ | libc::PROT_EXEC, 0)
}

/// Runs the listed dynamic program with `env`: `Ok` when it ran clean, `EPERM` when the loader
/// could not map a library it was told to (it says so on stderr, and for `LD_PRELOAD` runs the
/// program without it), `EIO` for other loader complaints, else its exit status.
pub fn run_with_loader_env(env: (&str, &str)) -> Result<(), i32> {
    let out = std::process::Command::new(DYNAMIC_PROGRAM)
        .env_clear()
        .env(env.0, env.1)
        .output()
        .map_err(|e| e.raw_os_error().unwrap_or(255))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The loader's words for a refused mmap (a missing file reads "cannot open shared object").
    if stderr.contains("failed to map segment") {
        return Err(libc::EPERM);
    }
    match out.status.code() {
        Some(0) if stderr.is_empty() => Ok(()),
        Some(0) => Err(libc::EIO),
        Some(code) => Err(code),
        None => Err(255),
    }
}

/// `LD_PRELOAD` of a library outside the allowlist into an allowed executable.
fn preload_unlisted(_: i32) -> Result<(), i32> {
    run_with_loader_env(("LD_PRELOAD", LIBM_COPY))
}

/// `LD_LIBRARY_PATH` pointing at a copy of libc outside the allowlist.
fn library_path_unlisted(_: i32) -> Result<(), i32> {
    run_with_loader_env(("LD_LIBRARY_PATH", LIBC_COPY_DIR))
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
        sin_zero: [0; 8],
    }
}

/// sendto(2) on `fd`, to `port` on loopback or (`None`) without an address.
pub fn send_on(fd: i32, port: Option<u16>) -> Result<(), i32> {
    let addr = port.map(sockaddr);
    let (ptr, len) = match &addr {
        Some(a) => (a as *const libc::sockaddr_in as *const libc::sockaddr, std::mem::size_of_val(a) as u32),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: a valid buffer and either a valid sockaddr_in or none.
    check(unsafe { libc::sendto(fd, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL, ptr, len) } as _).map(drop)
}

/// connect(2) of `fd` to `port` on loopback.
pub fn connect_on(fd: i32, port: u16) -> Result<(), i32> {
    let a = sockaddr(port);
    // SAFETY: a valid sockaddr_in of the size given.
    check(unsafe {
        libc::connect(fd, &a as *const libc::sockaddr_in as *const libc::sockaddr, std::mem::size_of_val(&a) as u32)
    } as _)
    .map(drop)
}

fn passed_udp_sendto_other(_: i32) -> Result<(), i32> {
    send_on(PASSED_UDP_FD, Some(OTHER_PORT))
}

/// send(2) on a TCP socket connected outside the sandbox: no address for the hook to judge.
fn passed_tcp_send_other(_: i32) -> Result<(), i32> {
    send_on(PASSED_TCP_FD, None)
}

/// sendto(2) naming the proxy on a TCP socket connected elsewhere: TCP ignores the address.
fn passed_tcp_sendto_proxy_address(_: i32) -> Result<(), i32> {
    send_on(PASSED_TCP_FD, Some(PROXY_PORT))
}

fn passed_tcp_connect_other(_: i32) -> Result<(), i32> {
    // Inside first: refused, the socket stays unconnected for the outside run.
    connect_on(PASSED_UNCONNECTED_FD, OTHER_PORT)
}

/// A socket of the sandbox's own, connected to the proxy, sends.
fn connected_proxy_send(_: i32) -> Result<(), i32> {
    let s = std::net::TcpStream::connect(("127.0.0.1", PROXY_PORT)).map_err(|e| e.raw_os_error().unwrap_or(255))?;
    send_on(s.as_raw_fd(), None)
}

/// The grandchild of a sandboxed process is still in the sandbox.
fn double_fork_packet_socket(_: i32) -> Result<(), i32> {
    // SAFETY: the grandchild only makes one syscall and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match packet_socket(0) {
            Ok(()) => 0,
            Err(e) => e.clamp(1, 250),
        };
        // SAFETY: plain _exit.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        e => Err(e),
    }
}

/// connect(2) to a non-proxy address submitted through io_uring (IORING_OP_CONNECT), which
/// never enters the connect syscall.
fn io_uring_connect_other(_: i32) -> Result<(), i32> {
    io_uring::connect(SocketAddr::from(([127, 0, 0, 1], OTHER_PORT)))
}

/// Just enough io_uring to submit one connect and read its completion.
mod io_uring {
    use super::check;
    use std::net::SocketAddr;

    #[repr(C)]
    #[derive(Default)]
    struct SqOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        flags: u32,
        dropped: u32,
        array: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct CqOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        overflow: u32,
        cqes: u32,
        flags: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: SqOffsets,
        cq_off: CqOffsets,
    }

    const OFF_SQ_RING: i64 = 0;
    const OFF_CQ_RING: i64 = 0x800_0000;
    const OFF_SQES: i64 = 0x1000_0000;
    const OP_CONNECT: u8 = 16;
    const ENTER_GETEVENTS: u32 = 1;

    fn map(fd: i32, len: usize, offset: i64) -> Result<*mut u8, i32> {
        // SAFETY: mapping an io_uring region of the size the kernel reported.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, offset)
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(255));
        }
        Ok(p.cast())
    }

    pub fn connect(to: SocketAddr) -> Result<(), i32> {
        let SocketAddr::V4(v4) = to else { return Err(libc::EINVAL) };
        // SAFETY: plain socket(2).
        let sock = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) } as _)? as i32;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        let mut params = Params::default();
        // SAFETY: io_uring_setup(2) with a zeroed params struct of the kernel's size.
        let ring = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut params as *mut Params) })? as i32;
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * 16;
        let sq = map(ring, sq_len, OFF_SQ_RING)?;
        let cq = map(ring, cq_len, OFF_CQ_RING)?;
        let sqes = map(ring, params.sq_entries as usize * 64, OFF_SQES)?;
        // SAFETY: every pointer below is inside a region the kernel mapped for this ring, at
        // offsets it reported; one submission, one completion.
        unsafe {
            let sqe = sqes;
            std::ptr::write_bytes(sqe, 0, 64);
            *sqe = OP_CONNECT;
            *(sqe.add(4) as *mut i32) = sock;
            *(sqe.add(8) as *mut u64) = std::mem::size_of::<libc::sockaddr_in>() as u64;
            *(sqe.add(16) as *mut u64) = &addr as *const libc::sockaddr_in as u64;
            let tail = sq.add(params.sq_off.tail as usize) as *mut u32;
            let mask = *(sq.add(params.sq_off.ring_mask as usize) as *const u32);
            let array = sq.add(params.sq_off.array as usize) as *mut u32;
            let t = std::ptr::read_volatile(tail);
            *array.add((t & mask) as usize) = 0;
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            std::ptr::write_volatile(tail, t + 1);
            check(libc::syscall(libc::SYS_io_uring_enter, ring, 1u32, 1u32, ENTER_GETEVENTS, 0usize, 0usize))?;
            let cq_head = cq.add(params.cq_off.head as usize) as *const u32;
            let cq_mask = *(cq.add(params.cq_off.ring_mask as usize) as *const u32);
            let cqe =
                cq.add(params.cq_off.cqes as usize + ((std::ptr::read_volatile(cq_head) & cq_mask) as usize) * 16);
            let res = *(cqe.add(8) as *const i32);
            if res < 0 {
                return Err(-res);
            }
        }
        Ok(())
    }
}

/// Agent mode (`lsm_probe --agent <pid of an unprivileged process outside the sandbox>`): run as
/// the unprivileged agent under `leash run` with a `kernel:` policy, try each forbidden thing
/// once and print `AGENT <name> <outcome>`; vm_init judges the outcomes and the audit log.
mod agent {
    use super::*;

    /// Files and sockets vm_init prepares for the agent (see its `kernel` suite): outside `/tmp`,
    /// which is private to the agent under `leash run`.
    pub const SECRET: &str = "/var/leash-kernel/secret";
    pub const SECRET_LINK: &str = "/var/leash-kernel/secret-link";
    pub const SECRET_SYMLINK: &str = "/var/leash-kernel/secret-symlink";
    pub const HOST_SOCKET: &str = "/var/leash-kernel/host-agent.sock";
    /// A host socket vm_init binds once the agent's mount namespace exists (so no mount covers
    /// it: only BPF-LSM keeps the agent away).
    pub const LATE_SOCKET: &str = "/var/leash-kernel/late.sock";
    pub const COPY: &str = "/tmp/agent-copy";
    /// The agent's own copy of libm.
    pub const LIBM: &str = "/tmp/agent-libm.so.6";
    /// The unix socket of the helper that hands out sockets made outside (listed in the policy).
    pub const FD_PASSER: &str = "/var/leash-fdpass/pass.sock";
    /// Where the passed UDP socket sends.
    pub const PASSED_UDP_PORT: u16 = 47003;

    pub fn run(outside: i32) {
        let report = |name: &str, r: Result<(), i32>| println!("AGENT {name} {}", outcome(r));
        let copy = std::fs::copy(LISTED_STATIC, COPY).map_err(|e| e.raw_os_error().unwrap_or(255)).and_then(|_| {
            std::fs::set_permissions(COPY, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| e.raw_os_error().unwrap_or(255))
        });
        report("copy-self", copy);
        report("exec-listed", run_program(LISTED_STATIC, &["lsm_probe", EXIT0]));
        report("exec-copy", run_program(COPY, &["lsm_probe", EXIT0]));
        report("exec-memfd", exec_memfd(0));
        report("exec-via-ld.so", run_program(LOADER, &["ld.so", DYNAMIC_PROGRAM]));
        report("open-secret", open_path(SECRET));
        report("open-secret-hardlink", open_path(SECRET_LINK));
        report("open-secret-symlink", open_path(SECRET_SYMLINK));
        report("open-other", open_path("/etc/hosts"));
        report("kill-outside", kill_outside(outside));
        // SAFETY: signal 0 only checks permission.
        report("kill-leash", check(unsafe { libc::kill(libc::getppid(), 0) } as _).map(drop));
        report("ptrace-outside", ptrace_attach(outside));
        report("ptrace-own-child", ptrace_attach_inside(0));
        report("read-leash-environ", open_path(&format!("/proc/{}/environ", std::os::unix::process::parent_id())));
        unix(&report);
        report("tcp-connect-not-proxy", inet_connect(OTHER_PORT));
        report("userns-create", userns_create(0));
        let _ = std::fs::create_dir_all(MOUNT_POINT);
        report("mount-tmpfs", mount_tmpfs(0));
        report("bpf-map-create", bpf_map_create(0));
        report("packet-socket", packet_socket(0));
        report("io_uring-connect", io_uring_connect_other(0));
        report("leave-cgroup", leave_cgroup());
        report("double-fork-stays", double_fork_stays());
        libraries(&report);
        passed_sockets(&report);
    }

    /// Unix sockets: a host socket bound before the agent started is covered in its mount
    /// namespace; one bound after is refused by BPF-LSM; the agent's own work, stream and datagram.
    pub fn unix(report: &dyn Fn(&str, Result<(), i32>)) {
        report("unix-connect-host", unix_connect(HOST_SOCKET));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::path::Path::new(LATE_SOCKET).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        report("unix-connect-host-bound-later", unix_connect(LATE_SOCKET));
        report("unix-connect-own", unix_connect_own(0));
        report("unix-sendto-own", unix_sendto_own(0));
    }

    /// `binaries:` honest: an allowed executable runs, but not with a library of the agent's own.
    fn libraries(report: &dyn Fn(&str, Result<(), i32>)) {
        report("loader-env-none", run_with_loader_env(("LEASH_PROBE", "1")));
        let copied = std::fs::copy(SYSTEM_LIBM, LIBM).map(drop).map_err(|e| e.raw_os_error().unwrap_or(255));
        report("copy-libm", copied);
        report("ld-preload-own-library", run_with_loader_env(("LD_PRELOAD", LIBM)));
        report("mmap-exec-own-file", map_file(LIBM, libc::PROT_READ | libc::PROT_EXEC, 0));
        report("mprotect-exec-own-file", map_file(LIBM, libc::PROT_READ, libc::PROT_READ | libc::PROT_EXEC));
        report("mmap-exec-anonymous", mmap_exec_anonymous(0));
    }

    /// Sockets a root helper outside the sandbox created and passed over the unix socket the
    /// policy allows (vm_init's `fd_passer`): a TCP socket connected to a host service, a UDP
    /// socket and an unconnected TCP socket. None may reach anything but the proxy. Run outside
    /// the sandbox too (`--fd-client`), as the control.
    pub fn passed_sockets(report: &dyn Fn(&str, Result<(), i32>)) {
        let fds = match receive_fds() {
            Ok(fds) => fds,
            Err(e) => return report("passed-fds-received", Err(e)),
        };
        report("passed-fds-received", Ok(()));
        report("passed-tcp-send", send_on(fds[0], None));
        report("passed-udp-sendto", send_on(fds[1], Some(PASSED_UDP_PORT)));
        report("passed-tcp-connect", connect_on(fds[2], OTHER_PORT));
    }

    /// Three descriptors from [`FD_PASSER`].
    fn receive_fds() -> Result<[i32; 3], i32> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let stream = std::os::unix::net::UnixStream::connect(FD_PASSER).map_err(|e| e.raw_os_error().unwrap_or(255))?;
        let mut byte = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([i32; 3]);
        let msg =
            recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).map_err(|e| e as i32)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(|e| e as i32)? {
            if let ControlMessageOwned::ScmRights(got) = cmsg {
                fds.extend(got);
            }
        }
        fds.try_into().map_err(|_| libc::EBADMSG)
    }

    /// The learning suite's workspace: a directory of the fixtures, writable by the agent.
    pub const LEARN_DIR: &str = "/var/leash-learn";

    /// Reads a system file, writes one file in [`LEARN_DIR`] and another in a directory it
    /// makes there and removes, runs a dynamic program; with `extra`, also runs a program and
    /// writes a file that it did not before. Prints `AGENT <name> <outcome>` for each.
    pub fn learning(extra: bool) {
        let report = |name: &str, r: Result<(), i32>| println!("AGENT {name} {}", outcome(r));
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(255);
        report("read-system-file", std::fs::read("/etc/passwd").map(drop).map_err(errno));
        report("write-file", std::fs::write(format!("{LEARN_DIR}/out"), b"learned").map_err(errno));
        let scratch = format!("{LEARN_DIR}/tmp-{}", std::process::id());
        let scratch_used = std::fs::create_dir(&scratch)
            .and_then(|()| std::fs::write(format!("{scratch}/part"), b"x"))
            .and_then(|()| std::fs::remove_dir_all(&scratch));
        report("write-in-made-directory", scratch_used.map_err(errno));
        report("run-dynamic", run_program(DYNAMIC_PROGRAM, &["true"]));
        if extra {
            report("extra-run", run_program("/bin/leash", &["leash", "--version"]));
            report("extra-write", std::fs::write("/var/tmp/leash-learn-extra", b"x").map_err(errno));
        }
    }

    /// Where vm_init rotates a kubelet-like token (`token -> ..data/token`, `..data -> ..ts1`).
    pub const ROTATE_DIR: &str = "/var/leash-rotate";

    /// Opens the token, hard-links its file (the agent owns it), says it is ready and waits for
    /// vm_init to rotate the token, create `later` and remove the old directory; then opens
    /// each again, and `other`, which is not listed. One `ROTATION <name> <outcome>` line each.
    pub fn rotation() {
        let at = |name: &str| format!("{ROTATE_DIR}/{name}");
        let report = |name: &str, r: Result<(), i32>| println!("ROTATION {name} {}", outcome(r));
        report("token-before", open_path(&at("token")));
        let linked = std::fs::hard_link(at("..ts1/token"), at("old-link"));
        report("link-old", linked.map_err(|e| e.raw_os_error().unwrap_or(255)));
        if std::fs::write(at("ready"), "").is_err() {
            println!("ROTATION ready failed");
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::path::Path::new(&at("rotated")).exists() {
            if std::time::Instant::now() > deadline {
                println!("ROTATION rotated never-came");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // leash looks again every 100 ms.
        std::thread::sleep(std::time::Duration::from_millis(500));
        for name in ["token", "old-link", "later", "other"] {
            report(&format!("{name}-after"), open_path(&at(name)));
        }
    }

    pub fn outcome(r: Result<(), i32>) -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(e) => errno_name(e).to_owned(),
        }
    }

    /// Writing our pid into the root cgroup's cgroup.procs (leaving the sandbox).
    fn leave_cgroup() -> Result<(), i32> {
        let root = cgroup2_root().map_err(|_| libc::ENOENT)?;
        std::fs::write(root.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| e.raw_os_error().unwrap_or(255))
    }

    /// A grandchild's cgroup is the agent's own.
    fn double_fork_stays() -> Result<(), i32> {
        let mine = std::fs::read_to_string("/proc/self/cgroup").map_err(|_| libc::EIO)?;
        // SAFETY: the grandchild reads a file and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            let grandchild = unsafe { libc::fork() };
            if grandchild == 0 {
                let theirs = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                // SAFETY: plain _exit.
                unsafe { libc::_exit(if theirs == mine { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(grandchild, &mut status, 0) };
            // SAFETY: plain _exit.
            unsafe { libc::_exit(libc::WEXITSTATUS(status)) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(libc::EXDEV)
        }
    }
}
