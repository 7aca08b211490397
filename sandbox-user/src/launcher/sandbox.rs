//! The kernel side of one sandbox: its cgroup, the loaded network programs attached to it with
//! pinned links, and its map entries. Created before the agent starts; torn down after, leaving
//! nothing behind. If leash dies instead, the pins keep the cgroup confined until the next run
//! reaps it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sandbox_common::Counters;

use crate::kernel::cgroup::SandboxCgroup;
use crate::kernel::events::EventPump;
use crate::kernel::pins;
use crate::kernel::programs::{sandbox_net, unpin_all, NetPrograms};
use crate::kernel::sandbox_id::SandboxId;

pub struct Sandbox {
    record_owners: bool,
    cgroup: Option<SandboxCgroup>,
    programs: NetPrograms,
    pin_dir: PathBuf,
}

impl Sandbox {
    /// Creates the cgroup, loads the programs, writes the entries for `proxy` and attaches.
    /// On failure everything created so far is removed again.
    /// `record_owners`: tell the proxy which process opened each connection (for `binaries:`).
    pub fn create(
        id: SandboxId,
        cgroup_root: &Path,
        bpffs: &Path,
        proxy: SocketAddr,
        record_owners: bool,
    ) -> Result<Self> {
        let programs = NetPrograms::load()?;
        let cgroup = SandboxCgroup::create(cgroup_root, &id.to_string())?;
        let mut sandbox =
            Self { record_owners, cgroup: Some(cgroup), programs, pin_dir: pins::sandbox_dir(bpffs, &id.to_string()) };
        if let Err(e) = sandbox.confine(proxy, record_owners) {
            sandbox.teardown();
            return Err(e);
        }
        Ok(sandbox)
    }

    fn confine(&mut self, proxy: SocketAddr, record_owners: bool) -> Result<()> {
        let cgroup = self.cgroup.as_ref().context("sandbox cgroup already removed")?;
        self.programs.add_sandbox(cgroup.id(), sandbox_net(proxy, record_owners))?;
        self.programs.attach(cgroup, &self.pin_dir, record_owners)?;
        Ok(())
    }

    pub fn cgroup(&self) -> Option<&SandboxCgroup> {
        self.cgroup.as_ref()
    }

    pub fn start_events(&mut self, sink: impl Fn(&sandbox_common::DenyEvent) + Send + 'static) -> Result<EventPump> {
        EventPump::start(self.programs.take_events()?, sink)
    }

    /// The connection-owner table, when this sandbox records owners.
    pub fn take_connection_owners(&mut self) -> Result<Option<crate::kernel::programs::ConnectionOwners>> {
        if !self.record_owners {
            return Ok(None);
        }
        Ok(Some(self.programs.take_connection_owners()?))
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
            if let Err(e) = cgroup.remove() {
                eprintln!("leash: teardown: {e:#}");
            }
        }
        if let Err(e) = unpin_all(&self.pin_dir) {
            eprintln!("leash: teardown: {e:#}");
        }
    }
}
