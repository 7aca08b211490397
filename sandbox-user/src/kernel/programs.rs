//! Loading leash's eBPF object and attaching the network programs to a sandbox cgroup.
//!
//! The object is built by `build.rs` and embedded in the binary. Each `leash run` loads its own
//! copy (a few milliseconds), so its deny events have a ring buffer of their own; the programs
//! still look every sandbox up by cgroup id, so one loaded set can serve many cgroups (the node
//! daemon does that).
//!
//! Every attachment is a bpf_link pinned under `<bpffs>/leash/sandboxes/<name>/`: if leash dies,
//! even by SIGKILL, the pins keep the programs and their maps alive and the sandbox stays
//! confined until the next `leash run` reaps it (`reaper.rs`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::{
    links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
    CgroupSockAddrAttachType, Program, SockOps,
};
use aya::Ebpf;
use sandbox_common::{map_names, program_names as prog, ConnOwner, Counters, SandboxNet};

use super::cgroup::SandboxCgroup;

/// The eBPF object `build.rs` produced.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leash-ebpf"));

/// How each network program attaches (the attach type is what reopening a pinned program needs).
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    SockAddr(CgroupSockAddrAttachType),
    Sock,
    Skb(CgroupSkbAttachType),
    SockOps,
}

/// The network programs in attach order.
pub(crate) const NET_PROGRAMS: [(&str, Kind); 8] = [
    (prog::SOCK_CREATE, Kind::Sock),
    (prog::CONNECT4, Kind::SockAddr(CgroupSockAddrAttachType::Connect4)),
    (prog::CONNECT6, Kind::SockAddr(CgroupSockAddrAttachType::Connect6)),
    (prog::SENDMSG4, Kind::SockAddr(CgroupSockAddrAttachType::UDPSendMsg4)),
    (prog::SENDMSG6, Kind::SockAddr(CgroupSockAddrAttachType::UDPSendMsg6)),
    (prog::SKB_EGRESS, Kind::Skb(CgroupSkbAttachType::Egress)),
    (prog::SKB_INGRESS, Kind::Skb(CgroupSkbAttachType::Ingress)),
    (prog::SOCK_OPS, Kind::SockOps),
];

/// Loads network program `name` of `ebpf` into the kernel (the verifier runs here).
pub(crate) fn load_program(ebpf: &mut Ebpf, name: &str, kind: Kind) -> Result<()> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let loaded = match kind {
        Kind::SockAddr(_) => <&mut CgroupSockAddr>::try_from(program)?.load(),
        Kind::Sock => <&mut CgroupSock>::try_from(program)?.load(),
        Kind::Skb(_) => <&mut CgroupSkb>::try_from(program)?.load(),
        Kind::SockOps => <&mut SockOps>::try_from(program)?.load(),
    };
    loaded.with_context(|| format!("loading {name} (the kernel verifier refused it)"))
}

/// Attaches one loaded network program to the cgroup open as `dir` and returns the link, which
/// the caller pins. bpf_link attachments always coexist with other programs on the cgroup (the
/// kernel refuses attach flags on links), so `Single` here means "no flags".
pub(crate) fn attach_link(program: &mut Program, name: &str, kind: Kind, dir: &File) -> Result<FdLink> {
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match kind {
        Kind::SockAddr(_) => {
            let p = <&mut CgroupSockAddr>::try_from(program)?;
            let id = p.attach(dir.as_fd(), mode).with_context(|| format!("attaching {name}"))?;
            p.take_link(id)?.try_into()?
        }
        Kind::Sock => {
            let p = <&mut CgroupSock>::try_from(program)?;
            let id = p.attach(dir.as_fd(), mode).with_context(|| format!("attaching {name}"))?;
            p.take_link(id)?.try_into()?
        }
        Kind::Skb(ty) => {
            let p = <&mut CgroupSkb>::try_from(program)?;
            let id = p.attach(dir.as_fd(), ty, mode).with_context(|| format!("attaching {name}"))?;
            p.take_link(id)?.try_into()?
        }
        Kind::SockOps => {
            let p = <&mut SockOps>::try_from(program)?;
            let id = p.attach(dir.as_fd(), mode).with_context(|| format!("attaching {name}"))?;
            p.take_link(id)?.try_into()?
        }
    };
    Ok(link)
}

/// A loaded (verified) set of network programs and their maps.
pub struct NetPrograms {
    ebpf: Ebpf,
}

impl NetPrograms {
    /// Loads the object and every network program into the kernel (the verifier runs here).
    pub fn load() -> Result<Self> {
        let mut ebpf = load_object()?;
        for (name, kind) in NET_PROGRAMS {
            load_program(&mut ebpf, name, kind)?;
        }
        Ok(Self { ebpf })
    }

    /// Writes the sandbox's entries (its proxy address, zeroed counters) keyed by its cgroup id.
    pub fn add_sandbox(&mut self, cgroup_id: u64, net: SandboxNet) -> Result<()> {
        self.sandboxes()?.insert(cgroup_id, net, 0).context("writing the sandbox map entry")?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus]).context("sizing per-CPU counters")?;
        self.counters_map()?.insert(cgroup_id, zeros, 0).context("writing the counters map entry")?;
        Ok(())
    }

    /// Removes the sandbox's entries; missing entries are not an error.
    pub fn remove_sandbox(&mut self, cgroup_id: u64) {
        if let Ok(mut m) = self.sandboxes() {
            let _ = m.remove(&cgroup_id);
        }
        if let Ok(mut m) = self.counters_map() {
            let _ = m.remove(&cgroup_id);
        }
    }

    /// Attaches every network program to `cgroup` and pins each link in `pin_dir` (created here).
    /// The `sock_ops` program (connection owners) only when `record_owners`.
    pub fn attach(&mut self, cgroup: &SandboxCgroup, pin_dir: &Path, record_owners: bool) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(pin_dir).with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        let dir = cgroup.dir()?;
        let mut pins = Vec::new();
        for (name, kind) in NET_PROGRAMS {
            if matches!(kind, Kind::SockOps) && !record_owners {
                continue;
            }
            let program = self.ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
            let link = attach_link(program, name, kind, &dir)?;
            let path = pin_dir.join(name);
            // The pinned link outlives this process; dropping the handle does not detach it.
            let _pinned = link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            pins.push(path);
        }
        Ok(pins)
    }

    /// Per-sandbox verdict counters, summed over CPUs.
    pub fn counters(&self, cgroup_id: u64) -> Result<Counters> {
        let map = self.ebpf.map(map_names::COUNTERS).ok_or_else(|| anyhow!("counters map missing"))?;
        let map: PerCpuHashMap<&MapData, u64, Counters> = PerCpuHashMap::try_from(map)?;
        let per_cpu = map.get(&cgroup_id, 0).context("reading counters")?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            for (s, v) in sum.values.iter_mut().zip(c.values) {
                *s += v;
            }
        }
        Ok(sum)
    }

    /// The deny-event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let map = self.ebpf.take_map(map_names::EVENTS).ok_or_else(|| anyhow!("events map already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The connection-owner table the proxy reads at accept; can be taken once.
    pub fn take_connection_owners(&mut self) -> Result<ConnectionOwners> {
        let map =
            self.ebpf.take_map(map_names::PROXY_CLIENTS).ok_or_else(|| anyhow!("proxy clients map already taken"))?;
        Ok(ConnectionOwners { map: std::sync::Mutex::new(HashMap::try_from(map)?) })
    }

    fn sandboxes(&mut self) -> Result<HashMap<&mut MapData, u64, SandboxNet>> {
        let map = self.ebpf.map_mut(map_names::SANDBOXES).ok_or_else(|| anyhow!("sandbox map missing"))?;
        Ok(HashMap::try_from(map)?)
    }

    fn counters_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, u64, Counters>> {
        let map = self.ebpf.map_mut(map_names::COUNTERS).ok_or_else(|| anyhow!("counters map missing"))?;
        Ok(PerCpuHashMap::try_from(map)?)
    }
}

/// Who owns each connection to the proxy, by client port (filled by the `sock_ops` program).
pub struct ConnectionOwners {
    map: std::sync::Mutex<HashMap<MapData, u32, ConnOwner>>,
}

impl ConnectionOwners {
    /// The owner of the connection whose client side uses `port`, if recorded.
    pub fn owner(&self, port: u16) -> Option<ConnOwner> {
        self.map.lock().ok()?.get(&(port as u32), 0).ok()
    }

    /// Drops the record for `port` once the proxy accepted that connection, so a later
    /// connection from the same port (another user's) does not pass for the sandbox's.
    pub fn forget(&self, port: u16) {
        if let Ok(mut map) = self.map.lock() {
            let _ = map.remove(&(port as u32));
        }
    }
}

/// Loads the object's maps. The network programs use no kernel types (no CO-RE relocations), so
/// the kernel's BTF is not applied: `Ebpf::load` would parse the 5 MB `/sys/kernel/btf/vmlinux`
/// a second time for nothing (the loader's constructor already parses it once). The BPF-LSM
/// maps are not used by a network program set (`lsm.rs` loads its own): they get one entry.
pub fn load_object() -> Result<Ebpf> {
    let mut loader = aya::EbpfLoader::new();
    loader.btf(None);
    for name in
        [map_names::LSM_SANDBOXES, map_names::LSM_EXEC_ALLOW, map_names::LSM_DENY_OPEN, map_names::LSM_UNIX_ALLOW]
    {
        loader.map_max_entries(name, 1);
    }
    loader.load(OBJECT).context("loading leash's eBPF object")
}

/// The proxy address as the maps store it; `record_owners` turns on connection-owner records.
pub fn sandbox_net(proxy: std::net::SocketAddr, record_owners: bool) -> SandboxNet {
    let (v6, is_ipv4) = match proxy.ip() {
        std::net::IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 1),
        std::net::IpAddr::V6(v6) => (v6, 0),
    };
    let o = v6.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    let flags = if record_owners { sandbox_common::SANDBOX_RECORD_OWNERS } else { 0 };
    SandboxNet {
        addr: [word(0), word(4), word(8), word(12)],
        port: proxy.port(),
        _pad: [0; 2],
        is_ipv4,
        flags,
        _pad2: 0,
        netns_cookie: 0,
    }
}
