//! `leash daemon`: the node agent of a Kubernetes DaemonSet. It loads leash's programs once per
//! node and confines processes of unprivileged pods that ask for it on a unix socket, so that
//! runner pods need no capabilities at all.
//!
//! | file | job |
//! |---|---|
//! | `server.rs` | the socket: the calling process, frames and descriptors, one thread per client |
//! | `process.rs` | a process held by a pidfd (callers and targets), never by its pid number alone |
//! | `limits.rs` | how much of the daemon one pod may hold: connections, descriptors, sandboxes |
//! | `discovery.rs` | pid → cgroup → pod and container (systemd and cgroupfs drivers, containerd and CRI-O) |
//! | `admission.rs` | which pods may use leash: the `leash.dev/policy` annotation, or the node default |
//! | `node_pods.rs`, `kube.rs` | the node's pods, listed once and then watched on the API server |
//! | `policies.rs` | the node's policies, from a ConfigMap directory, reloaded on change |
//! | `sandboxes.rs` | confine, status, owner, release, garbage collection, adoption and upgrades |
//! | `registry.rs` | one state file per sandbox, what a restarted daemon adopts |
//! | `metrics.rs` | `/metrics`, `/healthz`, `/readyz` |
//!
//! The programs and their maps are the host's generation (`kernel/generation.rs`), shared with
//! `leash run`. Restarting the daemon (crash, SIGKILL, rolling update) never opens a gap: the
//! links stay pinned while no daemon runs, and the next daemon adopts them.

pub mod admission;
mod closer;
mod deny_open;
pub mod discovery;
pub mod kube;
pub mod limits;
pub mod metrics;
pub mod node_pods;
pub mod policies;
pub mod process;
pub mod registry;
pub mod sandboxes;
pub mod server;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::audit::Auditor;
use crate::kernel::events::{EventPump, KernelEvent};
use crate::kernel::generation::{this_generation, Generation};
use crate::kernel::mounts;

/// What `leash daemon` was asked to do.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub policies: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub node_name: Option<String>,
    pub default_policy: Option<String>,
    /// How long a request from a pod not yet seen on the API server waits for it.
    pub pod_wait: Duration,
    /// API server `host:port`, token file and CA file; `None`: in-cluster configuration if any.
    pub kube: Option<kube::KubeConfig>,
    pub max_sandboxes: usize,
    /// Sandboxes one pod may hold; `None`: half of `max_sandboxes`.
    pub max_sandboxes_per_pod: Option<usize>,
    pub gc_interval: Duration,
    /// Override of the program generation's name (tests of upgrades).
    pub generation: Option<String>,
}

/// Runs the daemon until SIGTERM or SIGINT. Sandboxes stay confined after it exits.
pub fn run(opts: DaemonOptions) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("leash daemon must run as root with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_ADMIN");
    }
    // Before any thread starts: namespaces are per thread, and /proc/<pid>/cgroup is read
    // relative to the reader's cgroup namespace.
    join_host_cgroup_namespace()?;
    // Two workers: `/healthz` answers while the other waits on the node's lock (the event pump
    // names each denial's sandbox under it).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let cgroup_root = match &opts.cgroup_root {
        Some(p) => p.clone(),
        None => mounts::cgroup2_root()?,
    };
    let bpffs = match &opts.bpffs {
        Some(p) => p.clone(),
        None => mounts::bpffs_root()?,
    };
    let generation = opts.generation.clone().unwrap_or_else(|| this_generation().to_owned());
    let programs = Generation::open_or_create(&bpffs, &generation).context("loading the programs")?;
    let adopted = !programs.created();
    let events = programs.shared_events()?;
    let registry = registry::Registry::open(&opts.state_dir)?;
    crate::say!(
        "leash daemon: {} programs {generation}; {} sandboxes on record",
        if adopted { "adopted pinned" } else { "loaded and pinned" },
        registry.len()
    );
    let node_name = opts.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok());
    let kube = opts.kube.clone().or_else(|| node_name.as_deref().and_then(kube::KubeConfig::in_cluster));
    if kube.is_none() && opts.default_policy.is_none() {
        crate::say!("leash daemon: warning: no API server and no --default-policy: every confine will be refused");
    }
    let policies = policies::PolicyStore::open(&opts.policies);
    crate::say!("leash daemon: policies in {}: {:?}", opts.policies.display(), policies.names());
    let metrics = Arc::new(metrics::Metrics::default());
    let admission =
        admission::Admission::new(kube, opts.default_policy.clone(), opts.pod_wait, runtime.handle().clone());
    let node = Arc::new(sandboxes::Node::new(
        cgroup_root,
        programs,
        registry,
        policies,
        admission,
        metrics.clone(),
        limits::SandboxLimits::new(opts.max_sandboxes, opts.max_sandboxes_per_pod),
    ));
    for generation in node.migrate_generations()? {
        crate::say!("leash daemon: moved every sandbox from programs {generation} to {}", this_generation());
    }
    let collected = node.collect_garbage()?;
    node.sweep_orphans()?;
    if collected > 0 {
        crate::say!("leash daemon: removed {collected} sandboxes that ended while no daemon ran");
    }
    // Keeps BPF run-time statistics on while the daemon runs (for /metrics); optional.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();

    let listener = bind_socket(&opts.socket)?;
    let _guard = runtime.enter();
    let audit = Auditor::stdout("node");
    let pump_node = Arc::downgrade(&node);
    let pump_metrics = metrics.clone();
    let pump = EventPump::start(events, move |event| {
        // The daemon's sandboxes never learn: only deny events reach the shared ring.
        let KernelEvent::Deny(event) = event else { return };
        let sandbox = pump_node.upgrade().and_then(|n| n.sandbox_of_cgroup(event.cgroup_id));
        let sandbox = sandbox.unwrap_or_else(|| format!("cgroup-{}", event.cgroup_id));
        audit.kernel_denied_in(&sandbox, event, None);
        let hook = sandbox_common::Hook::from_u32(event.hook).map(|h| h.name()).unwrap_or("unknown");
        let layer = if event.hook >= sandbox_common::Hook::LsmSocketCreate as u32 { "syscall" } else { "network" };
        pump_metrics.denials.get_or_create(&metrics::DenialLabels { layer: layer.into(), hook: hook.into() }).inc();
    })?;
    if let Some(addr) = opts.metrics {
        let registry = Arc::new(metrics::registry(&metrics, Arc::downgrade(&node)));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("listening on {addr} for metrics"))?;
        crate::say!("leash daemon: /metrics, /healthz and /readyz on http://{}", listener.local_addr()?);
        runtime.spawn(metrics::serve(listener, metrics.clone(), registry));
    }
    let gc_node = node.clone();
    let gc_interval = opts.gc_interval;
    std::thread::Builder::new().name("leash-gc".into()).spawn(move || loop {
        std::thread::sleep(gc_interval);
        if let Err(e) = gc_node.collect_garbage() {
            crate::say!("leash daemon: garbage collection: {e:#}");
        }
        for name in gc_node.policies.reload_if_changed() {
            crate::say!("leash daemon: policy `{name}` reloaded; new sandboxes get it");
        }
    })?;
    // A thread of its own: a lookup in a pod's filesystem takes as long as the pod likes.
    let follow_node = node.clone();
    std::thread::Builder::new().name("leash-deny-open".into()).spawn(move || loop {
        std::thread::sleep(gc_interval);
        follow_node.follow_deny_open();
    })?;
    let api_node = node.clone();
    std::thread::Builder::new().name("leash-accept".into()).spawn(move || server::serve(listener, api_node))?;
    metrics.set_ready(true);
    crate::say!("leash daemon: serving the Confine API on {}", opts.socket.display());

    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    metrics.set_ready(false);
    runtime.block_on(pump.stop());
    let _ = std::fs::remove_file(&opts.socket);
    crate::say!(
        "leash daemon: stopping; {} sandboxes stay confined",
        node.state().map(|s| s.registry.len()).unwrap_or(0)
    );
    Ok(())
}

/// Binds the API socket (replacing a stale one) so that every user can connect: who may do
/// what is decided per caller from its cgroup, not by file permissions.
fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale socket {}", path.display())),
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Through a descriptor of the socket file itself: a name another writer of the directory
    // swapped for a link to one of root's files is not followed (chmod by path would be).
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let made = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !made.metadata().with_context(|| format!("reading {}", path.display()))?.file_type().is_socket() {
        bail!("{} is no longer the socket the daemon bound: something else writes that directory", path.display());
    }
    std::fs::set_permissions(format!("/proc/self/fd/{}", made.as_raw_fd()), std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("making {} reachable from pods", path.display()))?;
    Ok(listener)
}

/// Moves this (still single-threaded) process into the host's cgroup namespace when it runs in
/// a container's: cgroup2 mounted with `nsdelegate` forbids moving processes between cgroups
/// outside one's own namespace, and `/proc/<pid>/cgroup` would show `/..` paths.
fn join_host_cgroup_namespace() -> Result<()> {
    let own = std::fs::metadata("/proc/self/ns/cgroup");
    let host = std::fs::metadata("/proc/1/ns/cgroup");
    use std::os::unix::fs::MetadataExt as _;
    match (own, host) {
        (Ok(a), Ok(b)) if a.ino() == b.ino() => Ok(()),
        (Ok(_), Ok(_)) => {
            let f = std::fs::File::open("/proc/1/ns/cgroup")
                .context("opening the host's cgroup namespace (is hostPID set?)")?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWCGROUP)
                .context("joining the host's cgroup namespace (needs CAP_SYS_ADMIN)")?;
            Ok(())
        }
        // Without /proc/1 (no hostPID) discovery reports callers as outside the namespace.
        _ => Ok(()),
    }
}
