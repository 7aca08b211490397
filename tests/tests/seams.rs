//! The seams between a sandbox and its host, attacked the way an agent would: what `leash run`
//! reads, writes or shares with the host, around the kernel's network rules. Each test makes
//! the attack as the unprivileged agent and checks it fails, with a control showing that the
//! same step works where it should (so the test can fail).

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use leash_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const PY: &str = "/usr/bin/python3";

/// uid and gid of `nobody`, the agent in these tests.
fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "user nobody must exist");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A policy that runs the agent as `nobody` and allows `ports` on 127.0.0.1 (tunnelled).
fn nobody_policy(ports: &[u16]) -> String {
    policy_allowing(ports).replacen("version: 1\n", "version: 1\nprocess: { run_as_user: nobody }\n", 1)
}

/// [`nobody_policy`] with the working directory read-write, system directories readable and
/// `extra` keys (`, key: value`) in `filesystem_policy`.
fn workdir_policy(extra: &str) -> String {
    format!(
        "{}filesystem_policy: {{ include_workdir: true, read_only: [/usr, /lib, /lib64, /bin, /etc, /proc, /dev]{extra} }}\n",
        nobody_policy(&[])
    )
}

/// A git repository `checkout` in `scratch`, made and owned by `nobody`, the agent's user.
fn nobodys_repository(scratch: &Scratch) -> std::path::PathBuf {
    let (uid, gid) = nobody();
    let checkout = scratch.owned_dir("checkout", uid);
    let git = Command::new("git").args(["init", "-q"]).current_dir(&checkout).uid(uid).gid(gid).output().unwrap();
    assert!(git.status.success(), "git init: {}", stderr(&git));
    checkout
}

/// `sh -c script` run as the agent under `policy`, in `dir`: its output.
fn agent_sh(policy: &Path, dir: &Path, script: &str) -> std::process::Output {
    leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).expect("chown");
}

/// Waits for `path` to hold a line and returns it.
fn wait_for_line(path: &Path, secs: u64) -> String {
    assert!(
        wait_until(secs, || std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))),
        "{} never written",
        path.display()
    );
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

// 1. The agent rewrites its own policy.

#[test]
fn the_agent_cannot_rewrite_its_policy() {
    require_root();
    let (uid, _) = nobody();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-policy");
    // A user's checkout: the agent runs as the user who owns it.
    let checkout = scratch.owned_dir("checkout", uid);
    let policy = checkout.join("policy.yaml");
    std::fs::write(&policy, nobody_policy(&[])).unwrap();
    chown(&policy, uid);
    let opened = nobody_policy(&[target.addr.port()]);
    let script = format!("printf '%s' '{opened}' > {}; sleep 1.5; {PROBE} get proxy {}", policy.display(), target.addr);
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", &script]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), opened, "the agent's edit is the attack's premise");
    assert!(!err.contains("policy reloaded"), "leash reloaded a policy the agent wrote: {err}");
    assert!(err.contains("not reloaded"), "leash must say the policy is frozen: {err}");
    assert!(text.contains("CONNECT 403"), "the rewritten policy took effect: {text} {err}");
    assert_eq!(target.accepted(), 0);
}

/// `leash run` on `policy` with an agent that runs `before`, waits 2 s, then runs `after`; the
/// policy file is rewritten to `next` between the two.
fn run_rewriting_policy(
    scratch: &Scratch,
    policy: &Path,
    before: &str,
    after: &str,
    next: &str,
) -> std::process::Output {
    let flag = scratch.0.join("asked");
    let script = format!("{before}; touch {}; sleep 2; {after}", flag.display());
    let child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(10, || flag.exists()), "the agent never started");
    std::fs::write(policy, next).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_policy_only_root_can_change_is_still_reloaded() {
    require_root();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-reload");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let probe = format!("{PROBE} get proxy {}", target.addr);
    let out = run_rewriting_policy(&scratch, &policy, &probe, &probe, &nobody_policy(&[target.addr.port()]));
    let text = stdout(&out);
    assert!(text.contains("CONNECT 403"), "before the change: {text}");
    assert!(text.contains("CONNECT 200 GET 200 reached"), "root's change was not reloaded: {text} {}", stderr(&out));
}

/// A reload that brings a `kernel:` section to a sandbox where BPF-LSM is not in force (this
/// host) is refused, with the previous policy kept: it would otherwise read as enforced.
#[test]
fn a_reload_cannot_bring_kernel_rules_nothing_enforces() {
    require_root();
    if lsm_works_here() {
        eprintln!("BPF-LSM works here: the reload would be put in force; nothing to check");
        return;
    }
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-reload-kernel");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let probe = format!("{PROBE} get proxy {}", target.addr);
    let next = format!("{}kernel: {{ deny: [mount] }}\n", nobody_policy(&[target.addr.port()]));
    let out = run_rewriting_policy(&scratch, &policy, "true", &probe, &next);
    assert!(stderr(&out).contains("reload rejected") && stderr(&out).contains("BPF-LSM"), "{}", stderr(&out));
    assert!(stdout(&out).contains("CONNECT 403"), "the rejected policy was put in force: {}", stdout(&out));
}

/// A reload that turns transparent mode on or off is refused (the kernel redirect is set when the
/// sandbox starts), with the previous policy kept.
#[test]
fn a_reload_cannot_change_transparent_mode() {
    require_root();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-reload-transparent");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let probe = format!("{PROBE} get proxy {}", target.addr);
    let next = nobody_policy(&[target.addr.port()]).replace("network:\n  transparent: false\n", "");
    assert!(!next.contains("transparent"), "the next policy must leave transparent mode to its default");
    let out = run_rewriting_policy(&scratch, &policy, "true", &probe, &next);
    assert!(
        stderr(&out).contains("reload rejected") && stderr(&out).contains("network.transparent"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("CONNECT 403"), "the rejected policy was put in force: {}", stdout(&out));
}

#[test]
fn a_planted_policy_link_to_a_root_only_file_is_refused_and_not_shown() {
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-policy-link");
    let secret = scratch.secret_file("shadow", "root:$6$SECRET-HASH-LINE:19000:0:99999:7:::\n");
    let checkout = scratch.owned_dir("checkout", uid);
    let link = checkout.join("policy.yaml");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    chown(&link, uid);
    let out = leash_run(&link, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stderr(&out).contains("SECRET-HASH-LINE"), "leash printed the file behind the link: {}", stderr(&out));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

// 2. Anyone on the host uses the agent's proxy.

/// An agent shell script: writes its proxy's `IP:PORT` to `addr_file`, runs `then`, and waits
/// until `done` exists (20 s at most).
fn proxy_then_wait(addr_file: &Path, then: &str, done: &Path) -> String {
    format!(
        "echo ${{HTTP_PROXY#http://}} > {}; {then}; i=0; while [ ! -e {} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        addr_file.display(),
        done.display()
    )
}

#[test]
fn only_the_sandbox_can_use_its_proxy() {
    require_root();
    let (uid, gid) = nobody();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-proxy");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[target.addr.port()]));
    let addr_file = scratch.0.join("proxy");
    let done = scratch.0.join("done");
    let script = proxy_then_wait(&addr_file, &format!("{PROBE} get proxy {}", target.addr), &done);
    let child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proxy = wait_for_line(&addr_file, 10);
    assert!(wait_until(10, || target.accepted() == 1), "the agent itself must reach the target through its proxy");
    // Another local user, then root, both outside the sandbox.
    let other_user = Command::new(PROBE).args(["get", &proxy, &target.addr.to_string()]).uid(uid).gid(gid).output();
    let root = Command::new(PROBE).args(["get", &proxy, &target.addr.to_string()]).output();
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("CONNECT 200 GET 200 reached"), "{} {}", stdout(&out), stderr(&out));
    for (who, attempt) in [("another user", other_user), ("root outside the sandbox", root)] {
        let text = stdout(&attempt.unwrap());
        assert!(!text.contains("CONNECT 200"), "{who} used the agent's proxy: {text}");
    }
    assert_eq!(target.accepted(), 1, "someone outside the sandbox reached the target through its proxy");
    assert!(stderr(&out).contains("not from this sandbox"), "{}", stderr(&out));
}

/// An agent that connects to its proxy from `127.0.0.2`, writes "PROXY CLIENT_PORT COOKIE" to
/// `held` and keeps the socket until `done` exists (10 s at most), then closes it.
fn other_address_agent(held: &Path, done: &Path) -> String {
    format!(
        r#"
import os, socket, struct, time
host, port = os.environ["HTTP_PROXY"].split("//")[1].rstrip("/").split(":")
s = socket.socket()
s.bind(("127.0.0.2", 0))
s.connect((host, int(port)))
cookie = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0]
open("{held}", "w").write("%s:%s %d %d\n" % (host, port, s.getsockname()[1], cookie))
for _ in range(200):
    if os.path.exists("{done}"):
        break
    time.sleep(0.05)
s.close()
"#,
        held = held.display(),
        done = done.display()
    )
}

/// The proxy admits only peers on its own address, and finds the sandbox's record by the socket
/// at the client end. So the agent connects from another local address, `127.0.0.2:P`, and keeps
/// that socket, leaving `127.0.0.1:P` free for another user, who then connects from it. The
/// socket at `127.0.0.1:P` is that user's, which the sandbox never recorded, so that user is
/// refused like any other.
#[test]
fn a_port_the_agent_holds_on_another_address_serves_nobody_else() {
    require_root();
    let (uid, gid) = nobody();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-other-address");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[target.addr.port()]));
    let (held, done) = (scratch.0.join("held"), scratch.0.join("done"));
    let agent = other_address_agent(&held, &done);
    // Another local user, from the port the agent holds on 127.0.0.2, asks for the target.
    let outsider = format!(
        r#"
import socket, sys
proxy, port = sys.argv[1], int(sys.argv[2])
host, proxy_port = proxy.split(":")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.connect((host, int(proxy_port)))
print("connected", flush=True)
try:
    s.sendall(b"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    print("answer:", s.recv(200).split(b"\r\n")[0].decode() or "none")
except OSError as e:
    print("answer:", e)
"#,
        target = target.addr
    );
    let child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", &agent])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&held, 10);
    let fields: Vec<&str> = line.split(' ').collect();
    let (proxy, port) = (fields[0], fields[1]);
    let attempt = Command::new(PY).args(["-c", &outsider, proxy, port]).uid(uid).gid(gid).output().unwrap();
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = format!("{}{}", stdout(&attempt), stderr(&attempt));
    assert!(text.contains("connected\nanswer:"), "the outsider never reached the proxy: {text}");
    assert!(!text.contains(" 200"), "another user was served as the sandbox: {text}");
    assert_eq!(target.accepted(), 0, "another user reached the target through the agent's proxy");
    let refused = format!("127.0.0.1:{port}: not from this sandbox");
    assert!(stderr(&out).contains(&refused), "the outsider's refusal is not recorded: {}", stderr(&out));
}

/// The agent connects to its proxy from another local address (which the proxy refuses) and
/// closes in the usual way; a FIN close keeps a record for the proxy to take, so if the proxy
/// took only the records of connections it admits, every such connection would leave one in the
/// host's owner map, shared by every sandbox, until the map filled and evicted other sandboxes'
/// records. The proxy takes the record of a connection it refuses too: while the agent still holds
/// its socket, the record must go.
#[test]
fn a_refused_connection_from_another_address_leaves_no_record() {
    require_root();
    let scratch = Scratch::new("seam-other-address-record");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let (held, done) = (scratch.0.join("held"), scratch.0.join("done"));
    let agent = other_address_agent(&held, &done);
    let child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", &agent])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&held, 10);
    let cookie: u64 = line.split(' ').nth(2).and_then(|c| c.parse().ok()).expect("the agent's socket cookie");
    let generation = leash::kernel::generation::Generation::open_host().expect("the host's generation");
    let taken = wait_until(5, || generation.owner(cookie).is_none());
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("connect from the proxy's own address"), "the proxy did not refuse it: {err}");
    assert!(!err.contains("not from this sandbox"), "the sandbox's own connection was called an outsider's: {err}");
    assert!(taken, "the refused connection's record stayed in the host's map");
}

/// The agent resets its own connections to its proxy before the proxy reads them: a reset
/// leaves nothing at the client end to say whose the connection was, and the proxy used to call
/// each one "not from this sandbox". The agent could then fill leash's terminal and audit with
/// outsiders that were never there, and bury a real probe of its proxy among them. Such
/// connections are counted in the summary, apart from denials.
#[test]
fn the_agents_own_resets_are_not_reported_as_outsiders() {
    require_root();
    let scratch = Scratch::new("seam-agent-resets");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let audit = scratch.0.join("audit.jsonl");
    let agent = r#"
import os, socket, struct, time
host, port = os.environ["HTTP_PROXY"].split("//")[1].rstrip("/").split(":")
for _ in range(200):
    s = socket.socket()
    s.connect((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
time.sleep(0.5)
print("done", flush=True)
"#;
    let out = leash(&[
        "run",
        "--policy",
        policy.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
        "--",
        PY,
        "-c",
        agent,
    ])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(out.status.success() && stdout(&out).contains("done"), "{}", stderr(&out));
    let err = stderr(&out);
    let logged = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(!err.contains("not from this sandbox"), "the agent's own resets were reported as outsiders: {err}");
    assert!(!err.contains("from outside the sandbox"), "the summary counted them as outsiders: {err}");
    assert!(!logged.contains("proxy_serves_own_sandbox_only"), "the audit log holds outsiders: {logged}");
    // The control: the proxy saw them (most reset before it read them; any it read are served).
    assert!(err.contains("reset before it read them"), "the resets were not counted: {err}");
}

/// Any local user can connect to the agent's proxy. Each refusal is audited, but its line on
/// leash's stderr (the user's terminal) has a budget a second of its own, apart from the agent's
/// denials; the summary still counts every one.
#[test]
fn outsiders_cannot_flood_leashs_terminal() {
    require_root();
    let scratch = Scratch::new("seam-outsider-flood");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let (addr_file, done) = (scratch.0.join("proxy"), scratch.0.join("done"));
    let script = proxy_then_wait(&addr_file, "true", &done);
    let child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proxy = wait_for_line(&addr_file, 10);
    // Root outside the sandbox connects 300 times, each closed in the usual way.
    let flood = r#"
import socket, sys, time
host, port = sys.argv[1].split(":")
for _ in range(300):
    socket.create_connection((host, int(port))).close()
time.sleep(1.5)
"#;
    let started = std::time::Instant::now();
    let attempt = Command::new(PY).args(["-c", flood, &proxy]).output().unwrap();
    let elapsed = started.elapsed();
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(attempt.status.success(), "{}", stderr(&attempt));
    let err = stderr(&out);
    let shown = err.lines().filter(|l| l.contains("not from this sandbox")).count();
    // 20 a second, in each second the flood and the proxy's last refusals overlapped.
    let budget = 20 * (elapsed.as_secs() as usize + 2);
    assert!(shown > 0, "no outsider was shown: {err}");
    assert!(shown <= budget, "{shown} outsider lines on leash's stderr in {elapsed:?} (budget {budget})");
    assert!(err.contains("300 connection(s) from outside the sandbox"), "the summary must count them all: {err}");
}

// 3. TIOCSTI on the shared terminal.

/// A pseudo-terminal standing in for the user's terminal: (master, slave) descriptors.
fn user_terminal() -> (std::fs::File, std::fs::File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors; the null pointers leave name, termios and size unset.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here.
    unsafe {
        use std::os::fd::FromRawFd as _;
        (std::fs::File::from_raw_fd(master), std::fs::File::from_raw_fd(slave))
    }
}

/// Whatever a reader of the user's terminal would get now (the shell after leash exits).
fn pending_input(slave: &std::fs::File) -> String {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fcntl on a descriptor owned by the caller.
    unsafe { libc::fcntl(slave.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = [0u8; 256];
    let n = (&*slave).read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs leash with the user's terminal as its controlling terminal, and `stdin` as its stdin.
fn run_on_terminal(policy: &Path, script: &str, slave: &std::fs::File, stdin_is_terminal: bool) -> String {
    use std::os::fd::AsRawFd as _;
    let fd = slave.as_raw_fd();
    let mut cmd = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", script]);
    cmd.stdout(slave.try_clone().unwrap()).stderr(Stdio::piped());
    if stdin_is_terminal {
        cmd.stdin(slave.try_clone().unwrap());
    } else {
        cmd.stdin(Stdio::null());
    }
    // SAFETY: setsid and ioctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    stderr(&cmd.output().unwrap())
}

const INJECT: &str = "import fcntl, termios, os\n\
    for fd in (0, 1, 2):\n\
    \x20   try:\n\
    \x20       [fcntl.ioctl(fd, termios.TIOCSTI, bytes([c])) for c in b'PWNED\\n']\n\
    \x20   except OSError:\n\
    \x20       pass\n\
    try:\n\
    \x20   t = os.open('/dev/tty', os.O_RDWR)\n\
    \x20   [fcntl.ioctl(t, termios.TIOCSTI, bytes([c])) for c in b'PWNED\\n']\n\
    except OSError:\n\
    \x20   pass\n";

#[test]
fn tiocsti_from_the_agent_does_not_reach_the_users_terminal() {
    require_root();
    let scratch = Scratch::new("seam-tty");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    // Control: the test can see characters pushed into the terminal's input queue.
    let (_m, slave) = user_terminal();
    {
        use std::os::fd::AsRawFd as _;
        for c in b"CONTROL\n" {
            // SAFETY: TIOCSTI reads one byte; root may push input into any terminal.
            assert_eq!(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSTI, c) }, 0, "control TIOCSTI");
        }
    }
    assert!(pending_input(&slave).contains("CONTROL"), "the control's input must be readable");

    for stdin_is_terminal in [true, false] {
        let (_master, slave) = user_terminal();
        let err = run_on_terminal(&policy, INJECT, &slave, stdin_is_terminal);
        let pending = pending_input(&slave);
        assert!(
            !pending.contains("PWNED"),
            "the agent pushed input into the user's terminal (stdin a terminal: {stdin_is_terminal}): {pending:?} {err}"
        );
    }
}

/// With stdin not a terminal (a pipe, `/dev/null`) but stdout the user's terminal, the agent
/// held the user's terminal itself: it read what the user typed next (a password for the next
/// command, say) and could turn echo off for good. The agent's terminal is a pty of its own
/// whenever any of leash's standard descriptors is a terminal.
#[test]
fn a_terminal_that_is_only_stdout_is_not_the_agents_to_read_or_set() {
    use std::os::fd::AsRawFd as _;
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-tty-stdout");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let dir = scratch.owned_dir("work", uid);
    let (mut master, slave) = user_terminal();
    use std::io::Write as _;
    master.write_all(b"typed-ahead-secret\n").unwrap();
    let script = "import os, select, termios\n\
        got = b''\n\
        try:\n\
        \x20   a = termios.tcgetattr(1); a[3] &= ~termios.ECHO; termios.tcsetattr(1, termios.TCSANOW, a)\n\
        except Exception:\n\
        \x20   pass\n\
        try:\n\
        \x20   if select.select([1], [], [], 1.0)[0]: got = os.read(1, 100)\n\
        except Exception:\n\
        \x20   pass\n\
        open('got', 'wb').write(got)\n";
    let fd = slave.as_raw_fd();
    let mut cmd = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", script]);
    cmd.current_dir(&dir).stdin(Stdio::null()).stdout(slave.try_clone().unwrap()).stderr(Stdio::piped());
    // SAFETY: setsid and ioctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let got = std::fs::read_to_string(dir.join("got")).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert!(!got.contains("typed-ahead-secret"), "the agent read the user's keystrokes from its stdout: {got:?}");
    // SAFETY: zeroed termios is a valid value for tcgetattr to fill.
    let mut settings: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr on the test's own terminal.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut settings) }, 0);
    assert!(settings.c_lflag & libc::ECHO != 0, "the agent turned echo off on the user's terminal");
    assert!(pending_input(&slave).contains("typed-ahead-secret"), "the keystrokes stay for the user's shell");
}

/// Under `sudo leash run` the agent runs as the user, who owns the user's terminals: with
/// `/dev/pts` in its view, it opened the user's terminal by path (this one, and any other shell
/// of the user's), read what was typed there and turned echo off, whatever leash did with its
/// own descriptors. The agent's `/dev/pts` is a devpts of its own now, holding only its terminal.
#[test]
fn the_users_terminals_cannot_be_opened_by_path() {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-tty-path");
    let policy = scratch
        .file("policy.yaml", &workdir_policy("").replace("read_only: [", "read_write: [/dev/pts], read_only: ["));
    let dir = scratch.owned_dir("work", uid);
    let (mut master, slave) = user_terminal();
    // The agent's user owns this terminal, as the sudo user owns theirs.
    // SAFETY: fchown on the test's own descriptor.
    assert_eq!(unsafe { libc::fchown(slave.as_raw_fd(), uid, u32::MAX) }, 0);
    let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
    let host = std::fs::metadata(&path).unwrap();
    use std::io::Write as _;
    master.write_all(b"typed-in-another-shell\n").unwrap();
    let script = format!(
        "import os, select, termios\n\
         got = b''\n\
         try:\n\
         \x20   fd = os.open('{}', os.O_RDWR | os.O_NOCTTY)\n\
         \x20   st = os.fstat(fd)\n\
         \x20   got += b'opened %d %d ' % (st.st_dev, st.st_ino)\n\
         \x20   a = termios.tcgetattr(fd); a[3] &= ~termios.ECHO; termios.tcsetattr(fd, termios.TCSANOW, a)\n\
         \x20   if select.select([fd], [], [], 1.0)[0]: got += os.read(fd, 100)\n\
         except OSError as e:\n\
         \x20   got += b'refused %d' % e.errno\n\
         open('got', 'wb').write(got)\n",
        path.display()
    );
    let out = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", &script])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let got = std::fs::read_to_string(dir.join("got")).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    let same = format!("opened {} {} ", host.dev(), host.ino());
    assert!(!got.starts_with(&same), "the agent opened the user's terminal {}: {got:?}", path.display());
    assert!(!got.contains("typed-in-another-shell"), "the agent read the user's keystrokes: {got:?}");
    // SAFETY: zeroed termios is a valid value for tcgetattr to fill.
    let mut settings: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr on the test's own terminal.
    assert_eq!(unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut settings) }, 0);
    assert!(settings.c_lflag & libc::ECHO != 0, "the agent turned echo off on the user's terminal");
    // Control: outside the sandbox the agent's user opens it.
    let control = Command::new(PY)
        .args(["-c", &format!("import os; os.open('{}', os.O_RDWR | os.O_NOCTTY); print('opened')", path.display())])
        .uid(uid)
        .output()
        .unwrap();
    assert!(stdout(&control).contains("opened"), "control: {}", stderr(&control));
}

/// The agent saw every process of the host under `/proc`, and their command lines, where
/// people pass tokens (`--token=...`, a JSON `--env`). Its `/proc` is a procfs of its own that
/// shows only the processes it may look into.
#[test]
fn other_processes_command_lines_are_not_the_agents_to_read() {
    require_root();
    let scratch = Scratch::new("seam-proc");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let mut host =
        Command::new(PY).args(["-c", "import time; time.sleep(30)", "--token=host-secret-5e1f"]).spawn().unwrap();
    let host_pid = host.id();
    let path = format!("/proc/{host_pid}/cmdline");
    // Control: another user outside the sandbox reads it.
    let control = Command::new("cat").arg(&path).uid(65534).gid(65534).output().unwrap();
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", &format!("cat {path}; echo; cat /proc/self/cmdline")]);
    let _ = host.kill();
    let _ = host.wait();
    assert!(stdout(&control).contains("host-secret-5e1f"), "control: {}", stderr(&control));
    assert!(
        !stdout(&out).contains("host-secret-5e1f"),
        "the agent read a host process's command line: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("/proc/self/cmdline"), "the agent reads its own: {} {}", stdout(&out), stderr(&out));
}

/// The agent's own procfs is another filesystem than the host's: a policy that names files
/// under `/proc` (not `/proc` itself) keeps them readable there.
#[test]
fn a_policy_naming_files_under_proc_keeps_them() {
    require_root();
    let scratch = Scratch::new("seam-proc-names");
    let policy = scratch.file(
        "policy.yaml",
        &format!(
            "{}filesystem_policy: {{ read_only: [/usr, /lib, /lib64, /bin, /etc, /proc/cpuinfo, /proc/sys/kernel] }}\n",
            nobody_policy(&[])
        ),
    );
    let out = leash_run(
        &policy,
        &[],
        &[
            "/bin/sh",
            "-c",
            "head -c 9 /proc/cpuinfo && echo; cat /proc/sys/kernel/ostype; cat /proc/meminfo || echo meminfo=refused",
        ],
    );
    let text = stdout(&out);
    assert!(text.contains("processor") && text.contains("Linux"), "{text} {}", stderr(&out));
    assert!(text.contains("meminfo=refused"), "control: a name the policy does not give stays refused: {text}");
}

// 4. The audit log through a planted link.

#[test]
fn an_audit_log_the_agent_could_redirect_is_refused() {
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-audit");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let rc = scratch.secret_file("rootrc", "# root's shell rc\n");
    let checkout = scratch.owned_dir("checkout", uid);
    let link = checkout.join("audit.jsonl");
    std::os::unix::fs::symlink(&rc, &link).unwrap();
    chown(&link, uid);
    let out = leash_run(&policy, &["--audit-log", link.to_str().unwrap()], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), "# root's shell rc\n", "leash wrote through the link");
    // Not a link yet, but in a directory the agent can write: it could become one.
    let plain = checkout.join("plain.jsonl");
    let out = leash_run(&policy, &["--audit-log", plain.to_str().unwrap()], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("writable by the agent") || stderr(&out).contains("owned by the agent"));
}

/// In a sticky directory such as `/tmp` (where the README allows the log) another local user
/// can create the log's name first and keep the file: root appended the agent's requests to a
/// file that user reads. Only a log root owns is written.
#[test]
fn an_audit_log_another_user_planted_is_refused() {
    require_root();
    let scratch = Scratch::new("seam-audit-planted");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let log = scratch.secret_file("audit.jsonl", "");
    // Neither root nor the agent: a user of its own.
    std::os::unix::fs::chown(&log, Some(4242), Some(4242)).unwrap();
    let out = leash_run(&policy, &["--audit-log", log.to_str().unwrap()], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("belongs to uid 4242"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "leash wrote into another user's file");
    // The control: the same name, root's, is written.
    std::os::unix::fs::chown(&log, Some(0), Some(0)).unwrap();
    let out = leash_run(
        &policy,
        &["--audit-log", log.to_str().unwrap()],
        &["/bin/sh", "-c", &format!("{PROBE} tcp 127.0.0.1:9")],
    );
    assert!(out.status.code() != Some(125), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&log).unwrap().contains("connect4"), "{}", stderr(&out));
}

#[test]
fn the_agent_cannot_swap_the_audit_log_while_leash_writes_it() {
    require_root();
    let scratch = Scratch::new("seam-audit-swap");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let rc = scratch.secret_file("rootrc", "# root's shell rc\n");
    // A sticky directory everyone can write, like /tmp on the host.
    let log = scratch.0.join("audit.jsonl");
    let script = format!(
        "rm -f {log} 2>/dev/null; ln -sf {rc} {log} 2>/dev/null; {PROBE} tcp 127.0.0.1:9; echo done",
        log = log.display(),
        rc = rc.display()
    );
    let out = leash_run(&policy, &["--audit-log", log.to_str().unwrap()], &["/bin/sh", "-c", &script]);
    assert!(stdout(&out).contains("done"), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&log).unwrap().is_file(), "the agent replaced the audit log");
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), "# root's shell rc\n", "audit lines went to root's file");
    assert!(std::fs::read_to_string(&log).unwrap().contains("connect4"), "the denial must be in the log");
}

/// The agent decides how many events there are, and leash writes each to the audit log as root:
/// a denied `connect()` in a loop wrote about 0.5 KB per denial, without end, onto the host's
/// disk. The log stops at `--audit-log-max` with one line saying so, and the summary counts
/// what it left out.
#[test]
fn the_agent_cannot_fill_the_disk_through_the_audit_log() {
    require_root();
    let scratch = Scratch::new("seam-audit-size");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let log = scratch.0.join("audit.jsonl");
    let script = format!("{PROBE} flood 2 127.0.0.1:9 >/dev/null 2>&1; sleep 2.5; echo agent-done");
    let limit = ["--audit-log", log.to_str().unwrap(), "--audit-log-max", "64K"];
    let out = leash_run(&policy, &limit, &["/bin/sh", "-c", &script]);
    assert!(stdout(&out).contains("agent-done") && out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    let marker = text.lines().position(|l| l.contains("reached its limit"));
    let marker =
        marker.unwrap_or_else(|| panic!("the log does not say why it stops: {}", &text[..text.len().min(2000)]));
    let events: usize = text.lines().take(marker).map(|l| l.len() + 1).sum();
    assert_eq!(marker + 1, text.lines().count(), "lines after the one saying the log stops");
    assert!(events <= 64 << 10, "{events} bytes of events in a log limited to 64 KiB");
    // The control: the flood's denials filled the log up to its limit, and many more were made.
    assert!(events > 60 << 10 && text.contains("connect4"), "{events} bytes of events");
    let err = stderr(&out);
    assert!(err.contains("event(s) are not in the audit log"), "the summary does not say what the log left out: {err}");
    let denied: u64 = err
        .lines()
        .find_map(|l| l.split(" kernel action(s)").next()?.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of kernel denials: {err}"));
    assert!(denied > 1000, "only {denied} denials made");
}

/// With its audit log full the agent could act unaudited, so the proxy allows nothing more: the
/// agent fills its log with denials, then asks for what its policy allows.
#[test]
fn with_its_audit_log_full_the_agent_is_allowed_nothing() {
    require_root();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("seam-audit-full");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[target.addr.port()]));
    let log = scratch.0.join("audit.jsonl");
    let get = format!("{PROBE} get proxy {}", target.addr);
    let script = format!("{get}; {PROBE} flood 2 127.0.0.1:9 >/dev/null 2>&1; sleep 2.5; {get}");
    let limit = ["--audit-log", log.to_str().unwrap(), "--audit-log-max", "64K"];
    let out = leash_run(&policy, &limit, &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    let answers: Vec<&str> = text.lines().filter(|l| l.starts_with("CONNECT")).collect();
    assert_eq!(answers.len(), 2, "{text} {}", stderr(&out));
    // The control: the same request, before the flood, was allowed and audited.
    assert!(answers[0].contains("CONNECT 200"), "{text}");
    assert!(!answers[1].contains("CONNECT 200"), "allowed with the audit log full: {text}");
    assert_eq!(target.accepted(), 1, "the target was reached with the audit log full");
    assert!(stderr(&out).contains("the proxy allows nothing more"), "{}", stderr(&out));
}

/// A process the agent leaves behind makes denials faster than leash can write them, for longer
/// than the test waits. leash must still see its agent end, tear the sandbox down (which ends that
/// process) and exit. Before, its event reader drained the ring until it was empty, which it never
/// was, on the thread that also watches the agent and serves the proxy; and it printed a line
/// for every denial.
#[test]
fn denials_made_faster_than_leash_writes_them_do_not_keep_it_running() {
    require_root();
    let scratch = Scratch::new("seam-flood");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let log = scratch.0.join("leash-stderr.txt");
    let script = format!("{PROBE} flood 90 127.0.0.1:9 >/dev/null 2>&1; sleep 2; echo agent-done");
    let mut run = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let ended = wait_until(45, || run.try_wait().unwrap().is_some());
    let seconds = started.elapsed().as_secs();
    if !ended {
        let _ = run.kill();
    }
    let status = run.wait().unwrap();
    let mut out = String::new();
    run.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(ended, "leash still ran 45 s after starting, its agent long gone, while the sandbox made denials");
    assert!(out.contains("agent-done") && status.success(), "{status}: {out}");
    // The control: the flood was on, and was read. Its lines on leash's stderr were held to the
    // rate (a stderr nobody reads would otherwise fill and stop leash), the rest counted.
    let mut said = String::new();
    std::fs::File::open(&log).unwrap().take(16 << 20).read_to_string(&mut said).unwrap();
    let lines = said.lines().filter(|l| l.contains("connect4")).count() as u64;
    assert!(lines > 0, "no denial was reported");
    assert!(lines <= 20 * (seconds + 2), "{lines} denial lines in {seconds} s");
    assert!(
        said.contains("not shown"),
        "the held-back lines are not counted: {}",
        &said[said.len().saturating_sub(500)..]
    );
}

// 5. The credentials file is readable.

#[test]
fn a_credentials_file_the_agent_can_read_is_refused() {
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-creds");
    let policy = scratch
        .file("policy.yaml", &format!("{}credentials:\n  TOK: {{ hosts: [example.test] }}\n", nobody_policy(&[])));
    let readable = scratch.file("creds.env", "TOK=hunter2-SECRET\n");
    let out = leash_run(
        &policy,
        &["--credentials-file", readable.to_str().unwrap()],
        &["/bin/cat", readable.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stdout(&out).contains("hunter2"), "the agent read the credentials");
    assert!(!stderr(&out).contains("hunter2"), "the value appeared in an error");
    // In the user's checkout, owned by the user the agent runs as.
    let checkout = scratch.owned_dir("checkout", uid);
    let owned = checkout.join("creds.env");
    std::fs::write(&owned, "TOK=hunter2-SECRET\n").unwrap();
    std::fs::set_permissions(&owned, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&owned, uid);
    let out =
        leash_run(&policy, &["--credentials-file", owned.to_str().unwrap()], &["/bin/cat", owned.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stdout(&out).contains("hunter2"));
    // Root's own file: accepted, and the agent cannot read it.
    let safe = scratch.secret_file("root-creds.env", "TOK=hunter2-SECRET\n");
    let out =
        leash_run(&policy, &["--credentials-file", safe.to_str().unwrap()], &["/bin/cat", safe.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stdout(&out).contains("hunter2"), "the agent read root's credentials file");
}

// 6. Host daemons over unix sockets; netlink; supplementary groups.

/// A unix stream server as root at `path` (mode 0777) answering "hello" once per connection.
fn unix_service(path: &Path) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).expect("binding the host service");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok((mut c, _)) = listener.accept() {
                use std::io::Write as _;
                let _ = c.write_all(b"hello\n");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

const UNIX_CONNECT: &str = "import socket, sys\n\
    s = socket.socket(socket.AF_UNIX)\n\
    try:\n\
    \x20   s.connect(sys.argv[1]); print('connected', s.recv(16).decode().strip())\n\
    except OSError as e:\n\
    \x20   print('refused', e.errno)\n";

#[test]
fn host_daemon_sockets_under_run_are_out_of_reach() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-unix");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let sock = Path::new("/run").join(format!("leash-test-docker-{}.sock", std::process::id()));
    let _service = unix_service(&sock);
    let outside =
        Command::new(PY).args(["-c", UNIX_CONNECT, sock.to_str().unwrap()]).uid(uid).gid(gid).output().unwrap();
    assert!(stdout(&outside).contains("connected hello"), "control: {}", stdout(&outside));
    let out = leash_run(&policy, &[], &[PY, "-c", UNIX_CONNECT, sock.to_str().unwrap()]);
    let _ = std::fs::remove_file(&sock);
    assert!(
        stdout(&out).contains("refused"),
        "the agent reached a host daemon's socket: {} {}",
        stdout(&out),
        stderr(&out)
    );
}

/// A host service listening outside the emptied directories (under the scratch directory here,
/// as under `/var/lib` or a home directory on a real host), world-connectable: out of reach
/// without BPF-LSM too. A socket the agent binds itself still works.
#[test]
fn host_daemon_sockets_anywhere_are_out_of_reach() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-unix-anywhere");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let service_dir = scratch.0.join("var-lib-service");
    std::fs::create_dir_all(&service_dir).unwrap();
    let sock = service_dir.join("api.sock");
    let _service = unix_service(&sock);
    let outside =
        Command::new(PY).args(["-c", UNIX_CONNECT, sock.to_str().unwrap()]).uid(uid).gid(gid).output().unwrap();
    assert!(stdout(&outside).contains("connected hello"), "control: {}", stdout(&outside));
    let own = "import socket, sys\n\
         srv = socket.socket(socket.AF_UNIX); srv.bind('own.sock'); srv.listen(1)\n\
         c = socket.socket(socket.AF_UNIX); c.connect('own.sock'); a, _ = srv.accept(); a.sendall(b'mine')\n\
         print('own', c.recv(8).decode())\n\
         exec(open('connect.py').read())";
    let workdir = scratch.owned_dir("work", uid);
    std::fs::write(workdir.join("connect.py"), UNIX_CONNECT).unwrap();
    let out = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", own, sock.to_str().unwrap()])
        .current_dir(&workdir)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&sock);
    let text = stdout(&out);
    assert!(text.contains("own mine"), "the agent's own socket must work: {text} {}", stderr(&out));
    assert!(text.contains("refused"), "the agent reached a host daemon's socket: {text} {}", stderr(&out));
}

const NETLINK: &str = "import socket\n\
    for name, proto in (('route', 0), ('usersock', 2), ('sock_diag', 4), ('audit', 9)):\n\
    \x20   try:\n\
    \x20       socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto).close(); print(name, 'ok')\n\
    \x20   except OSError as e:\n\
    \x20       print(name, 'refused')\n";

#[test]
fn netlink_beyond_route_is_refused() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-netlink");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let outside = Command::new(PY).args(["-c", NETLINK]).uid(uid).gid(gid).output().unwrap();
    assert!(stdout(&outside).contains("usersock ok"), "control: {}", stdout(&outside));
    let out = leash_run(&policy, &[], &[PY, "-c", NETLINK]);
    let text = stdout(&out);
    assert!(text.contains("route ok"), "NETLINK_ROUTE (getifaddrs) must keep working: {text} {}", stderr(&out));
    for family in ["usersock", "sock_diag", "audit"] {
        assert!(text.contains(&format!("{family} refused")), "netlink {family} allowed: {text}");
    }
}

#[test]
fn the_agent_has_no_supplementary_groups() {
    require_root();
    // A user of this host with supplementary groups, if there is one (the agent's groups are
    // compared with what that user has outside).
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    let member = groups.lines().find_map(|l| {
        let users = l.split(':').nth(3)?;
        users.split(',').find(|u| unprivileged_user(u)).map(str::to_owned)
    });
    let Some(user) = member else {
        eprintln!("note: no user with supplementary groups on this host; checking nobody only");
        return;
    };
    let scratch = Scratch::new("seam-groups");
    let policy = scratch.file(
        "policy.yaml",
        &policy_allowing(&[]).replacen("version: 1\n", &format!("version: 1\nprocess: {{ run_as_user: {user} }}\n"), 1),
    );
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", "id -G"]);
    let text = stdout(&out);
    let ids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "{user} kept supplementary groups in the sandbox: {ids:?} {}", stderr(&out));
}

/// Whether `name` is a user of this host with a uid other than 0.
fn unprivileged_user(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: getpwnam returns NULL or a pointer to a static entry, read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    // SAFETY: checked non-null.
    !pw.is_null() && unsafe { (*pw).pw_uid } != 0
}

// 7. Sandbox to sandbox through /tmp.

#[test]
fn sandboxes_do_not_share_tmp_with_each_other_or_the_host() {
    require_root();
    let scratch = Scratch::new("seam-tmp");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let name = format!("leash-seam-{}", std::process::id());
    let ready = scratch.0.join("a-ready");
    let done = scratch.0.join("b-done");
    // Sandbox A: a file and a listening unix socket in /tmp, as a tmux server would make.
    let script_a = format!(
        "import socket, os, time\n\
         open('/tmp/{name}.txt', 'w').write('from A')\n\
         s = socket.socket(socket.AF_UNIX); s.bind('/tmp/{name}.sock'); s.listen(1)\n\
         open('{ready}', 'w').write('ready\\n')\n\
         for _ in range(200):\n\
         \x20   if os.path.exists('{done}'): break\n\
         \x20   time.sleep(0.05)\n",
        ready = ready.display(),
        done = done.display()
    );
    let a = leash(&["run", "--policy", policy.to_str().unwrap(), "--", PY, "-c", &script_a])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&ready, 10);
    let host_sees = Path::new("/tmp").join(format!("{name}.txt")).exists();
    let connect = scratch.file("connect.py", UNIX_CONNECT);
    let script_b = format!(
        "ls /tmp/{name}.txt >/dev/null 2>&1 && echo file=seen || echo file=absent; {PY} {} /tmp/{name}.sock; touch {}",
        connect.display(),
        done.display()
    );
    let out = leash_run(&policy, &[], &["/bin/sh", "-c", &script_b]);
    let a_out = a.wait_with_output().unwrap();
    assert!(a_out.status.success(), "sandbox A failed: {}", stderr(&a_out));
    let text = stdout(&out);
    assert!(text.contains("file=absent"), "sandbox B saw A's /tmp: {text} {}", stderr(&out));
    assert!(text.contains("refused"), "sandbox B reached A's socket: {text}");
    assert!(!host_sees, "the sandbox's /tmp is the host's");
}

/// Started in the host's `/tmp`, the agent would keep it as its working directory (a reference,
/// not a path) under its private `/tmp`, and write to the host's through relative paths: refused
/// before anything starts. (It used to fail with "command not found".)
#[test]
fn a_working_directory_in_the_hosts_tmp_is_refused() {
    require_root();
    let scratch = Scratch::new("seam-tmp-workdir");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let workdir = Path::new("/tmp").join(format!("leash-seam-workdir-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).unwrap();
    let out = agent_sh(&policy, &workdir, "echo planted > note");
    let planted = workdir.join("note").exists();
    let _ = std::fs::remove_dir_all(&workdir);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("which the agent gets as a new, empty directory"), "{}", stderr(&out));
    assert!(!planted, "the agent wrote in the host's /tmp");
}

// 8. Delayed escapes through the working directory.

#[test]
fn files_that_run_code_later_are_read_only_in_the_workdir() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-git");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    let config_before = std::fs::read_to_string(checkout.join(".git/config")).unwrap();
    let attack = "printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' >> .git/config && echo config=written || echo config=refused; \
                  echo 'touch /tmp/pwned' > .git/hooks/post-checkout && echo hook=written || echo hook=refused; \
                  echo work > notes.txt && echo work=written || echo work=refused";
    // Control: the agent's user can do all of it outside the sandbox.
    let control_dir = scratch.owned_dir("control", uid);
    Command::new("git").args(["init", "-q"]).current_dir(&control_dir).uid(uid).gid(gid).output().unwrap();
    let control =
        Command::new("/bin/sh").args(["-c", attack]).current_dir(&control_dir).uid(uid).gid(gid).output().unwrap();
    assert!(
        stdout(&control).contains("config=written") && stdout(&control).contains("hook=written"),
        "control: {}",
        stdout(&control)
    );

    let out = agent_sh(&policy, &checkout, attack);
    let text = stdout(&out);
    assert!(text.contains("work=written"), "the workdir must stay writable: {text} {}", stderr(&out));
    assert!(text.contains("config=refused"), "the agent wrote .git/config: {text}");
    assert!(text.contains("hook=refused"), "the agent wrote a git hook: {text}");
    assert_eq!(std::fs::read_to_string(checkout.join(".git/config")).unwrap(), config_before);
    assert!(!checkout.join(".git/hooks/post-checkout").exists());
}

/// The read-only mount on `.git/config` is a mount on that entry, and it moves with its
/// directory: renamed, `.git` carried it away, and the agent made a new `.git` with a config of
/// its own (`core.fsmonitor`, run by the owner's next `git status`). The directories on the way
/// are mount points of their own now, which cannot be renamed or removed.
#[test]
fn renaming_the_git_directory_does_not_carry_its_protection_away() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-git-rename");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    let config_before = std::fs::read_to_string(checkout.join(".git/config")).unwrap();
    let attack = "mv .git .git-old && mkdir .git && cp -a .git-old/HEAD .git-old/objects .git-old/refs .git/ \
                  && printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > .git/config && echo rename=done || echo rename=refused; \
                  rm -rf .git 2>/dev/null; test -d .git && echo remove=refused || echo remove=done";
    // Control: the agent's user can do it outside the sandbox.
    let control_dir = scratch.owned_dir("control", uid);
    Command::new("git").args(["init", "-q"]).current_dir(&control_dir).uid(uid).gid(gid).output().unwrap();
    let control =
        Command::new("/bin/sh").args(["-c", attack]).current_dir(&control_dir).uid(uid).gid(gid).output().unwrap();
    assert!(stdout(&control).contains("rename=done"), "control: {} {}", stdout(&control), stderr(&control));

    let out = agent_sh(&policy, &checkout, attack);
    let text = stdout(&out);
    assert!(text.contains("rename=refused"), "the agent renamed .git and wrote a new config: {text} {}", stderr(&out));
    assert!(text.contains("remove=refused"), "the agent removed .git: {text}");
    assert_eq!(std::fs::read_to_string(checkout.join(".git/config")).unwrap(), config_before);
}

/// A submodule's own config (`.git/modules/<name>/config`) runs code for the owner's next
/// `git status` in the repository too (its `core.fsmonitor`, when git looks into the
/// submodule): it is read-only like the repository's, and a submodule the agent adds is named
/// at exit.
#[test]
fn a_submodules_config_is_read_only_and_a_new_one_is_named() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-git-modules");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    // A submodule's git directory as `git submodule add` leaves it.
    let module = checkout.join(".git/modules/lib");
    let init = Command::new("git")
        .args(["init", "-q", "--bare", module.to_str().unwrap()])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(init.status.success(), "git init lib: {}", stderr(&init));
    let before = std::fs::read_to_string(module.join("config")).unwrap();
    // A submodule's `commondir` sends git to another directory's config: one the agent wrote.
    let attack = "printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' >> .git/modules/lib/config && echo module=written || echo module=refused; \
                  mkdir -p .git/modules/libs/evil && echo 'ref: refs/heads/x' > .git/modules/libs/evil/HEAD \
                  && echo '[core]' > .git/modules/libs/evil/config && echo new=written; \
                  echo ../../info/elsewhere > .git/modules/lib/commondir && echo commondir=written";
    let out = agent_sh(&policy, &checkout, attack);
    let text = stdout(&out);
    assert!(text.contains("module=refused"), "the agent wrote a submodule's config: {text} {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(module.join("config")).unwrap(), before);
    assert!(text.contains("new=written"), "the premise: {text}");
    assert!(stderr(&out).contains(".git/modules/libs/evil"), "the new submodule is not named: {}", stderr(&out));
    assert!(text.contains("commondir=written"), "the premise: {text}");
    assert!(
        stderr(&out).contains(".git/modules/lib/commondir"),
        "the submodule's new commondir is not named: {}",
        stderr(&out)
    );
}

/// A linked worktree's `commondir` (`.git/worktrees/<name>/commondir`) decides where git run in
/// that worktree (elsewhere on disk) takes its config and hooks from: it is read-only too.
#[test]
fn a_linked_worktrees_commondir_is_read_only() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-git-worktree");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    let elsewhere = scratch.owned_dir("linked", uid);
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(&checkout)
            .uid(uid)
            .gid(gid)
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(&["commit", "-q", "--allow-empty", "-m", "first"]);
    git(&["worktree", "add", "-q", elsewhere.join("wt").to_str().unwrap()]);
    let commondir = checkout.join(".git/worktrees/wt/commondir");
    let before = std::fs::read_to_string(&commondir).expect("git made the worktree's commondir");
    let attack =
        "echo ../../info/elsewhere > .git/worktrees/wt/commondir && echo commondir=written || echo commondir=refused";
    let out = agent_sh(&policy, &checkout, attack);
    assert!(stdout(&out).contains("commondir=refused"), "{} {}", stdout(&out), stderr(&out));
    assert_eq!(std::fs::read_to_string(&commondir).unwrap(), before);
}

/// A repository nested anywhere in the working directory and added to the index as a gitlink
/// (no `.gitmodules` needed, and `.git/index` is the agent's to write): the owner's next
/// `git status` looks into it and runs its `core.fsmonitor`. Nothing protected is touched, so
/// leash names it at exit.
#[test]
fn a_nested_repository_the_agent_added_to_the_index_is_named_at_exit() {
    require_root();
    let scratch = Scratch::new("seam-git-gitlink");
    let policy = scratch.file("policy.yaml", &workdir_policy(", read_write: [/dev/null]"));
    let checkout = nobodys_repository(&scratch);
    let attack = "git init -q sub && git -C sub config core.fsmonitor 'touch /tmp/pwned' \
                  && git update-index --add --cacheinfo 160000,1111111111111111111111111111111111111111,sub \
                  && echo nested=added";
    let out = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", attack])
        .current_dir(&checkout)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("nested=added"), "the premise: {} {}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("the agent created") && stderr(&out).contains("sub/.git"),
        "the nested repository is not named: {}",
        stderr(&out)
    );
}

/// The same nested repository, with the index read the way leash did not and git does: through
/// a link (`.git/index` a symbolic link to the real one), and split (`git update-index
/// --split-index`: the gitlink is in `.git/sharedindex.<hash>`, the index itself has no entry).
/// Each passed without a word.
#[test]
fn a_nested_repository_behind_a_linked_or_split_index_is_named_at_exit() {
    require_root();
    let make = "git init -q sub && git -C sub config core.fsmonitor 'touch /tmp/pwned' \
                && git update-index --add --cacheinfo 160000,1111111111111111111111111111111111111111,sub";
    for (case, then) in [
        ("linked", "mv .git/index .git/index.real && ln -s index.real .git/index"),
        ("split", "git update-index --split-index && ls .git/sharedindex.* >/dev/null"),
    ] {
        let scratch = Scratch::new(&format!("seam-git-gitlink-{case}"));
        let policy = scratch.file("policy.yaml", &workdir_policy(", read_write: [/dev/null]"));
        let checkout = nobodys_repository(&scratch);
        let attack = format!("{make} && {then} && echo nested=added");
        let out = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &attack])
            .current_dir(&checkout)
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        assert!(stdout(&out).contains("nested=added"), "{case}: the premise: {} {}", stdout(&out), stderr(&out));
        let listed = Command::new("git")
            .args(["-c", "safe.directory=*", "ls-files", "-s"])
            .current_dir(&checkout)
            .output()
            .unwrap();
        assert!(stdout(&listed).starts_with("160000"), "{case}: git sees no gitlink: {}", stdout(&listed));
        assert!(
            stderr(&out).contains("the agent created") && stderr(&out).contains("sub/.git"),
            "{case}: the nested repository is not named: {}",
            stderr(&out)
        );
    }
}

/// `.git/commondir` names the directory git takes its config and hooks from. It cannot be
/// held (git refuses a repository where it is not a file), so an agent that writes one is
/// named at exit, before the owner runs git there.
#[test]
fn a_commondir_the_agent_wrote_is_named_at_exit() {
    require_root();
    let scratch = Scratch::new("seam-git-commondir");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    let attack = "mkdir -p .git/evil && printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > .git/evil/config \
                  && echo evil > .git/commondir && echo commondir=written";
    let out = agent_sh(&policy, &checkout, attack);
    assert!(stdout(&out).contains("commondir=written"), "the premise: {} {}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("the agent created") && stderr(&out).contains(".git/commondir"),
        "no word of the agent's .git/commondir: {}",
        stderr(&out)
    );
}

/// leash looked at what the agent made in the working directory (the names it reports at exit)
/// while processes the agent left behind still ran: one of them waited (inotify) for leash to
/// open `.git/index`, which leash reads after checking the names, and then renamed a prepared
/// file to `.git/commondir`, which nothing reported. What the agent left running is killed first.
#[test]
fn a_process_left_behind_cannot_write_after_the_exit_checks() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-git-leftover");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    std::fs::write(checkout.join("file"), "x").unwrap();
    chown(&checkout.join("file"), uid);
    let add = Command::new("git").args(["add", "file"]).current_dir(&checkout).uid(uid).gid(gid).output().unwrap();
    assert!(add.status.success() && checkout.join(".git/index").is_file(), "git add: {}", stderr(&add));
    let attack = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
open(".git/commondir.next", "w").write("elsewhere")
if os.fork() == 0:
    os.setsid()
    fd = libc.inotify_init()
    libc.inotify_add_watch(fd, b".git/index", 0x20)  # IN_OPEN
    open("armed", "w").close()
    os.read(fd, 4096)
    os.rename(".git/commondir.next", ".git/commondir")
    open("renamed", "w").close()
    os._exit(0)
while not os.path.exists("armed"):
    time.sleep(0.01)
"#;
    let out = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "python3", "-c", attack])
        .current_dir(&checkout)
        .output()
        .unwrap();
    assert!(checkout.join("armed").exists(), "the premise: the leftover was never armed: {}", stderr(&out));
    assert!(
        !checkout.join(".git/commondir").exists() || stderr(&out).contains(".git/commondir"),
        "a process left behind made .git/commondir after leash's checks, and nothing said so: {}",
        stderr(&out)
    );
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> &str {
    let skip = text.chars().count().saturating_sub(n);
    text.char_indices().nth(skip).map_or(text, |(i, _)| &text[i..])
}

/// The agent shares leash's stderr. Made non-blocking and filled, it made leash's `eprintln!`
/// panic at exit, and the unwinding freed the directories leash held in the working directory
/// while a process the agent left behind still ran: that process wrote `.git/config` (leash
/// exited 101, its watchdog killed the process afterwards).
#[test]
fn a_stderr_the_agent_filled_frees_no_held_name() {
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-stderr-full");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = scratch.owned_dir("not-a-repo", uid);
    // The leftover writer, in a session of its own; then stderr made non-blocking and filled.
    let attack = "setsid sh -c 'while :; do mkdir .git 2>/dev/null; echo x > .git/config 2>/dev/null; done' & \
                  python3 -c 'import fcntl, os, sys\n\
fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_NONBLOCK)\n\
try:\n    while True: os.write(2, b\"x\" * 4096)\n\
except BlockingIOError: pass\n\
open(\"filled\", \"w\").close()'";
    let mut child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", attack])
        .current_dir(&checkout)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(20, || checkout.join("filled").exists()), "the agent never filled stderr");
    // Read stderr only once leash has met the full pipe.
    std::thread::sleep(Duration::from_millis(500));
    let mut err = Vec::new();
    let _ = child.stderr.take().unwrap().read_to_end(&mut err);
    let status = child.wait().unwrap();
    assert!(
        !checkout.join(".git/config").exists(),
        "a process of the sandbox wrote .git/config after leash freed .git"
    );
    assert_ne!(status.code(), Some(101), "leash panicked: {}", tail(&String::from_utf8_lossy(&err), 400));
}

/// The agent made the stderr it shares with leash non-blocking and filled it, then made
/// `.git/commondir`. leash's warning about it waited 2 s for a reader and was given up on, and
/// every later line with it: a user reading leash's output through a pager that paused never
/// saw it. Once the agent's processes are gone, leash makes stderr blocking again (as it was
/// given), so its last lines wait for the reader.
#[test]
fn the_agent_cannot_make_leash_drop_its_last_warnings() {
    require_root();
    let scratch = Scratch::new("seam-stderr-last");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    let attack = "import fcntl, os\n\
fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_NONBLOCK)\n\
try:\n    while True: os.write(2, b'x' * 4096)\n\
except BlockingIOError: pass\n\
open('.git/commondir', 'w').write('elsewhere')\n\
open('filled', 'w').close()";
    let mut child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "python3", "-c", attack])
        .current_dir(&checkout)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(20, || checkout.join("filled").exists()), "the agent never filled stderr");
    // A reader that pauses longer than a line waits.
    std::thread::sleep(Duration::from_secs(4));
    let mut err = Vec::new();
    let _ = child.stderr.take().unwrap().read_to_end(&mut err);
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&err);
    assert_eq!(status.code(), Some(0), "{}", tail(&text, 400));
    assert!(
        text.contains("the agent created") && text.contains(".git/commondir"),
        "the warning about .git/commondir was lost: {}",
        tail(&text, 400)
    );
    assert!(text.contains("ended (exit 0)"), "the summary was lost: {}", tail(&text, 400));
}

/// leash names at exit what the agent made in the working directory, and printed the name as
/// it was: a submodule directory named with escape sequences and a newline moved the cursor,
/// erased leash's lines, set the clipboard (OSC 52) and forged "ended (exit 0)". What a terminal
/// acts on is written out.
#[test]
fn a_name_the_agent_made_cannot_write_to_the_users_terminal() {
    require_root();
    let scratch = Scratch::new("seam-escape-name");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = nobodys_repository(&scratch);
    let attack = r#"n="$(printf 'm\r\033[2A\033]52;c;ZXZpbA==\007\nleash: sandbox forged ended (exit 0)\n\342\200\256x')"; \
                  mkdir -p ".git/modules/$n" && echo 'ref: refs/heads/x' > ".git/modules/$n/HEAD" && echo made"#;
    let out = agent_sh(&policy, &checkout, attack);
    assert!(stdout(&out).contains("made"), "the premise: {} {}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(".git/modules/m"), "the new submodule is not named: {err}");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\r') && !err.contains('\u{202e}'),
        "raw terminal controls: {err:?}"
    );
    assert!(!err.lines().any(|l| l.starts_with("leash: sandbox forged")), "a forged line: {err}");
}

#[test]
fn a_policy_can_unprotect_a_name_deliberately() {
    require_root();
    let scratch = Scratch::new("seam-git-widened");
    let policy = scratch.file("policy.yaml", &workdir_policy(", protect_in_workdir: [.git/hooks]"));
    let checkout = nobodys_repository(&scratch);
    let attack = "echo '# mine' >> .git/config && echo config=written || echo config=refused; \
                  echo x > .git/hooks/post-checkout && echo hook=written || echo hook=refused";
    let out = agent_sh(&policy, &checkout, attack);
    let text = stdout(&out);
    assert!(text.contains("config=written"), "the policy's own list replaces the default: {text} {}", stderr(&out));
    assert!(text.contains("hook=refused"), "{text}");
}

// 12. The `--learn` output through a directory the agent swapped.

/// `--learn` writes its output as root when the agent has ended. Learning runs without
/// Landlock, so the agent can rename a directory it owns on the output's path and leave a link
/// to one of root's in its place: written by path at the end, the learned policy (whose allows
/// the agent chose) went into root's directory. It is written through the file opened before
/// the agent started.
#[test]
fn the_agent_cannot_redirect_the_learned_policy() {
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-learn-out");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let project = scratch.owned_dir("project", uid);
    let out_dir = scratch.owned_dir("project/out", uid);
    let roots = scratch.0.join("roots");
    std::fs::create_dir(&roots).unwrap();
    let learned = out_dir.join("learned.yaml");
    let script = format!(
        "mv {out} {project}/moved && ln -s {roots} {out} && echo swapped",
        out = out_dir.display(),
        project = project.display(),
        roots = roots.display()
    );
    let out = leash_run(&policy, &["--learn", learned.to_str().unwrap()], &["/bin/sh", "-c", &script]);
    assert!(stdout(&out).contains("swapped"), "the agent could not swap its directory: {}", stderr(&out));
    assert!(!roots.join("learned.yaml").exists(), "the learned policy was written into root's directory");
    let written = std::fs::read_to_string(project.join("moved/learned.yaml")).unwrap_or_default();
    assert!(
        written.contains("version: 1"),
        "the learned policy is not in the file opened: {written:?} {}",
        stderr(&out)
    );
}

// 11. A dead leash's port.

#[test]
fn sigkill_of_leash_takes_the_agent_with_it_so_its_port_serves_nobody() {
    require_root();
    let scratch = Scratch::new("seam-dead-port");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let addr_file = scratch.0.join("proxy");
    // A detached grandchild that keeps trying the proxy's address: PR_SET_PDEATHSIG does not
    // reach it.
    let script = format!(
        "echo ${{HTTP_PROXY#http://}} > {}; (setsid sh -c 'while true; do {PROBE} tcp proxy; sleep 0.1; done' >/dev/null 2>&1 &); sleep 30",
        addr_file.display()
    );
    let mut child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let proxy: std::net::SocketAddr = wait_for_line(&addr_file, 10).parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let _ = child.wait();
    // Another user takes the port.
    let squatter = wait_until(5, || std::net::TcpListener::bind(proxy).is_ok());
    assert!(squatter, "the proxy's port never came free");
    let listener = std::net::TcpListener::bind(proxy).unwrap();
    listener.set_nonblocking(true).unwrap();
    let empty = wait_until(10, || {
        sandbox_cgroups_of(pid).iter().all(|n| {
            std::fs::read_to_string(cgroup2_root().join(n).join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
        })
    });
    let mut received = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        if listener.accept().is_ok() {
            received += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(empty, "the agent outlived leash");
    assert_eq!(received, 0, "the orphaned agent's traffic reached whoever took the port");
    // The next run reaps what is left.
    let out = leash_run(&policy, &[], &["/bin/true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sandbox_cgroups_of(pid).is_empty(), "stale cgroup not reaped");
}

/// A protected name that does not exist at start cannot be created either, even by a process the
/// agent leaves behind, and nothing is left in the directory afterwards.
#[test]
fn a_protected_name_missing_at_start_cannot_be_created() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-git-new");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let attack = "mkdir -p .git && printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > .git/config && echo git=written || echo git=refused; \
                  mkdir -p .vscode && echo '{}' > .vscode/tasks.json && echo tasks=written || echo tasks=refused; \
                  echo 'touch /tmp/pwned' > .envrc && echo envrc=written || echo envrc=refused; \
                  (while true; do mkdir .git .git/hooks 2>/dev/null; sleep 0.01; done &) ; \
                  echo work > notes.txt && echo work=written || echo work=refused";
    // Control: the agent's user can do all of it outside the sandbox.
    let control_dir = scratch.owned_dir("control", uid);
    let control = Command::new("/bin/sh")
        .args(["-c", &attack.replace("(while", "(false && while")])
        .current_dir(&control_dir)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let text = stdout(&control);
    assert!(
        text.contains("git=written") && text.contains("tasks=written") && text.contains("envrc=written"),
        "control: {text}"
    );

    let checkout = scratch.owned_dir("not-a-repo", uid);
    let out = agent_sh(&policy, &checkout, attack);
    let text = stdout(&out);
    assert!(text.contains("work=written"), "the workdir must stay writable: {text} {}", stderr(&out));
    for name in ["git", "tasks", "envrc"] {
        assert!(text.contains(&format!("{name}=refused")), "the agent created a protected name ({name}): {text}");
    }
    let mut left: Vec<String> =
        std::fs::read_dir(&checkout).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["notes.txt"], "only the agent's own work is left in the directory");
}

/// A leash killed with SIGKILL leaves none of the directories it held in the working directory:
/// its watchdog removes them once the sandbox is empty.
#[test]
fn a_killed_leash_leaves_no_held_directory_behind() {
    require_root();
    let (uid, _) = nobody();
    let scratch = Scratch::new("seam-held-kill");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let checkout = scratch.owned_dir("not-a-repo", uid);
    let mut child =
        leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", "touch started; sleep 30"])
            .current_dir(&checkout)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    assert!(wait_until(10, || checkout.join("started").exists()), "the agent never started");
    assert!(checkout.join(".git").is_dir(), "the premise: .git is held while the agent runs");
    child.kill().unwrap();
    let _ = child.wait();
    let only_own = || {
        std::fs::read_dir(&checkout)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            == ["started"]
    };
    assert!(
        wait_until(10, only_own),
        "held directories left behind: {:?}",
        std::fs::read_dir(&checkout).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
}

/// A `.git` file (a worktree's "gitdir:" pointer) decides where git reads its config and hooks:
/// pointed at a directory of the agent's, the owner's next `git status` runs the agent's
/// `core.fsmonitor`.
#[test]
fn a_worktrees_gitdir_pointer_cannot_be_redirected() {
    require_root();
    let (uid, gid) = nobody();
    let scratch = Scratch::new("seam-gitfile");
    let policy = scratch.file("policy.yaml", &workdir_policy(""));
    let main = scratch.owned_dir("main", uid);
    let git = |args: &[&str], dir: &Path| {
        let out = Command::new("git").args(args).current_dir(dir).uid(uid).gid(gid).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(&["init", "-q"], &main);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], &main);
    let worktree = scratch.owned_dir("trees", uid).join("wt");
    git(&["worktree", "add", "-q", worktree.to_str().unwrap()], &main);
    let pointer = std::fs::read_to_string(worktree.join(".git")).unwrap();
    assert!(pointer.starts_with("gitdir:"), "the premise: a worktree's .git is a file: {pointer}");
    let attack = "mkdir -p evil && printf 'ref: refs/heads/x\\n' > evil/HEAD && mkdir -p evil/objects evil/refs \
                  && echo 'gitdir: evil' > .git && echo pointer=written || echo pointer=refused";
    let out = agent_sh(&policy, &worktree, attack);
    let text = stdout(&out);
    assert!(text.contains("pointer=refused"), "the agent redirected the worktree's .git: {text} {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(worktree.join(".git")).unwrap(), pointer);
}

/// Another local user plants trust roots for every sandbox: the host's cache of the system roots
/// (`proxy/tls/roots_cache.rs`) is what every agent's CA bundle is made from. A cache that
/// anyone but root could have written is not read; the control shows the planted roots would
/// have reached the agent from a cache only root could write.
#[test]
fn roots_planted_in_the_hosts_roots_cache_reach_no_agent() {
    use leash::proxy::tls::{roots_cache, CertificateAuthority, RUN_DIR};
    require_root();
    let scratch = Scratch::new("seam-roots-cache");
    let policy = scratch.file("policy.yaml", &nobody_policy(&[]));
    let system = CertificateAuthority::generate().unwrap();
    let bundle = scratch.file("bundle.pem", system.cert_pem());
    // The store of these runs is this one file: its cache is its own.
    let agent_bundle = || {
        let out = leash(&[
            "run",
            "--quiet",
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "cat \"$SSL_CERT_FILE\"",
        ])
        .env("SSL_CERT_FILE", &bundle)
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert!(agent_bundle().contains(system.cert_pem()), "the premise: the store's roots reach the agent");

    let attacker = CertificateAuthority::generate().unwrap();
    let certs = [system.cert_der().clone(), attacker.cert_der().clone()];
    let pem = format!("{}{}", system.cert_pem(), attacker.cert_pem());
    let holds_planted = |p: &Path| std::fs::read(p).is_ok_and(|b| b.windows(pem.len()).any(|w| w == pem.as_bytes()));
    let cache = || {
        let found: Vec<_> = std::fs::read_dir(RUN_DIR)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                std::fs::read(p)
                    .is_ok_and(|b| b.windows(system.cert_pem().len()).any(|w| w == system.cert_pem().as_bytes()))
            })
            .collect();
        assert_eq!(found.len(), 1, "one cache for this store: {found:?}");
        found[0].clone()
    };
    let plant = |owner: u32| {
        let text = std::fs::read(&bundle).unwrap();
        roots_cache::store(Path::new(RUN_DIR), &bundle, &text, &certs, &pem, b"").unwrap();
        assert!(holds_planted(&cache()), "the premise: the planted roots are in the cache");
        chown(&cache(), owner);
    };
    let (uid, _) = nobody();
    plant(uid);
    let text = agent_bundle();
    assert!(!text.contains(attacker.cert_pem()), "roots another user planted reached the agent");
    assert!(text.contains(system.cert_pem()), "the store was read instead: {text}");
    plant(0);
    assert!(agent_bundle().contains(attacker.cert_pem()), "control: the cache root wrote is read");
    std::fs::remove_file(cache()).unwrap();
}

/// The same cache holds the system roots the proxy trusts upstream servers with (as trust
/// anchors, parsed once when it was made): a cache another user could have written must not
/// choose the servers the proxy believes. The premise: a bundle holding the test upstream's CA
/// makes the proxy trust that upstream. Roots planted in a cache only root could have written
/// replace that trust (the control: the proxy's trust comes from the cache); planted in one
/// another user owns, they do not.
#[test]
fn roots_planted_in_the_hosts_roots_cache_choose_no_upstream() {
    use leash::proxy::tls::{roots_cache, CertificateAuthority, RUN_DIR};
    use leash_tests::upstream::Upstream;
    require_root();
    let scratch = Scratch::new("seam-roots-upstream");
    let up = Upstream::https();
    let port = up.addr.port();
    let endpoint = format!(
        "      - host: localhost\n        port: {port}\n        protocol: rest\n        access: full\n        allowed_ips: [127.0.0.0/8]\n"
    );
    let policy = scratch.file("policy.yaml", &local_policy(&endpoint, ""));
    let bundle = scratch.file("bundle.pem", &up.ca_text);
    let status = || {
        let url = format!("https://localhost:{port}/roots");
        let out = leash(&["run", "--quiet", "--policy", policy.to_str().unwrap(), "--"])
            .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", &url])
            .env("SSL_CERT_FILE", &bundle)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        assert!(out.status.success() || !stdout(&out).is_empty(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(status(), "200", "the premise: the bundle's root makes the proxy trust the upstream");

    let attacker = CertificateAuthority::generate().unwrap();
    let text = std::fs::read(&bundle).unwrap();
    let plant = |owner: u32| {
        let certs = [attacker.cert_der().clone()];
        roots_cache::store(Path::new(RUN_DIR), &bundle, &text, &certs, attacker.cert_pem(), b"").unwrap();
        let planted: Vec<_> = std::fs::read_dir(RUN_DIR)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                std::fs::read(p).is_ok_and(|b| b.windows(64).any(|w| w == &attacker.cert_pem().as_bytes()[..64]))
            })
            .collect();
        assert_eq!(planted.len(), 1, "one cache for this bundle: {planted:?}");
        chown(&planted[0], owner);
        planted[0].clone()
    };
    let (uid, _) = nobody();
    plant(uid);
    assert_eq!(status(), "200", "roots another user planted chose the upstreams the proxy trusts");
    let planted = plant(0);
    assert_ne!(status(), "200", "control: the anchors of a cache root wrote are the proxy's");
    std::fs::remove_file(planted).unwrap();
}
