//! leash's kernel side, loaded once per host: one *generation* of programs and maps, shared by
//! every `leash run` and `leash daemon` on the host (layout in `pins.rs`).
//!
//! The first leash on a host (cold start) loads the eBPF object built into its binary, has every
//! program verified, writes what it derives from the kernel's BTF (struct offsets for the LSM
//! programs) and pins it all in a directory of its own, which it renames into place once whole:
//! a leash killed halfway leaves a `building-` directory that no one opens and the next leash
//! removes. Later runs (warm starts) open the pins: no BTF parsing, no verifier. An exclusive
//! flock on `<bpffs>/leash` makes concurrent cold starts load once between them.
//!
//! Every process using a generation holds a shared flock on its directory; a generation of
//! another build is removed once no process holds it and no sandbox link names it.
//!
//! The network programs attach per sandbox cgroup (`kernel::sandbox`); `leash run` keeps each
//! attached once more to a cgroup no process runs in, so that the kernel's hooks stay switched on
//! between sandboxes (`hold.rs`). The BPF-LSM programs attach to the kernel's hooks, host-wide:
//! only while at least one sandbox is registered with them ([`Generation::register_lsm`]), once
//! however many are, and they are detached when the last one leaves, so a host without
//! sandboxes pays nothing for them on its syscalls.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::Lsm as LsmProgram;
use sandbox_common::{
    map_names, program_names, ConnOwner, Counters, LsmHook, SandboxNet, EVENTS_BYTES, KERNEL_LAYOUT_GLOBAL,
    MAX_EVENT_RINGS, SANDBOX_NODE,
};

use super::attach::{self, PinnedProgram};
use super::btf::KernelBtf;
use super::hold;
use super::learning::{self, Learning};
use super::lsm::{program_of, LsmMaps, Registration, Unavailable};
use super::lsm_rules::FileId;
use super::pins::{self, entries, open_map, remove_tree, DirLock};
use super::programs::{attached_for, load_program, ConnectionOwners, DnsClients, Kind, NET_PROGRAMS, OBJECT};

/// A directory in a generation saying its kernel cannot attach an LSM program again after
/// detaching it (5.10 frees the program's trampoline at detach): links stay once attached.
const STICKY_LSM: &str = "lsm-sticky";

/// The generation of the object built into this binary (`build.rs` hashes the object).
pub fn this_generation() -> &'static str {
    env!("LEASH_GENERATION")
}

/// Whether this binary's generation is pinned on the host (a start opens it rather than loads
/// it). Mounts nothing.
pub fn this_generation_pinned() -> bool {
    super::mounts::mounted_bpffs().is_some_and(|bpffs| pins::root(&bpffs).join(this_generation()).is_dir())
}

/// A pooled event ring held by this process (a flock on its slot directory); free again when
/// dropped.
pub struct EventSlot {
    _held: DirLock,
}

/// One generation, open: the network programs, handles to the maps, and the BPF-LSM hooks it has.
pub struct Generation {
    bpffs: PathBuf,
    name: String,
    programs: Vec<(&'static str, Kind, PinnedProgram)>,
    sandboxes: HashMap<MapData, u64, SandboxNet>,
    counters: PerCpuHashMap<MapData, u64, Counters>,
    owners: HashMap<MapData, u64, ConnOwner>,
    /// Another descriptor of the connection-owner map, for the proxy's own handle.
    owners_fd: std::os::fd::OwnedFd,
    /// `LEASH_DNS_CLIENTS`, for the resolvers of this process's sandboxes.
    dns_clients_fd: std::os::fd::OwnedFd,
    event_slots: HashMap<MapData, u64, u32>,
    event_rings: ArrayOfMaps<MapData, MapData>,
    /// The hooks with a verified program, in `LSM_HOOKS` order (empty: no BPF-LSM here).
    lsm_hooks: Vec<&'static str>,
    lsm_maps: Option<LsmMaps>,
    /// With [`STICKY_LSM`]: this kernel cannot attach an LSM program again once detached (5.10),
    /// so the links stay once attached.
    lsm_sticky: bool,
    /// The LSM hooks that did not verify, and why (known only to the process that loaded).
    unavailable: Vec<Unavailable>,
    /// True when this process loaded the generation (cold start).
    created: bool,
    /// The shared lock that says "in use" to [`retire_unused`].
    _in_use: Option<DirLock>,
}

impl Generation {
    /// Opens generation `name` from its pins in `bpffs`, making it first when the host has none.
    /// Removes what a leash killed while making one left behind.
    pub fn open_or_create(bpffs: &Path, name: &str) -> Result<Self> {
        let root = pins::private_root(bpffs)?;
        let _host = DirLock::exclusive(&root)?;
        for entry in entries(&root)? {
            // Under the host lock no one else is building: any such directory is a dead leash's.
            if entry.file_name().to_string_lossy().starts_with(pins::BUILDING_PREFIX) {
                remove_tree(&entry.path())?;
            }
        }
        let dir = root.join(name);
        if dir.is_dir() {
            match Self::open(bpffs, name, false) {
                Ok(g) => return Ok(g),
                // Not whole (pins removed by hand, or an older layout): made again. Sandboxes
                // that use the old objects keep them through their own links and descriptors.
                Err(e) => {
                    crate::say!("leash: the pinned programs {name} cannot be used ({e:#}); loading them again");
                    remove_tree(&dir)?;
                }
            }
        }
        let building = root.join(format!("{}{}", pins::BUILDING_PREFIX, std::process::id()));
        let unavailable = match build(&building) {
            Ok(u) => u,
            Err(e) => {
                let _ = remove_tree(&building);
                return Err(e);
            }
        };
        std::fs::rename(&building, &dir).with_context(|| format!("publishing {}", dir.display()))?;
        let mut generation = Self::open(bpffs, name, true)?;
        generation.unavailable = unavailable;
        Ok(generation)
    }

    /// This binary's generation on this host's bpffs (mounted if needed), made if missing.
    pub fn open_host() -> Result<Self> {
        Self::open_or_create(&super::mounts::bpffs_root()?, this_generation())
    }

    fn open(bpffs: &Path, name: &str, created: bool) -> Result<Self> {
        let dir = pins::root(bpffs).join(name);
        let in_use = DirLock::shared(&dir)?;
        if !dir.join(pins::RINGS).is_dir() {
            bail!("{} has no {}/ directory", dir.display(), pins::RINGS);
        }
        let map = |map: &str| open_map(&dir.join("maps").join(map));
        let mut programs = Vec::new();
        for (program, kind) in NET_PROGRAMS {
            let path = dir.join("progs").join(program);
            let opened =
                PinnedProgram::open(&path).with_context(|| format!("opening pinned program {}", path.display()))?;
            programs.push((program, kind, opened));
        }
        let pinned: Vec<String> =
            entries(&dir.join("progs"))?.iter().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        let lsm_hooks =
            program_names::LSM_HOOKS.iter().filter(|h| pinned.iter().any(|p| p == h.program)).map(|h| h.hook).collect();
        let owners = map(map_names::SOCKET_OWNERS)?;
        let owners_fd = match &owners {
            Map::LruHashMap(data) | Map::HashMap(data) => {
                data.fd().as_fd().try_clone_to_owned().context("duplicating a map descriptor")?
            }
            _ => bail!("{} is not a hash map", map_names::SOCKET_OWNERS),
        };
        let dns_clients_fd = match map(map_names::DNS_CLIENTS)? {
            Map::LruHashMap(data) | Map::HashMap(data) => {
                data.fd().as_fd().try_clone_to_owned().context("duplicating a map descriptor")?
            }
            _ => bail!("{} is not a hash map", map_names::DNS_CLIENTS),
        };
        Ok(Self {
            bpffs: bpffs.to_path_buf(),
            name: name.to_owned(),
            dns_clients_fd,
            programs,
            sandboxes: HashMap::try_from(map(map_names::SANDBOXES)?)?,
            counters: PerCpuHashMap::try_from(map(map_names::COUNTERS)?)?,
            owners: HashMap::try_from(owners)?,
            owners_fd,
            event_slots: HashMap::try_from(map(map_names::EVENT_SLOTS)?)?,
            event_rings: ArrayOfMaps::try_from(map(map_names::EVENT_RINGS)?)?,
            lsm_hooks,
            lsm_maps: None,
            lsm_sticky: dir.join(STICKY_LSM).is_dir(),
            unavailable: Vec::new(),
            created,
            _in_use: Some(in_use),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when this process loaded the generation (no other leash had).
    pub fn created(&self) -> bool {
        self.created
    }

    fn dir(&self) -> PathBuf {
        pins::root(&self.bpffs).join(&self.name)
    }

    /// Keeps the kernel's cgroup-BPF hooks switched on while this generation is pinned, with a
    /// link of each network program to a cgroup under `cgroup_root` that no process runs in
    /// (`hold.rs`), so that sandboxes start and end without switching them. Tried once per
    /// generation (an error is returned to that one call); later calls cost a `stat` or two.
    pub fn hold_hooks(&self, cgroup_root: &Path) -> Result<()> {
        if hold::settled(&self.dir()) {
            return Ok(());
        }
        let _host = self.host_lock()?;
        hold::hold(&self.dir(), cgroup_root, &self.programs)
    }

    /// Whether this generation holds the kernel's cgroup-BPF hooks ([`Generation::hold_hooks`]).
    pub fn hooks_held(&self) -> hold::Held {
        hold::Held::of(&self.dir())
    }

    fn host_lock(&self) -> Result<DirLock> {
        DirLock::exclusive(&pins::root(&self.bpffs))
    }

    // ---- one sandbox's kernel state ------------------------------------------------------

    /// Makes the pin directory of a new sandbox `sandbox`; fails if it exists (another sandbox's).
    pub fn claim_pins(&self, sandbox: &str) -> Result<()> {
        let dir = pins::sandbox_dir(&self.bpffs, sandbox);
        std::fs::create_dir_all(pins::sandboxes_root(&self.bpffs))
            .and_then(|()| std::fs::create_dir(&dir))
            .with_context(|| format!("creating {}", dir.display()))
    }

    /// Writes the sandbox's network entries (proxy address, zeroed counters), keyed by its cgroup
    /// id (`kernel::sandbox` makes a sandbox with this and [`Generation::attach`]).
    pub fn add_entries(&mut self, cgroup_id: u64, net: SandboxNet) -> Result<()> {
        self.sandboxes.insert(cgroup_id, net, 0).context("writing the sandbox map entry (is the map full?)")?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus]).context("sizing per-CPU counters")?;
        self.counters.insert(cgroup_id, zeros, 0).context("writing the counters map entry")?;
        Ok(())
    }

    /// Attaches the network programs of this generation a sandbox with `SandboxNet::flags`
    /// `flags` gets (`programs::attached_for`: `recvmsg4/6` only in transparent mode) to the cgroup at `cgroup` and pins the links as
    /// `sandboxes/<sandbox>/<generation>--<program>`.
    pub fn attach(&mut self, cgroup: &Path, sandbox: &str, flags: u32) -> Result<()> {
        let dir_path = pins::sandbox_dir(&self.bpffs, sandbox);
        std::fs::create_dir_all(&dir_path).with_context(|| format!("creating {}", dir_path.display()))?;
        let dir = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for (program, kind, opened) in self.programs.iter_mut() {
            if !attached_for(*kind, flags) {
                continue;
            }
            let link = opened
                .attach_cgroup(dir.as_fd(), kind.attach_type())
                .with_context(|| format!("attaching {program}"))?;
            let path = dir_path.join(pins::link_name(&self.name, program));
            // The pinned link outlives this process; closing the descriptor does not detach it.
            attach::pin(&link, &path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    /// Removes every trace of a sandbox from this generation: its entries (network, events,
    /// BPF-LSM; missing ones are not an error) and its pinned links of every generation. The
    /// BPF-LSM programs are detached when it was the last sandbox using them.
    pub fn release(&mut self, sandbox: &str, cgroup_id: u64) -> Result<()> {
        self.remove_entries(cgroup_id)?;
        remove_tree(&pins::sandbox_dir(&self.bpffs, sandbox))
    }

    /// Marks sandbox `cgroup_id` as learning and attaches the learning program until the
    /// returned value is dropped.
    pub fn learn(&self, cgroup_id: u64) -> Result<Learning> {
        Learning::start(&self.dir(), cgroup_id)
    }

    /// Removes the sandbox's entries (network, events and BPF-LSM); missing ones are not an error.
    pub fn remove_entries(&mut self, cgroup_id: u64) -> Result<()> {
        let _ = self.sandboxes.remove(&cgroup_id);
        let _ = self.counters.remove(&cgroup_id);
        let _ = self.event_slots.remove(&cgroup_id);
        // The mark of a learning sandbox (`leash run --learn`); no other has one.
        if let Ok(mut learners) = learning::learners(&self.dir()) {
            let _ = learners.remove(&cgroup_id);
        }
        if !self.lsm_hooks.is_empty() {
            let _host = self.host_lock()?;
            let maps = self.lsm_maps()?;
            if maps.entries().contains(&cgroup_id) {
                maps.remove_sandbox(cgroup_id);
            }
            self.detach_lsm_if_unused()?;
        }
        Ok(())
    }

    /// Unpins the links of sandbox `sandbox` that belong to `generation` (all of them with
    /// `None`) and, when none is left, its pin directory.
    pub fn detach(&self, sandbox: &str, generation: Option<&str>) -> Result<()> {
        let dir = pins::sandbox_dir(&self.bpffs, sandbox);
        for entry in entries(&dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if generation.is_none_or(|g| name.starts_with(&format!("{g}{}", pins::LINK_SEPARATOR))) {
                pins::unpin(&entry.path())?;
            }
        }
        if entries(&dir)?.is_empty() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        Ok(())
    }

    /// A ring buffer for the deny events of sandbox `cgroup_id` alone, from the generation's
    /// pool: the first slot no other process holds (a new one when all are held), drained of
    /// what its last user left, and named as this sandbox's so that the programs send its events
    /// there rather than to the shared ring. The slot stays this process's while the returned
    /// [`EventSlot`] lives: drop it after [`Generation::remove_entries`].
    pub fn own_events(&mut self, cgroup_id: u64) -> Result<(RingBuf<MapData>, EventSlot)> {
        // `rings/` is made with the generation: a slot is only ever made inside it, so a generation
        // removed meanwhile is never brought back as a directory holding nothing but slots.
        let rings = self.dir().join(pins::RINGS);
        for slot in 0..MAX_EVENT_RINGS {
            let dir = rings.join(slot.to_string());
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("claiming event ring {}", dir.display())),
            }
            let Some(held) = DirLock::try_exclusive(&dir) else { continue };
            let mut ring = self.ring_at(slot)?;
            while ring.next().is_some() {}
            self.event_slots.insert(cgroup_id, slot, 0).context("naming the sandbox's event ring")?;
            return Ok((ring, EventSlot { _held: held }));
        }
        bail!("all {MAX_EVENT_RINGS} event rings of this host are in use by other sandboxes")
    }

    /// The pooled ring at `slot`, made and inserted if the slot has none yet (the one insert
    /// that waits for an RCU grace period). Caller holds the slot.
    fn ring_at(&mut self, slot: u32) -> Result<RingBuf<MapData>> {
        let data = match self.event_rings.get(&slot, 0) {
            Ok(data) => data,
            Err(MapError::KeyNotFound) => {
                let params = aya_obj::Map::new_from_params(
                    aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                    0,
                    0,
                    EVENTS_BYTES,
                    0,
                );
                let ring = MapData::create(params, "leash_events", None).context("creating an event ring")?;
                self.event_rings.set(slot, &ring, 0).context("adding an event ring to the pool")?;
                ring
            }
            Err(e) => return Err(e).with_context(|| format!("opening event ring {slot}")),
        };
        Ok(RingBuf::try_from(Map::RingBuf(data))?)
    }

    /// The shared deny-event ring (events of sandboxes without one of their own: the daemon's).
    pub fn shared_events(&self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(open_map(&self.dir().join("maps").join(map_names::EVENTS))?)?)
    }

    /// Who owns each connection of sandbox `cgroup_id` to its proxy (read by the proxy at accept).
    pub fn connection_owners(&self, cgroup_id: u64) -> Result<ConnectionOwners> {
        let fd = self.owners_fd.try_clone().context("duplicating a map descriptor")?;
        let map = Map::from_map_data(MapData::from_fd(fd)?)?;
        Ok(ConnectionOwners::new(HashMap::try_from(map)?, cgroup_id))
    }

    /// Which client ports sent DNS from sandbox `cgroup_id` to its resolver. (From the map
    /// opened with the generation: its directory may be renamed under a run, as by an upgrade.)
    pub fn dns_clients(&self, cgroup_id: u64) -> Result<DnsClients> {
        let fd = self.dns_clients_fd.try_clone().context("duplicating a map descriptor")?;
        let map = Map::from_map_data(MapData::from_fd(fd)?)?;
        Ok(DnsClients::new(HashMap::try_from(map)?, cgroup_id))
    }

    /// Who connected the socket with cookie `cookie` to a proxy, if recorded (any sandbox).
    pub fn owner(&self, cookie: u64) -> Option<ConnOwner> {
        self.owners.get(&cookie, 0).ok()
    }

    /// Removes the record of socket `cookie`.
    pub fn forget_owner(&mut self, cookie: u64) {
        let _ = self.owners.remove(&cookie);
    }

    /// Per-sandbox verdict counters, summed over CPUs.
    pub fn counters(&self, cgroup_id: u64) -> Result<Counters> {
        let per_cpu = self.counters.get(&cgroup_id, 0).context("reading counters")?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            for (s, v) in sum.values.iter_mut().zip(c.values) {
                *s += v;
            }
        }
        Ok(sum)
    }

    // ---- BPF-LSM -------------------------------------------------------------------------

    /// The BPF-LSM hooks this host has a verified program for; an error saying why when it has
    /// none (BPF-LSM is off, or refused).
    pub fn lsm_hooks(&self) -> Result<&[&'static str]> {
        if self.lsm_hooks.is_empty() {
            let why = super::probes::bpf_lsm().err().map(|e| format!("{e:#}"));
            bail!("{}", why.unwrap_or_else(|| "no BPF-LSM program loaded when this host's programs were".into()));
        }
        Ok(&self.lsm_hooks)
    }

    /// The LSM hooks that did not verify when this process loaded the generation, with why
    /// (empty when it was opened from pins).
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// Whether BPF-LSM programs loaded with this generation (cheap; [`Generation::lsm_hooks`]
    /// says why not).
    pub fn has_lsm(&self) -> bool {
        !self.lsm_hooks.is_empty()
    }

    /// This generation, if this host has BPF-LSM (an error saying why not otherwise).
    pub fn with_lsm(self) -> Result<Self> {
        self.lsm_hooks()?;
        Ok(self)
    }

    /// The hooks of `needed` this host lacks.
    pub fn missing_hooks<'a>(&self, needed: &[&'a str]) -> Vec<&'a str> {
        needed.iter().copied().filter(|h| !self.lsm_hooks.contains(h)).collect()
    }

    /// Registers a sandbox with the BPF-LSM programs (its rules in the maps), and attaches the
    /// programs to their hooks if no other sandbox had.
    pub fn register_lsm(&mut self, r: &Registration<'_>) -> Result<()> {
        self.lsm_hooks()?;
        let _host = self.host_lock()?;
        self.lsm_maps()?.register(r)?;
        self.attach_lsm()
    }

    /// Replaces a registered sandbox's rules (policy reload).
    pub fn update_lsm(&mut self, r: &Registration<'_>) -> Result<()> {
        self.with_lsm_maps(|maps| maps.update(r))
    }

    /// Changes registered sandbox `cgroup_id`'s open deny list by `added` and `removed` alone.
    pub fn change_deny_open(&mut self, cgroup_id: u64, added: &[FileId], removed: &[FileId]) -> Result<()> {
        self.with_lsm_maps(|maps| maps.change_deny_open(cgroup_id, added, removed))
    }

    /// Runs `f` on the LSM maps under the host lock, which every change to them needs.
    pub fn with_lsm_maps<T>(&mut self, f: impl FnOnce(&mut LsmMaps) -> Result<T>) -> Result<T> {
        let _host = self.host_lock()?;
        f(self.lsm_maps()?)
    }

    /// The LSM maps, opened on first use.
    fn lsm_maps(&mut self) -> Result<&mut LsmMaps> {
        if self.lsm_maps.is_none() {
            self.lsm_maps = Some(LsmMaps::open_pinned(&self.dir().join("maps"))?);
        }
        self.lsm_maps.as_mut().ok_or_else(|| anyhow!("LSM maps not open"))
    }

    /// Attaches each LSM program not attached yet and pins its link in `lsm/`. Caller holds the
    /// host lock.
    fn attach_lsm(&mut self) -> Result<()> {
        let dir = self.dir().join("lsm");
        // Never create_dir_all: a generation removed meanwhile must not come back as `lsm/` alone.
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        for hook in &self.lsm_hooks {
            let program = program_of(hook).ok_or_else(|| anyhow!("no program for hook {hook}"))?;
            let path = dir.join(program);
            if path.exists() {
                continue;
            }
            let lsm = PinnedProgram::open(&self.dir().join("progs").join(program))
                .with_context(|| format!("opening pinned program {program}"))?;
            let link = lsm.attach_lsm().with_context(|| format!("attaching {program}"))?;
            attach::pin(&link, &path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    /// Detaches the LSM programs when no sandbox is registered with them. Caller holds the
    /// host lock.
    fn detach_lsm_if_unused(&mut self) -> Result<()> {
        if !self.lsm_sticky && self.lsm_maps()?.entries().is_empty() {
            remove_tree(&self.dir().join("lsm"))?;
        }
        Ok(())
    }

    // ---- the node daemon: its sandboxes, upgrades, garbage ---------------------------------

    /// Every cgroup id with an entry of a daemon sandbox (flag `SANDBOX_NODE`).
    pub fn node_entries(&self) -> Vec<u64> {
        self.sandboxes
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, net)| net.flags & SANDBOX_NODE != 0)
            .map(|(id, _)| id)
            .collect()
    }

    /// Names of every sandbox with a pin directory (of `leash run` and of the daemon).
    pub fn pinned_sandboxes(&self) -> Result<Vec<String>> {
        pins::list(&self.bpffs)
    }

    /// Other generations still pinned (left by a leash of another build).
    pub fn previous_generations(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in entries(&pins::root(&self.bpffs))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(pins::GENERATION_PREFIX) && name != self.name {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Copies the daemon sandboxes' entries of pinned generation `old` into this one (before an
    /// upgrade attaches this generation's programs). Returns the cgroup ids copied.
    pub fn copy_node_entries_from(&mut self, old: &str) -> Result<Vec<u64>> {
        let old_dir = pins::root(&self.bpffs).join(old).join("maps");
        let old_map: HashMap<MapData, u64, SandboxNet> =
            HashMap::try_from(open_map(&old_dir.join(map_names::SANDBOXES))?)?;
        let mut copied = Vec::new();
        for entry in old_map.iter() {
            let (id, net) = entry.context("reading the previous generation's sandbox map")?;
            if net.flags & SANDBOX_NODE != 0 {
                self.add_entries(id, net)?;
                copied.push(id);
            }
        }
        if !self.lsm_hooks.is_empty() && old_dir.join(map_names::LSM_SANDBOXES).exists() {
            let _host = self.host_lock()?;
            self.lsm_maps()?.copy_from(&old_dir, &copied)?;
            if !self.lsm_maps()?.entries().is_empty() {
                self.attach_lsm()?;
            }
        }
        Ok(copied)
    }

    /// Unpins what remains of generation `old` (its programs, maps and LSM links) unless a
    /// sandbox link still names it or a process still holds it (a `leash run` of that build).
    /// Returns whether it was removed.
    pub fn remove_generation(&self, old: &str) -> Result<bool> {
        if !old.starts_with(pins::GENERATION_PREFIX) || old == self.name {
            bail!("refusing to remove generation {old}");
        }
        let _host = self.host_lock()?;
        if generations_in_use(&self.bpffs)?.contains(old) {
            return Ok(false);
        }
        let dir = pins::root(&self.bpffs).join(old);
        let Some(_unused) = DirLock::try_exclusive(&dir) else { return Ok(false) };
        remove_tree(&dir)?;
        Ok(true)
    }

    /// Gives up this process's hold on the generation (at the end of its last sandbox), so that
    /// [`retire_unused`] may remove it once a newer one exists. The handle must not be used to
    /// attach anything after this.
    pub fn stop_using(&mut self) {
        self._in_use = None;
    }

    /// Run time and run count of each network program (counted while BPF statistics are on).
    pub fn program_stats(&self) -> Vec<(&'static str, Duration, u64)> {
        self.programs
            .iter()
            .filter_map(|(name, _, p)| p.stats().ok().map(|(time, count)| (*name, time, count)))
            .collect()
    }
}

/// Removes every generation but the newest that no process holds and no sandbox link names: a
/// leash of another build left it, and its last sandbox ended. Returns the names removed.
pub fn retire_unused(bpffs: &Path) -> Result<Vec<String>> {
    let root = pins::root(bpffs);
    let _host = DirLock::exclusive(&root)?;
    // Made when its programs were pinned (the directory itself changes as LSM links come and go).
    let made = |name: &str| std::fs::metadata(root.join(name).join("progs")).and_then(|m| m.modified()).ok();
    let mut generations: Vec<(Option<std::time::SystemTime>, String)> = entries(&root)?
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(pins::GENERATION_PREFIX))
        .map(|n| (made(&n), n))
        .collect();
    generations.sort();
    generations.pop();
    let mut removed = Vec::new();
    if generations.is_empty() {
        // The usual case, one generation: no sandbox's links need reading.
        return Ok(removed);
    }
    let in_use = generations_in_use(bpffs)?;
    for (_, old) in generations {
        if in_use.contains(&old) {
            continue;
        }
        let dir = root.join(&old);
        let Some(_unused) = DirLock::try_exclusive(&dir) else { continue };
        remove_tree(&dir)?;
        removed.push(old);
    }
    Ok(removed)
}

/// The generations some sandbox link names.
fn generations_in_use(bpffs: &Path) -> Result<std::collections::BTreeSet<String>> {
    let mut in_use = std::collections::BTreeSet::new();
    for sandbox in pins::list(bpffs)? {
        for link in entries(&pins::sandbox_dir(bpffs, &sandbox))? {
            let link = link.file_name().to_string_lossy().into_owned();
            if let Some((generation, _)) = link.split_once(pins::LINK_SEPARATOR) {
                in_use.insert(generation.to_owned());
            }
        }
    }
    Ok(in_use)
}

/// Loads the object with this kernel's struct layout and pins every map and verified program
/// under `dir` (created here). BPF-LSM programs are verified against this kernel's hooks and
/// tried once (attached and detached); only those that work are pinned.
fn build(dir: &Path) -> Result<Vec<Unavailable>> {
    let _heap = BulkHeap::enter();
    // Without the layout (no BTF, or a member missing) the LSM programs read nothing: each
    // rule that needs a field denies, and `verify_lsm` says why BPF-LSM is unavailable.
    let layout = KernelBtf::from_sys_fs().and_then(|btf| btf.lsm_layout());
    let mut loader = aya::EbpfLoader::new();
    // The network programs use no kernel types; the LSM ones get the kernel's BTF below.
    loader.btf(None);
    if let Ok(layout) = &layout {
        loader.override_global(KERNEL_LAYOUT_GLOBAL, layout, true);
    }
    let mut ebpf = loader.load(OBJECT).context("loading leash's eBPF object")?;
    let progs = dir.join("progs");
    let maps = dir.join("maps");
    for made in [&progs, &maps, &dir.join(pins::RINGS)] {
        std::fs::create_dir_all(made).with_context(|| format!("creating {}", made.display()))?;
    }
    for (name, map) in ebpf.maps() {
        // Only leash's own maps: sections such as `.rodata` cannot be pinned (bpffs refuses dots).
        if name.starts_with("LEASH_") {
            map.pin(maps.join(name)).with_context(|| format!("pinning map {name}"))?;
        }
    }
    for (name, kind) in NET_PROGRAMS {
        load_program(&mut ebpf, name, kind)?;
        let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
        program.pin(progs.join(name)).with_context(|| format!("pinning program {name}"))?;
    }
    // The kernel's types as aya reads them, once: the learning and LSM programs are loaded
    // against them (each reading is some 10 ms of a cold start).
    let btf = layout
        .context("finding kernel struct offsets in BTF")
        .and_then(|_| aya::Btf::from_sys_fs().context("reading the kernel's BTF"));
    // Not an error when learning is unusable: `leash run --learn` says so and learns the rest.
    if let Ok(btf) = &btf {
        let _ = learning::load(&mut ebpf, &progs, btf);
    }
    // Not an error when BPF-LSM is unusable: runs whose policy needs it are refused (and told
    // why) when they ask.
    let verified = btf.and_then(|btf| verify_lsm(&mut ebpf, dir, &btf));
    let unavailable = match verified {
        Ok(u) => u,
        Err(e) => vec![Unavailable { hook: "*", reason: format!("{e:#}") }],
    };
    Ok(unavailable)
}

/// glibc's allocator while a generation is built. Reading the kernel's BTF allocates megabytes
/// in large blocks that are freed soon after; by default each is mapped afresh and faulted in a
/// page at a time (8,000 more page faults, 10% of a cold start). Kept in the heap, the blocks are
/// reused; what is left free goes back to the kernel when the build ends. glibc raises its
/// thresholds by itself only until they are first set, so after a build they stay at its
/// defaults: blocks above 128 KiB, which the proxy rarely asks for, are mapped each time.
struct BulkHeap;

impl BulkHeap {
    /// The largest threshold glibc accepts for mapping (on 64-bit), above any one block of a
    /// build; free memory at the heap's top is kept up to twice that.
    const BLOCK: libc::c_int = 32 << 20;
    /// glibc's defaults.
    const DEFAULT: libc::c_int = 128 << 10;

    fn enter() -> Self {
        Self::set(Self::BLOCK, 2 * Self::BLOCK);
        BulkHeap
    }

    fn set(mmap: libc::c_int, trim: libc::c_int) {
        // SAFETY: mallopt(3) only tunes the allocator; it returns 0 for a value it refuses.
        let set = unsafe { [libc::mallopt(libc::M_MMAP_THRESHOLD, mmap), libc::mallopt(libc::M_TRIM_THRESHOLD, trim)] };
        debug_assert_eq!(set, [1, 1], "glibc refused a threshold");
    }
}

impl Drop for BulkHeap {
    fn drop(&mut self) {
        Self::set(Self::DEFAULT, Self::DEFAULT);
        // SAFETY: malloc_trim(3) returns free memory to the kernel and touches nothing in use.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Loads each LSM program against its hook, tries it (attach, detach) and pins the ones that
/// work in `progs`. The hooks that do not, with why.
fn verify_lsm(ebpf: &mut aya::Ebpf, dir: &Path, btf: &aya::Btf) -> Result<Vec<Unavailable>> {
    let progs = dir.join("progs");
    // Held until the programs are loaded: they refer to the maps' descriptors.
    let _maps = LsmMaps::take(ebpf)?;
    let mut unavailable = Vec::new();
    for LsmHook { program, hook, .. } in program_names::LSM_HOOKS {
        let tried = (|| -> Result<()> {
            let lsm: &mut LsmProgram =
                ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing"))?.try_into()?;
            lsm.load(hook, btf).with_context(|| format!("loading {program}"))?;
            let id = lsm.attach().with_context(|| format!("attaching {program}"))?;
            lsm.detach(id)?;
            // Once more: a kernel that cannot attach a detached program again gets a fresh one.
            match lsm.attach() {
                Ok(id) => lsm.detach(id)?,
                Err(_) => {
                    std::fs::create_dir_all(dir.join(STICKY_LSM)).context("marking LSM links sticky")?;
                    lsm.unload()?;
                    lsm.load(hook, btf).with_context(|| format!("loading {program} again"))?;
                }
            }
            lsm.pin(progs.join(program)).with_context(|| format!("pinning program {program}"))?;
            Ok(())
        })();
        if let Err(e) = tried {
            unavailable.push(Unavailable { hook, reason: format!("{e:#}") });
        }
    }
    if unavailable.len() == program_names::LSM_HOOKS.len() {
        bail!("no BPF-LSM hook attached");
    }
    Ok(unavailable)
}
