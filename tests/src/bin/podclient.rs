//! `podclient`: a process of a fake pod, talking to `leash daemon` the way a pod's process
//! would. It first moves itself into the container cgroup given with `--cgroup` (tests build a
//! kubelet-like tree), then runs one command:
//!
//! ```text
//! podclient --cgroup DIR call SOCKET JSON [--listener|--fd-null]   one request; prints the reply
//! podclient --cgroup DIR hostile SOCKET OTHER_PID                   malformed and hostile requests; one line each
//! podclient --cgroup DIR cycles SOCKET N                            N times: fork, confine the child, kill it
//! podclient --cgroup DIR hold SOCKET N                              confine N children, print `ready`, wait for stdin to close
//! podclient --cgroup DIR sleep                                      sleep (a target process of the pod)
//! podclient --cgroup DIR exec UID -- CMD ARGS...                    become UID and exec CMD
//! ```
//!
//! `cycles` prints `{"count","errors","median_us","p99_us","per_sec"}`: the confine latency is
//! measured from sending the request to reading the reply, which the daemon sends once the
//! process is in its sandbox.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use leash::daemon::client::{Client, ClientError};
use leash::daemon::protocol::Op;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args[0] != "--cgroup" {
        usage();
    }
    enter_cgroup(Path::new(&args[1]));
    let rest = &args[2..];
    match rest[0].as_str() {
        "call" if rest.len() >= 3 => call(&rest[1], &rest[2], rest.get(3).map(String::as_str)),
        "hostile" if rest.len() == 3 => hostile(&rest[1], rest[2].parse().unwrap_or_else(|_| usage())),
        "cycles" if rest.len() == 3 => cycles(&rest[1], rest[2].parse().unwrap_or_else(|_| usage())),
        "hold" if rest.len() == 3 => hold(&rest[1], rest[2].parse().unwrap_or_else(|_| usage())),
        "sleep" => std::thread::sleep(Duration::from_secs(3600)),
        "exec" if rest.len() >= 4 && rest[2] == "--" => {
            exec_as(rest[1].parse().unwrap_or_else(|_| usage()), &rest[3..])
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: podclient --cgroup DIR (call|hostile|cycles|hold|sleep|exec) ...");
    std::process::exit(2)
}

fn enter_cgroup(dir: &Path) {
    let procs = dir.join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, b"0") {
        eprintln!("podclient: entering {}: {e}", procs.display());
        std::process::exit(2);
    }
}

/// One request as given; `--listener` passes a fresh loopback listener, `--fd-null` /dev/null.
fn call(socket: &str, json: &str, extra: Option<&str>) {
    let mut client = Client::connect(Path::new(socket)).expect("connecting to the daemon");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a listener");
    let null = std::fs::File::open("/dev/null").expect("opening /dev/null");
    let fd = match extra {
        Some("--listener") => Some(listener.as_fd()),
        Some("--fd-null") => Some(null.as_fd()),
        _ => None,
    };
    client.send_frame(&leash::daemon::protocol::frame(json.as_bytes()), fd).expect("sending the request");
    println!("{}", read_reply(client.stream()));
}

/// The reply as text, or `closed` when the daemon closed the connection without one.
fn read_reply(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    match leash::daemon::protocol::read_frame(stream) {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(e) => format!("{{\"closed\":\"{e}\"}}"),
    }
}

/// Hostile and malformed requests, one per connection unless noted; prints `CASE REPLY`.
fn hostile(socket: &str, other_pid: u32) {
    let raw_case = |name: &str, bytes: &[u8], close_write: bool| {
        let mut s = UnixStream::connect(socket).expect("connecting");
        s.write_all(bytes).expect("writing");
        if close_write {
            s.shutdown(std::net::Shutdown::Write).ok();
        }
        println!("{name} {}", read_reply(&mut s));
    };
    raw_case("garbage", &leash::daemon::protocol::frame(b"\x00\xffnot json at all"), false);
    raw_case("oversized", &(10u32 * 1024 * 1024).to_be_bytes(), false);
    let mut truncated = 200u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(b"{\"version\":1,");
    raw_case("truncated", &truncated, true);
    raw_case("empty-frame", &0u32.to_be_bytes(), false);
    raw_case("not-an-object", &leash::daemon::protocol::frame(b"[1,2,3]"), false);
    raw_case("no-version", &leash::daemon::protocol::frame(br#"{"op":"hello"}"#), false);
    raw_case("future-version", &leash::daemon::protocol::frame(br#"{"version":99,"op":"hello"}"#), false);
    raw_case("unknown-op", &leash::daemon::protocol::frame(br#"{"version":1,"op":"unconfine"}"#), false);
    raw_case("extra-field", &leash::daemon::protocol::frame(br#"{"version":1,"op":"hello","admin":true}"#), false);
    raw_case("deep-json", &leash::daemon::protocol::frame(&nested(20_000)), false);

    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let any = TcpListener::bind("0.0.0.0:0").expect("binding");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding");
    let unbound_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connecting");
    let null = std::fs::File::open("/dev/null").expect("opening");
    let with_fd = |name: &str, json: &str, fd: Option<std::os::fd::BorrowedFd<'_>>| {
        let mut client = Client::connect(Path::new(socket)).expect("connecting");
        client.send_frame(&leash::daemon::protocol::frame(json.as_bytes()), fd).expect("sending the request");
        println!("{name} {}", read_reply(client.stream()));
    };
    with_fd("confine-no-fd", r#"{"version":1,"op":"confine"}"#, None);
    with_fd("confine-dev-null", r#"{"version":1,"op":"confine"}"#, Some(null.as_fd()));
    with_fd("confine-udp", r#"{"version":1,"op":"confine"}"#, Some(udp.as_fd()));
    with_fd("confine-connected-tcp", r#"{"version":1,"op":"confine"}"#, Some(unbound_stream.as_fd()));
    with_fd("confine-any-address", r#"{"version":1,"op":"confine"}"#, Some(any.as_fd()));
    let exited = exited_pid();
    with_fd("confine-exited-pid", &format!(r#"{{"version":1,"op":"confine","pid":{exited}}}"#), Some(listener.as_fd()));
    with_fd(
        "confine-other-pod",
        &format!(r#"{{"version":1,"op":"confine","pid":{other_pid}}}"#),
        Some(listener.as_fd()),
    );
    with_fd("confine-pid-1", r#"{"version":1,"op":"confine","pid":1}"#, Some(listener.as_fd()));
    with_fd("status-unknown", r#"{"version":1,"op":"status","sandbox":"../../etc/passwd"}"#, None);
    with_fd("release-unknown", r#"{"version":1,"op":"release","sandbox":"0000000000000000"}"#, None);
    // Many requests on one connection, then the daemon must still answer.
    let mut s = UnixStream::connect(socket).expect("connecting");
    for _ in 0..100 {
        s.write_all(&leash::daemon::protocol::frame(br#"{"version":1,"op":"hello"}"#)).expect("writing");
        read_reply(&mut s);
    }
    with_fd("hello-after", r#"{"version":1,"op":"hello"}"#, None);
}

fn nested(depth: usize) -> Vec<u8> {
    let mut v = br#"{"version":1,"op":"hello","x":"#.to_vec();
    v.extend(std::iter::repeat_n(b'[', depth));
    v.extend(std::iter::repeat_n(b']', depth));
    v.push(b'}');
    v
}

/// A pid that existed a moment ago.
fn exited_pid() -> u32 {
    let child = std::process::Command::new("/bin/true").spawn().expect("spawning true");
    let pid = child.id();
    let mut child = child;
    child.wait().ok();
    pid
}

/// A child of this process that waits (for the daemon to confine it) until killed.
fn fork_sleeper() -> nix::unistd::Pid {
    // SAFETY: this process is single-threaded; the child only sleeps.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => loop {
            // SAFETY: plain libc call.
            unsafe { libc::pause() };
        },
        nix::unistd::ForkResult::Parent { child } => child,
    }
}

fn kill_and_reap(pid: nix::unistd::Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

fn confine_pid(client: &mut Client, listener: &TcpListener, pid: nix::unistd::Pid) -> Result<String, ClientError> {
    let reply =
        client.call_with_fd(Op::Confine { policy: None, pid: Some(pid.as_raw() as u32) }, Some(listener.as_fd()))?;
    Ok(reply["sandbox"].as_str().unwrap_or_default().to_owned())
}

fn cycles(socket: &str, count: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let mut client = Client::connect(Path::new(socket)).expect("connecting");
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    let started = Instant::now();
    for _ in 0..count {
        let child = fork_sleeper();
        let t = Instant::now();
        let result = confine_pid(&mut client, &listener, child);
        latencies.push(t.elapsed());
        if let Err(e) = result {
            if errors < 5 {
                eprintln!("podclient: confine failed: {e}");
            }
            errors += 1;
        }
        kill_and_reap(child);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).map(|d| d.as_micros()).unwrap_or(0)
    };
    println!(
        "{{\"count\":{count},\"errors\":{errors},\"median_us\":{},\"p99_us\":{},\"per_sec\":{:.0}}}",
        pct(0.5),
        pct(0.99),
        count as f64 / elapsed.as_secs_f64()
    );
}

fn hold(socket: &str, count: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let mut client = Client::connect(Path::new(socket)).expect("connecting");
    let mut children = Vec::new();
    for _ in 0..count {
        let child = fork_sleeper();
        children.push(child);
        if let Err(e) = confine_pid(&mut client, &listener, child) {
            eprintln!("podclient: confine failed: {e}");
            break;
        }
    }
    println!("ready {}", children.len());
    std::io::stdout().flush().ok();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    for c in children {
        kill_and_reap(c);
    }
}

fn exec_as(uid: u32, cmd: &[String]) {
    let gid = uid;
    // SAFETY: plain credential syscalls before exec.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            eprintln!("podclient: cannot become uid {uid}");
            std::process::exit(2);
        }
    }
    let args: Vec<CString> = cmd.iter().map(|a| CString::new(a.as_str()).expect("argument with NUL")).collect();
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    eprintln!("podclient: exec {}: {err}", cmd[0]);
    std::process::exit(127);
}
