//! The kernel side of one sandbox: its cgroup, the loaded network programs attached to it with
//! pinned links, its BPF-LSM programs when the policy has `kernel:` rules, and its map entries.
//! Created before the agent starts; torn down after, leaving nothing behind. If leash dies
//! instead, the pins keep the cgroup confined until the next run reaps it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sandbox_common::{Counters, DenyEvent};

use crate::kernel::cgroup::SandboxCgroup;
use crate::kernel::events::EventPump;
use crate::kernel::lsm::{LsmPrograms, Registration};
use crate::kernel::lsm_rules::LsmRules;
use crate::kernel::pins;
use crate::kernel::programs::{sandbox_net, NetPrograms};
use crate::kernel::sandbox_id::SandboxId;

pub struct Sandbox {
    cgroup: Option<SandboxCgroup>,
    programs: NetPrograms,
    /// The BPF-LSM programs, once [`Sandbox::enforce_kernel_rules`] succeeded.
    lsm: Option<Arc<Mutex<LsmPrograms>>>,
    proxy: SocketAddr,
    pin_dir: PathBuf,
}

impl Sandbox {
    /// Creates the cgroup, loads the programs, writes the entries for `proxy` and attaches.
    /// On failure everything created so far is removed again. Every connection to the proxy is
    /// recorded with its owner: the proxy serves only connections so recorded.
    pub fn create(id: SandboxId, cgroup_root: &Path, bpffs: &Path, proxy: SocketAddr) -> Result<Self> {
        let programs = NetPrograms::load()?;
        let cgroup = SandboxCgroup::create(cgroup_root, &id.to_string())?;
        let mut sandbox = Self {
            cgroup: Some(cgroup),
            programs,
            lsm: None,
            proxy,
            pin_dir: pins::sandbox_dir(bpffs, &id.to_string()),
        };
        if let Err(e) = sandbox.confine(proxy) {
            sandbox.teardown();
            return Err(e);
        }
        Ok(sandbox)
    }

    fn confine(&mut self, proxy: SocketAddr) -> Result<()> {
        let cgroup = self.cgroup.as_ref().context("sandbox cgroup already removed")?;
        self.programs.add_sandbox(cgroup.id(), sandbox_net(proxy, true))?;
        self.programs.attach(cgroup, &self.pin_dir, true)?;
        Ok(())
    }

    /// Loads the BPF-LSM programs, registers this sandbox with `rules` (and its proxy as the
    /// one IP address it may reach) and pins the attachments beside the network ones. Returns
    /// the hooks the rules need that this kernel lacks (the rest are in force); an error when
    /// BPF-LSM is unusable here.
    pub fn enforce_kernel_rules(&mut self, rules: &LsmRules) -> Result<Vec<&'static str>> {
        let cgroup = self.cgroup.as_ref().context("sandbox cgroup already removed")?;
        let mut lsm = LsmPrograms::load()?;
        let registration =
            Registration { cgroup_id: cgroup.id(), level: 0, descendants: false, rules, proxy: Some(self.proxy) };
        lsm.register(&registration)?;
        lsm.pin_links(&self.pin_dir)?;
        let missing = lsm.missing(&rules.required_hooks());
        self.lsm = Some(Arc::new(Mutex::new(lsm)));
        Ok(missing)
    }

    /// A handle that puts new `kernel:` rules in force for this sandbox (policy reload), when
    /// BPF-LSM is enforcing.
    pub fn kernel_rules_updater(&self) -> Option<KernelRulesUpdater> {
        let cgroup_id = self.cgroup.as_ref()?.id();
        Some(KernelRulesUpdater { programs: self.lsm.clone()?, cgroup_id, proxy: self.proxy })
    }

    pub fn cgroup(&self) -> Option<&SandboxCgroup> {
        self.cgroup.as_ref()
    }

    /// Starts reading deny events (network, and BPF-LSM when enforcing) into `sink`.
    pub fn start_events(&mut self, sink: impl Fn(&DenyEvent) + Send + Sync + 'static) -> Result<Vec<EventPump>> {
        let sink = Arc::new(sink);
        let net_sink = sink.clone();
        let mut pumps = vec![EventPump::start(self.programs.take_events()?, move |e| net_sink(e))?];
        if let Some(lsm) = &self.lsm {
            let ring = lsm.lock().map_err(|_| anyhow!("LSM programs lock poisoned"))?.take_events()?;
            pumps.push(EventPump::start(ring, move |e| sink(e))?);
        }
        Ok(pumps)
    }

    /// The connection-owner table (who opened each connection to the proxy); taken once.
    pub fn take_connection_owners(&mut self) -> Result<crate::kernel::programs::ConnectionOwners> {
        self.programs.take_connection_owners()
    }

    pub fn counters(&self) -> Option<Counters> {
        self.programs.counters(self.cgroup.as_ref()?.id()).ok()
    }

    /// Kills whatever still runs in the sandbox, then removes cgroup, pins and entries. Errors
    /// are reported on stderr: teardown continues past them so as much as possible is removed.
    pub fn teardown(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.kill_all(Duration::from_secs(5)) {
                eprintln!("leash: teardown: {e:#}");
            }
            self.programs.remove_sandbox(cgroup.id());
            if let Some(lsm) = &self.lsm {
                if let Ok(mut lsm) = lsm.lock() {
                    lsm.remove_sandbox(cgroup.id());
                }
            }
            if let Err(e) = cgroup.remove() {
                eprintln!("leash: teardown: {e:#}");
            }
        }
        if let Err(e) = pins::remove_tree(&self.pin_dir) {
            eprintln!("leash: teardown: {e:#}");
        }
    }
}

/// Puts reloaded `kernel:` rules in force for one sandbox.
#[derive(Clone)]
pub struct KernelRulesUpdater {
    programs: Arc<Mutex<LsmPrograms>>,
    cgroup_id: u64,
    proxy: SocketAddr,
}

impl KernelRulesUpdater {
    /// Replaces the sandbox's flags and lists with `rules`. The hooks stay those loaded at start:
    /// a rule needing a hook this kernel lacks stays unenforced (it was reported at start).
    pub fn update(&self, rules: &LsmRules) -> Result<()> {
        let mut lsm = self.programs.lock().map_err(|_| anyhow!("LSM programs lock poisoned"))?;
        let registration =
            Registration { cgroup_id: self.cgroup_id, level: 0, descendants: false, rules, proxy: Some(self.proxy) };
        lsm.register(&registration)
    }
}
