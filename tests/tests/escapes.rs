//! Red-team escape attempts against the network confinement, run as the unprivileged agent.
//!
//! Every test makes one attempt inside `leash run` and the same attempt outside it: the outside
//! control must succeed (so the test can fail), the inside attempt must not reach anything.
//! Tests named `escape_*` covered ways out that worked when they were written; the others pin
//! down attempts that were already refused and that `confinement.rs` does not cover.
//!
//! Attempts are expressed with `netprobe`, `/bin/sh` and `/usr/bin/python3 -c` only (no compiled
//! helpers), and all traffic stays on loopback.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leash_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const PY: &str = "/usr/bin/python3";

/// Allow-nothing policy that pins the agent to `nobody`, so tests that need a process of the
/// agent's own uid outside the sandbox do not depend on `SUDO_UID`.
const NOBODY_ALLOW_NOTHING: &str = "version: 1\nprocess: { run_as_user: nobody }\nnetwork_policies: {}\n";

/// uid and gid of `nobody`.
fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "user nobody must exist");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// `PY -c code args...` outside any sandbox, optionally as `nobody`; first line of stdout.
fn py_outside(code: &str, args: &[&str], as_nobody: bool) -> String {
    let mut c = Command::new(PY);
    c.arg("-c").arg(code).args(args);
    if as_nobody {
        let (uid, gid) = nobody();
        c.uid(uid).gid(gid);
    }
    let out = c.output().expect("running python3 outside");
    stdout(&out).lines().next().unwrap_or_default().to_owned()
}

/// `PY -c code args...` inside `leash run --policy policy`; first line of stdout.
fn py_inside(policy: &Path, code: &str, args: &[&str]) -> String {
    let mut cmd = vec![PY, "-c", code];
    cmd.extend_from_slice(args);
    let out = leash_run(policy, &[], &cmd);
    stdout(&out).lines().next().unwrap_or_default().to_owned()
}

/// Runs each `(label, shell command)` in one sandbox; returns `label -> first line`.
fn sh_inside(policy: &Path, probes: &[(&str, String)]) -> std::collections::HashMap<String, String> {
    let mut script = String::new();
    for (label, cmd) in probes {
        script.push_str(&format!("echo \"{label}=$({cmd} 2>&1 | head -n1)\"\n"));
    }
    let out = leash_run(policy, &[], &["/bin/sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "leash run failed: {}", stderr(&out));
    parse_labels(&stdout(&out))
}

fn parse_labels(text: &str) -> std::collections::HashMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect()
}

fn netprobe_outside(args: &str) -> String {
    let out = Command::new(PROBE).args(args.split_whitespace()).output().expect("netprobe");
    stdout(&out).lines().next().unwrap_or_default().to_owned()
}

/// A python process outside the sandbox, running as `nobody` (the agent's uid), holding two
/// unconnected TCP sockets. Killed on drop.
struct SameUidHolder {
    child: Child,
    pid: String,
    fds: (String, String),
}

impl SameUidHolder {
    fn start() -> Self {
        let (uid, gid) = nobody();
        let code = "import socket,os,time\na=socket.socket(); b=socket.socket()\nprint(os.getpid(), a.fileno(), b.fileno(), flush=True)\ntime.sleep(60)";
        let mut child = Command::new(PY)
            .args(["-c", code])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the same-uid holder");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("holder output");
        let parts: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(parts.len(), 3, "holder printed {line:?}");
        Self { child, pid: parts[0].clone(), fds: (parts[1].clone(), parts[2].clone()) }
    }
}

impl Drop for SameUidHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Takes fd `argv[2]` of process `argv[1]` with pidfd_getfd(2) and connects it to
/// 127.0.0.1:`argv[3]`. Prints `ok` or `err <step> <errno>`.
const STEAL_SOCKET: &str = r#"
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
pid, fdnum, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
try:
    pidfd = os.pidfd_open(pid)
except OSError as e:
    print("err pidfd_open", e.errno); sys.exit(1)
fd = libc.syscall(438, pidfd, fdnum, 0)
if fd < 0:
    print("err pidfd_getfd", ctypes.get_errno()); sys.exit(1)
s = socket.socket(fileno=fd); s.settimeout(3)
try:
    s.connect(("127.0.0.1", port)); print("ok")
except OSError as e:
    print("err connect", e.errno); sys.exit(1)
"#;

/// PTRACE_SEIZE on process `argv[1]`. Prints `ok` or `err <errno>`.
const PTRACE_SEIZE: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
r = libc.ptrace(0x4206, int(sys.argv[1]), None, None)
print("ok" if r == 0 else "err %d" % ctypes.get_errno())
"#;

/// A process of the agent's own uid outside the sandbox can lend the agent a socket that was
/// created outside the sandbox cgroup: none of the cgroup programs run for it, so it connects
/// anywhere. (With a Landlock domain, pidfd_getfd on a process outside it is refused.)
#[test]
fn escape_socket_taken_from_same_uid_process_outside() {
    require_root();
    let target = Listener::new("127.0.0.1:0");
    let holder = SameUidHolder::start();
    let scratch = Scratch::new("steal");
    let policy = scratch.file("p.yaml", NOBODY_ALLOW_NOTHING);
    let port = target.addr.port().to_string();

    let inside = py_inside(&policy, STEAL_SOCKET, &[&holder.pid, &holder.fds.0, &port]);
    std::thread::sleep(Duration::from_millis(200));
    let reached = target.accepted();

    let outside = py_outside(STEAL_SOCKET, &[&holder.pid, &holder.fds.1, &port], true);
    assert_eq!(outside, "ok", "control: the same steal-and-connect as nobody outside must work");
    assert!(wait_until(3, || target.accepted() > reached), "control connection never arrived");

    assert!(inside.starts_with("err"), "the sandbox connected with a socket taken from pid {}: {inside}", holder.pid);
    assert_eq!(reached, 0, "the listener saw a connection from the sandbox");
}

/// The agent can ptrace (and so run code in) any process of its own uid outside the sandbox.
#[test]
fn escape_ptrace_of_same_uid_process_outside() {
    require_root();
    let victim = SameUidHolder::start();
    let scratch = Scratch::new("ptrace");
    let policy = scratch.file("p.yaml", NOBODY_ALLOW_NOTHING);

    let inside = py_inside(&policy, PTRACE_SEIZE, &[&victim.pid]);
    let control = SameUidHolder::start();
    let outside = py_outside(PTRACE_SEIZE, &[&control.pid], true);
    assert_eq!(outside, "ok", "control: nobody outside the sandbox can ptrace another nobody process");
    assert!(inside.starts_with("err"), "the sandbox attached to pid {} outside it: {inside}", victim.pid);
}

/// Connects the socket at fd `argv[1]` to 127.0.0.1:`argv[2]`. Prints `ok` or `err <errno>`.
const CONNECT_FD: &str = r#"
import socket, sys
try:
    s = socket.socket(fileno=int(sys.argv[1])); s.settimeout(3)
    s.connect(("127.0.0.1", int(sys.argv[2]))); print("ok")
except OSError as e:
    print("err", e.errno); sys.exit(1)
"#;

/// An unconnected TCP socket (close-on-exec), owned by the caller.
fn tcp_socket() -> std::os::fd::OwnedFd {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// `cmd` with `fd` installed as descriptor 200 (inheritable) in the child only.
fn with_fd_200(cmd: &mut Command, fd: &std::os::fd::OwnedFd) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 200) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A socket the invoker of `leash run` left inheritable reaches the agent, and since it was
/// created outside the sandbox cgroup nothing confines it.
#[test]
fn escape_socket_inherited_from_the_invoker() {
    require_root();
    let target = Listener::new("127.0.0.1:0");
    let scratch = Scratch::new("inherit");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let port = target.addr.port().to_string();

    let inside_sock = tcp_socket();
    let mut run = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", CONNECT_FD, "200", &port]);
    with_fd_200(&mut run, &inside_sock);
    let out = run.output().expect("running leash");
    let inside = stdout(&out).lines().next().unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(200));
    let reached = target.accepted();

    let outside_sock = tcp_socket();
    let mut control = Command::new(PY);
    control.args(["-c", CONNECT_FD, "200", &port]);
    with_fd_200(&mut control, &outside_sock);
    let outside = stdout(&control.output().expect("python3")).lines().next().unwrap_or_default().to_owned();
    assert_eq!(outside, "ok", "control: an inherited socket connects outside the sandbox");

    assert!(inside.starts_with("err"), "an inherited socket connected from inside: {inside} {}", stderr(&out));
    assert_eq!(reached, 0, "the listener saw a connection from the sandbox");
}

/// AF_VSOCK never passes through the cgroup inet hooks: in a VM it reaches the hypervisor's
/// vsock listeners. Only the socket is created here, nothing is sent.
#[test]
fn escape_vsock_socket_can_be_created() {
    require_root();
    let code = "import socket\ntry:\n    socket.socket(40, socket.SOCK_STREAM).close(); print('ok')\nexcept OSError as e:\n    print('err', e.errno)";
    let outside = py_outside(code, &[], true);
    if outside != "ok" {
        eprintln!("skipped: this kernel has no AF_VSOCK ({outside})");
        return;
    }
    let scratch = Scratch::new("vsock");
    let policy = scratch.file("p.yaml", NOBODY_ALLOW_NOTHING);
    let inside = py_inside(&policy, code, &[]);
    assert!(inside.starts_with("err"), "the sandbox created an AF_VSOCK socket: {inside}");
}

/// `allowed_ips` is documented as the list of private addresses an endpoint's host may resolve
/// to; without it a name that resolves to loopback must not be dialled.
#[test]
fn escape_name_resolving_to_loopback_without_allowed_ips() {
    require_root();
    let upstream = Listener::http("127.0.0.1:0", "loopback service");
    let port = upstream.addr.port();
    let scratch = Scratch::new("privresolve");
    let endpoint = |extra: &str| {
        format!("version: 1\nnetwork_policies:\n  web:\n    name: web\n    endpoints:\n      - {{ host: localhost, port: {port}, protocol: tcp{extra} }}\n")
    };
    let bare = scratch.file("bare.yaml", &endpoint(""));
    let opted_in = scratch.file("opted.yaml", &endpoint(", allowed_ips: [127.0.0.0/8]"));
    let target = format!("localhost:{port}");

    let control = leash_run(&opted_in, &[], &[PROBE, "get", "proxy", &target]);
    assert!(
        stdout(&control).contains("CONNECT 200 GET 200 loopback service"),
        "control: with allowed_ips the loopback service is reachable: {} {}",
        stdout(&control),
        stderr(&control)
    );
    let before = upstream.accepted();
    let out = leash_run(&bare, &[], &[PROBE, "get", "proxy", &target]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        stdout(&out).contains("CONNECT 403"),
        "the proxy dialled {target} (resolves to loopback) without allowed_ips: {}",
        stdout(&out)
    );
    assert_eq!(upstream.accepted(), before, "the loopback service was reached through the proxy");
}

/// Other spellings of loopback and the unspecified address that do connect outside.
#[test]
fn unspecified_address_forms_are_refused() {
    require_root();
    let v4 = Listener::new("127.0.0.1:0");
    let v6 = Listener::new("[::1]:0");
    let scratch = Scratch::new("forms");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let cases = [
        ("unspec6", format!("tcp [::]:{}", v6.addr.port())),
        ("mapped_unspec", format!("tcp [::ffff:0.0.0.0]:{}", v4.addr.port())),
        ("fastopen6", format!("fastopen {}", v6.addr)),
        ("udp6", format!("udp {}", "[::1]:9")),
    ];
    let probes: Vec<(&str, String)> = cases.iter().map(|(l, a)| (*l, format!("{PROBE} {a}"))).collect();
    let got = sh_inside(&policy, &probes);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!((v4.accepted(), v6.accepted()), (0, 0), "a listener saw a connection from the sandbox: {got:?}");
    for (label, args) in &cases[..2] {
        assert_eq!(netprobe_outside(args), "ok", "control: {args} connects outside");
        assert_eq!(got.get(*label).map(String::as_str), Some("err EPERM"), "{label}: {got:?}");
    }
    for label in ["fastopen6", "udp6"] {
        assert!(got[label].starts_with("err"), "{label}: {got:?}");
    }
}

/// The proxy's port on another loopback address (IPv4 and IPv6) is not the proxy.
#[test]
fn proxy_port_on_other_addresses_is_refused() {
    require_root();
    let scratch = Scratch::new("proxyport");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let addr_file = scratch.0.join("proxy");
    let ready = scratch.0.join("ready");
    let script = format!(
        "echo ${{HTTP_PROXY#http://}} > {af}; i=0; while [ ! -e {rd} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         P=${{HTTP_PROXY##*:}}; P=${{P%/}}\n\
         echo \"other4=$({PROBE} tcp 127.0.0.2:$P)\"\n\
         echo \"other6=$({PROBE} tcp [::1]:$P)\"\n\
         echo \"unspec4=$({PROBE} tcp 0.0.0.0:$P)\"\n\
         echo \"proxy=$({PROBE} tcp proxy)\"\n",
        af = addr_file.display(),
        rd = ready.display()
    );
    let run = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting leash");
    assert!(
        wait_until(10, || std::fs::read_to_string(&addr_file).is_ok_and(|s| s.trim().contains(':'))),
        "sandbox never started"
    );
    let proxy: std::net::SocketAddr =
        std::fs::read_to_string(&addr_file).unwrap().trim().parse().expect("proxy address");
    let p = proxy.port();
    let other4 = Listener::new(&format!("127.0.0.2:{p}"));
    let other6 = Listener::new(&format!("[::1]:{p}"));
    std::fs::write(&ready, "").unwrap();
    let out = run.wait_with_output().expect("leash output");
    let got = parse_labels(&stdout(&out));
    std::thread::sleep(Duration::from_millis(200));

    assert_eq!(got.get("proxy").map(String::as_str), Some("ok"), "the proxy itself: {got:?} {}", stderr(&out));
    for k in ["other4", "other6", "unspec4"] {
        assert_eq!(got.get(k).map(String::as_str), Some("err EPERM"), "{k}: {got:?}");
    }
    assert_eq!((other4.accepted(), other6.accepted()), (0, 0), "a listener on the proxy's port saw the sandbox");
    assert_eq!(netprobe_outside(&format!("tcp 127.0.0.2:{p}")), "ok");
    assert_eq!(netprobe_outside(&format!("tcp [::1]:{p}")), "ok");
}

/// MPTCP (IPPROTO_MPTCP = 262) to anything but the proxy.
#[test]
fn mptcp_is_refused() {
    require_root();
    let code = "import socket,sys\ntry:\n    s=socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); s.settimeout(3)\n    s.connect(('127.0.0.1', int(sys.argv[1]))); print('ok')\nexcept OSError as e:\n    print('err', e.errno)";
    let outside_target = Listener::new("127.0.0.1:0");
    let outside = py_outside(code, &[&outside_target.addr.port().to_string()], false);
    if outside.starts_with("err") && outside_target.accepted() == 0 {
        eprintln!("skipped: MPTCP unavailable here ({outside})");
        return;
    }
    assert_eq!(outside, "ok");
    let target = Listener::new("127.0.0.1:0");
    let scratch = Scratch::new("mptcp");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let inside = py_inside(&policy, code, &[&target.addr.port().to_string()]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(inside, format!("err {}", libc::EPERM), "MPTCP from the sandbox");
    assert_eq!(target.accepted(), 0);
}

/// Datagram variants confinement.rs does not try: sendmsg(2), UDP-Lite, an IPv4-mapped
/// destination on an IPv6 socket.
#[test]
fn udp_variants_are_refused() {
    require_root();
    let code = r#"
import socket, sys
port = int(sys.argv[1]); res = []
def one(f):
    try:
        f(); res.append("ok")
    except OSError as e:
        res.append("err%d" % e.errno)
one(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendmsg([b"probe"], [], 0, ("127.0.0.1", port)))
one(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136).sendto(b"probe", ("127.0.0.1", port)))
one(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"probe", ("::ffff:127.0.0.1", port)))
print(" ".join(res))
"#;
    let sink = UdpSink::new("127.0.0.1:0");
    let port = sink.addr.port().to_string();
    let scratch = Scratch::new("udpvar");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));
    let inside = py_inside(&policy, code, &[&port]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.received(), 0, "a datagram from the sandbox arrived: {inside}");
    let eperm = format!("err{}", libc::EPERM);
    assert_eq!(inside, [eperm.as_str(); 3].join(" "));
    assert_eq!(py_outside(code, &[&port], false), "ok ok ok", "control: all three send outside");
    // UDP-Lite is delivered only to UDP-Lite sockets, so the UDP sink counts the other two.
    assert!(wait_until(3, || sink.received() >= 2), "control datagrams never arrived");
}

/// Listens on 127.0.0.1, writes the port to `argv[1]`, waits up to 4 s for one connection.
const LISTEN_ONCE: &str = r#"
import os, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(5); l.settimeout(4)
tmp = sys.argv[1] + ".tmp"; open(tmp, "w").write(str(l.getsockname()[1])); os.rename(tmp, sys.argv[1])
try:
    l.accept(); print("ok")
except OSError as e:
    print("err", e)
"#;

fn connect_to_port_in(file: &PathBuf) -> std::io::Result<()> {
    assert!(
        wait_until(10, || std::fs::read_to_string(file).is_ok_and(|s| s.trim().parse::<u16>().is_ok())),
        "listener never started"
    );
    let port: u16 = std::fs::read_to_string(file).unwrap().trim().parse().unwrap();
    std::net::TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(2))
        .map(drop)
}

/// A listener inside the sandbox is not reachable from outside (ingress).
#[test]
fn listener_inside_is_not_reachable_from_outside() {
    require_root();
    let scratch = Scratch::new("ingress");
    let policy = scratch.file("p.yaml", &policy_allowing(&[]));

    let control_file = scratch.0.join("control-port");
    let control = Command::new(PY)
        .args(["-c", LISTEN_ONCE, control_file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    assert!(connect_to_port_in(&control_file).is_ok(), "control: the listener outside accepts");
    assert_eq!(stdout(&control.wait_with_output().unwrap()).trim(), "ok");

    let port_file = scratch.0.join("port");
    let run =
        leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", LISTEN_ONCE, port_file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leash");
    let outside = connect_to_port_in(&port_file);
    let out = run.wait_with_output().expect("leash output");
    assert!(outside.is_err(), "a connection from outside reached the listener inside");
    assert!(stdout(&out).starts_with("err"), "the listener inside accepted a connection: {}", stdout(&out));
}

/// CONNECT authorities that name loopback in another spelling, and absolute-form requests,
/// when the policy allows only 127.0.0.1:<one port>.
#[test]
fn proxy_refuses_other_spellings_of_the_allowed_host() {
    require_root();
    let allowed = Listener::http("127.0.0.1:0", "allowed");
    let other = Listener::http("127.0.0.1:0", "must not be reached");
    let other6 = Listener::http("[::1]:0", "must not be reached");
    let scratch = Scratch::new("authority");
    let policy = scratch.file("p.yaml", &policy_allowing(&[allowed.addr.port()]));
    let (a, b, b6) = (allowed.addr.port(), other.addr.port(), other6.addr.port());
    let targets = [
        ("allowed", format!("127.0.0.1:{a}")),
        ("other_port", format!("127.0.0.1:{b}")),
        ("localhost", format!("localhost:{b}")),
        ("upper", format!("LOCALHOST:{b}")),
        ("decimal", format!("2130706433:{b}")),
        ("short", format!("127.1:{b}")),
        ("hex", format!("0x7f000001:{b}")),
        ("trailing_dot", format!("127.0.0.1.:{b}")),
        ("userinfo", format!("user@127.0.0.1:{b}")),
        ("ipv6", format!("[::1]:{b6}")),
        ("mapped", format!("[::ffff:127.0.0.1]:{b}")),
    ];
    let probes: Vec<(&str, String)> = targets.iter().map(|(l, t)| (*l, format!("{PROBE} get proxy {t}"))).collect();
    let absolute = format!(
        "P=${{HTTP_PROXY##*:}}; P=${{P%/}}; {PY} -c \"import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3); s.sendall(b'GET http://127.0.0.1:{b}/ HTTP/1.1\\r\\nHost: 127.0.0.1:{b}\\r\\n\\r\\n'); print(s.recv(100).split(b' ')[1].decode())\" $P"
    );
    let mut probes = probes;
    probes.push(("absolute", absolute));
    let got = sh_inside(&policy, &probes);
    std::thread::sleep(Duration::from_millis(200));

    assert_eq!(got.get("allowed").map(String::as_str), Some("CONNECT 200 GET 200 allowed"), "{got:?}");
    // Refused either as a host no policy lists (403) or as an ambiguous spelling (400).
    for (label, _) in &targets[1..] {
        let answer = got.get(*label).map(String::as_str);
        assert!(matches!(answer, Some("CONNECT 403") | Some("CONNECT 400")), "{label}: {got:?}");
    }
    assert!(got.get("absolute").is_some_and(|s| s.starts_with('4') || s.starts_with('5')), "absolute-form: {got:?}");
    assert_eq!(other.accepted() + other6.accepted(), 0, "the proxy dialled an upstream the policy does not list");
    // Each spelling does name a reachable loopback listener, so a proxy that resolved before
    // matching would have connected.
    for host in ["localhost", "2130706433", "127.1", "0x7f000001"] {
        use std::net::ToSocketAddrs as _;
        let resolved: Vec<_> = (host, b).to_socket_addrs().map(|i| i.collect()).unwrap_or_default();
        assert!(
            resolved.iter().any(|r: &std::net::SocketAddr| r.ip().is_loopback()),
            "control: {host} resolves to loopback: {resolved:?}"
        );
    }
}
