//! `leash confine`: the pod side of node mode. Unprivileged, inside the runner's container:
//!
//! 1. ask the node daemon which policy this pod may use (`policy` request) and compile it;
//! 2. start the TLS proxy here, in the pod — its credentials never leave the pod;
//! 3. fork the agent, which connects to the daemon itself (so the daemon's peer credentials name
//!    the agent, not leash) and hands that connection back to leash;
//! 4. send `confine` on it with the proxy's listening socket: the daemon moves the agent into a
//!    sandbox cgroup that reaches only that socket's address in this pod's network namespace;
//! 5. let the agent go on (no_new_privs, Landlock, the socket-family filter) and exec CMD.
//!
//! The proxy is this process: if leash dies, the agent has no network at all.

use std::ffi::OsString;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

use super::child::{self, Enter, CONFINED};
use super::identity::Identity;
use super::{landlock, seccomp, signals, spawn_failure, stdio, trust};
use crate::audit::Auditor;
use crate::confine_api::client::Client;
use crate::confine_api::protocol::{Confined, Op, PolicyText};
use crate::kernel::sandbox_id::SandboxId;
use crate::policy;
use crate::proxy::{BoundProxy, DaemonOwners, Proxy, ProxyConfig, Secrets};

/// What `leash confine` was asked to do.
#[derive(Debug, Clone)]
pub struct ConfineOptions {
    pub socket: PathBuf,
    pub policy: Option<String>,
    pub proxy_listen: std::net::SocketAddr,
    pub audit_log: Option<PathBuf>,
    /// The most this sandbox writes to its audit log.
    pub audit_log_max: crate::audit::LogLimit,
    pub credentials_file: Option<PathBuf>,
    pub upstream_ca: Vec<PathBuf>,
    /// Start the agent without a Landlock domain when the kernel has none.
    pub allow_degraded: bool,
    pub command: Vec<OsString>,
}

/// Runs CMD confined by the node daemon; returns CMD's exit code. An `Err` is a failure before
/// exec (exit 125).
pub async fn confine(opts: ConfineOptions) -> Result<i32> {
    let Some((program, args)) = opts.command.split_first() else {
        bail!("no command given: usage is `leash confine --socket PATH [OPTIONS] -- CMD [ARGS...]`");
    };
    if !opts.proxy_listen.ip().is_loopback() {
        bail!("--proxy-listen {} is not a loopback address: the proxy would be open to the network", opts.proxy_listen);
    }
    if nix::unistd::geteuid().is_root() {
        bail!("leash confine keeps the agent as the user it runs as, and the agent never runs as root: run it as an unprivileged user (runAsUser in the pod)");
    }
    stdio::refuse_network_sockets()?;
    // The agent runs as this same user: without this, it could ptrace leash or read its memory
    // and environment (where the credentials are) whenever Landlock is missing.
    nix::sys::prctl::set_dumpable(false).context("making leash non-dumpable")?;
    let mut daemon = Client::connect(&opts.socket)?;
    let text: PolicyText = serde_json::from_value(daemon.call(Op::Policy { policy: opts.policy.clone() })?)
        .context("reading the daemon's policy answer")?;
    drop(daemon);
    let policy = policy::parse_str(&format!("<node policy {}>", text.name), &text.yaml).map_err(|e| anyhow!("{e}"))?;
    let transparent = policy.transparent();
    let identity = own_identity();
    let id = SandboxId::for_self()?;
    let audit = Auditor::new(&id.to_string(), opts.audit_log.as_deref(), opts.audit_log_max, true)?;
    let credential_names: Vec<String> = policy.credentials().iter().map(|c| c.name.clone()).collect();
    let binaries_restricted = !policy.binaries_restricted().is_empty();
    let filesystem = policy.filesystem().cloned();
    let secrets = match &opts.credentials_file {
        Some(path) => Secrets::File(path.clone()),
        None => Secrets::Environment,
    };
    let config = ProxyConfig { upstream_ca: opts.upstream_ca.clone(), secrets };
    let proxy = Proxy::new(policy, &config, audit)?;
    let trust = trust::AgentTrustDir::write_in(&std::env::temp_dir(), &format!("leash-{id}"), proxy.ca())?;
    let mut bound = BoundProxy::bind(opts.proxy_listen).await?;

    let workdir = std::env::current_dir().context("reading the working directory")?;
    let domain = landlock::prepare(filesystem.as_ref(), &workdir, &[trust.dir().to_path_buf()])?;
    let landlock_fd = match &domain {
        landlock::Domain::Enforced(p) => Some(p.fd.as_raw_fd()),
        landlock::Domain::Unavailable(why) => {
            // As under `leash run`: without a domain the agent could ptrace or pidfd_getfd a
            // process of its uid outside the sandbox (leash confine itself runs as that uid).
            let missing = [super::layers::Missing {
                layer: "process isolation (Landlock domain)",
                why: format!(
                    "{why}; without it the agent can borrow sockets from processes of its uid outside the sandbox"
                ),
            }];
            super::check_missing(&missing, opts.allow_degraded)?;
            crate::say!("leash: warning: running degraded, not enforced: {}", missing[0]);
            None
        }
    };
    if binaries_restricted || transparent {
        // The daemon keeps each connection's owner under its client socket's cookie, which this
        // proxy finds with `sock_diag` in the pod's network namespace.
        if let Err(e) = crate::kernel::sock_diag::answers(bound.addr()) {
            let why = format!("{e}; no connection's owner can be found, so binaries: rules match nothing and redirected connections are refused");
            let missing = [super::layers::Missing { layer: super::layers::PEER_SOCKETS, why }];
            super::check_missing(&missing, opts.allow_degraded)?;
            crate::say!("leash: warning: running degraded, not enforced: {}", missing[0]);
        }
    }
    let mut env = super::credential_env(&proxy, &credential_names, bound.addr(), &identity)?;
    trust.add_env(&mut env);

    let socket = UnixAddr::new(&opts.socket).with_context(|| format!("socket path {}", opts.socket.display()))?;
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .context("creating the handoff socket pair")?;
    // The child's handoff then says which process it is (SCM_CREDENTIALS).
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)
        .context("asking for the agent's credentials on the handoff socket")?;
    // The handoff runs while spawn() waits for the child's exec.
    let listener = bound.listener_fd().try_clone_to_owned().context("duplicating the proxy socket")?;
    let policy_name = text.name.clone();
    let leash_end = ours.as_raw_fd();
    let transparent_on = transparent.then_some(bound.addr().ip());
    let handoff = std::thread::spawn(move || hand_off(ours, listener, transparent_on, &policy_name));
    let seccomp = seccomp::SocketFamilyFilter::new();
    let spawned = child::spawn(
        child::ChildSetup {
            program,
            args,
            env,
            identity: None,
            enter: Enter::Daemon { socket: &socket, handoff: theirs.as_raw_fd(), leash_end },
            landlock: landlock_fd,
            seccomp: &seccomp,
            mounts: None,
            terminal: None,
        },
        None,
    );
    drop(theirs);
    drop(domain);
    let handed = handoff.join().map_err(|_| anyhow!("the handoff thread panicked"))?;
    let child = match (spawned, handed) {
        (Ok(child), Ok((confined, transparent_sockets))) => {
            if !confined.netns_scoped {
                crate::say!("leash: note: this kernel does not report network namespaces; the sandbox is scoped by address only");
            }
            if let Some((tcp, dns)) = transparent_sockets {
                bound.adopt_transparent(tcp, dns)?;
            }
            if binaries_restricted || confined.transparent {
                // `binaries:` rules and transparent mode: the daemon holds the table of who opened
                // each connection, and where a redirected one was going.
                proxy.set_connection_owners(Box::new(DaemonOwners::new(&opts.socket, &confined.sandbox)))?;
            }
            child
        }
        // The child failed before it could ask the daemon: that is the error, not the handoff's.
        (Err(e), Err(_)) if e.step != child::Step::Sandbox => return Ok(spawn_failure(program, &e)),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Ok(spawn_failure(program, &e)),
    };
    let proxy_task = bound.serve(Arc::clone(&proxy));
    let code = signals::wait_forwarding(child, false).await?;
    proxy_task.abort();
    drop(trust);
    Ok(code)
}

/// Transparent mode's sockets, made by the handoff for the proxy to serve.
type TransparentSockets = (std::net::TcpListener, std::net::UdpSocket);

/// leash's half of the handoff: receive the child's daemon connection, ask for confinement with
/// the proxy's socket (and, when `transparent` names the proxy's address, transparent mode's
/// two sockets, made here), and tell the child to go on (or, by closing, not to).
fn hand_off(
    ours: OwnedFd,
    listener: OwnedFd,
    transparent: Option<std::net::IpAddr>,
    policy: &str,
) -> Result<(Confined, Option<TransparentSockets>)> {
    let (connection, agent) = receive_fd(&ours).context("receiving the agent's connection to the daemon")?;
    // Made after the agent's fork (it sent its connection from the child), so the agent never
    // holds them: the daemon refuses a target holding a network socket made outside.
    let sockets = transparent.map(crate::proxy::bind_transparent).transpose()?;
    let mut fds = vec![listener.as_fd()];
    if let Some((tcp, dns)) = &sockets {
        fds.extend([tcp.as_fd(), dns.as_fd()]);
    }
    let mut client = Client::from_stream(UnixStream::from(connection));
    let confined: Confined =
        serde_json::from_value(client.call_with_fds(Op::Confine { policy: Some(policy.to_owned()), pid: None }, &fds)?)
            .context("reading the daemon's confine answer")?;
    drop(fds);
    drop(listener);
    if sockets.is_some() && !confined.transparent {
        bail!("the node daemon did not put transparent mode in force (is it older than this leash?)");
    }
    // The answer is only a claim: the agent goes on only from its sandbox's cgroup, which the
    // daemon made and no pod can (whoever else serves the socket path says "confined" too).
    check_in_sandbox(agent, &confined.sandbox)?;
    nix::unistd::write(&ours, &[CONFINED]).context("releasing the agent")?;
    crate::say!(
        "leash: sandbox {} (policy {}) confines the agent to {}",
        confined.sandbox,
        confined.policy,
        confined.proxy
    );
    Ok((confined, sockets))
}

/// Receives one descriptor passed over `sock`, and the pid of the process that sent it.
fn receive_fd(sock: &OwnedFd) -> Result<(OwnedFd, libc::pid_t)> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1], nix::sys::socket::UnixCredentials);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let (mut fd, mut pid) = (None, None);
    for c in msg.cmsgs()? {
        match c {
            // SAFETY: the kernel just installed this descriptor for us.
            ControlMessageOwned::ScmRights(fds) => fd = fds.first().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) }),
            ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid()),
            _ => {}
        }
    }
    match (fd, pid) {
        (Some(fd), Some(pid)) => Ok((fd, pid)),
        (Some(_), None) => bail!("the agent's handoff carried no credentials"),
        _ => bail!("the agent could not reach the daemon before exec (no connection was handed over)"),
    }
}

/// Fails unless process `pid` (the agent, waiting for the word to go on) is in the cgroup of
/// sandbox `sandbox`, `leash-<sandbox>`, as its cgroup (v2) path reads in leash's view.
fn check_in_sandbox(pid: libc::pid_t, sandbox: &str) -> Result<()> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).context("reading the agent's cgroup")?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default();
    let named = !sandbox.is_empty() && sandbox.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !named || !path.ends_with(&format!("/leash-{sandbox}")) {
        bail!(
            "the daemon answered that the agent is confined in sandbox {sandbox:?}, but the agent's cgroup is {path:?}: is this socket the node daemon's?"
        );
    }
    Ok(())
}

/// Who leash runs as, for the agent's `HOME`/`USER` (pods often run a uid with no passwd entry).
fn own_identity() -> Identity {
    let uid = nix::unistd::getuid();
    let user = crate::accounts::user_by_uid(uid).ok().flatten();
    let name =
        user.as_ref().map(|u| u.name.clone()).or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| uid.to_string());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| user.map(|u| u.home))
        .unwrap_or_else(|| Path::new("/").into());
    Identity { uid, gid: nix::unistd::getgid(), groups: Vec::new(), name, home }
}
