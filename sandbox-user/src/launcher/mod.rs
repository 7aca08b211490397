//! `leash run`: confine one command (and everything it starts) and wait for it.
//!
//! Order matters and every step is a function below: load the policy, check the caller and the
//! layers, reap what crashed runs left, start the proxy, build the sandbox (cgroup, programs,
//! pins, entries), prepare Landlock, start the agent inside it, forward signals, and tear
//! everything down when it exits.

mod child;
pub mod confine;
mod environment;
pub mod git_index;
pub mod host_files;
mod host_sockets;
mod identity;
mod landlock;
pub mod layers;
mod mount_ns;
mod prepare;
mod reload;
mod sandbox;
mod seccomp;
mod signals;
mod stdio;
mod terminal;
mod trust;
pub mod watchdog;
mod workdir_guard;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::audit::Auditor;
use crate::kernel::events::KernelEvent;
use crate::kernel::generation::{this_generation, this_generation_pinned, Generation};
use crate::kernel::learning;
use crate::kernel::lsm_rules::LsmRules;
use crate::kernel::programs::{self, sandbox_net};
use crate::kernel::{mounts, reaper, sandbox_id::SandboxId};
use crate::policy::{self, CompiledPolicy, FilesystemRules};
use crate::proxy::{BoundProxy, Proxy, ProxyConfig, SandboxPeers, Secrets};

pub use landlock::kernel_abi as landlock_abi;
pub use reload::{reload_from as reload_policy, watch as watch_policy, KernelReload};

/// The built-in policy used when `--policy` is not given.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.yaml");

/// Exit codes of `leash run` besides the agent's own status (as env(1), timeout(1), docker).
pub mod exit {
    /// leash failed before exec: bad policy, missing layer, not root, ...
    pub const LEASH_FAILED: i32 = 125;
    pub const NOT_EXECUTABLE: i32 = 126;
    pub const NOT_FOUND: i32 = 127;
}

/// What `leash run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy: Option<PathBuf>,
    pub proxy_listen: SocketAddr,
    pub audit_log: Option<PathBuf>,
    /// The most this sandbox writes to its audit log.
    pub audit_log_max: crate::audit::LogLimit,
    pub credentials_file: Option<PathBuf>,
    pub upstream_ca: Vec<PathBuf>,
    pub allow_degraded: bool,
    /// No summary of what was denied at exit.
    pub quiet: bool,
    /// `--learn`: the proxy allows and records what the policy would deny, and the policy the
    /// run needed is written here at exit.
    pub learn: Option<PathBuf>,
    /// `--learn-allow-private`: learning may open hosts that resolve to private addresses.
    pub learn_allow_private: bool,
    /// `--keep-home DIR`: the home leash gives an agent without one, kept after exit.
    pub keep_home: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// A `leash run` begun ([`begin`]), before its async runtime exists.
pub struct Begun {
    opts: RunOptions,
    watchdog: watchdog::Watchdog,
    program: OsString,
    args: Vec<OsString>,
    is_root: bool,
    id: SandboxId,
    warm: bool,
    early_preparation: Option<prepare::Preparation>,
}

/// Begins `leash run` beside `watchdog` (forked at leash's start, `Watchdog::fork`). On a warm
/// start (this binary's programs pinned), the TLS material and the agent's trust files are
/// prepared on another thread from here on, while leash's main thread starts its runtime, reads
/// the policy, opens the kernel side and builds the sandbox (`prepare`): that thread's work is
/// the longer of the two, so it starts before anything it does not need. A cold start loads the
/// programs first, alone: threads allocating beside the loader made it 12 MiB larger and 5%
/// slower.
pub fn begin(opts: RunOptions, watchdog: watchdog::Watchdog) -> Result<Begun> {
    let Some((program, args)) = opts.command.split_first() else {
        bail!("no command given: usage is `leash run [OPTIONS] -- CMD [ARGS...]`");
    };
    let (program, args) = (program.clone(), args.to_vec());
    let is_root = nix::unistd::geteuid().is_root();
    let id = SandboxId::for_self()?;
    let warm = this_generation_pinned();
    let early_preparation = match warm && is_root {
        true => Some(prepare::Preparation::start(id, opts.upstream_ca.clone())?),
        false => None,
    };
    Ok(Begun { opts, watchdog, program, args, is_root, id, warm, early_preparation })
}

/// Runs the command of a begun `leash run` confined; returns the exit code `leash run` should
/// exit with. An `Err` is a failure before exec (exit 125).
pub async fn run(begun: Begun) -> Result<i32> {
    let Begun { opts, watchdog, program, args, is_root, id, warm, early_preparation } = begun;
    let (program, args) = (&program, args.as_slice());
    // Before reading the policy: the agent's identity is in it, so this first look takes the one
    // the agent gets without `process:`; the policy's own is checked below.
    let default_identity = match (&opts.policy, is_root) {
        (Some(path), true) => {
            let identity = identity::resolve(&policy::RunAs::default())?;
            host_files::policy_file(path, &identity.ids())?;
            Some(identity)
        }
        _ => None,
    };
    let policy = load_policy(opts.policy.as_deref())?;
    if !is_root {
        bail!("leash run must run as root (it creates cgroups and loads eBPF programs); try `sudo leash run ...`");
    }
    mount_ns::check_workdir(&std::env::current_dir().context("reading the working directory")?)?;
    let identity = match default_identity {
        // The user database is asked once (an NSS lookup costs ~0.1 ms of every start).
        Some(identity) if *policy.run_as() == policy::RunAs::default() => identity,
        _ => identity::resolve(policy.run_as())?,
    };
    let agent_ids = identity.ids();
    let policy_file = opts.policy.as_deref().map(|p| host_files::policy_file(p, &agent_ids)).transpose()?;
    let credentials_file =
        opts.credentials_file.as_deref().map(|p| host_files::credentials_file(p, &agent_ids)).transpose()?;
    let audit_file = opts.audit_log.as_deref().map(|p| host_files::open_audit_log(p, &agent_ids)).transpose()?;
    let mut missing = Vec::new();
    // leash's own secrets are kept from the agent as well as the policy's deny_open files.
    let protect: Vec<PathBuf> = credentials_file.iter().cloned().collect();
    // Without a `kernel:` section the baseline rules apply where BPF-LSM works, and nothing is
    // missing where it does not: the mount namespace keeps host sockets away (`mount_ns`).
    let kernel_required = policy.kernel().is_some();
    let transparent_mode = policy.transparent();
    // Learning runs the exec allowlist and the filesystem policy in audit mode: nothing is
    // refused, the learning program records what was done. Every other rule stays in force.
    let learning = opts.learn.is_some();
    let kernel_section = policy.kernel().map(|k| match learning {
        true => policy::KernelRules { exec_allow: None, ..k.clone() },
        false => k.clone(),
    });
    let binaries_rules = !policy.binaries_restricted().is_empty();
    let kernel_rules = LsmRules::for_policy(kernel_section.as_ref(), &protect)
        .context("resolving the policy's `kernel:` section")?
        .with_binaries_rules(binaries_rules)
        .for_leash_run();
    for path in &kernel_rules.missing_deny_open {
        crate::say!("leash: note: kernel.deny_open path {} does not exist yet; refused once it does", path.display());
    }
    if let Some(out) = &opts.learn {
        let same =
            |p: &Path| std::fs::canonicalize(p).ok().zip(std::fs::canonicalize(out).ok()).is_some_and(|(a, b)| a == b);
        if opts.policy.as_deref().is_some_and(same) {
            bail!("--learn {} is the policy file itself: write the learned policy elsewhere", out.display());
        }
    }
    for file in &opts.upstream_ca {
        crate::proxy::tls::read_pem_certificates(file)?;
    }
    if !opts.proxy_listen.ip().is_loopback() {
        bail!("--proxy-listen {} is not a loopback address: the proxy would be open to the network", opts.proxy_listen);
    }
    stdio::refuse_network_sockets()?;

    let audit = Auditor::to_file(&id.to_string(), audit_file, Some(opts.audit_log_max), true);
    let protect_in_workdir = policy.protect_in_workdir();
    let unix_allowed: Vec<PathBuf> = policy
        .kernel()
        .into_iter()
        .flat_map(|k| &k.unix_allow)
        .filter_map(|name| match name {
            policy::UnixSocketName::Path(p) => Some(p.clone()),
            policy::UnixSocketName::Abstract(_) => None,
        })
        .collect();
    let credential_names: Vec<String> = policy.credentials().iter().map(|c| c.name.clone()).collect();
    let filesystem = policy.filesystem().filter(|_| !learning).cloned();
    let secrets = match &credentials_file {
        Some(path) => Secrets::File(path.clone()),
        None => Secrets::Environment,
    };
    let proxy_config = ProxyConfig { upstream_ca: opts.upstream_ca.clone(), secrets };
    // Reap before binding: a stale sandbox must not find its old proxy port served again.
    let roots = (!warm).then(open_kernel);
    let mut preparation = match early_preparation {
        Some(p) => p,
        None => prepare::Preparation::start(id, opts.upstream_ca.clone())?,
    };
    preparation.hand_over(policy, proxy_config, audit.clone());
    let roots = roots.unwrap_or_else(open_kernel);
    let mut bound = BoundProxy::bind(opts.proxy_listen).await?;
    // Every connection to the proxy is recorded with its owner: the proxy serves only those.
    let mut net = sandbox_net(bound.addr(), true);
    if transparent_mode {
        net = programs::transparent(net, bound.bind_transparent()?);
    }
    let built = roots.and_then(|(cgroup_root, bpffs, generation)| {
        sandbox::Sandbox::create(id, &cgroup_root, &bpffs, generation, net)
    });
    let mut sandbox = match built {
        Ok(s) => Some(s),
        Err(e) => {
            missing.push(layers::Missing { layer: "network confinement (cgroup eBPF)", why: format!("{e:#}") });
            None
        }
    };
    // Everything up to the agent's start is done while the preparing thread works, and waits
    // for it last. A failure on the way tears the sandbox down; the preparation's trust
    // directory goes with it.
    let mut preparation = Some(preparation);
    let ready = async {
        if let Some(cgroup) = sandbox.as_ref().and_then(|s| s.cgroup()) {
            watchdog.watch(cgroup.path(), &bound.sockets())?;
        }
        // Before the guard, which may create the name as a held directory. Kept open: the
        // learned policy is written through this descriptor at the end, never by path again.
        let learned_out = opts.learn.as_deref().map(open_learned).transpose()?;
        let host_sockets = mount_ns::HostSockets::find(&unix_allowed);
        if sandbox.is_some() {
            if let Err(e) = crate::kernel::sock_diag::answers(bound.addr()) {
                let why = format!("{e}; the proxy serves no connection");
                missing.push(layers::Missing { layer: layers::PEER_SOCKETS, why });
            }
        }
        if kernel_required {
            missing.extend(enforce_kernel_rules(sandbox.as_mut(), &kernel_rules));
        } else if sandbox.as_ref().is_some_and(|s| s.lsm_available()) {
            for m in enforce_kernel_rules(sandbox.as_mut(), &kernel_rules) {
                crate::say!("leash: warning: the baseline BPF-LSM rules are not in force: {}", m.why);
            }
        }
        check_missing(&missing, opts.allow_degraded)?;
        // Held directories are removed only after teardown, once the sandbox's last process is
        // gone (on an error here, when the guard is dropped).
        let workdir = std::env::current_dir().context("reading the working directory")?;
        let guard = workdir_guard::WorkdirGuard::protect(&workdir, &protect_in_workdir, &agent_ids)?;
        if let Err(e) = watchdog.hold(guard.held_ids()) {
            crate::say!("leash: warning: if leash is killed, the directories it holds stay behind: {e:#}");
        }
        let prepared = preparation.take().context("the preparation was already taken")?;
        let prepare::Prepared { proxy, trust, agent_thread } =
            prepared.finish().await.context("preparing the proxy")?;
        if opts.learn.is_some() {
            proxy.learn(opts.learn_allow_private)?;
        }
        anyhow::Ok((host_sockets, workdir, guard, proxy, trust, agent_thread, learned_out))
    };
    let (host_sockets, workdir, mut guard, proxy, trust, agent_thread, learned_out) = match ready.await {
        Ok(ready) => ready,
        Err(e) => {
            // The preparing thread's trust directory goes before leash does.
            drop(preparation);
            if let Some(mut s) = sandbox {
                s.teardown();
            }
            return Err(e);
        }
    };
    guard.agent_may_run();
    let agent = Agent {
        workdir: &workdir,
        guard: &guard,
        program,
        args,
        identity: &identity,
        credential_names: &credential_names,
        filesystem: filesystem.as_ref(),
        binaries_rules,
        host_sockets: &host_sockets,
        thread: agent_thread,
        learned_out,
    };
    // A reload while learning would put the rules being learned in force.
    let policy_file = policy_file.filter(|_| !learning);
    let kernel = Reload { policy: policy_file, rules: &kernel_rules, protect: &protect };
    let outcome = run_inside(&opts, agent, proxy, bound, &trust, sandbox.as_mut(), &audit, &id, &missing, kernel).await;
    // The watchdog holds the proxy's ports until no process of the sandbox is left: once the
    // cgroup is empty it is let go, and exits while the rest is torn down.
    if let Some(s) = &sandbox {
        let _ = s.empty();
    }
    guard.release();
    let stopping = watchdog.release();
    if let Some(mut s) = sandbox {
        s.teardown();
    }
    stopping.wait();
    drop(trust);
    outcome
}

/// Puts `rules` in force with BPF-LSM in `sandbox`; what could not be, as missing layers.
fn enforce_kernel_rules(sandbox: Option<&mut sandbox::Sandbox>, rules: &LsmRules) -> Vec<layers::Missing> {
    const LAYER: &str = "syscall policy (BPF-LSM)";
    let Some(sandbox) = sandbox else {
        return vec![layers::Missing { layer: LAYER, why: "there is no sandbox cgroup to scope it to".into() }];
    };
    match sandbox.enforce_kernel_rules(rules) {
        Ok(hooks) if hooks.is_empty() => Vec::new(),
        Ok(hooks) => vec![layers::Missing {
            layer: LAYER,
            why: format!("this kernel has no BPF-LSM hook {} (needed by the policy)", hooks.join(", ")),
        }],
        Err(e) => vec![layers::Missing { layer: LAYER, why: format!("BPF-LSM is not usable here: {e:#}") }],
    }
}

/// How the policy file is watched, and the `kernel:` rules in force at start and what else they
/// protect, for reloads.
struct Reload<'a> {
    policy: Option<host_files::PolicyFile>,
    rules: &'a LsmRules,
    protect: &'a [PathBuf],
}

/// What is started inside the sandbox, and as whom.
struct Agent<'a> {
    /// The thread to start it on (the preparing one, done), or `None` for a new one.
    thread: Option<child::AgentThread>,
    workdir: &'a Path,
    /// Names in the working directory it may neither change nor create.
    guard: &'a workdir_guard::WorkdirGuard,
    program: &'a OsString,
    args: &'a [OsString],
    identity: &'a identity::Identity,
    credential_names: &'a [String],
    filesystem: Option<&'a FilesystemRules>,
    /// Whether the policy has `binaries:` rules (the proxy then reads each connection's owner).
    binaries_rules: bool,
    /// The host's sockets to keep from the agent (all but the policy's `kernel.unix.allow`).
    host_sockets: &'a mount_ns::HostSockets,
    /// `--learn`'s output, opened before the agent starts (`open_learned`).
    learned_out: Option<std::fs::File>,
}

/// Starts proxy, events and agent in a built sandbox and waits for the agent.
#[allow(clippy::too_many_arguments)]
async fn run_inside(
    opts: &RunOptions,
    agent: Agent<'_>,
    proxy: Arc<Proxy>,
    bound: BoundProxy,
    trust: &trust::AgentTrustDir,
    mut sandbox: Option<&mut sandbox::Sandbox>,
    audit: &Auditor,
    id: &SandboxId,
    missing: &[layers::Missing],
    kernel: Reload<'_>,
) -> Result<i32> {
    let workdir = agent.workdir;
    let domain = landlock::prepare(agent.filesystem, workdir, &[trust.in_leash_view()])?;
    let mut missing = missing.to_vec();
    let landlock_fd = match &domain {
        landlock::Domain::Enforced(p) => {
            for path in &p.skipped {
                crate::say!("leash: note: filesystem_policy path {} does not exist here; skipped", path.display());
            }
            Some(p.fd.as_raw_fd())
        }
        landlock::Domain::Unavailable(why) => {
            // Without a domain the agent could ptrace or pidfd_getfd an unconfined process of
            // its own uid and use its sockets: the network layer is not whole.
            missing.push(layers::Missing {
                layer: "process isolation (Landlock domain)",
                why: format!(
                    "{why}; without it the agent can borrow sockets from processes of its uid outside the sandbox"
                ),
            });
            if agent.filesystem.is_some() {
                missing.push(layers::Missing { layer: "filesystem (Landlock)", why: why.clone() });
            }
            check_missing(&missing, opts.allow_degraded)?;
            None
        }
    };
    let seccomp = seccomp::SocketFamilyFilter::new();
    for m in missing.iter() {
        crate::say!("leash: warning: running degraded, not enforced: {m}");
    }

    // `--learn`: what the learning program reports, and the program attached (or why not).
    let recorded = Arc::new(std::sync::Mutex::new(learning::Recorded::default()));
    let mut learning: Option<Result<learning::Learning, String>> = None;
    let events = match sandbox.as_deref_mut() {
        Some(s) => {
            let procs = s.cgroup().context("sandbox cgroup missing")?.path().join("cgroup.procs");
            let mut peers = SandboxPeers::new(s.connection_owners()?);
            if missing.iter().any(|m| m.layer == layers::PEER_SOCKETS) {
                peers = peers.without_sock_diag();
            }
            if agent.binaries_rules || opts.learn.is_some() {
                peers = peers.naming_executables(procs, bound.addr().ip());
            }
            proxy.serve_only(peers)?;
            proxy.answer_dns_only(s.dns_clients()?)?;
            let audit = audit.clone();
            let names = target_names(kernel.rules);
            // A file the open deny list took up later (a rotated token) is named as it is now.
            let followed = s.kernel_rules_updater();
            let files = recorded.clone();
            let pump = s.start_events(move |e| match e {
                KernelEvent::Deny(e) => {
                    let named = names
                        .get(&(e.target_dev, e.target_ino))
                        .cloned()
                        .or_else(|| followed.as_ref()?.deny_open_path(e.target_dev, e.target_ino));
                    audit.kernel_denied(e, named.as_deref())
                }
                KernelEvent::Learned(e) => {
                    if let Ok(mut files) = files.lock() {
                        files.add(e);
                    }
                }
            })?;
            if opts.learn.is_some() {
                learning = Some(s.learn().map_err(|e| format!("{e:#}")));
            }
            Some(pump)
        }
        None => None,
    };
    let proxy_addr = bound.addr();
    let proxy_task = bound.serve(proxy.clone());
    let kernel_updater = sandbox.as_deref().and_then(|s| s.kernel_rules_updater());
    // A file of the open deny list replaced while the agent runs (a rotated token) is followed.
    let deny_open_follower = kernel_updater.clone().map(reload::follow_deny_open);
    let reloader = match kernel.policy {
        Some(host_files::PolicyFile::Watched(path)) => {
            let kernel = match kernel_updater {
                Some(updater) => {
                    reload::KernelReload::Update(reload::KernelTarget { updater, protect: kernel.protect.to_vec() })
                }
                None => reload::KernelReload::Unenforced { allow_degraded: opts.allow_degraded },
            };
            Some(reload::watch(path, proxy.clone(), kernel))
        }
        Some(host_files::PolicyFile::Frozen(why)) => {
            crate::say!("leash: note: the policy is read once and not reloaded: the agent could change it ({why})");
            None
        }
        None => None,
    };

    let mut env = credential_env(&proxy, agent.credential_names, proxy_addr, agent.identity)?;
    trust.add_env(&mut env);
    let procs = match sandbox.as_deref() {
        Some(s) => Some(s.cgroup().context("sandbox cgroup missing")?.open_dir()?),
        None => None,
    };
    // The agent's terminals: a devpts of its own, with its terminal in it (where the new mount
    // API is refused, one made in its namespace, and its terminal stays the host's).
    let terminals = mount_ns::detached_devpts().ok();
    let mut mounts = mount_ns::PrivateMounts::prepare(
        &[trust.kept()],
        agent.guard.parents().iter().map(PathBuf::as_path),
        agent.guard.read_only(),
        agent.host_sockets,
        terminals.as_ref().map(|d| d.as_fd()),
    )
    .context("preparing the agent's mount namespace")?;
    if let landlock::Domain::Enforced(p) = &domain {
        mounts.with_landlock(p.fd.as_raw_fd(), &p.emptied)?;
    }
    // Held open until the child has allowed it in its Landlock domain (close-on-exec).
    let mut kept_home = None;
    if !identity::home_usable(agent.identity) {
        let landlock = match &domain {
            landlock::Domain::Enforced(p) => Some((p.fd.as_raw_fd(), p.read_write)),
            landlock::Domain::Unavailable(_) => None,
        };
        let (uid, gid) = (agent.identity.uid.as_raw(), agent.identity.gid.as_raw());
        if let Some(dir) = &opts.keep_home {
            kept_home = Some(host_files::kept_home(dir, &agent.identity.ids(), gid)?);
        }
        let kept = kept_home.as_ref().map(|(fd, _)| fd.as_raw_fd());
        let (path, fate) = match &kept_home {
            Some((_, path)) => (path.display().to_string(), "its own, kept after exit"),
            None => (mount_ns::PRIVATE_HOME.to_string_lossy().into_owned(), "private, removed at exit"),
        };
        if mounts.with_home(mount_ns::PrivateHome { uid, gid, landlock, kept }) {
            crate::say!(
                "leash: note: {} has no home directory of its own ({}); the agent gets {path} ({fate})",
                agent.identity.name,
                agent.identity.home.display(),
            );
            env.retain(|(name, _)| name != "HOME");
            env.push(("HOME".into(), path.into()));
        }
    } else if let Some(dir) = &opts.keep_home {
        crate::say!(
            "leash: note: --keep-home {} is not used: {} has a home directory of its own ({})",
            dir.display(),
            agent.identity.name,
            agent.identity.home.display()
        );
    }
    let relative = |p: &Path| p.strip_prefix(workdir).unwrap_or(p).display().to_string();
    let existing: Vec<String> = agent.guard.existing().iter().map(|p| relative(p)).collect();
    if !existing.is_empty() {
        crate::say!(
            "leash: note: read-only for the agent (they run code outside the sandbox later): {}",
            existing.join(", ")
        );
    }
    let held: Vec<String> = agent.guard.held().map(relative).collect();
    if !held.is_empty() {
        crate::say!(
            "leash: note: held as empty read-only directories so the agent cannot create them (removed at exit): {}",
            held.join(", ")
        );
    }
    let mut relay = terminal::open(terminals.as_ref().map(|d| d.as_fd()), agent.identity.uid.as_raw())?;
    let spawned = child::spawn(
        child::ChildSetup {
            program: agent.program,
            args: agent.args,
            env,
            identity: Some(agent.identity),
            enter: procs.as_ref().map(child::Enter::Cgroup).unwrap_or(child::Enter::None),
            landlock: landlock_fd,
            seccomp: &seccomp,
            mounts: Some(mounts),
            terminal: Some(relay.as_ref().map(terminal::Relay::for_child).unwrap_or(terminal::Terminal::NewSession)),
        },
        agent.thread,
    );
    drop(domain);
    drop(kept_home);
    drop(terminals);
    if let Some(r) = relay.as_mut() {
        r.started();
    }
    let code = match spawned {
        Ok(child) => signals::wait_forwarding(child, true).await?,
        Err(e) => spawn_failure(agent.program, &e),
    };
    // What the agent left running goes before anything of the run is looked at: a process left
    // behind could change the working directory between a check and the owner's next git, or
    // keep refilling the stderr the last lines go to.
    let emptied = sandbox.as_deref().is_some_and(|s| s.empty());
    if let Some(r) = relay {
        r.finish();
        crate::stderr::reset_terminal();
    }
    // The agent has ended: the stderr it made non-blocking is blocking again for the last lines.
    crate::stderr::restore();
    if !emptied {
        crate::say!(
            "leash: warning: processes the agent left may still run: what they change in the working directory from now on is not checked"
        );
    }
    for left in agent.guard.left_behind() {
        crate::say!("leash: warning: {left}");
    }
    proxy_task.abort();
    for task in reloader.into_iter().chain(deny_open_follower) {
        task.abort();
    }
    // Learning ends before the pump stops, which delivers every record left in the ring.
    let learning = learning.map(|attached| attached.map(drop));
    if let Some(pump) = events {
        pump.stop().await;
    }
    if let (Some(out), Some(file)) = (&opts.learn, agent.learned_out) {
        let files = match learning {
            Some(Ok(())) => {
                let recorded = std::mem::take(&mut *recorded.lock().map_err(|_| anyhow!("learning records poisoned"))?);
                let exec_enforced = sandbox.as_deref().is_some_and(|s| s.lsm_available());
                let lost = sandbox
                    .as_deref()
                    .and_then(|s| s.counters())
                    .map_or(0, |c| c.values[sandbox_common::counter::LEARN_LOST]);
                Ok(learned_files(&recorded, workdir, &agent.identity.home, trust, exec_enforced).with_lost(lost))
            }
            Some(Err(why)) => Err(why),
            None => Err("there was no sandbox cgroup to learn from".to_owned()),
        };
        write_learned(out, file, &proxy, files)?;
    }
    if !opts.quiet {
        let mut lines = audit.summary();
        if let Some(counted) = sandbox.and_then(|s| s.counters()).and_then(|c| denial_summary(&c)) {
            lines.push(counted);
        }
        if let Some(log) = &opts.audit_log {
            lines.push(format!("audit log: {}", log.display()));
        }
        crate::say!("leash: sandbox {id} ended (exit {code})");
        for line in lines {
            crate::say!("leash:   {line}");
        }
    }
    Ok(code)
}

/// The agent's environment as far as credentials go: placeholders for the values the proxy holds,
/// a note for each declared credential it does not, and nothing that contains a value.
pub(crate) fn credential_env(
    proxy: &Proxy,
    declared: &[String],
    proxy_addr: SocketAddr,
    identity: &identity::Identity,
) -> Result<Vec<(OsString, OsString)>> {
    let offered = proxy.credential_names();
    for name in declared.iter().filter(|n| !offered.contains(n)) {
        crate::say!("leash: note: credential {name} is not set (not required by the policy): the agent gets no placeholder for it");
    }
    let declared: Vec<&str> = declared.iter().map(String::as_str).collect();
    let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
    let credentials = environment::Credentials { declared: &declared, offered: &offered };
    let mut env = environment::agent_env(std::env::vars_os(), proxy_addr, identity, &credentials);
    environment::drop_leaking(&mut env, |value| proxy.mentions_secret(value))?;
    Ok(env)
}

/// Opens (creates, truncates) the `--learn` output, before the agent starts, without following
/// a symbolic link and without waiting on a FIFO; it must be a regular file. The learned policy
/// is written through this descriptor when the agent has ended: by then the agent (with no
/// Landlock while learning) may have replaced a directory on the path with a link to one of
/// root's, so the path is never opened again.
fn open_learned(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening the --learn output {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("--learn {} is not a regular file", path.display());
    }
    if std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
        bail!("--learn {} has other hard links: name a file of its own", path.display());
    }
    Ok(file)
}

/// What the learning program recorded, generalised into policy entries for this host.
fn learned_files(
    recorded: &learning::Recorded,
    workdir: &Path,
    home: &Path,
    trust: &trust::AgentTrustDir,
    exec_enforced: bool,
) -> policy::learn_files::LearnedFiles {
    use policy::learn_files::{Host, LearnedFiles, PathKind};
    use std::os::unix::fs::FileTypeExt as _;
    let probe = |p: &Path| match std::fs::metadata(p) {
        Err(_) => PathKind::Missing,
        Ok(m) if m.is_dir() => PathKind::Directory,
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => PathKind::Device,
        Ok(_) => PathKind::Other,
    };
    let exclude = [trust.dir().to_path_buf()];
    let host = Host { workdir, exclude: &exclude, home: Some(home), probe: &probe, exec_enforced };
    LearnedFiles::from_uses(&recorded.uses, recorded.unnamed, &host)
}

/// `--learn`: writes the policy the run needed (checked to parse) into `file`, the output
/// [`open_learned`] opened at `path`, and says so on stderr. Refused when the file no longer has
/// exactly one name (removed, or linked elsewhere while the agent ran).
fn write_learned(
    path: &Path,
    mut file: std::fs::File,
    proxy: &Proxy,
    files: Result<policy::learn_files::LearnedFiles, String>,
) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;
    let seen = proxy.learned().unwrap_or_default();
    if let Err(why) = &files {
        crate::say!("leash: note: files and programs were not learned: {why}");
    }
    let text = policy::learn::Learned::from_observations(&seen).with_files(files).document("`leash run --learn`");
    policy::parse_str(&path.display().to_string(), &text).context("the learned policy does not parse (a bug)")?;
    let links = file.metadata().with_context(|| format!("reading {}", path.display()))?.nlink();
    if links != 1 {
        bail!(
            "--learn {}: the file has {links} names now (removed or linked while the agent ran); not written",
            path.display()
        );
    }
    file.set_len(0)
        .and_then(|()| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    crate::say!("leash: learned policy written to {} ({} observations)", path.display(), seen.len());
    Ok(())
}

/// Paths of the files the LSM rules name, by (device, inode), for audit lines.
fn target_names(rules: &LsmRules) -> std::collections::HashMap<(u32, u64), PathBuf> {
    rules.exec.iter().chain(rules.deny_open.iter()).map(|(f, p)| ((f.dev, f.ino), p.clone())).collect()
}

/// One line counting the kernel's denials, or `None` when there were none.
fn denial_summary(counters: &sandbox_common::Counters) -> Option<String> {
    use sandbox_common::counter::{self, NAMES};
    let denied = [
        counter::CONNECT_DENIED,
        counter::SENDMSG_DENIED,
        counter::SOCK_CREATE_DENIED,
        counter::SKB_EGRESS_DROPPED,
        counter::SKB_INGRESS_DROPPED,
    ];
    let parts: Vec<String> = denied
        .iter()
        .filter(|&&i| counters.values[i] > 0)
        .map(|&i| format!("{} {}", counters.values[i], NAMES[i]))
        .collect();
    (!parts.is_empty()).then(|| format!("kernel denials: {}", parts.join(", ")))
}

fn load_policy(path: Option<&Path>) -> Result<CompiledPolicy> {
    match path {
        Some(p) => policy::load(p).map_err(|e| anyhow::anyhow!("{e}")),
        None => policy::parse_str("<built-in default policy>", DEFAULT_POLICY).map_err(|e| anyhow::anyhow!("{e}")),
    }
}

fn check_missing(missing: &[layers::Missing], allow_degraded: bool) -> Result<()> {
    if missing.is_empty() || allow_degraded {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
    bail!("refusing to start the agent: the policy needs layers this run cannot enforce ({}); pass --allow-degraded to run anyway", list.join("; "))
}

/// The cgroup v2 root, the bpffs root (mounting bpffs if needed) and the host's generation of
/// programs (made now if the host has none), after removing what runs of leash that died left
/// behind.
fn open_kernel() -> Result<(PathBuf, PathBuf, Generation)> {
    let (cgroup_root, bpffs) = (mounts::cgroup2_root()?, mounts::bpffs_root()?);
    let mut generation = Generation::open_or_create(&bpffs, this_generation())?;
    // A speed-up only: without it each sandbox switches the kernel's hooks on and off again.
    if let Err(e) = generation.hold_hooks(&cgroup_root) {
        crate::say!("leash: note: the kernel's cgroup hooks are not held between sandboxes: {e:#}");
    }
    let reaped = reaper::reap_stale(&cgroup_root, &mut generation, &bpffs)?;
    for name in reaped.sandboxes {
        crate::say!("leash: reaped stale sandbox {name} left by a leash that did not exit cleanly");
    }
    trust::reap_stale();
    Ok((cgroup_root, bpffs, generation))
}

/// Maps a failed start to the documented exit code and says why on stderr: the program's own
/// errors (not found, not executable) apart from leash's (a step before it could run).
pub(crate) fn spawn_failure(program: &OsString, failed: &child::SpawnError) -> i32 {
    let name = program.to_string_lossy();
    let e = &failed.error;
    if failed.step != child::Step::Exec {
        crate::say!("leash: error: starting {name} in the sandbox failed while {}: {e}", failed.step.name());
        return exit::LEASH_FAILED;
    }
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            crate::say!("leash: {name}: command not found");
            exit::NOT_FOUND
        }
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => {
            crate::say!("leash: {name}: cannot execute: {e}");
            exit::NOT_EXECUTABLE
        }
        _ => {
            crate::say!("leash: error: starting {name} in the sandbox failed: {e}");
            exit::LEASH_FAILED
        }
    }
}
