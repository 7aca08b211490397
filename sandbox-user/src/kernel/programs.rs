//! The network programs: how each one loads and attaches to a sandbox cgroup, and the map
//! entries and records they share with userspace.
//!
//! The object is built by `build.rs` and embedded in the binary; `generation.rs` loads it once
//! per host. The programs look every sandbox up by cgroup id, so one loaded set serves every
//! sandbox cgroup. Every attachment is a bpf_link pinned under `<bpffs>/leash/sandboxes/<name>/`:
//! if leash dies, even by SIGKILL, the pins keep the sandbox confined until the next `leash run`
//! reaps it (`reaper.rs`).

use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap, MapData};
use aya::programs::{
    CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType, CgroupSockAttachType,
};
use aya::Ebpf;
use aya_obj::generated::bpf_attach_type;
use sandbox_common::{dns_client_key, program_names as prog, ConnOwner, SandboxNet};

/// The eBPF object `build.rs` produced.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leash-ebpf"));

/// How each network program attaches (the attach type is what reopening a pinned program needs).
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    SockAddr(CgroupSockAddrAttachType),
    Sock(CgroupSockAttachType),
    Skb(CgroupSkbAttachType),
}

impl Kind {
    /// The kernel's attach type, as a link to a cgroup names it.
    pub(crate) fn attach_type(self) -> bpf_attach_type {
        match self {
            Kind::SockAddr(ty) => ty.into(),
            Kind::Sock(ty) => ty.into(),
            Kind::Skb(CgroupSkbAttachType::Ingress) => bpf_attach_type::BPF_CGROUP_INET_INGRESS,
            Kind::Skb(CgroupSkbAttachType::Egress) => bpf_attach_type::BPF_CGROUP_INET_EGRESS,
        }
    }
}

/// The network programs in attach order.
pub(crate) const NET_PROGRAMS: [(&str, Kind); 10] = [
    (prog::SOCK_CREATE, Kind::Sock(CgroupSockAttachType::SockCreate)),
    (prog::SOCK_RELEASE, Kind::Sock(CgroupSockAttachType::SockRelease)),
    (prog::CONNECT4, Kind::SockAddr(CgroupSockAddrAttachType::Connect4)),
    (prog::CONNECT6, Kind::SockAddr(CgroupSockAddrAttachType::Connect6)),
    (prog::SENDMSG4, Kind::SockAddr(CgroupSockAddrAttachType::UDPSendMsg4)),
    (prog::SENDMSG6, Kind::SockAddr(CgroupSockAddrAttachType::UDPSendMsg6)),
    (prog::SKB_EGRESS, Kind::Skb(CgroupSkbAttachType::Egress)),
    (prog::SKB_INGRESS, Kind::Skb(CgroupSkbAttachType::Ingress)),
    (prog::RECVMSG4, Kind::SockAddr(CgroupSockAddrAttachType::UDPRecvMsg4)),
    (prog::RECVMSG6, Kind::SockAddr(CgroupSockAddrAttachType::UDPRecvMsg6)),
];

/// Whether a sandbox with `SandboxNet::flags` `flags` gets program `kind`: `recvmsg4/6` only in
/// transparent mode (they restore the source of its resolver's replies); every other program
/// always.
pub(crate) fn attached_for(kind: Kind, flags: u32) -> bool {
    use sandbox_common::SANDBOX_TRANSPARENT;
    match kind {
        Kind::SockAddr(CgroupSockAddrAttachType::UDPRecvMsg4 | CgroupSockAddrAttachType::UDPRecvMsg6) => {
            flags & SANDBOX_TRANSPARENT != 0
        }
        _ => true,
    }
}

/// Loads network program `name` of `ebpf` into the kernel (the verifier runs here).
pub(crate) fn load_program(ebpf: &mut Ebpf, name: &str, kind: Kind) -> Result<()> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let loaded = match kind {
        Kind::SockAddr(_) => <&mut CgroupSockAddr>::try_from(program)?.load(),
        Kind::Sock(_) => <&mut CgroupSock>::try_from(program)?.load(),
        Kind::Skb(_) => <&mut CgroupSkb>::try_from(program)?.load(),
    };
    loaded.with_context(|| format!("loading {name} (the kernel verifier refused it)"))
}

/// Who owns each connection one sandbox made to its proxy, by the cookie of its client socket
/// (recorded by the sandbox's programs, `sandbox-ebpf/src/net/identity.rs`). The map is shared by
/// every sandbox on the host: a record counts only when it names this sandbox's cgroup.
pub struct ConnectionOwners {
    map: std::sync::Mutex<HashMap<MapData, u64, ConnOwner>>,
    cgroup_id: u64,
}

impl ConnectionOwners {
    pub fn new(map: HashMap<MapData, u64, ConnOwner>, cgroup_id: u64) -> Self {
        Self { map: std::sync::Mutex::new(map), cgroup_id }
    }

    /// The owner of the connection from `peer` to the proxy at `local`, if this sandbox made it:
    /// the kernel says which socket is at `peer` connected to `local` (`sock_diag`), and this
    /// sandbox's record of that socket names `local`'s port. A port the sandbox's socket gave up
    /// (a reset, `connect(AF_UNSPEC)`, a timeout, all with the socket still open) and someone
    /// else took is held by another socket, whose cookie has no record or another sandbox's. Any
    /// error counts as "not the sandbox's".
    pub fn connection(&self, peer: SocketAddr, local: SocketAddr) -> Option<ConnOwner> {
        let cookie = super::sock_diag::client_cookie(peer, local).ok()??;
        self.by_cookie(cookie).filter(|owner| owner.listener_port == local.port())
    }

    /// This sandbox's record of the socket with cookie `cookie`.
    fn by_cookie(&self, cookie: u64) -> Option<ConnOwner> {
        self.map.lock().ok()?.get(&cookie, 0).ok().filter(|o| o.cgroup_id == self.cgroup_id)
    }

    /// Drops `owner`, a record [`Self::connection`] found (so one of this sandbox's): no second
    /// lookup to check whose it is.
    pub fn forget(&self, owner: &ConnOwner) {
        if let Ok(mut map) = self.map.lock() {
            let _ = map.remove(&owner.cookie);
        }
    }
}

/// Which client ports sent DNS from one sandbox to its resolver (`cgroup_skb/egress` writes
/// them), so that the resolver answers its own sandbox only. Shared by every sandbox on the host:
/// an entry counts only when it names this sandbox's cgroup.
pub struct DnsClients {
    map: std::sync::Mutex<HashMap<MapData, u32, u64>>,
    cgroup_id: u64,
}

impl DnsClients {
    pub fn new(map: HashMap<MapData, u32, u64>, cgroup_id: u64) -> Self {
        Self { map: std::sync::Mutex::new(map), cgroup_id }
    }

    /// Whether this sandbox sent DNS from client port `port` to the resolver's port `resolver`.
    pub fn sent(&self, port: u16, resolver: u16) -> bool {
        let key = dns_client_key(port, resolver);
        self.map.lock().ok().and_then(|m| m.get(&key, 0).ok()).is_some_and(|c| c == self.cgroup_id)
    }
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
        transparent_port: 0,
        is_ipv4,
        flags,
        dns_port: 0,
        _pad2: [0; 2],
        netns_cookie: 0,
    }
}

/// The ports of a proxy's transparent listener (TCP) and resolver (UDP), at the proxy's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransparentPorts {
    pub tcp: u16,
    pub dns: u16,
}

/// The address a redirected socket was connected to, from its owner record; `None` for a
/// connection made to the proxy itself.
pub fn original_destination(dest: &sandbox_common::OriginalDest) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv6Addr};
    if dest.port == 0 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, word) in dest.addr.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(bytes);
    let ip = v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6));
    Some(std::net::SocketAddr::new(ip, dest.port))
}

/// `net` in transparent mode: connects elsewhere go to `ports` (which needs owner records).
pub fn transparent(mut net: SandboxNet, ports: TransparentPorts) -> SandboxNet {
    net.transparent_port = ports.tcp;
    net.dns_port = ports.dns;
    net.flags |= sandbox_common::SANDBOX_TRANSPARENT | sandbox_common::SANDBOX_RECORD_OWNERS;
    net
}
