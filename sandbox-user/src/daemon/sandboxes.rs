//! The node's sandboxes: creating one for a pod's process (confine), answering for it (status,
//! owner), removing it (release, garbage collection), and taking over those of a previous
//! daemon (adopt, upgrade).
//!
//! A sandbox is its kernel state (`kernel::sandbox`: a cgroup `leash-<id>` below the caller's
//! container cgroup, an entry in the sandbox map naming its proxy and network namespace, the
//! network programs attached with pinned links, the BPF-LSM registration) and a state file. The
//! order of creation — entries, links, registration, state file, then the process — means the
//! process is confined from the moment it enters; removal runs only once the cgroup is empty or
//! gone, so no running process ever loses its confinement.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::admission::Admission;
use super::deny_open::Followed;
use super::discovery::{self, PodContainer};
use super::limits::SandboxLimits;
use super::metrics::Metrics;
use super::policies::PolicyStore;
use super::process::Process;
use super::registry::{Registry, SandboxRecord};
use crate::confine_api::protocol::{Confined, ErrorCode, Owner, PolicyText, Reply};
use crate::kernel::cgroup::SandboxCgroup;
use crate::kernel::deny_open::{RulesInForce, Write, REPLACED_MAX_NODE};
use crate::kernel::fs_root::FsRoot;
use crate::kernel::generation::Generation;
use crate::kernel::lsm_rules::LsmRules;
use crate::kernel::programs::{self, sandbox_net, TransparentPorts};
use crate::kernel::sandbox::KernelSandbox;
use crate::proxy::identity::holders_all_run;
use sandbox_common::{SandboxNet, SANDBOX_NODE};

/// A process asking the daemon something, identified by the kernel.
#[derive(Debug)]
pub struct Caller<'a> {
    /// The process that connected.
    pub process: &'a Process,
    /// Its effective uid when it connected.
    pub uid: u32,
    pub pod: PodContainer,
}

/// Everything the daemon's requests act on.
pub struct Node {
    pub cgroup_root: PathBuf,
    pub policies: PolicyStore,
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    pub limits: SandboxLimits,
    /// The daemon's own PID namespace (the node's, with `hostPID`), read once.
    own_pid_namespace: Option<(u64, u64)>,
    state: Mutex<State>,
    /// The sandboxes whose open deny list follows replaced files (not persisted: a daemon that
    /// adopts sandboxes keeps the files its predecessor put in force).
    followed: Followed,
}

/// The kernel objects and the records, changed together under one lock.
pub struct State {
    pub programs: Generation,
    pub registry: Registry,
}

impl Node {
    pub fn new(
        cgroup_root: PathBuf,
        programs: Generation,
        registry: Registry,
        policies: PolicyStore,
        admission: Admission,
        metrics: Arc<Metrics>,
        limits: SandboxLimits,
    ) -> Self {
        let own_pid_namespace = pid_namespace(std::process::id()).ok();
        let state = Mutex::new(State { programs, registry });
        Self {
            cgroup_root,
            policies,
            admission,
            metrics,
            limits,
            own_pid_namespace,
            state,
            followed: Followed::default(),
        }
    }

    pub fn state(&self) -> Result<MutexGuard<'_, State>, Reply> {
        self.state.lock().map_err(|_| Reply::error(ErrorCode::Internal, "daemon state lock poisoned"))
    }

    /// The name of the policy the caller's pod may use, if it may use one on this node.
    pub fn own_policy(&self, caller: &Caller) -> Option<String> {
        let admitted = self.admission.admit(&caller.pod.pod_uid, None).ok()?;
        self.policies.get(&admitted.policy).map(|p| p.name.clone())
    }

    /// The policy the caller's pod may use, as text for its proxy.
    pub fn policy_text(&self, caller: &Caller, requested: Option<&str>) -> Result<PolicyText, Reply> {
        let admitted = self.admission.admit(&caller.pod.pod_uid, requested)?;
        let policy = self.policies.get(&admitted.policy).ok_or_else(|| no_such_policy(&admitted.policy))?;
        Ok(PolicyText { name: policy.name.clone(), yaml: policy.yaml.clone() })
    }

    /// Confines process `pid` (default: the caller) of the caller's pod to the proxy listening
    /// on `socket`.
    pub fn confine(
        &self,
        caller: &Caller,
        requested: Option<&str>,
        pid: Option<u32>,
        sockets: Vec<OwnedFd>,
    ) -> Result<Confined, Reply> {
        // The target, held from now on: a pid number is looked up once, here.
        let opened;
        let target = match pid {
            None => caller.process,
            Some(pid) => {
                opened = self.open_callers_pid(caller, pid)?;
                &opened
            }
        };
        // Answers name the target by the number the caller knows it by, never the node's.
        let named = pid.unwrap_or_else(|| pid_in_own_namespace(target.pid()).unwrap_or(0));
        // The sandbox goes below the target's own container (another container of the pod, maybe).
        let target_pod = self.check_target(caller, target, named)?;
        check_root(target, &discovery::container_dir(&self.cgroup_root, &target_pod), named)?;
        let admitted = self.admission.admit(&caller.pod.pod_uid, requested)?;
        let policy = self.policies.get(&admitted.policy).ok_or_else(|| no_such_policy(&admitted.policy))?;
        let binaries = !policy.compiled.binaries_restricted().is_empty();
        // The policy's kernel paths name files of the pod's image: resolve them in its root. The
        // open deny list's files are held from now on, to follow them when they are replaced.
        let (kernel_rules, followed) = match policy.compiled.kernel() {
            None => (None, None),
            Some(section) => {
                let root = target.read(FsRoot::of_process).map_err(|_| not_yours(named))?;
                let bad = |e: anyhow::Error| {
                    Reply::error(ErrorCode::NoSuchPolicy, format!("policy `{}`: kernel: {e:#}", policy.name))
                };
                let rules = LsmRules::resolve_in(&root, section, &[]).map_err(bad)?.with_binaries_rules(binaries);
                let in_force = RulesInForce::new(&rules, &root, REPLACED_MAX_NODE).map_err(bad)?;
                let rules = in_force.rules().clone();
                (Some(rules), in_force.follows_files().then_some((in_force, root)))
            }
        };
        let passed = inspect_passed(&sockets)?;
        let proxy = passed.proxy;
        // The proxy's listener is the one network socket the target may hold (`leash confine`'s
        // child holds it until it execs): a listening socket sends nothing. The transparent
        // sockets are not exempt (a UDP socket made outside would reach anything).
        let listener_inode = sockets.first().and_then(|s| nix::sys::stat::fstat(s).map(|s| s.st_ino).ok());
        drop(sockets);
        // Transparent mode needs the records: they are how the proxy learns where a redirected
        // connection was going.
        let record_owners = !policy.compiled.binaries_restricted().is_empty() || passed.transparent.is_some();
        // Before the node's lock: the target decides how long its descriptors and its network
        // namespace's socket tables take to read, and no other pod's request may wait on that.
        // (The check after the move is the one that counts.)
        refuse_network_sockets(target, listener_inode, named)?;

        let mut state = self.state()?;
        // The target may have exited (and its number gone elsewhere) while this waited.
        if self.check_target(caller, target, named)? != target_pod {
            return Err(not_yours(named));
        }
        if let Some(rules) = &kernel_rules {
            check_lsm(&state.programs, rules, &policy.name)?;
        }
        // Without a `kernel:` section, leash's baseline where the node has BPF-LSM: unix sockets
        // of the sandbox's own only (a docker.sock mounted into the pod is out of the agent's
        // reach), ptrace, signals and bpf(2) kept inside, IP sockets to the proxy only.
        let kernel_rules = match kernel_rules {
            None if state.programs.has_lsm() => Some(LsmRules::for_policy(None, &[]).map_err(internal)?),
            rules => rules,
        };
        let kernel_rules = kernel_rules.map(|r| r.with_binaries_rules(binaries));
        if state.registry.len() >= self.limits.node {
            return Err(Reply::error(
                ErrorCode::Busy,
                format!("this node runs its limit of {} sandboxes", self.limits.node),
            ));
        }
        let quota = self.limits.per_pod;
        if live_sandboxes_of(&mut state, &caller.pod.pod_uid, quota, &self.metrics) >= quota {
            return Err(Reply::error(ErrorCode::Busy, format!("this pod runs its limit of {quota} sandboxes")));
        }
        let container = discovery::container_dir(&self.cgroup_root, &target_pod);
        let id = new_id();
        let net = node_net(proxy.addr, record_owners, passed.transparent, proxy.netns_cookie);
        let sandbox = match KernelSandbox::create(&mut state.programs, &container, &id, net) {
            Ok(sandbox) => sandbox,
            Err(e) => {
                // What a failed clean-up left has no record: sweep it.
                let _ = sweep_orphans(&mut state);
                return Err(internal(e));
            }
        };
        let record = SandboxRecord {
            id: id.clone(),
            pod_uid: caller.pod.pod_uid.clone(),
            container_id: target_pod.container_id.clone(),
            cgroup: sandbox.cgroup().path().to_path_buf(),
            cgroup_id: sandbox.cgroup().id(),
            policy: policy.name.clone(),
            proxy: proxy.addr,
            netns_cookie: proxy.netns_cookie,
            record_owners,
            transparent: passed.transparent,
            created: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        };
        // The LSM registration and the record, then the process (confined from the moment it moves).
        let mut built = kernel_rules
            .as_ref()
            .map_or(Ok(()), |rules| sandbox.enforce(&mut state.programs, rules, net))
            .and_then(|()| state.registry.insert(record.clone()))
            .and_then(|()| move_into(&record.cgroup, target));
        if built.is_ok() {
            // Confined now; what the sandbox holds is read without the node's lock (see above).
            // One holding a socket made outside is killed whole (what the target started meanwhile
            // holds the socket too) before the lock is taken again: removing a cgroup that still
            // has processes waits for them.
            drop(state);
            built = sandbox_holds_no_sockets(&record.cgroup, listener_inode);
            state = self.state()?;
        }
        if let Err(e) = built {
            if e.downcast_ref::<StrangerMoved>().is_some() {
                // The sandbox holds a process that is not the target: it stays confined until it
                // exits (garbage collection then removes it), and no pod may act on it. The caller
                // is not told its id, but can read it in its own cgroupfs, and `release` would
                // kill whatever the sandbox holds.
                crate::say!("leash daemon: warning: sandbox {id}: {e:#}; no pod owns it");
                if let Err(e) = state.registry.disown(&id) {
                    crate::say!("leash daemon: warning: sandbox {id}: {e:#}");
                }
                return Err(not_yours(named));
            }
            // A removal that fails halfway leaves state without a record: sweep it too.
            if remove(&mut state, &record, &self.metrics).is_err() {
                let _ = sweep_orphans(&mut state);
            }
            return Err(match e.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error()) {
                Some(libc::ESRCH) => not_yours(named),
                _ => internal(e),
            });
        }
        if let Some((mut in_force, root)) = followed {
            in_force.written();
            self.followed.add(&id, in_force, root);
        }
        Ok(Confined {
            sandbox: id,
            policy: policy.name.clone(),
            proxy: proxy.addr,
            netns_scoped: proxy.netns_cookie != 0,
            layers: layers(kernel_rules.is_some()),
            transparent: passed.transparent.is_some(),
        })
    }

    /// The pod and container of `target` if the caller may confine it: in the caller's pod, every
    /// uid the caller's, not confined yet. Anything else is "no process of yours".
    fn check_target(&self, caller: &Caller, target: &Process, named: u32) -> Result<PodContainer, Reply> {
        let pid = named;
        let pod = discovery::of_process(target).map_err(|_| not_yours(pid))?;
        if pod.pod_uid != caller.pod.pod_uid {
            return Err(not_yours(pid));
        }
        let uids = target.uids().map_err(|_| not_yours(pid))?;
        if uids[..3].iter().any(|u| *u != caller.uid) {
            return Err(not_yours(pid));
        }
        if pod.sandbox.is_some() {
            return Err(Reply::error(ErrorCode::BadRequest, format!("process {pid} is already confined")));
        }
        Ok(pod)
    }

    /// The sandbox `id` if it belongs to the caller's pod (otherwise, as if it did not exist).
    fn own_record(state: &State, caller: &Caller, id: &str) -> Result<SandboxRecord, Reply> {
        match state.registry.get(id) {
            Some(r) if !r.pod_uid.is_empty() && r.pod_uid == caller.pod.pod_uid => Ok(r.clone()),
            _ => Err(Reply::error(ErrorCode::NoSuchSandbox, format!("no sandbox {id} in your pod"))),
        }
    }

    pub fn status(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, Reply> {
        let (record, counters) = {
            let state = self.state()?;
            let record = Self::own_record(&state, caller, id)?;
            let counters = state.programs.counters(record.cgroup_id).ok();
            (record, counters)
        };
        // Without the node's lock: the pod decides how many processes there are to list.
        let processes = SandboxCgroup::open(record.cgroup.clone()).and_then(|c| c.pids()).map(|p| p.len()).unwrap_or(0);
        let counters: serde_json::Map<String, serde_json::Value> = counters
            .map(|c| {
                sandbox_common::counter::NAMES.iter().zip(c.values).map(|(n, v)| ((*n).to_string(), v.into())).collect()
            })
            .unwrap_or_default();
        Ok(serde_json::json!({
            "sandbox": record.id, "policy": record.policy, "proxy": record.proxy,
            "processes": processes, "counters": counters,
        }))
    }

    /// Kills every process of sandbox `id` and removes it.
    pub fn release(&self, caller: &Caller, id: &str) -> Result<(), Reply> {
        let record = Self::own_record(&*self.state()?, caller, id)?;
        if let Ok(cg) = SandboxCgroup::open(record.cgroup.clone()) {
            // Garbage collection may remove the cgroup as soon as the kill empties it.
            if let Err(e) = cg.kill_all(Duration::from_secs(5)) {
                if record.cgroup.is_dir() {
                    return Err(internal(e));
                }
            }
        }
        let mut state = self.state()?;
        remove(&mut state, &record, &self.metrics).map_err(internal)?;
        Ok(())
    }

    /// Who opened the proxy connection from client port `port` in sandbox `id`, whose client
    /// socket has cookie `cookie`. The caller, in the pod, finds the cookie with `sock_diag`; a
    /// record counts only when it names this sandbox's cgroup and `listener`, so a wrong cookie
    /// gets no answer, and another sandbox's cookie none either. The record is removed once
    /// answered (the pod's proxy asks once per connection): the map is shared by every sandbox
    /// on the node and evicts its oldest records when full.
    pub fn owner(
        &self,
        caller: &Caller,
        id: &str,
        port: u16,
        listener: Option<u16>,
        cookie: u64,
    ) -> Result<Owner, Reply> {
        let mut state = self.state()?;
        let record = Self::own_record(&state, caller, id)?;
        if !record.record_owners {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                "this sandbox's policy has no binaries: rules; owners are not recorded",
            ));
        }
        let listener = listener.unwrap_or(record.proxy.port());
        if listener != record.proxy.port() && record.transparent.map(|t| t.tcp) != Some(listener) {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                format!("port {listener} is not one of sandbox {id}'s proxy ports"),
            ));
        }
        let owner = state
            .programs
            .owner(cookie)
            .filter(|o| o.cgroup_id == record.cgroup_id && o.listener_port == listener)
            .ok_or_else(|| {
                Reply::error(ErrorCode::NoSuchSandbox, format!("no connection from sandbox {id} on port {port}"))
            })?;
        state.programs.forget_owner(cookie);
        // The rest reads /proc, for as long as the sandbox's descriptors take: not under the
        // node's lock, which every other pod's request and the event pump wait on.
        drop(state);
        // The recorded pid is a number: its executable counts only while that number is a live
        // process of this sandbox (not one that took the number after the owner exited).
        let inside = format!("/leash-{}", record.id);
        let process = Process::open(owner.pid).ok();
        let live = process.as_ref().and_then(|p| {
            p.read(|pid| Ok((discovery::cgroup_of(pid)?, std::fs::read_link(format!("/proc/{pid}/exe"))?))).ok()
        });
        // Every process of the sandbox holding the socket must run what connected (a child that
        // connected and then exec'd a listed program lends nothing to its parent).
        let net = PathBuf::from(format!("/proc/{}/net", owner.pid));
        let peer = SocketAddr::new(record.proxy.ip(), port);
        let procs = record.cgroup.join("cgroup.procs");
        let to = SocketAddr::new(record.proxy.ip(), listener);
        // The pod's proxy checks the process's environment by the pid given here: only a process
        // in the caller's own PID namespace has a number there. One in a namespace of its own
        // (the agent can make one, with a user namespace) has another process's number.
        let callers_ns = caller.process.read(pid_namespace).ok();
        let owners_ns = process.as_ref().and_then(|p| p.read(pid_namespace).ok());
        let exe = live
            .filter(|(cgroup, _)| cgroup.contains(&inside))
            .filter(|_| callers_ns.is_some() && owners_ns == callers_ns)
            .filter(|(_, exe)| holders_all_run(&procs, &net, peer, to, exe))
            .map(|(_, exe)| exe.display().to_string());
        let pid = if exe.is_some() { pid_in_own_namespace(owner.pid).unwrap_or(0) } else { 0 };
        Ok(Owner { pid, uid: owner.uid, exe, dest: programs::original_destination(&owner.dest) })
    }

    /// Looks the open deny lists' paths up again, each in its sandbox's root, and puts what
    /// changed in force ([`super::deny_open`]); ends a sandbox that renames listed files aside
    /// faster than they can be followed.
    pub fn follow_deny_open(&self) {
        for (id, entry) in self.followed.all() {
            let record = match self.state() {
                Ok(state) => state.registry.get(&id).cloned(),
                Err(_) => return,
            };
            let Some(record) = record else {
                self.followed.forget(&id);
                continue;
            };
            let Ok(mut entry) = entry.lock() else { continue };
            let entry = &mut *entry;
            let write = entry.in_force.refresh(&entry.root);
            let followed = if write == Write::Nothing {
                Ok(())
            } else {
                // A sandbox removed meanwhile is refused by the write, never made again.
                let sandbox = KernelSandbox::made(&record.id, record.cgroup.clone(), record.cgroup_id);
                self.state.lock().map_err(|_| anyhow::anyhow!("daemon state lock poisoned")).and_then(|mut state| {
                    sandbox.follow(&mut state.programs, &mut entry.in_force, write, sandbox_net_of(&record))
                })
            };
            match (followed, entry.in_force.overflowed()) {
                // Ended once (garbage collection removes it when empty); nothing is let go meanwhile.
                (_, Some(_)) if entry.ending => {}
                (_, Some(too_many)) => {
                    entry.ending = true;
                    crate::say!("leash daemon: sandbox {id}: {too_many}: ending it");
                    let ended =
                        SandboxCgroup::open(record.cgroup.clone()).and_then(|c| c.kill_all(Duration::from_secs(5)));
                    if let Err(e) = ended {
                        crate::say!("leash daemon: warning: sandbox {id}: ending it: {e:#}");
                    }
                }
                (Ok(()), None) => entry.failing = false,
                (Err(e), None) if !entry.failing => {
                    entry.failing = true;
                    crate::say!(
                        "leash daemon: warning: sandbox {id}: kernel.deny_open: following replaced files failed: {e:#}"
                    );
                }
                (Err(_), None) => {}
            }
        }
    }

    /// Removes every sandbox whose cgroup emptied or disappeared. Returns how many.
    pub fn collect_garbage(&self) -> Result<usize> {
        let mut state = self.state.lock().map_err(|_| anyhow::anyhow!("daemon state lock poisoned"))?;
        let dead: Vec<SandboxRecord> = state.registry.iter().filter(|r| !populated(&r.cgroup)).cloned().collect();
        for record in &dead {
            remove(&mut state, record, &self.metrics)?;
            // Its held files (and the root of its pod) are let go.
            self.followed.forget(&record.id);
        }
        Ok(dead.len())
    }

    /// Removes kernel state no record explains (left by a daemon that died halfway through a
    /// confine); at start, when the records are all there is to go by.
    pub fn sweep_orphans(&self) -> Result<()> {
        let mut state = self.state.lock().map_err(|_| anyhow::anyhow!("daemon state lock poisoned"))?;
        sweep_orphans(&mut state)
    }

    /// Attaches this daemon's generation to every recorded sandbox, then removes older
    /// generations: the old links stay until the new ones are in place.
    pub fn migrate_generations(&self) -> Result<Vec<String>> {
        let mut state = self.state.lock().map_err(|_| anyhow::anyhow!("daemon state lock poisoned"))?;
        let old = state.programs.previous_generations()?;
        for generation in &old {
            state.programs.copy_node_entries_from(generation)?;
            let records: Vec<SandboxRecord> = state.registry.iter().cloned().collect();
            for r in records {
                if r.cgroup.is_dir() {
                    state.programs.attach(&r.cgroup, &r.id, sandbox_net_of(&r).flags)?;
                }
                state.programs.detach(&r.id, Some(generation))?;
            }
            if !state.programs.remove_generation(generation)? {
                crate::say!("leash daemon: programs {generation} stay: a `leash run` on this node still uses them");
            }
        }
        Ok(old)
    }

    /// The layers this node enforces.
    pub fn node_layers(&self) -> Vec<String> {
        let lsm = self.state.lock().map(|s| s.programs.lsm_hooks().is_ok()).unwrap_or(false);
        layers(lsm)
    }

    /// The sandbox id of a cgroup, for audit records.
    pub fn sandbox_of_cgroup(&self, cgroup_id: u64) -> Option<String> {
        self.state.lock().ok()?.registry.by_cgroup(cgroup_id).map(|r| r.id.clone())
    }

    /// Verdict counters summed over every sandbox, live and removed.
    pub fn counter_totals(&self) -> [u64; sandbox_common::counter::COUNT] {
        let mut total = self.metrics.retired();
        if let Ok(state) = self.state.lock() {
            for r in state.registry.iter() {
                if let Ok(c) = state.programs.counters(r.cgroup_id) {
                    for (t, v) in total.iter_mut().zip(c.values) {
                        *t += v;
                    }
                }
            }
        }
        total
    }
}

/// The layers a sandbox gets.
fn layers(kernel_rules: bool) -> Vec<String> {
    let mut l = vec!["network (cgroup eBPF)".to_string()];
    if kernel_rules {
        l.push("syscall policy (BPF-LSM)".into());
    }
    l
}

/// Refuses (fail closed) when the policy's kernel rules need BPF-LSM hooks this node lacks.
fn check_lsm(programs: &Generation, rules: &LsmRules, policy: &str) -> Result<(), Reply> {
    let missing = |why: String| {
        Reply::error(
            ErrorCode::LayerMissing,
            format!("policy `{policy}` has `kernel:` rules and {why}; refusing rather than running without them"),
        )
    };
    if let Err(why) = programs.lsm_hooks() {
        return Err(missing(format!("this node has no BPF-LSM ({why:#})")));
    }
    let absent = programs.missing_hooks(&rules.required_hooks());
    if absent.is_empty() {
        Ok(())
    } else {
        Err(missing(format!("this kernel has no BPF-LSM hook {}", absent.join(", "))))
    }
}

/// The network entry of the sandbox `r` records.
fn sandbox_net_of(r: &SandboxRecord) -> SandboxNet {
    node_net(r.proxy, r.record_owners, r.transparent, r.netns_cookie)
}

/// The network entry of a node sandbox confined to the proxy at `proxy` (in the network
/// namespace of cookie `netns_cookie`).
fn node_net(
    proxy: SocketAddr,
    record_owners: bool,
    transparent: Option<TransparentPorts>,
    netns_cookie: u64,
) -> SandboxNet {
    let mut net = sandbox_net(proxy, record_owners);
    if let Some(ports) = transparent {
        net = programs::transparent(net, ports);
    }
    net.netns_cookie = netns_cookie;
    net.flags |= SANDBOX_NODE;
    net
}

/// Removes what exists of sandbox `r`; only for an empty (or missing) cgroup. The counters of
/// a removed sandbox are added to the node's retired totals first.
fn remove(state: &mut State, r: &SandboxRecord, metrics: &Metrics) -> Result<()> {
    if let Ok(c) = state.programs.counters(r.cgroup_id) {
        metrics.retire(&c);
    }
    KernelSandbox::made(&r.id, r.cgroup.clone(), r.cgroup_id).remove(&mut state.programs)?;
    state.registry.remove(&r.id)
}

/// How many sandboxes pod `pod_uid` holds. At `quota` or more, the pod's emptied ones (not yet
/// collected) are removed first: the quota counts live sandboxes.
fn live_sandboxes_of(state: &mut State, pod_uid: &str, quota: usize, metrics: &Metrics) -> usize {
    let count = |state: &State| state.registry.iter().filter(|r| r.pod_uid == pod_uid).count();
    if count(state) < quota {
        return count(state);
    }
    let dead: Vec<SandboxRecord> =
        state.registry.iter().filter(|r| r.pod_uid == pod_uid && !populated(&r.cgroup)).cloned().collect();
    for record in &dead {
        if let Err(e) = remove(state, record, metrics) {
            crate::say!("leash daemon: warning: removing emptied sandbox {}: {e:#}", record.id);
        }
    }
    count(state)
}

/// Removes map entries and pinned links of daemon sandboxes that have no record (`leash run`
/// sandboxes on the same host share the programs and are left alone).
fn sweep_orphans(state: &mut State) -> Result<()> {
    let known: std::collections::HashSet<u64> = state.registry.iter().map(|r| r.cgroup_id).collect();
    for cgroup_id in state.programs.node_entries() {
        if !known.contains(&cgroup_id) {
            state.programs.remove_entries(cgroup_id)?;
        }
    }
    for id in state.programs.pinned_sandboxes()? {
        if is_node_sandbox(&id) && state.registry.get(&id).is_none() {
            state.programs.detach(&id, None)?;
        }
    }
    Ok(())
}

/// Whether pin directory `name` is a daemon sandbox's ([`new_id`]: 16 hex digits).
fn is_node_sandbox(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Moves `process` (its whole thread group) into the cgroup. `cgroup.procs` takes a pid number:
/// the process is checked alive right before the write, and again after it. Alive after it means
/// the number was its own throughout, so the write moved it.
fn move_into(cgroup: &Path, process: &Process) -> Result<()> {
    let path = cgroup.join("cgroup.procs");
    let mut f =
        std::fs::OpenOptions::new().write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    let gone = || anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ESRCH));
    if !process.alive() {
        return Err(gone());
    }
    let written = f.write_all(process.pid().to_string().as_bytes());
    if process.alive() {
        return written.map_err(anyhow::Error::from);
    }
    // It exited around the write: the number may have named another process by then.
    if SandboxCgroup::open(cgroup.to_path_buf()).and_then(|c| c.pids()).is_ok_and(|p| !p.is_empty()) {
        return Err(StrangerMoved(process.pid()).into());
    }
    Err(gone())
}

/// Refuses a target that holds IP or packet sockets: made outside the sandbox, no cgroup program
/// would judge them.
fn refuse_network_sockets(target: &Process, listener: Option<u64>, named: u32) -> Result<(), Reply> {
    match target.network_sockets(listener) {
        Ok(0) => Ok(()),
        Ok(n) => Err(Reply::error(
            ErrorCode::NotAllowed,
            format!("process {named} holds {n} network socket(s) made outside a sandbox; confine a process before it opens any (leash confine does)"),
        )),
        Err(_) => Err(not_yours(named)),
    }
}

/// After the move: no process of the sandbox (the target, or one it started since) may hold a
/// network socket made outside, since it cannot be told from one made inside; otherwise every
/// process of it is killed, before the cgroup thaws. Checked with the cgroup frozen, so that no
/// process forks a holder, or passes the socket on, past the list.
fn sandbox_holds_no_sockets(cgroup: &Path, listener: Option<u64>) -> Result<()> {
    let sandbox = SandboxCgroup::open(cgroup.to_path_buf())?;
    let frozen = sandbox.frozen(Duration::from_secs(1));
    let checked = frozen.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(|_| {
        for pid in sandbox.pids()? {
            let process = match Process::open(pid as u32) {
                Ok(p) => p,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => return Err(e.into()),
            };
            if process.network_sockets(listener)? > 0 {
                anyhow::bail!("process {pid} holds network sockets made before it was moved in; killed");
            }
        }
        Ok(())
    });
    if checked.is_err() {
        // Still frozen: nothing of it runs again before it dies.
        let _ = sandbox.kill_all(Duration::from_secs(5));
    }
    drop(frozen);
    checked
}

/// The target exited during its move, and the process that took its number was moved instead.
#[derive(Debug, thiserror::Error)]
#[error("process {0} exited while it was moved in, and the process that took its pid is in the sandbox instead")]
struct StrangerMoved(u32);

/// False when the cgroup is gone or has no process left in it or below it.
fn populated(cgroup: &Path) -> bool {
    match std::fs::read_to_string(cgroup.join("cgroup.events")) {
        Ok(text) => !text.lines().any(|l| l.trim() == "populated 0"),
        Err(_) => false,
    }
}

/// What a `confine` passed: the proxy's listener and, in transparent mode, the ports of its
/// transparent listener and resolver.
struct Passed {
    proxy: Listener,
    transparent: Option<TransparentPorts>,
}

/// Checks the passed sockets: one listening TCP socket (the proxy), or three (transparent mode:
/// also a listening TCP socket and a bound UDP socket, on the proxy's address and in its network
/// namespace).
fn inspect_passed(sockets: &[OwnedFd]) -> Result<Passed, Reply> {
    let bad = |why: &str| Reply::error(ErrorCode::BadSocket, why.to_string());
    match sockets {
        [] => Err(bad("pass the proxy's listening socket with the request (SCM_RIGHTS)")),
        [listener] => Ok(Passed { proxy: inspect_listener(listener)?, transparent: None }),
        [listener, tcp, udp] => {
            let proxy = inspect_listener(listener)?;
            let tcp = inspect_listener(tcp)?;
            let dns =
                inspect_socket(udp, libc::SOCK_DGRAM).map_err(|why| bad(&format!("the resolver socket {why}")))?;
            let same = |addr: SocketAddr, cookie: u64| addr.ip() == proxy.addr.ip() && cookie == proxy.netns_cookie;
            if !same(tcp.addr, tcp.netns_cookie) || !same(dns.addr, dns.netns_cookie) {
                return Err(bad("the transparent sockets must be on the proxy's address, in its network namespace"));
            }
            let transparent = Some(TransparentPorts { tcp: tcp.addr.port(), dns: dns.addr.port() });
            Ok(Passed { proxy, transparent })
        }
        _ => Err(bad("pass one socket (the proxy's listener), or three for transparent mode")),
    }
}

/// The proxy a passed socket listens on.
struct Listener {
    addr: SocketAddr,
    netns_cookie: u64,
}

/// Checks that `fd` is a listening TCP socket on a specific address and reads its address and
/// network namespace.
fn inspect_listener(fd: &OwnedFd) -> Result<Listener, Reply> {
    let bad = |why: String| Reply::error(ErrorCode::BadSocket, why);
    let listener = inspect_socket(fd, libc::SOCK_STREAM).map_err(|why| bad(format!("the passed socket {why}")))?;
    if int_option(fd, libc::SO_ACCEPTCONN) != Some(1) {
        return Err(bad("the passed socket is not a listening TCP socket".into()));
    }
    if listener.addr.ip().is_unspecified() {
        return Err(bad(
            "the proxy listens on every address; make it listen on one (e.g. 127.0.0.1) so that only it is reachable"
                .into(),
        ));
    }
    Ok(listener)
}

/// Reads the address and network namespace of `fd`, an IP socket of type `sock_type`; `Err`
/// completes "the socket ...".
fn inspect_socket(fd: &OwnedFd, sock_type: libc::c_int) -> Result<Listener, String> {
    let raw = fd.as_raw_fd();
    let domain = int_option(fd, libc::SO_DOMAIN).ok_or("is not a socket")?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("is not a TCP/IP socket".into());
    }
    if int_option(fd, libc::SO_TYPE) != Some(sock_type) {
        return Err(if sock_type == libc::SOCK_STREAM { "is not a TCP socket" } else { "is not a UDP socket" }.into());
    }
    let addr = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(raw)
        .ok()
        .and_then(|s| {
            s.as_sockaddr_in()
                .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                .or_else(|| s.as_sockaddr_in6().map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a))))
        })
        .ok_or("has no readable address")?;
    if addr.port() == 0 {
        return Err("is not bound".into());
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`. Before 5.14 it fails and the
    // namespace is not checked (reported to the client as `netns_scoped: false`).
    let rc = unsafe {
        libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len)
    };
    Ok(Listener { addr, netns_cookie: if rc == 0 { cookie } else { 0 } })
}

/// An integer `SOL_SOCKET` option of `fd`.
fn int_option(fd: &OwnedFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, (&mut v as *mut libc::c_int).cast(), &mut len)
    };
    (rc == 0).then_some(v)
}

impl Node {
    /// The process the caller names `pid`: a number in the caller's own PID namespace, which is a
    /// container's unless its pod shares the node's. Found among the processes of the caller's
    /// pod whose PID namespace is the caller's and whose number there is `pid`, then held by a
    /// pidfd and checked again through it (the number it was found by may have been reused).
    fn open_callers_pid(&self, caller: &Caller, pid: u32) -> Result<Process, Reply> {
        let callers_ns = caller.process.read(pid_namespace).map_err(|_| not_yours(pid))?;
        if self.own_pid_namespace == Some(callers_ns) {
            return Process::open(pid).map_err(|_| not_yours(pid));
        }
        let container = discovery::container_dir(&self.cgroup_root, &caller.pod);
        let pod_dir = container.parent().ok_or_else(|| not_yours(pid))?;
        let is_callers = |node_pid: u32| -> std::io::Result<bool> {
            Ok(pid_namespace(node_pid)? == callers_ns && pid_in_own_namespace(node_pid) == Some(pid))
        };
        let found = search_pod(&container, pod_dir, |p| is_callers(p).unwrap_or(false)).map_err(|searched| {
            Reply::error(
                ErrorCode::NotAllowed,
                format!("found no process {pid} among the first {searched} processes of the pod; confine it by its pid sooner, or from a process of its own container"),
            )
        })?;
        let found = found.ok_or_else(|| not_yours(pid))?;
        let process = Process::open(found).map_err(|_| not_yours(pid))?;
        if process.read(is_callers).unwrap_or(false) {
            Ok(process)
        } else {
            Err(not_yours(pid))
        }
    }
}

/// The PID namespace of process `pid` (device and inode of its `ns/pid`).
fn pid_namespace(pid: u32) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    Ok((ns.dev(), ns.ino()))
}

/// Most processes one request examines while looking a pid up (about 20 µs each): a pod that
/// runs thousands cannot make every request of its own cost the node's daemon a second.
const SEARCH_BUDGET: usize = 4096;

/// The first process that `matches` among those of cgroup `first` (the caller's container),
/// then of every other cgroup below `pod` (its other containers, their sandboxes). `Err` with the
/// number examined when the budget ran out first (cgroup directories count against it too).
fn search_pod(first: &Path, pod: &Path, matches: impl Fn(u32) -> bool) -> Result<Option<u32>, usize> {
    let mut examined = 0;
    let mut dirs = vec![pod.to_path_buf(), first.to_path_buf()];
    let mut seen_first = false;
    while let Some(dir) = dirs.pop() {
        if dir == first {
            if seen_first {
                continue;
            }
            seen_first = true;
        }
        examined += 1;
        for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            let Ok(pid) = pid.trim().parse::<u32>() else { continue };
            examined += 1;
            if examined > SEARCH_BUDGET {
                return Err(SEARCH_BUDGET);
            }
            if matches(pid) {
                return Ok(Some(pid));
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    Ok(None)
}

/// The pid of host process `pid` in its innermost pid namespace (`NSpid` of its status), which
/// is the caller's when both are in the same container.
fn pid_in_own_namespace(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// 16 random hex digits.
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The one answer for a process that does not exist, is in another pod or runs as another user.
fn not_yours(pid: u32) -> Reply {
    Reply::error(ErrorCode::NoSuchProcess, format!("no process {pid} of yours"))
}

fn no_such_policy(name: &str) -> Reply {
    Reply::error(ErrorCode::NoSuchPolicy, format!("no policy `{name}` on this node (or it does not compile)"))
}

fn internal(e: anyhow::Error) -> Reply {
    Reply::error(ErrorCode::Internal, format!("{e:#}"))
}

/// Refuses a target whose root directory or mount namespace is not its container's: that of the
/// container's first process, as the runtime started it. The policy's `kernel:` paths are
/// resolved in the target's root, and `binaries:` read its executable's path, so a target that
/// chose its own (chroot(2), or a user and mount namespace of its own with files bound over the
/// image's) would choose what those rules name.
fn check_root(target: &Process, container: &Path, named: u32) -> Result<(), Reply> {
    let refused = || {
        Reply::error(
            ErrorCode::BadRequest,
            format!(
                "process {named} runs in another root or mount namespace than its container's first process; confine it from the container as started"
            ),
        )
    };
    let identity = |pid: u32| -> std::io::Result<[(u64, u64); 2]> {
        use std::os::unix::fs::MetadataExt as _;
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))?;
        let root = std::fs::metadata(format!("/proc/{pid}/root"))?;
        Ok([(ns.dev(), ns.ino()), (root.dev(), root.ino())])
    };
    let first = first_process(container).ok_or_else(refused)?;
    let expected = identity(first).map_err(|_| refused())?;
    let actual = target.read(identity).map_err(|_| not_yours(named))?;
    if actual != expected {
        return Err(refused());
    }
    Ok(())
}

/// The process of cgroup `dir` that started first (the container's init, for a container's
/// cgroup), by start time since boot.
fn first_process(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .filter_map(|pid| Some((crate::kernel::proc_stat::start_time(pid)?, pid)))
        .min()
        .map(|(_, pid)| pid)
}
