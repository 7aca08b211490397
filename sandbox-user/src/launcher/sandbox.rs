//! One `leash run` sandbox: its kernel state (`kernel::sandbox`: cgroup, map entries, the host's
//! generation of programs attached with pinned links, the BPF-LSM registration when the policy
//! has `kernel:` rules), its own event ring, and the handles the proxy reads. Created before the
//! agent starts; torn down after, leaving nothing behind. If leash dies instead, the pins keep
//! the cgroup confined until the next run reaps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use aya::maps::{MapData, RingBuf};
use sandbox_common::{Counters, SandboxNet};

use crate::kernel::cgroup::SandboxCgroup;
use crate::kernel::deny_open::{RulesInForce, Write, REPLACED_MAX_RUN};
use crate::kernel::events::{EventPump, KernelEvent};
use crate::kernel::fs_root::FsRoot;
use crate::kernel::generation::{retire_unused, EventSlot, Generation};
use crate::kernel::learning::Learning;
use crate::kernel::lsm_rules::{FileId, LsmRules};
use crate::kernel::programs::{ConnectionOwners, DnsClients};
use crate::kernel::sandbox::KernelSandbox;
use crate::kernel::sandbox_id::SandboxId;

pub struct Sandbox {
    bpffs: PathBuf,
    /// The cgroup, entries and links; `None` once torn down.
    kernel: Option<KernelSandbox>,
    generation: Arc<Mutex<Generation>>,
    /// The sandbox's own deny-event ring, until [`Sandbox::start_events`] takes it.
    events: Option<RingBuf<MapData>>,
    /// The pooled ring's slot, held until the sandbox's entries are removed.
    event_slot: Option<EventSlot>,
    /// The BPF-LSM rules in force, once registered with the BPF-LSM programs.
    in_force: Option<Arc<Mutex<RulesInForce>>>,
    /// The sandbox's network entry: its proxy (and transparent ports).
    net: SandboxNet,
}

impl Sandbox {
    /// Creates the sandbox's kernel state with network entry `net` (which must record connection
    /// owners: the proxy serves only connections so recorded) and names its own event ring. No
    /// process is in it yet. On failure everything created so far is removed again.
    pub fn create(
        id: SandboxId,
        cgroup_root: &Path,
        bpffs: &Path,
        mut generation: Generation,
        net: SandboxNet,
    ) -> Result<Self> {
        let kernel = KernelSandbox::create(&mut generation, cgroup_root, &id.to_string(), net)?;
        let cgroup_id = kernel.cgroup().id();
        let mut sandbox = Self {
            bpffs: bpffs.to_path_buf(),
            kernel: Some(kernel),
            generation: Arc::new(Mutex::new(generation)),
            events: None,
            event_slot: None,
            in_force: None,
            net,
        };
        let events = lock(&sandbox.generation).and_then(|mut g| g.own_events(cgroup_id));
        match events {
            Ok((ring, slot)) => (sandbox.events, sandbox.event_slot) = (Some(ring), Some(slot)),
            Err(e) => {
                sandbox.teardown();
                return Err(e);
            }
        }
        Ok(sandbox)
    }

    fn kernel(&self) -> Result<&KernelSandbox> {
        self.kernel.as_ref().context("sandbox already torn down")
    }

    /// Registers this sandbox with the BPF-LSM programs under `rules` (and its proxy as the one
    /// IP address it may reach), attaching them if no other sandbox on the host had. Returns the
    /// hooks the rules need that this kernel lacks (the rest are in force); an error when
    /// BPF-LSM is unusable here.
    pub fn enforce_kernel_rules(&mut self, rules: &LsmRules) -> Result<Vec<&'static str>> {
        // The open deny list's files, looked up and held from now on (a file replaced since
        // `rules` were made is taken as it is now).
        let mut in_force = RulesInForce::new(rules, &FsRoot::Own, REPLACED_MAX_RUN)?;
        let mut generation = lock(&self.generation)?;
        self.kernel()?.enforce(&mut generation, in_force.rules(), self.net)?;
        in_force.written();
        self.in_force = Some(Arc::new(Mutex::new(in_force)));
        Ok(generation.missing_hooks(&rules.required_hooks()))
    }

    /// Whether this host's programs include BPF-LSM ones (no probe is run).
    pub fn lsm_available(&self) -> bool {
        lock(&self.generation).is_ok_and(|g| g.has_lsm())
    }

    /// A handle that puts new `kernel:` rules in force for this sandbox (policy reload), when
    /// BPF-LSM is enforcing.
    pub fn kernel_rules_updater(&self) -> Option<KernelRulesUpdater> {
        let sandbox = self.kernel.clone()?;
        let in_force = self.in_force.clone()?;
        Some(KernelRulesUpdater { generation: self.generation.clone(), sandbox, net: self.net, in_force })
    }

    pub fn cgroup(&self) -> Option<&SandboxCgroup> {
        self.kernel.as_ref().map(KernelSandbox::cgroup)
    }

    /// Starts reading the sandbox's events into `sink`: deny events (network and BPF-LSM) and,
    /// once [`Sandbox::learn`] is called, what the learning program sees.
    pub fn start_events(&mut self, sink: impl Fn(&KernelEvent) + Send + Sync + 'static) -> Result<EventPump> {
        let ring = self.events.take().ok_or_else(|| anyhow!("the sandbox's events are already read"))?;
        let own = self.kernel()?.cgroup().id();
        // The ring is pooled: should a dead leash's sandbox still name it, its events are not ours.
        EventPump::start(ring, move |e: &KernelEvent| {
            let cgroup_id = match e {
                KernelEvent::Deny(d) => d.cgroup_id,
                KernelEvent::Learned(l) => l.cgroup_id,
            };
            if cgroup_id == own {
                sink(e)
            }
        })
    }

    /// `--learn`: records what the sandbox opens and runs, into its event ring, until the
    /// returned value is dropped.
    pub fn learn(&self) -> Result<Learning> {
        lock(&self.generation)?.learn(self.kernel()?.cgroup().id())
    }

    /// The connection-owner records of this sandbox (who opened each connection to the proxy).
    pub fn connection_owners(&self) -> Result<ConnectionOwners> {
        lock(&self.generation)?.connection_owners(self.kernel()?.cgroup().id())
    }

    /// Which client ports of this sandbox sent DNS to its resolver (transparent mode).
    pub fn dns_clients(&self) -> Result<DnsClients> {
        lock(&self.generation)?.dns_clients(self.kernel()?.cgroup().id())
    }

    pub fn counters(&self) -> Option<Counters> {
        lock(&self.generation).ok()?.counters(self.kernel.as_ref()?.cgroup().id()).ok()
    }

    /// Kills every process left in the sandbox cgroup and waits until none is.
    pub fn empty(&self) -> bool {
        match &self.kernel {
            Some(kernel) => match kernel.cgroup().kill_all(Duration::from_secs(5)) {
                Ok(()) => true,
                Err(e) => {
                    crate::say!("leash: teardown: {e:#}");
                    false
                }
            },
            None => false,
        }
    }

    /// Kills whatever still runs in the sandbox, then removes entries, links and cgroup. Errors
    /// are reported on stderr: teardown continues past them so as much as possible is removed.
    pub fn teardown(&mut self) {
        let _ = self.empty();
        let Some(kernel) = self.kernel.take() else { return };
        match lock(&self.generation) {
            Ok(mut generation) => {
                if let Err(e) = kernel.remove(&mut generation) {
                    crate::say!("leash: teardown: {e:#}");
                }
                generation.stop_using();
            }
            Err(e) => crate::say!("leash: teardown: {e:#}"),
        }
        // Only now that no entry names it may another sandbox take the ring.
        drop(self.event_slot.take());
        // This run's generation too, when a newer one exists and nothing else uses it.
        if let Err(e) = retire_unused(&self.bpffs) {
            crate::say!("leash: teardown: {e:#}");
        }
    }
}

fn lock<T>(state: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    state.lock().map_err(|_| anyhow!("kernel state lock poisoned"))
}

/// Puts reloaded `kernel:` rules in force for one sandbox, and keeps its open deny list on the
/// files its paths name ([`crate::kernel::deny_open`]).
#[derive(Clone)]
pub struct KernelRulesUpdater {
    generation: Arc<Mutex<Generation>>,
    sandbox: KernelSandbox,
    net: SandboxNet,
    in_force: Arc<Mutex<RulesInForce>>,
}

impl KernelRulesUpdater {
    /// Replaces the sandbox's flags and lists with `rules`. The hooks stay those of the host's
    /// generation: a rule needing a hook this kernel lacks stays unenforced (reported at start).
    pub fn update(&self, rules: &LsmRules) -> Result<()> {
        let mut in_force = lock(&self.in_force)?;
        let mut next = in_force.replaced(rules, &FsRoot::Own)?;
        let put = lock(&self.generation).and_then(|mut g| self.sandbox.update(&mut g, next.rules(), self.net));
        match put {
            Ok(()) => {
                next.written();
                *in_force = next;
                Ok(())
            }
            // The rules in force stay; the maps may be half-way: the next look writes them whole.
            Err(e) => {
                in_force.undo();
                Err(e)
            }
        }
    }

    /// Looks the open deny list's paths up again and writes what changed (or, after a failed
    /// write, the rules whole). [`TooManyReplaced`] when the agent is to be ended.
    pub fn follow_deny_open(&self) -> Result<()> {
        let mut in_force = lock(&self.in_force)?;
        let write = in_force.refresh(&FsRoot::Own);
        let written = match write {
            Write::Nothing => Ok(()),
            write => {
                lock(&self.generation).and_then(|mut g| self.sandbox.follow(&mut g, &mut in_force, write, self.net))
            }
        };
        // Ended even when the write failed: what it holds grows with every look.
        match in_force.overflowed() {
            Some(too_many) => Err(too_many.into()),
            None => written,
        }
    }

    /// Whether a look would do nothing (no path listed, nothing to write again); `false` while
    /// the rules are being changed.
    pub fn deny_open_idle(&self) -> bool {
        self.in_force.try_lock().is_ok_and(|f| f.idle())
    }

    /// The path the open deny list found file (`dev`, `ino`) at, if it holds it; `None` too
    /// while the list is being looked at (an event is not held up for it).
    pub fn deny_open_path(&self, dev: u32, ino: u64) -> Option<PathBuf> {
        self.in_force.try_lock().ok()?.rules().deny_open.get(&FileId { dev, ino }).cloned()
    }

    /// Kills every process of the sandbox (it renamed listed files aside faster than they can
    /// be followed).
    pub fn end_sandbox(&self) -> Result<()> {
        self.sandbox.cgroup().kill_all(std::time::Duration::from_secs(5))
    }
}
