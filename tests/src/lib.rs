//! Test harness: the `leash` binary, local listeners that count what reaches them, policy files,
//! and host facts (cgroup2 mount). Everything listens on loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod dns;
pub mod kube_api;
pub mod manifests;
pub mod node_spec;
pub mod upstream;

/// The leash binary under test: `$LEASH_BIN`, else `target/debug/leash`.
pub fn leash_bin() -> PathBuf {
    let path = std::env::var_os("LEASH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/leash"));
    assert!(path.exists(), "{} not found: run the tests with `cargo xtask test`", path.display());
    path
}

/// The release build as installed (statically linked), `$LEASH_STATIC_BIN`: for the tests that
/// run it beside the debug build. `cargo xtask test` builds it.
pub fn leash_static_bin() -> PathBuf {
    let path = std::env::var_os("LEASH_STATIC_BIN").map(PathBuf::from).unwrap_or_default();
    assert!(path.is_file(), "LEASH_STATIC_BIN is not set to a file: run the tests with `cargo xtask test`");
    path
}

/// Fails the test (it cannot pass without root) with a message saying so.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests load eBPF programs and must run as root");
}

/// `leash` with arguments, ready to run.
pub fn leash(args: &[&str]) -> Command {
    let mut c = Command::new(leash_bin());
    c.args(args);
    c
}

/// Runs `leash run --policy POLICY [extra] -- CMD...` and returns its output.
pub fn leash_run(policy: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let mut c = leash(&["run", "--policy"]);
    c.arg(policy).args(extra).arg("--").args(cmd);
    c.output().expect("running leash")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Where scratch directories go: under `target/`, not `/tmp`, since the agent's `/tmp` is a
/// private one (the test and the agent would not see the same files there).
pub fn scratch_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scratch")
}

/// Gives `target/scratch` (created by tests running as root, e.g. through `cargo xtask test`'s
/// sudo runner) the owner of `target/`, so the user whose build it is can still clean it.
fn own_like_target(root: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(meta), Some(Ok(parent))) = (root.metadata(), root.parent().map(|p| p.metadata())) else { return };
    if meta.uid() != parent.uid() || meta.gid() != parent.gid() {
        // Best effort: a test that is not root cannot chown, and needs not.
        let _ = std::os::unix::fs::chown(root, Some(parent.uid()), Some(parent.gid()));
    }
}

/// A scratch directory every user can write to (sticky, like /tmp), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = scratch_root().join(format!(
            "leash-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("creating scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod scratch dir");
        own_like_target(&scratch_root());
        Scratch(dir)
    }

    /// Writes `name` (mode 0644) and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("writing scratch file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod scratch file");
        p
    }

    /// Writes `name` readable by root only (mode 0600), as a credentials file must be.
    pub fn secret_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.file(name, text);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod scratch file");
        p
    }

    /// A subdirectory owned by `uid` (mode 0755), like a user's own checkout.
    pub fn owned_dir(&self, name: &str, uid: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).expect("creating scratch subdirectory");
        std::os::unix::fs::chown(&p, Some(uid), None).expect("chown scratch subdirectory");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod scratch subdirectory");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `/usr/bin/git ARGS` in `dir` with a fixed identity and branch name; fails the test if
/// git fails.
pub fn git(args: &[&str], dir: &Path) {
    let out = Command::new("/usr/bin/git")
        .args(["-c", "user.name=leash", "-c", "user.email=leash@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
}

/// A policy allowing only the given loopback ports (host 127.0.0.1), no filesystem layer, and
/// no transparent mode: a connect anywhere else is refused by the kernel (EPERM).
pub fn policy_allowing(ports: &[u16]) -> String {
    let mut yaml = String::from(
        "version: 1\nnetwork:\n  transparent: false\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n",
    );
    for p in ports {
        yaml.push_str(&format!("      - {{ host: 127.0.0.1, port: {p}, protocol: tcp }}\n"));
    }
    if ports.is_empty() {
        yaml = "version: 1\nnetwork:\n  transparent: false\nnetwork_policies: {}\n".into();
    }
    yaml
}

/// A policy with one network policy `local` holding `endpoints` (YAML list items, already
/// indented by 6) and `credentials` (YAML mapping body indented by 2, or empty).
pub fn local_policy(endpoints: &str, credentials: &str) -> String {
    let mut y = format!("version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n{endpoints}");
    if !credentials.is_empty() {
        y.push_str("credentials:\n");
        y.push_str(credentials);
    }
    y
}

/// A TCP listener on loopback that counts accepted connections.
pub struct Listener {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    pub fn new(bind: &str) -> Self {
        Self::serving(bind, None)
    }

    /// A listener answering every request with `200 OK` and `body` (a tiny HTTP server).
    pub fn http(bind: &str, body: &'static str) -> Self {
        Self::serving(bind, Some(body))
    }

    fn serving(bind: &str, body: Option<&'static str>) -> Self {
        let l = TcpListener::bind(bind).expect("binding test listener");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut conn, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        if let Some(body) = body {
                            std::thread::spawn(move || answer_http(&mut conn, body));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, accepted, stop }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer_http(conn: &mut std::net::TcpStream, body: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return,
        }
    }
    let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// A UDP socket on loopback that counts datagrams received.
pub struct UdpSink {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl UdpSink {
    pub fn new(bind: &str) -> Self {
        let s = UdpSocket::bind(bind).expect("binding udp sink");
        s.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let addr = s.local_addr().expect("local addr");
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !st.load(Ordering::SeqCst) {
                if s.recv(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { addr, received, stop }
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The mount points of filesystem type `fstype`, read from mountinfo, in mount order.
fn mount_points(fstype: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != fstype {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .collect()
}

fn mount_point(fstype: &str) -> Option<PathBuf> {
    mount_points(fstype).into_iter().next()
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> PathBuf {
    mount_point("cgroup2").expect("cgroup2 must be mounted on the test host")
}

/// Names of `leash-*` cgroups whose owner pid is `pid`.
pub fn sandbox_cgroups_of(pid: u32) -> Vec<String> {
    let prefix = format!("leash-{pid}-");
    std::fs::read_dir(cgroup2_root())
        .expect("listing cgroup root")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The bpffs leash uses (`/sys/fs/bpf`, never another bpffs mount), if mounted.
pub fn bpffs_root() -> Option<PathBuf> {
    mount_points("bpf").into_iter().find(|p| p == Path::new("/sys/fs/bpf"))
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Issue 19 item 4, as a Python script (`TARGET EXECUTABLE TRIES`): a child connects to the
/// proxy, then execs the listed executable, and its parent (not listed) uses the socket they
/// share; prints `through N`, the CONNECTs that got 200. The proxy must not lend the listed executable's rights
/// to a process holding the same socket.
pub const PY_EXEC_AFTER_CONNECT: &str = r#"
import os, socket, sys, time
host, port = os.environ["HTTP_PROXY"].split("//")[1].rstrip("/").split(":")
got = 0
for _ in range(int(sys.argv[3])):
    s = socket.socket()
    s.set_inheritable(True)
    child = os.fork()
    if child == 0:
        s.connect((host, int(port)))
        os.execv(sys.argv[2], [sys.argv[2], "2"])
    time.sleep(0.2)
    try:
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (sys.argv[1], sys.argv[1])).encode())
        s.settimeout(3)
        if s.recv(200).split(b" ")[1] == b"200":
            got += 1
    except Exception:
        pass
    s.close()
    os.kill(child, 9)
    os.waitpid(child, 0)
print("through", got)
"#;

/// Whether this kernel runs the BPF LSM (`bpf` in `/sys/kernel/security/lsm`).
pub fn lsm_works_here() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|l| l.trim().split(',').any(|m| m == "bpf"))
}

/// A plain HTTP/1.1 GET of `path` from `addr` (`host:port`, in the calling thread's network
/// namespace), read to the end: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    let status = status.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// A Python function, `flood(address, n)`: `n` non-blocking connects to `address` (a `(host,
/// port)` tuple), each socket closed at once: with a reset if it connected, else unconnected.
pub const PY_FLOOD: &str = r#"
def flood(address, n):
    import socket, struct
    reset = struct.pack("ii", 1, 0)
    for _ in range(n):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        c.setblocking(False)
        try:
            c.connect(address)
        except BlockingIOError:
            pass
        c.close()
"#;
