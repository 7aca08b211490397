//! `podclient`: a process of a fake pod, talking to `leash daemon` the way a pod's process
//! would. It first moves itself into the container cgroup given with `--cgroup` (tests build a
//! kubelet-like tree; `--cgroup -` stays where it is, inside a real container), becomes `--uid
//! UID` when given, then runs one command:
//!
//! ```text
//! podclient --cgroup DIR --uid UID COMMAND ...                      COMMAND as UID (gid UID, no groups)
//! podclient --cgroup DIR call SOCKET JSON [--listener|--fd-null]   one request; prints the reply
//! podclient --cgroup DIR hostile SOCKET OTHER_PID                   malformed and hostile requests; one line each
//! podclient --cgroup DIR cycles SOCKET N                            N times: fork, confine the child, kill it
//! podclient --cgroup DIR hold SOCKET N                              confine up to N children, print `ready CONFINED`, wait for stdin to close
//! podclient --cgroup DIR sleep                                      sleep (a target process of the pod)
//! podclient --cgroup DIR sleep-with-sockets                         hold an unconnected TCP and a UDP socket, then sleep
//! podclient --cgroup DIR exec UID -- CMD ARGS...                    become UID and exec CMD
//! podclient --cgroup DIR clone-into CGROUP                          clone3(CLONE_INTO_CGROUP) a child into CGROUP; prints `ok` or the errno
//! podclient --cgroup DIR reuse SOCKET                               a child connects and exits; see `reuse`
//! podclient --cgroup DIR flood SOCKET N idle|noread|fds|linger|linger-nested|linger-deep  hold N connections; see `flood`
//! ```
//!
//! `cycles` prints `{"count","errors","median_us","p99_us","per_sec"}`: the confine latency is
//! measured from sending the request to reading the reply, which the daemon sends once the
//! process is in its sandbox.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use leash::confine_api::client::{Client, ClientError};
use leash::confine_api::protocol::Op;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args[0] != "--cgroup" {
        usage();
    }
    enter_cgroup(Path::new(&args[1]));
    let mut rest = &args[2..];
    if rest.len() >= 3 && rest[0] == "--uid" {
        become_user(rest[1].parse().unwrap_or_else(|_| usage()));
        rest = &rest[2..];
    }
    match rest[0].as_str() {
        "call" if rest.len() >= 3 => call(&rest[1], &rest[2], rest.get(3).map(String::as_str)),
        "hostile" if rest.len() == 3 => hostile(&rest[1], rest[2].parse().unwrap_or_else(|_| usage())),
        "cycles" if rest.len() == 3 => cycles(&rest[1], rest[2].parse().unwrap_or_else(|_| usage())),
        "hold" if rest.len() == 3 => hold(&rest[1], rest[2].parse().unwrap_or_else(|_| usage())),
        "sleep" => std::thread::sleep(Duration::from_secs(3600)),
        "sleep-with-sockets" => {
            // Made here, outside any sandbox: what a confined process must not bring along.
            let tcp = socket2_tcp();
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("udp socket: {e}"));
            std::thread::sleep(Duration::from_secs(3600));
            drop((tcp, udp));
        }
        "reuse" if rest.len() == 2 => reuse(&rest[1]),
        "clone-into" if rest.len() == 2 => clone_into(Path::new(&rest[1])),
        "flood" if rest.len() == 4 => flood(&rest[1], rest[2].parse().unwrap_or_else(|_| usage()), &rest[3]),
        "exec" if rest.len() >= 4 && rest[2] == "--" => {
            exec_as(rest[1].parse().unwrap_or_else(|_| usage()), &rest[3..])
        }
        _ => usage(),
    }
}

/// Starts a child directly in cgroup `dir` with clone3(CLONE_INTO_CGROUP) (Linux 5.7+), which
/// needs write access to `cgroup.procs` of the destination and of the common ancestor; prints
/// `ok` or the errno's number.
fn clone_into(dir: &Path) {
    let cgroup = std::fs::File::open(dir).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()));
    // struct clone_args (v1 layout, 88 bytes): flags, pidfd, child_tid, parent_tid, exit_signal,
    // stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = 0x200000000; // CLONE_INTO_CGROUP
    args[4] = libc::SIGCHLD as u64;
    args[10] = cgroup.as_raw_fd() as u64;
    // SAFETY: clone3 with a fully initialised clone_args of the size given and no new stack: the
    // child returns here like fork(2) and exits at once.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), std::mem::size_of_val(&args)) };
    match rc {
        0 => unsafe { libc::_exit(0) },
        pid if pid > 0 => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            println!("ok");
        }
        _ => println!("errno {}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

/// An unconnected TCP socket (what a process would connect later).
fn socket2_tcp() -> std::os::fd::OwnedFd {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "tcp socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned here.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

fn usage() -> ! {
    eprintln!(
        "usage: podclient --cgroup DIR [--uid UID] (call|hostile|cycles|hold|sleep|exec|reuse|flood|clone-into) ..."
    );
    std::process::exit(2)
}

fn enter_cgroup(dir: &Path) {
    // `-`: a process that is in its container's cgroup already (inside a real container).
    if dir == Path::new("-") {
        return;
    }
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
    // A daemon that refuses the connection (`busy`) has replied and closed before the request:
    // its reply is still there to read.
    let _ = client.send_frame(&leash::confine_api::protocol::frame(json.as_bytes()), fd);
    println!("{}", read_reply(client.stream()));
}

/// The reply as text, or `closed` when the daemon closed the connection without one.
fn read_reply(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    match leash::confine_api::protocol::read_frame(stream) {
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
    raw_case("garbage", &leash::confine_api::protocol::frame(b"\x00\xffnot json at all"), false);
    raw_case("oversized", &(10u32 * 1024 * 1024).to_be_bytes(), false);
    let mut truncated = 200u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(b"{\"version\":1,");
    raw_case("truncated", &truncated, true);
    raw_case("empty-frame", &0u32.to_be_bytes(), false);
    raw_case("not-an-object", &leash::confine_api::protocol::frame(b"[1,2,3]"), false);
    raw_case("no-version", &leash::confine_api::protocol::frame(br#"{"op":"hello"}"#), false);
    raw_case("future-version", &leash::confine_api::protocol::frame(br#"{"version":99,"op":"hello"}"#), false);
    raw_case("unknown-op", &leash::confine_api::protocol::frame(br#"{"version":1,"op":"unconfine"}"#), false);
    raw_case("extra-field", &leash::confine_api::protocol::frame(br#"{"version":1,"op":"hello","admin":true}"#), false);
    raw_case("deep-json", &leash::confine_api::protocol::frame(&nested(20_000)), false);

    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let any = TcpListener::bind("0.0.0.0:0").expect("binding");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding");
    let unbound_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connecting");
    let null = std::fs::File::open("/dev/null").expect("opening");
    let with_fd = |name: &str, json: &str, fd: Option<std::os::fd::BorrowedFd<'_>>| {
        let mut client = Client::connect(Path::new(socket)).expect("connecting");
        client.send_frame(&leash::confine_api::protocol::frame(json.as_bytes()), fd).expect("sending the request");
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
        s.write_all(&leash::confine_api::protocol::frame(br#"{"version":1,"op":"hello"}"#)).expect("writing");
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
        if let Err(e) = confine_pid(&mut client, &listener, child) {
            eprintln!("podclient: confine failed: {e}");
            kill_and_reap(child);
            break;
        }
        children.push(child);
    }
    println!("ready {}", children.len());
    std::io::stdout().flush().ok();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    for c in children {
        kill_and_reap(c);
    }
}

fn become_user(uid: u32) {
    let gid = uid;
    // SAFETY: plain credential syscalls.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            eprintln!("podclient: cannot become uid {uid}");
            std::process::exit(2);
        }
    }
}

fn exec_as(uid: u32, cmd: &[String]) {
    become_user(uid);
    let args: Vec<CString> = cmd.iter().map(|a| CString::new(a.as_str()).expect("argument with NUL")).collect();
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    eprintln!("podclient: exec {}: {err}", cmd[0]);
    std::process::exit(127);
}

/// The pid-reuse attack: a forked child connects a socket this process created, and exits; this
/// process prints `child PID`, keeps the connection busy (a `hello` a second, so that it is not
/// closed as idle) until a line on stdin says which pid to target, then asks, on the child's
/// connection, for its pod's policy, to confine that pid and to release the sandbox, printing
/// `policy|confine|release REPLY` (`{"closed":...}` when the daemon closed the connection).
fn reuse(socket: &str) {
    use nix::sys::socket::{connect, socket as new_socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = new_socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    let addr = UnixAddr::new(socket).expect("socket path");
    // SAFETY: this process is single-threaded; the child only connects and exits.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let ok = connect(fd.as_raw_fd(), &addr).is_ok();
            // SAFETY: leaves the forked child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
            println!("child {child}");
            std::io::stdout().flush().ok();
        }
    }
    let mut stream = UnixStream::from(fd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(line);
    });
    let target = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            break line.trim().parse::<u32>().unwrap_or(0);
        }
        ask(&mut stream, br#"{"version":1,"op":"hello"}"#, None);
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    println!("policy {}", ask(&mut stream, br#"{"version":1,"op":"policy"}"#, None));
    let confine = format!(r#"{{"version":1,"op":"confine","pid":{target}}}"#);
    let reply = ask(&mut stream, confine.as_bytes(), Some(listener.as_fd()));
    println!("confine {reply}");
    let sandbox = serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| v["result"]["sandbox"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let release = format!(r#"{{"version":1,"op":"release","sandbox":"{sandbox}"}}"#);
    println!("release {}", ask(&mut stream, release.as_bytes(), None));
}

/// One request on `stream`, its reply as text (`closed` when there is none).
fn ask(stream: &mut UnixStream, json: &[u8], fd: Option<std::os::fd::BorrowedFd<'_>>) -> String {
    let Ok(clone) = stream.try_clone() else { return r#"{"closed":"clone"}"#.into() };
    let mut client = Client::from_stream(clone);
    if let Err(e) = client.send_frame(&leash::confine_api::protocol::frame(json), fd) {
        return format!("{{\"closed\":\"{e}\"}}");
    }
    read_reply(stream)
}

/// Holds `n` connections, prints `ready CONNECTED`, and waits for stdin to close. `idle`: they
/// send nothing. `noread`: each sends `hello` requests and never reads a reply, until the daemon
/// stops taking requests; after a line on stdin, it reads what comes and prints
/// `replies R of S` (the daemon answered R of the S requests before closing). `fds`: each starts
/// a frame and sends its bytes one at a time, four descriptors with each. `linger`: idle, and then
/// one connection more, which the daemon refuses (the pod's share is taken), carrying a TCP
/// socket whose close waits a minute (see `send_lingering_socket`). `linger-nested`: the same
/// socket nested in a unix socket that passes credentials, among 253 descriptors. `linger-deep`:
/// nested eight unix sockets deep, beside a listening socket that blocks.
fn flood(socket: &str, n: usize, mode: &str) {
    let null = std::fs::File::open("/dev/null").expect("opening /dev/null");
    let mut held = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..n {
        let Ok(mut s) = UnixStream::connect(socket) else { break };
        match mode {
            "idle" | "linger" | "linger-nested" | "linger-deep" => {}
            "noread" => sent.push(pipeline_hellos(&mut s)),
            "fds" => descriptor_flood(&s, &null),
            _ => usage(),
        }
        held.push(s);
    }
    let _listener = mode.starts_with("linger").then(|| send_lingering_socket(socket, mode));
    println!("ready {}", held.len());
    std::io::stdout().flush().ok();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if mode == "noread" {
        for (s, sent) in held.iter_mut().zip(sent) {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
            let mut replies = 0;
            while leash::confine_api::protocol::read_frame(s).is_ok() {
                replies += 1;
            }
            println!("replies {replies} of {sent}");
        }
        std::io::stdout().flush().ok();
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// Sends, on a new connection to the daemon, a connected TCP socket (to a listener of its own on
/// 127.0.0.1, returned, that never reads) with its send buffer full and `SO_LINGER` of a minute,
/// and closes its own copy: whoever drops the last reference to it, closing the connection
/// unread, waits in close(2) for that minute.
fn send_lingering_socket(socket: &str, mode: &str) -> (TcpListener, Vec<UnixStream>) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let listener = TcpListener::bind("127.0.0.1:0").expect("listening on 127.0.0.1");
    let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connecting to it");
    tcp.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    while (&tcp).write(&chunk).is_ok() {}
    let linger = libc::linger { l_onoff: 1, l_linger: 60 };
    // SAFETY: SO_LINGER with a valid struct linger of the size given.
    let set = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    let try_send = |on: &UnixStream, fds: &[std::os::fd::RawFd]| {
        let cmsg = [ControlMessage::ScmRights(fds)];
        let iov = [std::io::IoSlice::new(b"\0")];
        sendmsg::<()>(on.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
    };
    let send = |on: &UnixStream, fds: &[std::os::fd::RawFd]| {
        try_send(on, fds).expect("sending descriptors");
    };
    // To the daemon, on a connection over this pod's share: the daemon may close it before the
    // message is sent (it refuses it at once), so a new one is tried until one carries it.
    let send_to_daemon = |fds: &[std::os::fd::RawFd]| {
        for _ in 0..100 {
            let s = UnixStream::connect(socket).expect("connecting to the daemon");
            match try_send(&s, fds) {
                Ok(_) => return,
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => continue,
                Err(e) => panic!("sending descriptors: {e}"),
            }
        }
        panic!("the daemon closed 100 connections before a message could be sent on one");
    };
    let mut kept = Vec::new();
    if mode == "linger-deep" {
        // Each level's socket is sent on the next one's pair; the pairs' other ends are kept.
        let mut inner: std::os::fd::OwnedFd = tcp.try_clone().unwrap().into();
        for _ in 0..8 {
            let (a, b) = UnixStream::pair().unwrap();
            send(&b, &[inner.as_raw_fd()]);
            kept.push(b);
            inner = a.into();
        }
        // A listener that blocks, with nothing to accept.
        let blocking = TcpListener::bind("127.0.0.1:0").unwrap();
        send_to_daemon(&[inner.as_raw_fd(), blocking.as_raw_fd()]);
    } else if mode == "linger-nested" {
        // A unix socket that passes credentials (whose message then has less room for
        // descriptors), carrying 253: the lingering socket's copies last, where a receiver
        // short of room has them closed by the kernel.
        let (a, b) = UnixStream::pair().unwrap();
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut fds = vec![null.as_raw_fd(); 246];
        fds.extend([tcp.as_raw_fd(); 7]);
        send(&b, &fds);
        send_to_daemon(&[a.as_raw_fd()]);
    } else {
        send_to_daemon(&[tcp.as_raw_fd()]);
    }
    drop(tcp);
    (listener, kept)
}

/// Writes `hello` frames without reading until the daemon stops taking them; returns how many.
/// "Stops" is 2 s without taking one: a daemon starved of CPU on a busy machine pauses for less,
/// and one blocked on its replies for longer.
fn pipeline_hellos(s: &mut UnixStream) -> usize {
    let frame = leash::confine_api::protocol::frame(br#"{"version":1,"op":"hello"}"#);
    s.set_nonblocking(true).expect("nonblocking");
    let (mut sent, mut stalls) = (0, 0);
    while stalls < 80 {
        match s.write(&frame) {
            Ok(n) if n == frame.len() => {
                sent += 1;
                stalls = 0;
            }
            Ok(_) => panic!("a partial frame was written"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalls += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(_) => break,
        }
    }
    sent
}

/// Announces a frame of the largest size, then sends 500 of its bytes one at a time, each with
/// four descriptors of /dev/null (2,000 in all), until the daemon closes the connection.
fn descriptor_flood(s: &UnixStream, null: &std::fs::File) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let header = leash::confine_api::protocol::MAX_FRAME.to_be_bytes();
    if (&*s).write_all(&header).is_err() {
        return;
    }
    let raw = [null.as_raw_fd(); 4];
    for _ in 0..500 {
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(b" ")];
        if sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).is_err() {
            return;
        }
    }
}
