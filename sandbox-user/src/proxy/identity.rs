//! Which executable is talking to the proxy. The sandbox's programs record the owner of every
//! connection by its client socket's cookie (`sandbox-ebpf/src/net/identity.rs`); the proxy asks
//! the kernel which socket is at the connection's client end, looks its cookie up and reads that
//! one process's executable link (no scan of /proc), once per connection, when it accepts it.
//! Under `leash run` the proxy reads the map itself (`peers.rs`); under `leash confine` it asks
//! the node daemon, which holds the map.
//!
//! An executable's path says which file was run, not which code runs: a library named by
//! `LD_PRELOAD`, `LD_AUDIT` or `LD_LIBRARY_PATH` is loaded into it by the dynamic loader and
//! runs with its identity. [`check_loader_variables`] reads the connecting process's environment so
//! that a `binaries:` rule is not granted to a process that sets one (to another value than
//! leash itself was started with) or whose environment cannot be read (`connect.rs`). It is a check of
//! identity, not a boundary: code already in the process can change its environment block
//! afterwards, and only a kernel layer (BPF-LSM) can stop code from being loaded at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::confine_api::client::Client;
use crate::confine_api::protocol::{Op, Owner};

/// Environment variables that make the dynamic loader run code the executable did not name.
pub const LOADER_VARIABLES: [&str; 3] = ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"];

/// Who opened a connection to the proxy, learnt once, when the proxy accepts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The executable of the process that opened it, if known.
    pub binary: Option<PathBuf>,
    /// That process's pid as this process sees it, if known.
    pub pid: Option<u32>,
    /// Where the connection was going, when transparent mode redirected it here.
    pub destination: Option<SocketAddr>,
}

/// Where a proxy that admits every connection (under `leash confine`, the pod's network
/// namespace is the boundary) learns who opened one: the connection from `peer` to the proxy's
/// port `listener` (the proxy's own, or its transparent listener's).
pub trait OwnerSource: Send + Sync {
    /// Who opened the connection, if it is known at all.
    fn identify(&self, peer: SocketAddr, listener: u16) -> Option<Identity>;
}

/// Why a process's executable identity is not trusted for a `binaries:` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// Its environment sets this loader variable.
    Variable(&'static str),
    /// Its environment could not be read (fail closed).
    Unreadable,
    /// Another process traces it, and so can write its memory: code other than its executable
    /// may be talking (a tracer attached before a reload turned `binaries:` rules on, say).
    Traced,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::Variable(name) => write!(
                f,
                "the process runs with {name} in its environment, so code other than its executable may be talking; binaries: rules do not apply to it"
            ),
            Untrusted::Unreadable => {
                f.write_str("the process's environment could not be read to check for loader variables (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH); binaries: rules do not apply to it")
            }
            Untrusted::Traced => {
                f.write_str("the process is traced by another, which can change what it runs; binaries: rules do not apply to it")
            }
        }
    }
}

/// Fails when process `pid` sets a loader variable (see [`LOADER_VARIABLES`]), even to
/// nothing, to another value than leash's own environment has (a value leash was started with
/// is the user's choice, inherited, not the agent's); when its environment cannot be read; and
/// when a tracer is attached to it.
pub fn check_loader_variables(pid: Option<u32>) -> Result<(), Untrusted> {
    let pid = pid.filter(|p| *p != 0).ok_or(Untrusted::Unreadable)?;
    // Every thread's: a tracer of any of them writes the same memory. (Best effort: a tracer
    // that wrote and detached before the connection is not seen; BPF-LSM's NO_ATTACH_INSIDE
    // keeps one from attaching in the first place.)
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|_| Untrusted::Unreadable)?;
    for task in tasks {
        let task = task.map_err(|_| Untrusted::Unreadable)?;
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let tracer = status.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(str::trim);
        if tracer != Some("0") {
            return Err(Untrusted::Traced);
        }
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).map_err(|_| Untrusted::Unreadable)?;
    let own = |name: &str| std::env::var_os(name).map(std::os::unix::ffi::OsStringExt::into_vec);
    match environ_sets(&environ, own) {
        Some(name) => Err(Untrusted::Variable(name)),
        None => Ok(()),
    }
}

/// The first loader variable in a NUL-separated environment block whose value is not `own`'s.
fn environ_sets(environ: &[u8], own: impl Fn(&str) -> Option<Vec<u8>>) -> Option<&'static str> {
    environ.split(|b| *b == 0).find_map(|entry| {
        LOADER_VARIABLES.into_iter().find(|name| {
            let value = entry.strip_prefix(name.as_bytes()).and_then(|rest| rest.strip_prefix(b"="));
            value.is_some_and(|v| own(name).as_deref() != Some(v))
        })
    })
}

/// Whether every process in `procs` (a sandbox cgroup's `cgroup.procs`) that holds the client
/// socket of the connection from `peer` to `proxy` runs `exe`, and at least one holds it: a
/// process that connected and then exec'd a listed program, or passed the socket on, does not
/// lend that program's rights to the others holding the socket. Every thread's descriptor table
/// is looked at (a thread may have one of its own, and a process whose first thread has exited
/// shows none under `/proc/<pid>/fd`); a socket nobody is seen to hold (in flight in a unix
/// socket, passed out of the sandbox) is not trusted. `net` is the `/proc/.../net` directory of
/// the connection's network namespace. False when the socket or the process list cannot be read
/// (fail closed).
pub fn holders_all_run(procs: &Path, net: &Path, peer: SocketAddr, proxy: SocketAddr, exe: &Path) -> bool {
    let Some(inode) = client_socket_inode(net, peer, proxy) else { return false };
    let Ok(procs) = std::fs::read_to_string(procs) else { return false };
    let target = format!("socket:[{inode}]");
    let mut budget = MAX_DESCRIPTORS_READ;
    let mut seen = false;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        match holds(pid, &target, &mut budget) {
            Holds::No => continue,
            Holds::Yes => seen = true,
            Holds::Maybe => {}
        }
        if !std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe) {
            return false;
        }
    }
    // A socket nobody was seen holding: in flight, or held out of sight. (A process whose
    // descriptors could not all be read must run `exe` as well.)
    seen
}

/// The most descriptor links [`holders_all_run`] reads for one connection: a sandbox with more
/// (threads times descriptors) gets no `binaries:` identity rather than a slow proxy.
const MAX_DESCRIPTORS_READ: usize = 1 << 16;

/// Whether a process holds a socket.
enum Holds {
    No,
    Yes,
    /// Its descriptors could not all be read (another user's, without CAP_DAC_READ_SEARCH, or
    /// past the budget).
    Maybe,
}

/// Whether a descriptor table of process `pid` (any of its threads') holds `target`. Only a
/// process or thread that is gone holds nothing for sure.
fn holds(pid: u32, target: &str, budget: &mut usize) -> Holds {
    let tasks = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Holds::No,
        Err(_) => return Holds::Maybe,
    };
    let mut unread = false;
    for task in tasks.flatten() {
        let fds = match std::fs::read_dir(task.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => {
                unread = true;
                continue;
            }
        };
        for fd in fds.flatten() {
            if *budget == 0 {
                return Holds::Maybe;
            }
            *budget -= 1;
            match std::fs::read_link(fd.path()) {
                Ok(link) if link.as_os_str() == target => return Holds::Yes,
                Ok(_) => {}
                // Closed since the listing; anything else is a descriptor not read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => unread = true,
            }
        }
    }
    if unread {
        Holds::Maybe
    } else {
        Holds::No
    }
}

/// The inode of the socket connected from `peer` to `proxy`, from the TCP table in `net`.
fn client_socket_inode(net: &Path, peer: SocketAddr, proxy: SocketAddr) -> Option<u64> {
    let table = net.join(if peer.is_ipv4() { "tcp" } else { "tcp6" });
    let text = std::fs::read_to_string(table).ok()?;
    let port_of = |field: &str| field.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (port_of(local)? == peer.port() && port_of(remote)? == proxy.port()).then(|| inode.parse().ok())?
    })
}

/// The node daemon's answer for one sandbox (`owner` requests on one kept connection). The daemon
/// answers once for each connection: it removes the record it answered from.
pub struct DaemonOwners {
    socket: PathBuf,
    sandbox: String,
    client: Mutex<Option<Client>>,
}

impl DaemonOwners {
    pub fn new(socket: &Path, sandbox: &str) -> Self {
        Self { socket: socket.to_path_buf(), sandbox: sandbox.to_owned(), client: Mutex::new(None) }
    }

    /// The daemon's record of the connection from `peer`, a client on the proxy's own address,
    /// to the proxy's port `listener`: asked by the cookie of the socket this network namespace
    /// has at the client end.
    fn ask(&self, peer: SocketAddr, listener: u16) -> Option<Owner> {
        let cookie = crate::kernel::sock_diag::client_cookie(peer, SocketAddr::new(peer.ip(), listener)).ok()??;
        let mut slot = self.client.lock().ok()?;
        for _ in 0..2 {
            if slot.is_none() {
                *slot = Client::connect(&self.socket).ok();
            }
            let client = slot.as_mut()?;
            let op = Op::Owner { sandbox: self.sandbox.clone(), port: peer.port(), listener: Some(listener), cookie };
            match client.call(op) {
                Ok(v) => return serde_json::from_value(v).ok(),
                // An answer that says no: no owner. A broken connection: reconnect once.
                Err(crate::confine_api::client::ClientError::Refused(_)) => return None,
                Err(_) => *slot = None,
            }
        }
        None
    }
}

impl OwnerSource for DaemonOwners {
    fn identify(&self, peer: SocketAddr, listener: u16) -> Option<Identity> {
        let owner = self.ask(peer, listener)?;
        // The daemon reads the link when it can; else this process, in the agent's pid
        // namespace, reads it by the pid the daemon translated.
        let pid = Some(owner.pid).filter(|p| *p != 0);
        let binary = owner
            .exe
            .map(PathBuf::from)
            .or_else(|| pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok()));
        Some(Identity { binary, pid, destination: owner.dest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_variables_are_found_by_name_unless_inherited_unchanged() {
        let none = |_: &str| None;
        assert_eq!(environ_sets(b"PATH=/bin\0LD_PRELOAD=/x.so\0", none), Some("LD_PRELOAD"));
        assert_eq!(environ_sets(b"LD_AUDIT=\0", none), Some("LD_AUDIT"));
        assert_eq!(environ_sets(b"A=1\0LD_LIBRARY_PATH=/tmp", none), Some("LD_LIBRARY_PATH"));
        assert_eq!(environ_sets(b"X=LD_PRELOAD=/x.so\0LD_PRELOADX=1\0MY_LD_AUDIT=1\0", none), None);
        assert_eq!(environ_sets(b"", none), None);
        // leash's own value, inherited: the user's choice. Anything else: the agent's.
        let leash = |name: &str| (name == "LD_LIBRARY_PATH").then(|| b"/opt/lib".to_vec());
        assert_eq!(environ_sets(b"LD_LIBRARY_PATH=/opt/lib\0", leash), None);
        assert_eq!(environ_sets(b"LD_LIBRARY_PATH=/tmp:/opt/lib\0", leash), Some("LD_LIBRARY_PATH"));
        assert_eq!(environ_sets(b"LD_LIBRARY_PATH=/opt/lib\0LD_PRELOAD=\0", leash), Some("LD_PRELOAD"));
    }

    /// A connection to a listener of this test, whose client socket this process is made to
    /// hold in some way by `hide`; whether `holders_all_run` trusts `exe` for it.
    fn trusted_when(hide: impl FnOnce(std::net::TcpStream) -> Box<dyn std::any::Any>, exe: &Path) -> bool {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, proxy) = (client.local_addr().unwrap(), listener.local_addr().unwrap());
        let _held = hide(client);
        let procs = std::env::temp_dir().join(format!("leash-holders-{}-{}", std::process::id(), peer.port()));
        std::fs::write(&procs, format!("{}\n", std::process::id())).unwrap();
        let trusted = holders_all_run(&procs, Path::new("/proc/self/net"), peer, proxy, exe);
        let _ = std::fs::remove_file(&procs);
        trusted
    }

    #[test]
    fn the_holders_of_a_connection_must_run_the_executable() {
        let own = std::env::current_exe().unwrap();
        assert!(trusted_when(|c| Box::new(c), &own), "the premise: this process holds it and runs its executable");
        assert!(!trusted_when(|c| Box::new(c), Path::new("/usr/bin/git")));
    }

    /// The socket in flight (sent on a unix socket, not yet received): nobody holds it, and
    /// whoever receives it later is not the process that connected.
    #[test]
    fn a_socket_nobody_holds_is_not_trusted() {
        let own = std::env::current_exe().unwrap();
        let in_flight = |client: std::net::TcpStream| -> Box<dyn std::any::Any> {
            use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
            use std::os::fd::AsRawFd as _;
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let fds = [client.as_raw_fd()];
            let iov = [std::io::IoSlice::new(b"x")];
            sendmsg::<()>(a.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None).unwrap();
            drop(client);
            Box::new((a, b))
        };
        assert!(!trusted_when(in_flight, &own), "a socket in flight was trusted as its connecting process's");
    }

    /// The socket held only by a thread with a descriptor table of its own (`unshare(CLONE_FILES)`),
    /// which `/proc/<pid>/fd` (the first thread's table) does not show.
    #[test]
    fn a_socket_in_a_threads_own_table_is_seen() {
        let (ready, wait) = std::sync::mpsc::channel();
        let (done, finish) = std::sync::mpsc::channel::<()>();
        let private = move |client: std::net::TcpStream| -> Box<dyn std::any::Any> {
            let thread = std::thread::spawn(move || {
                // SAFETY: unshare(CLONE_FILES) gives this thread a copy of the descriptor table.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_FILES) }, 0);
                ready.send(()).unwrap();
                let _ = finish.recv();
            });
            wait.recv().unwrap();
            // The table shared by the other threads lets go of it; the thread's copy keeps it.
            drop(client);
            Box::new(thread)
        };
        assert!(!trusted_when(private, Path::new("/usr/bin/git")), "a thread's own table was not looked at");
        drop(done);
    }

    #[test]
    fn own_environment_passes_and_a_missing_process_fails_closed() {
        assert_eq!(check_loader_variables(Some(std::process::id())), Ok(()));
        assert_eq!(check_loader_variables(None), Err(Untrusted::Unreadable));
        assert_eq!(check_loader_variables(Some(0)), Err(Untrusted::Unreadable));
        assert_eq!(check_loader_variables(Some(u32::MAX)), Err(Untrusted::Unreadable));
    }
}
