//! The maps every leash program shares. Userspace (`sandbox-user/src/kernel/maps.rs`) sizes
//! nothing itself: the sizes are the constants in `sandbox-common`.

use aya_ebpf::{
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap, RingBuf},
};
use sandbox_common::{
    ConnOwner, Counters, DenyEvent, InodeKey, LearnKey, LsmPolicy, OriginalDest, SandboxNet, UnixKey,
    DENY_OPEN_FILTER_SLOTS, EVENTS_BYTES, LSM_FILTER_SLOTS, MAX_CONNECTIONS, MAX_EVENT_RINGS, MAX_INODE_RULES,
    MAX_LEARNERS, MAX_LEARN_SEEN, MAX_SANDBOXES, MAX_UNIX_RULES,
};

/// Sandbox cgroup id -> the one proxy address it may reach. Written by userspace when a sandbox
/// starts, removed when it ends. A cgroup the programs run for but that has no entry is denied
/// everything (fail closed).
#[map(name = "LEASH_SANDBOXES")]
pub static SANDBOXES: HashMap<u64, SandboxNet> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

/// Sandbox cgroup id -> per-CPU verdict counters. Userspace inserts a zeroed entry with the
/// sandbox; the programs only increment existing entries.
#[map(name = "LEASH_COUNTERS")]
pub static COUNTERS: PerCpuHashMap<u64, Counters> = PerCpuHashMap::with_max_entries(MAX_SANDBOXES, 0);

/// Deny events for the audit log, of sandboxes with no ring of their own (the node daemon's,
/// which it routes by cgroup id). When userspace falls behind, events are lost but counters
/// still count.
#[map(name = "LEASH_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Sandbox cgroup id -> the slot in `EVENT_RINGS` of that sandbox's own deny-event ring. Each
/// `leash run` claims a free ring and writes its slot before its agent starts, so it reads its
/// sandbox's events and no other's, while the programs are shared by every sandbox on the host.
#[map(name = "LEASH_EVENT_SLOTS")]
pub static EVENT_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

/// Slot -> an event ring, pooled: a ring is inserted once and reused by one sandbox after
/// another, because every insert into a map-of-maps waits for an RCU grace period (about 10 ms)
/// and a per-sandbox insert and delete doubled the cost of starting a sandbox. The inner ring's
/// size must equal `EVENTS_BYTES` (the kernel compares inner maps with this template).
/// Ring buffers as inner maps: kernel 5.8.
#[btf_map(name = "LEASH_EVENT_RINGS")]
pub static EVENT_RINGS: btf_maps::ArrayOfMaps<
    btf_maps::RingBuf<DenyEvent, { EVENTS_BYTES as usize }>,
    { MAX_EVENT_RINGS as usize },
> = btf_maps::ArrayOfMaps::new();

/// Socket cookie -> the process that connected it to the proxy, written by connect4/6
/// (`net/identity.rs`); read and removed by the proxy when it accepts the connection (the node
/// daemon: when it answers for it), or by the programs when no proxy can take it any more. LRU:
/// what is left (a proxy that never accepts, a pod's proxy that never asks) is evicted.
#[map(name = "LEASH_SOCKET_OWNERS")]
pub static SOCKET_OWNERS: LruHashMap<u64, ConnOwner> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// `dns_client_key(client port, resolver port)` -> the sandbox (cgroup id) whose DNS
/// datagram left from that port for its resolver (`skb.rs`); the resolver answers only those.
#[map(name = "LEASH_DNS_CLIENTS")]
pub static DNS_CLIENTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Socket cookie -> the `DNS_CLIENTS` key its datagrams made (`skb.rs`), so that the record goes
/// when the socket is closed (`net/identity.rs`): anyone may bind its port then. Not LRU: an
/// entry evicted by another sandbox's sockets would leave its record behind the socket. When it
/// is full no record is made, and the query goes unanswered (fail closed).
#[map(name = "LEASH_DNS_CLIENT_SOCKETS")]
pub static DNS_CLIENT_SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Socket cookie -> the resolver address a UDP socket of a transparent sandbox sent a DNS query
/// to, before sendmsg4/6 or connect4/6 redirected it to leash's resolver; recvmsg4/6 show
/// replies as coming from there. Least recently used entries make room.
#[map(name = "LEASH_DNS_SOURCES")]
pub static DNS_SOURCES: LruHashMap<u64, OriginalDest> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Sandbox cgroup id -> what the BPF-LSM programs refuse it. Written by userspace
/// (`sandbox-user/src/kernel/lsm.rs`), sized by `MAX_SANDBOXES`. Unlike the network maps, a
/// cgroup without an entry is not a sandbox: the LSM programs run for every task on the host and
/// allow everything to tasks outside sandboxes.
#[map(name = "LEASH_LSM_SANDBOXES")]
pub static LSM_SANDBOXES: HashMap<u64, LsmPolicy> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

/// (sandbox, device, inode) of each executable a sandbox with `lsm_rule::EXEC_ALLOWLIST` may run.
/// Userspace resolves `kernel.exec.allow` to inodes when the sandbox starts and on reload.
#[map(name = "LEASH_LSM_EXEC_ALLOW")]
pub static LSM_EXEC_ALLOW: HashMap<InodeKey, u8> = HashMap::with_max_entries(MAX_INODE_RULES, 0);

/// (sandbox, device, inode) of each file a sandbox may not open (`kernel.deny_open`, plus
/// leash's own secrets). By inode, so hard links and symlinks to the file are refused too.
#[map(name = "LEASH_LSM_DENY_OPEN")]
pub static LSM_DENY_OPEN: HashMap<InodeKey, u8> = HashMap::with_max_entries(MAX_INODE_RULES, 0);

/// (sandbox, socket address) of each unix socket a sandbox may connect or send to.
#[map(name = "LEASH_LSM_UNIX_ALLOW")]
pub static LSM_UNIX_ALLOW: HashMap<UnixKey, u8> = HashMap::with_max_entries(MAX_UNIX_RULES, 0);

/// One entry: bit `n` set when some sandbox registered with `lsm_rule::DESCENDANTS` sits at
/// cgroup level `n`. Written by userspace as such sandboxes register. (The struct offsets the
/// programs read are not here but in `.rodata`: `lsm/kernel.rs`.)
#[map(name = "LEASH_LSM_LEVELS")]
pub static LSM_LEVELS: Array<u32> = Array::with_max_entries(1, 0);

/// Slot (`sandbox_common::lsm_filter_slot` of a cgroup id) -> how many `LSM_SANDBOXES` entries
/// fall in it (encoded, `sandbox_common::prefilter`: only zero means none). Userspace raises a
/// count before it inserts an entry and lowers it after it removes one (under its host lock), so
/// a zero is always right: the cgroup has no entry. Every LSM hook but `file_open` asks this
/// first: an array lookup the JIT inlines, where the hash lookup it saves costs a hash of the key
/// and a bucket walk, for every task on the host.
#[map(name = "LEASH_LSM_FILTER")]
pub static LSM_FILTER: Array<u32> = Array::with_max_entries(LSM_FILTER_SLOTS, 0);

/// Slot (`sandbox_common::deny_open_filter_slot` of an inode number) -> how many `LSM_DENY_OPEN`
/// entries, of any sandbox, name a file in it (encoded as `LSM_FILTER`'s counts are). Userspace
/// raises a count before the entry goes in and lowers it after the entry is gone (under its host
/// lock), so a zero is always right: no sandbox denies the file. `file_open` asks it first, for
/// every open on the host: an array lookup and a multiply, where the deny list costs a hash of
/// its 24-byte key and a bucket walk, and finding the task's sandbox a helper call and two
/// lookups.
#[map(name = "LEASH_LSM_DENY_OPEN_FILTER")]
pub static LSM_DENY_OPEN_FILTER: Array<u32> = Array::with_max_entries(DENY_OPEN_FILTER_SLOTS, 0);

/// Cgroup id -> 1 for each sandbox of `leash run --learn` (`learn.rs`).
#[map(name = "LEASH_LEARNERS")]
pub static LEARNERS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_LEARNERS, 0);

/// What `learn.rs` already reported; least recently used entries make room (and are reported
/// again, which userspace folds together).
#[map(name = "LEASH_LEARN_SEEN")]
pub static LEARN_SEEN: LruHashMap<LearnKey, u8> = LruHashMap::with_max_entries(MAX_LEARN_SEEN, 0);
