//! `lsm_probe`: checks leash's BPF-LSM programs end to end, as root inside a test VM
//! (`vm_init` suite `lsm`). `leash run` does not use the LSM layer yet, so this drives the
//! library directly: it loads [`LsmPrograms`], registers a fresh cgroup with a policy that denies
//! everything, and runs each forbidden action in a forked child twice — once after the child
//! moved itself into that cgroup, once outside it. Both children are root, so a refusal inside
//! comes from the LSM and not from missing capabilities.
//!
//! Prints one `LEASH-RESULT lsm:<name> PASS|FAIL <detail>` line per check; vm_init relays them.
//! Expected outcome outside the cgroup, per action: success, or (where the kernel may lack the
//! family or refuse the bogus input) an error other than EPERM; see [`ACTIONS`].

use std::ffi::CString;
use std::io::Write as _;

use leash::kernel::cgroup::SandboxCgroup;
use leash::kernel::lsm::LsmPrograms;
use leash::kernel::mounts::cgroup2_root;
use sandbox_common::{lsm_deny, LsmPolicy};

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

const CGROUP_NAME: &str = "lsm-probe";
const MOUNT_POINT: &str = "/tmp/lsm-probe-mnt";
const FAKE_MODULE: &str = "/tmp/lsm-probe-module.ko";

fn main() {
    let ok = run();
    let _ = std::io::stdout().flush();
    std::process::exit(if ok { 0 } else { 1 });
}

fn result(name: &str, pass: bool, detail: &str) {
    println!("LEASH-RESULT lsm:{name} {} {detail}", if pass { "PASS" } else { "FAIL" });
}

fn run() -> bool {
    let mut programs = match LsmPrograms::load() {
        Ok(p) => p,
        Err(e) => {
            result("load", false, &format!("{e:#}"));
            return false;
        }
    };
    let attached = programs.attached();
    let missing: Vec<String> =
        programs.unavailable().iter().map(|u| format!("{} ({})", u.hook, first_line(&u.reason))).collect();
    // userns_create appeared in 6.1; fs_context_parse_param may be missing from some builds.
    let unexpected: Vec<&String> = missing
        .iter()
        .filter(|m| !(m.starts_with("userns_create") || m.starts_with("fs_context_parse_param")))
        .collect();
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
    let mut events = programs.take_events().ok();
    if let Err(e) = programs.add_sandbox(cgroup.id(), LsmPolicy { deny: lsm_deny::ALL }) {
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

    // A process in the sandbox keeps NETLINK_ROUTE (libc's address lookups use it).
    let route = in_child(&(netlink_route_socket as Action), Some(&procs));
    all &= route.is_ok();
    result("netlink-route-allowed", route.is_ok(), &format!("inside {}", describe(route)));

    if let Some(ring) = events.as_mut() {
        let mut count = 0;
        while ring.next().is_some() {
            count += 1;
        }
        let pass = count >= expected_denials;
        all &= pass;
        result("deny-events", pass, &format!("{count} deny events for {expected_denials} denied actions"));
    }

    programs.remove_sandbox(cgroup.id());
    let after = in_child(&(packet_socket as Action), Some(&procs));
    let pass = after != Err(libc::EPERM);
    all &= pass;
    result("unregistered-allowed", pass, &format!("packet socket after remove_sandbox: {}", describe(after)));

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
        libc::EKEYREJECTED => "EKEYREJECTED",
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
