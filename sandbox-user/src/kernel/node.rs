//! The node daemon's program set: leash's eBPF object loaded once per host, pinned, and attached
//! to every sandbox cgroup the daemon creates.
//!
//! ```text
//! <bpffs>/leash/node/<generation>/progs/<program>     the loaded network programs (attached per sandbox)
//! <bpffs>/leash/node/<generation>/maps/<map>          every map of the object
//! <bpffs>/leash/node/<generation>/lsm/<program>       the BPF-LSM links, when this kernel has BPF-LSM
//! <bpffs>/leash/node/sandboxes/<id>/<generation>--<program>   one pinned link per program and sandbox
//! ```
//!
//! The generation is named after a hash of the embedded object. A restarted daemon of the same
//! build opens these pins (adopts them) instead of loading again: the links never went away, so
//! enforcement never lapsed. A daemon built from another object (an upgrade) loads its own
//! generation next to the old one; [`NodePrograms::previous_generations`] lists what it must
//! migrate, and the daemon attaches the new programs to each sandbox before unpinning the old
//! links, so at every moment at least one generation judges every sandbox. (Generations must
//! share the map layouts of `sandbox-common`: entries are copied from the old maps as they are.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::{CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockAttachType, Program, SockOps};
use sandbox_common::{map_names, ConnOwner, Counters, SandboxNet};

use super::btf::KernelBtf;
use super::lsm::{attach_all, hook_of, pin_links, LsmMaps, LSM_MAPS};
use super::pins::{entries, open_map, remove_tree};
use super::programs::{attach_link, load_program, Kind, NET_PROGRAMS, OBJECT};

/// The maps a network program set uses, pinned with it.
const NET_MAPS: [&str; 5] =
    [map_names::SANDBOXES, map_names::COUNTERS, map_names::EVENTS, map_names::SOCKET_OWNERS, map_names::PROXY_CLIENTS];

/// Between the generation and the program in a link's pin name.
const LINK_SEPARATOR: &str = "--";

/// `<bpffs>/leash/node`.
pub fn node_root(bpffs: &Path) -> PathBuf {
    bpffs.join("leash").join("node")
}

/// The generation name of the object built into this binary.
pub fn this_generation() -> String {
    // FNV-1a: a name, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in OBJECT {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("gen-{h:016x}")
}

/// One loaded generation: the network programs, the BPF-LSM side, and handles to the maps.
pub struct NodePrograms {
    root: PathBuf,
    generation: String,
    programs: Vec<(&'static str, Kind, Program)>,
    sandboxes: HashMap<MapData, u64, SandboxNet>,
    counters: PerCpuHashMap<MapData, u64, Counters>,
    owners: HashMap<MapData, u32, ConnOwner>,
    events: Option<RingBuf<MapData>>,
    adopted: bool,
    lsm: Lsm,
}

/// The BPF-LSM side of a generation: attached once for the whole node, or not at all.
pub enum Lsm {
    Attached { maps: Box<LsmMaps>, hooks: Vec<String> },
    Unavailable(String),
}

impl NodePrograms {
    /// Opens generation `generation` from its pins under `<bpffs>/leash/node`, or loads the
    /// object and pins it there when it is not pinned yet (or pinned incompletely).
    pub fn open_or_load(bpffs: &Path, generation: &str) -> Result<Self> {
        let root = node_root(bpffs);
        let gen_dir = root.join(generation);
        if is_complete(&gen_dir) {
            if let Ok(p) = Self::open(&root, generation) {
                return Ok(Self { adopted: true, ..p });
            }
        }
        // An incomplete generation (a daemon died while pinning) is removed and loaded afresh.
        remove_tree(&gen_dir)?;
        Self::load_and_pin(&gen_dir)?;
        Self::open(&root, generation)
    }

    fn load_and_pin(gen_dir: &Path) -> Result<()> {
        // Full-size maps (a `leash run` set shrinks the LSM ones), and the kernel's BTF for the
        // LSM programs' attach points when there is one.
        let btf = aya::Btf::from_sys_fs().ok();
        let mut loader = aya::EbpfLoader::new();
        loader.btf(None);
        let mut ebpf = loader.load(OBJECT).context("loading leash's eBPF object")?;
        let progs = gen_dir.join("progs");
        let maps = gen_dir.join("maps");
        std::fs::create_dir_all(&progs).with_context(|| format!("creating {}", progs.display()))?;
        std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
        for name in NET_MAPS.into_iter().chain(LSM_MAPS) {
            let map = ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
            map.pin(maps.join(name)).with_context(|| format!("pinning map {name}"))?;
        }
        for (name, kind) in NET_PROGRAMS {
            load_program(&mut ebpf, name, kind)?;
            let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
            program.pin(progs.join(name)).with_context(|| format!("pinning program {name}"))?;
        }
        if let Err(e) = Self::attach_lsm(&mut ebpf, btf.as_ref(), &gen_dir.join("lsm")) {
            eprintln!("leash daemon: BPF-LSM is not available on this node ({e:#}); policies with `kernel:` rules will be refused");
        }
        // The marker says every pin above exists; its absence means "load again".
        std::fs::create_dir(gen_dir.join("complete")).context("marking the generation complete")?;
        Ok(())
    }

    /// Writes this kernel's layout, attaches every LSM program it has a hook for, and pins the
    /// links in `dir`, named after their programs. The directory exists only when something
    /// attached.
    fn attach_lsm(ebpf: &mut aya::Ebpf, btf: Option<&aya::Btf>, dir: &Path) -> Result<()> {
        let btf = btf.ok_or_else(|| anyhow!("the kernel has no BTF"))?;
        let layout = KernelBtf::from_sys_fs()?.lsm_layout().context("finding kernel struct offsets in BTF")?;
        // Held until the programs are loaded: they refer to the maps' descriptors.
        let _maps = LsmMaps::take(ebpf, layout)?;
        let (links, _unavailable) = attach_all(ebpf, btf)?;
        pin_links(ebpf, links, dir)?;
        Ok(())
    }

    fn open(root: &Path, generation: &str) -> Result<Self> {
        let gen_dir = root.join(generation);
        let map = |name: &str| open_map(&gen_dir.join("maps").join(name));
        let mut programs = Vec::new();
        for (name, kind) in NET_PROGRAMS {
            let path = gen_dir.join("progs").join(name);
            let program = match kind {
                Kind::SockAddr(ty) => Program::CgroupSockAddr(CgroupSockAddr::from_pin(&path, ty)?),
                Kind::Sock => Program::CgroupSock(CgroupSock::from_pin(&path, CgroupSockAttachType::SockCreate)?),
                Kind::Skb(ty) => Program::CgroupSkb(CgroupSkb::from_pin(&path, ty)?),
                Kind::SockOps => Program::SockOps(SockOps::from_pin(&path)?),
            };
            programs.push((name, kind, program));
        }
        let lsm_dir = gen_dir.join("lsm");
        let lsm = match std::fs::read_dir(&lsm_dir) {
            Ok(entries) => {
                let hooks = entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| hook_of(&e.file_name().to_string_lossy()).map(str::to_owned))
                    .collect();
                Lsm::Attached { maps: Box::new(LsmMaps::open_pinned(&gen_dir.join("maps"))?), hooks }
            }
            Err(_) => Lsm::Unavailable("BPF-LSM programs did not attach when this node's programs were loaded".into()),
        };
        Ok(Self {
            root: root.to_path_buf(),
            generation: generation.to_owned(),
            lsm,
            programs,
            sandboxes: HashMap::try_from(map(map_names::SANDBOXES)?)?,
            counters: PerCpuHashMap::try_from(map(map_names::COUNTERS)?)?,
            owners: HashMap::try_from(map(map_names::PROXY_CLIENTS)?)?,
            events: Some(RingBuf::try_from(map(map_names::EVENTS)?)?),
            adopted: false,
        })
    }

    /// The BPF-LSM side.
    pub fn lsm(&mut self) -> &mut Lsm {
        &mut self.lsm
    }

    /// True when this set was opened from an earlier daemon's pins rather than loaded now.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Other generations still pinned (left by a daemon of another build).
    pub fn previous_generations(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in entries(&self.root)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("gen-") && name != self.generation {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Writes the sandbox's entries (proxy address, zeroed counters), keyed by its cgroup id.
    pub fn add_sandbox(&mut self, cgroup_id: u64, net: SandboxNet) -> Result<()> {
        self.sandboxes.insert(cgroup_id, net, 0).context("writing the sandbox map entry (is the map full?)")?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus]).context("sizing per-CPU counters")?;
        self.counters.insert(cgroup_id, zeros, 0).context("writing the counters map entry")?;
        Ok(())
    }

    /// Removes the sandbox's entries (network and BPF-LSM); missing entries are not an error.
    pub fn remove_sandbox(&mut self, cgroup_id: u64) {
        let _ = self.sandboxes.remove(&cgroup_id);
        let _ = self.counters.remove(&cgroup_id);
        if let Lsm::Attached { maps, .. } = &mut self.lsm {
            maps.remove_sandbox(cgroup_id);
        }
    }

    /// Attaches every network program (the `sock_ops` one only with `record_owners`) to the
    /// cgroup at `cgroup`, pinning each link as `sandboxes/<id>/<generation>--<program>` (bpffs
    /// refuses names with a dot).
    pub fn attach(&mut self, cgroup: &Path, id: &str, record_owners: bool) -> Result<()> {
        let dir_path = self.sandbox_pins(id);
        std::fs::create_dir_all(&dir_path).with_context(|| format!("creating {}", dir_path.display()))?;
        let dir = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for (name, kind, program) in self.programs.iter_mut() {
            if matches!(kind, Kind::SockOps) && !record_owners {
                continue;
            }
            let link = attach_link(program, name, *kind, &dir)?;
            let path = dir_path.join(format!("{}{LINK_SEPARATOR}{name}", self.generation));
            // The pinned link outlives this process; dropping the handle does not detach it.
            let _pinned = link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    /// Unpins the links of sandbox `id` that belong to `generation` (all of them with `None`)
    /// and, when none is left, its pin directory.
    pub fn detach(&self, id: &str, generation: Option<&str>) -> Result<()> {
        let dir = self.sandbox_pins(id);
        for entry in entries(&dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if generation.is_none_or(|g| name.starts_with(&format!("{g}{LINK_SEPARATOR}"))) {
                std::fs::remove_file(entry.path()).with_context(|| format!("unpinning {}", entry.path().display()))?;
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

    /// Sandbox ids with a pin directory.
    pub fn pinned_sandboxes(&self) -> Result<Vec<String>> {
        Ok(entries(&self.root.join("sandboxes"))?
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// Every cgroup id with a sandbox entry, network or BPF-LSM (for garbage collection).
    pub fn entries(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.sandboxes.keys().filter_map(|k| k.ok()).collect();
        if let Lsm::Attached { maps, .. } = &self.lsm {
            ids.extend(maps.entries());
        }
        ids.sort_unstable();
        ids.dedup();
        ids
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

    /// Who owns the proxy connection whose client side uses `port`, if recorded.
    pub fn owner(&self, port: u16) -> Option<ConnOwner> {
        self.owners.get(&u32::from(port), 0).ok()
    }

    /// The deny-event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.events.take().ok_or_else(|| anyhow!("events already taken"))
    }

    /// Run time and run count of each program (counted while BPF statistics are enabled).
    pub fn program_stats(&self) -> Vec<(&'static str, Duration, u64)> {
        self.programs
            .iter()
            .filter_map(|(name, _, p)| p.info().ok().map(|i| (*name, i.run_time(), i.run_count())))
            .collect()
    }

    /// Copies every sandbox entry of pinned generation `old` into this one (before an upgrade
    /// attaches this generation's programs). Returns the cgroup ids copied.
    pub fn copy_entries_from(&mut self, old: &str) -> Result<Vec<u64>> {
        let old_map: HashMap<MapData, u64, SandboxNet> =
            HashMap::try_from(open_map(&self.root.join(old).join("maps").join(map_names::SANDBOXES))?)?;
        let mut copied = Vec::new();
        for entry in old_map.iter() {
            let (id, net) = entry.context("reading the previous generation's sandbox map")?;
            self.add_sandbox(id, net)?;
            copied.push(id);
        }
        let old_lsm = self.root.join(old).join("lsm");
        if let (true, Lsm::Attached { maps, .. }) = (old_lsm.is_dir(), &mut self.lsm) {
            maps.copy_from(&LsmMaps::open_pinned(&self.root.join(old).join("maps"))?)?;
        }
        Ok(copied)
    }

    /// Unpins what remains of generation `old` (its programs and maps, which the kernel frees
    /// once no link uses them).
    pub fn remove_generation(&self, old: &str) -> Result<()> {
        if !old.starts_with("gen-") || old == self.generation {
            bail!("refusing to remove generation {old}");
        }
        remove_tree(&self.root.join(old))
    }

    fn sandbox_pins(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }
}

/// True when a generation directory finished pinning.
fn is_complete(gen_dir: &Path) -> bool {
    gen_dir.join("complete").is_dir()
}
