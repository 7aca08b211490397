//! Map keys, values and event records shared by leash's eBPF programs and its userspace.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields instead) and
//! is defined once: the eBPF side (`sandbox-ebpf`) reads and writes these layouts in kernel maps,
//! the userspace side (`sandbox-user`, feature `user`) fills and reads the same maps.
//!
//! All per-sandbox maps are keyed by the sandbox's **cgroup id** (the inode number of its cgroup v2
//! directory), so one loaded set of programs can serve many sandboxes.
#![no_std]

/// Names of the maps in the eBPF object, shared so that neither side spells them twice.
pub mod map_names {
    /// `HashMap<u64 cgroup id, SandboxNet>`: the one address each sandbox may reach.
    pub const SANDBOXES: &str = "LEASH_SANDBOXES";
    /// `PerCpuHashMap<u64 cgroup id, Counters>`: verdict counters per sandbox.
    pub const COUNTERS: &str = "LEASH_COUNTERS";
    /// `RingBuf` of [`DenyEvent`](super::DenyEvent) records of sandboxes without a ring of
    /// their own (the node daemon's, which it routes by cgroup id).
    pub const EVENTS: &str = "LEASH_EVENTS";
    /// `HashMap<u64 cgroup id, u32 slot>`: the ring of `EVENT_RINGS` a sandbox's
    /// [`DenyEvent`](super::DenyEvent) records go to (each `leash run` reads only its own).
    pub const EVENT_SLOTS: &str = "LEASH_EVENT_SLOTS";
    /// `ArrayOfMaps<RingBuf>`: the pool of event rings, each used by one sandbox at a time and
    /// kept for the next (inserting a map in a map-of-maps waits a whole RCU grace period).
    pub const EVENT_RINGS: &str = "LEASH_EVENT_RINGS";
    /// `LruHashMap<u64 socket cookie, ConnOwner>`: who called connect() on each socket a sandbox
    /// connected to its proxy. The proxy looks a connection up by the cookie of the socket the
    /// kernel says is at its client end (`sock_diag`), and removes the record when it admits the
    /// connection (the node daemon: when it answers for it).
    pub const SOCKET_OWNERS: &str = "LEASH_SOCKET_OWNERS";
    /// `LruHashMap<u32 dns_client_key(client port, resolver port), u64 cgroup id>`: which
    /// sandbox sent DNS from each client port to its resolver (transparent mode), written by
    /// `cgroup_skb/egress`; the resolver answers only its own sandbox's ports.
    pub const DNS_CLIENTS: &str = "LEASH_DNS_CLIENTS";
    /// `HashMap<u64 socket cookie, u32 dns_client_key>`: which `DNS_CLIENTS` record each
    /// sandbox socket made, removed with it by `cgroup/sock_release` when the socket is closed.
    pub const DNS_CLIENT_SOCKETS: &str = "LEASH_DNS_CLIENT_SOCKETS";
    /// `HashMap<u64 cgroup id, LsmPolicy>`: what the BPF-LSM programs refuse each sandbox.
    pub const LSM_SANDBOXES: &str = "LEASH_LSM_SANDBOXES";
    /// `HashMap<InodeKey, u8>`: the files each sandbox may run or map executable
    /// (`kernel.exec.allow` and the system libraries); the value is [`exec_right`] bits.
    pub const LSM_EXEC_ALLOW: &str = "LEASH_LSM_EXEC_ALLOW";
    /// `HashMap<InodeKey, u8>`: the files each sandbox may not open (`kernel.deny_open`).
    pub const LSM_DENY_OPEN: &str = "LEASH_LSM_DENY_OPEN";
    /// `HashMap<UnixKey, u8>`: the unix sockets each sandbox may connect to (`kernel.unix.allow`).
    pub const LSM_UNIX_ALLOW: &str = "LEASH_LSM_UNIX_ALLOW";
    /// `Array<u32>` with one entry: the cgroup levels at which sandboxes registered with
    /// [`lsm_rule::DESCENDANTS`](super::lsm_rule::DESCENDANTS) sit (bit `n`: level `n`); the
    /// programs look a task's ancestors up only at these levels.
    pub const LSM_LEVELS: &str = "LEASH_LSM_LEVELS";
    /// `Array<u32>` of [`LSM_FILTER_SLOTS`](super::LSM_FILTER_SLOTS): how many `LSM_SANDBOXES`
    /// entries have an id in each slot ([`lsm_filter_slot`](super::lsm_filter_slot)). A zero
    /// answers "not a sandbox" for a task's own cgroup without a hash lookup.
    pub const LSM_FILTER: &str = "LEASH_LSM_FILTER";
    /// `Array<u32>` of [`DENY_OPEN_FILTER_SLOTS`](super::DENY_OPEN_FILTER_SLOTS): how many
    /// `LSM_DENY_OPEN` entries name a file in each slot (by inode number,
    /// [`deny_open_filter_slot`](super::deny_open_filter_slot)). A zero answers "no sandbox
    /// denies this file" at each open without a hash lookup.
    pub const LSM_DENY_OPEN_FILTER: &str = "LEASH_LSM_DENY_OPEN_FILTER";
    /// `HashMap<u64 cgroup id, u8>`: the sandboxes of `leash run --learn`, whose opens and
    /// execs the learning program records (into the sandbox's own event ring).
    pub const LEARNERS: &str = "LEASH_LEARNERS";
    /// `LruHashMap<LearnKey, u8>`: what the learning program already reported, so each file (or,
    /// for reads, each directory) is reported once per sandbox.
    pub const LEARN_SEEN: &str = "LEASH_LEARN_SEEN";
}

/// The read-only global (`.rodata`) holding this kernel's [`KernelLayout`]: set when the object
/// is loaded, so the verifier sees every field offset as a constant.
pub const KERNEL_LAYOUT_GLOBAL: &str = "LEASH_KERNEL_LAYOUT";

/// Names of the programs in the eBPF object.
pub mod program_names {
    use super::{lsm_deny, lsm_rule, Hook, LsmHook};

    pub const CONNECT4: &str = "leash_connect4";
    pub const CONNECT6: &str = "leash_connect6";
    pub const SENDMSG4: &str = "leash_sendmsg4";
    pub const SENDMSG6: &str = "leash_sendmsg6";
    pub const SOCK_CREATE: &str = "leash_sock_create";
    pub const SOCK_RELEASE: &str = "leash_sock_release";
    pub const SKB_EGRESS: &str = "leash_skb_egress";
    pub const SKB_INGRESS: &str = "leash_skb_ingress";
    pub const RECVMSG4: &str = "leash_recvmsg4";
    pub const RECVMSG6: &str = "leash_recvmsg6";
    /// A do-nothing BPF-LSM program that `leash doctor` loads to find out whether BPF-LSM works.
    pub const LSM_PROBE: &str = "leash_lsm_probe";
    /// `fexit/security_file_open`: what a learning sandbox opens and runs (`leash run --learn`).
    pub const LEARN_FILE_OPEN: &str = "leash_learn_file_open";
    /// The kernel function it is attached to.
    pub const LEARN_FILE_OPEN_FUNCTION: &str = "security_file_open";

    /// The enforcing BPF-LSM programs, in attach order: the one table of leash's LSM hooks.
    /// Loading, attaching, the hooks a policy needs (`LsmRules::required_hooks`) and the VM
    /// suite all read it. A hook this kernel lacks is skipped, not fatal, at load.
    pub const LSM_HOOKS: [LsmHook; 23] = [
        LsmHook {
            program: "leash_lsm_socket_create",
            hook: "socket_create",
            event: Hook::LsmSocketCreate,
            rule: "socket",
            deny: lsm_deny::RAW_SOCKET | lsm_deny::PACKET_SOCKET | lsm_deny::VSOCK | lsm_deny::NETLINK,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_bpf",
            hook: "bpf",
            event: Hook::LsmBpf,
            rule: "bpf",
            deny: lsm_deny::BPF,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_perf_event_open",
            hook: "perf_event_open",
            event: Hook::LsmPerfEvent,
            rule: "perf_event",
            deny: lsm_deny::PERF_EVENT,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_sb_mount",
            hook: "sb_mount",
            event: Hook::LsmMount,
            rule: "mount",
            deny: lsm_deny::MOUNT,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_sb_umount",
            hook: "sb_umount",
            event: Hook::LsmMount,
            rule: "mount",
            deny: lsm_deny::MOUNT,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_sb_pivotroot",
            hook: "sb_pivotroot",
            event: Hook::LsmMount,
            rule: "mount",
            deny: lsm_deny::MOUNT,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_move_mount",
            hook: "move_mount",
            event: Hook::LsmMount,
            rule: "mount",
            deny: lsm_deny::MOUNT,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_fs_context_parse_param",
            hook: "fs_context_parse_param",
            event: Hook::LsmMount,
            rule: "mount",
            deny: lsm_deny::MOUNT,
            rules: 0,
            required: false,
        },
        LsmHook {
            program: "leash_lsm_kernel_module_request",
            hook: "kernel_module_request",
            event: Hook::LsmKernelModule,
            rule: "kernel_module",
            deny: lsm_deny::KERNEL_MODULE,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_kernel_load_data",
            hook: "kernel_load_data",
            event: Hook::LsmKernelModule,
            rule: "kernel_module",
            deny: lsm_deny::KERNEL_MODULE,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_kernel_read_file",
            hook: "kernel_read_file",
            event: Hook::LsmKernelModule,
            rule: "kernel_module",
            deny: lsm_deny::KERNEL_MODULE,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_ptrace_access_check",
            hook: "ptrace_access_check",
            event: Hook::LsmPtrace,
            rule: "ptrace",
            deny: lsm_deny::PTRACE,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_ptrace_traceme",
            hook: "ptrace_traceme",
            event: Hook::LsmPtrace,
            rule: "ptrace",
            deny: lsm_deny::PTRACE,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_userns_create",
            hook: "userns_create",
            event: Hook::LsmUserns,
            rule: "userns",
            deny: lsm_deny::USERNS,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_bprm_check_security",
            hook: "bprm_check_security",
            event: Hook::LsmExec,
            rule: "kernel.exec.allow",
            deny: 0,
            rules: lsm_rule::EXEC_ALLOWLIST,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_mmap_file",
            hook: "mmap_file",
            event: Hook::LsmMmap,
            rule: "kernel.exec.allow",
            deny: 0,
            rules: lsm_rule::EXEC_ALLOWLIST,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_file_mprotect",
            hook: "file_mprotect",
            event: Hook::LsmMprotect,
            rule: "kernel.exec.allow",
            deny: 0,
            rules: lsm_rule::EXEC_ALLOWLIST,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_file_open",
            hook: "file_open",
            event: Hook::LsmOpen,
            rule: "kernel.deny_open",
            deny: 0,
            rules: lsm_rule::DENY_OPEN,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_task_kill",
            hook: "task_kill",
            event: Hook::LsmKill,
            rule: "kill_outside",
            deny: lsm_deny::KILL_OUTSIDE,
            rules: 0,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_socket_connect",
            hook: "socket_connect",
            event: Hook::LsmConnect,
            rule: "proxy only",
            deny: 0,
            rules: lsm_rule::PROXY_ONLY,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_socket_sendmsg",
            hook: "socket_sendmsg",
            event: Hook::LsmSendmsg,
            rule: "proxy only",
            deny: 0,
            rules: lsm_rule::PROXY_ONLY,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_unix_stream_connect",
            hook: "unix_stream_connect",
            event: Hook::LsmUnixConnect,
            rule: "kernel.unix.allow",
            deny: 0,
            rules: lsm_rule::UNIX_ALLOWLIST,
            required: true,
        },
        LsmHook {
            program: "leash_lsm_unix_may_send",
            hook: "unix_may_send",
            event: Hook::LsmUnixSend,
            rule: "kernel.unix.allow",
            deny: 0,
            rules: lsm_rule::UNIX_ALLOWLIST,
            required: true,
        },
    ];
}

/// One BPF-LSM program: its name in the object, the kernel hook it attaches to (`bpf_lsm_<hook>`
/// in the kernel's BTF) and the part of a policy it enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsmHook {
    pub program: &'static str,
    pub hook: &'static str,
    /// The [`Hook`] its deny events carry.
    pub event: Hook,
    /// The policy rule it enforces, as audit records name it (`socket` is refined by family).
    pub rule: &'static str,
    /// The [`lsm_deny`] words it enforces: a policy denying any of them needs it.
    pub deny: u32,
    /// The [`lsm_rule`] flags it enforces: a policy with any of them needs it.
    pub rules: u32,
    /// False for a hook that only adds depth where others already refuse (`fs_context_parse_param`:
    /// a filesystem configured with fsconfig(2) still needs `move_mount` to be attached): a policy
    /// runs without it on a kernel that lacks it.
    pub required: bool,
}

impl LsmHook {
    /// Whether a sandbox with these `lsm_deny` words and `lsm_rule` flags needs this hook.
    pub const fn serves(&self, deny: u32, rules: u32) -> bool {
        self.deny & deny != 0 || self.rules & rules != 0
    }
}

/// Maximum number of sandboxes one loaded program set serves at once.
pub const MAX_SANDBOXES: u32 = 4096;

/// Event rings a generation can hold (`map_names::EVENT_RINGS`): the most `leash run` sandboxes
/// with their own ring at once. Rings are made when first needed.
pub const MAX_EVENT_RINGS: u32 = 1024;

/// Entries in the connection-owner maps (LRU: the oldest are evicted first).
pub const MAX_CONNECTIONS: u32 = 65536;

/// Entries in each inode map (exec allowlist, open denylist) across all sandboxes.
pub const MAX_INODE_RULES: u32 = 65536;

/// Entries in the unix-socket allowlist across all sandboxes.
pub const MAX_UNIX_RULES: u32 = 4096;

/// Sandboxes learning at once (`map_names::LEARNERS`).
pub const MAX_LEARNERS: u32 = 256;

/// Files (and directories read from) the learning program remembers having reported.
pub const MAX_LEARN_SEEN: u32 = 65536;

/// Slots of the LSM pre-filter (`map_names::LSM_FILTER`), a power of two.
pub const LSM_FILTER_SLOTS: u32 = 65536;

/// The pre-filter slot of a cgroup id: its low bits (cgroup ids are allocated in sequence, so
/// the sandboxes of one host rarely share a slot; when they do, the count is simply higher).
pub const fn lsm_filter_slot(cgroup_id: u64) -> u32 {
    (cgroup_id as u32) & (LSM_FILTER_SLOTS - 1)
}

/// How a pre-filter slot (`map_names::LSM_FILTER`, `map_names::LSM_DENY_OPEN_FILTER`) holds its
/// count: `count << 8 | 1`, and 0 for none. The programs test only for zero, while userspace may
/// be rewriting the slot, and the kernel copies a map value in with `memcpy`, which may store a
/// byte at a time: a plain count going from 255 to 256 would read 0 in between. Encoded, the low
/// byte of a slot with entries stays 1 while its count changes.
pub mod prefilter {
    /// The most a slot counts.
    pub const MAX: u32 = u32::MAX >> 8;

    /// The slot's value for `count` entries.
    pub const fn encode(count: u32) -> u32 {
        if count == 0 {
            0
        } else {
            count << 8 | 1
        }
    }

    /// The count a slot's value holds.
    pub const fn decode(value: u32) -> u32 {
        value >> 8
    }
}

/// Slots of the open deny list's pre-filter (`map_names::LSM_DENY_OPEN_FILTER`), a power of two.
pub const DENY_OPEN_FILTER_SLOTS: u32 = 65536;

/// The open deny list's pre-filter slot of a file with inode number `ino`: the top bits of a
/// multiplicative hash, so files of one directory (inode numbers in sequence) spread out. The
/// programs compute it at every open on the host: one multiply and one shift, after two loads
/// (the device, two loads more, is left out: files on different devices may share a slot).
pub const fn deny_open_filter_slot(ino: u64) -> u32 {
    const SHIFT: u32 = 64 - DENY_OPEN_FILTER_SLOTS.trailing_zeros();
    (ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> SHIFT) as u32
}

/// Deepest cgroup level whose sandboxes the LSM programs find from a descendant cgroup.
pub const MAX_SANDBOX_LEVEL: u32 = 31;

/// Byte size of the deny-event ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// What the BPF-LSM programs refuse one sandbox. A cgroup without an entry (and, for sandboxes
/// registered with descendants, without an ancestor that has one) is not a sandbox and is left
/// alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmPolicy {
    /// [`lsm_deny`] flags: operations refused outright.
    pub deny: u32,
    /// [`lsm_rule`] flags: which per-sandbox lists and checks apply.
    pub rules: u32,
    /// With [`lsm_rule::PROXY_ONLY`]: the one IP address AF_INET/AF_INET6 sockets may connect or
    /// send to, in [`SandboxNet::addr`]'s encoding (IPv4 stored IPv4-mapped).
    pub proxy_addr: [u32; 4],
    /// The proxy's port, host byte order.
    pub proxy_port: u16,
    /// With [`lsm_rule::TRANSPARENT`]: the proxy's transparent TCP port and resolver UDP port
    /// at `proxy_addr` ([`SandboxNet`]), host byte order.
    pub transparent_port: u16,
    pub dns_port: u16,
    pub _pad: [u8; 2],
}

/// [`LsmPolicy::deny`] flags, one per `kernel.deny` word of the policy file.
pub mod lsm_deny {
    /// ptrace(2) of, and ptrace-mode access to (`/proc/<pid>/mem`, `process_vm_readv`, ...),
    /// any other process; `PTRACE_TRACEME`.
    pub const PTRACE: u32 = 1 << 0;
    /// Every bpf(2) command.
    pub const BPF: u32 = 1 << 1;
    /// mount, umount, pivot_root, move_mount and fsconfig parameters.
    pub const MOUNT: u32 = 1 << 2;
    /// New user namespaces (6.1+; not enforced on older kernels).
    pub const USERNS: u32 = 1 << 3;
    /// perf_event_open(2).
    pub const PERF_EVENT: u32 = 1 << 4;
    /// `SOCK_RAW` sockets of `AF_INET` and `AF_INET6`.
    pub const RAW_SOCKET: u32 = 1 << 5;
    /// `AF_PACKET` sockets.
    pub const PACKET_SOCKET: u32 = 1 << 6;
    /// Loading kernel modules (init_module, finit_module, module auto-loading requests) and any
    /// other file or blob the kernel reads on the task's behalf (firmware, kexec images, policy).
    pub const KERNEL_MODULE: u32 = 1 << 7;
    /// `AF_VSOCK` sockets.
    pub const VSOCK: u32 = 1 << 8;
    /// `AF_NETLINK` sockets of any protocol but `NETLINK_ROUTE`.
    pub const NETLINK: u32 = 1 << 9;
    /// Signals to processes outside the sandbox.
    pub const KILL_OUTSIDE: u32 = 1 << 10;
    /// Every flag above.
    pub const ALL: u32 = (1 << 11) - 1;
}

/// [`LsmPolicy::rules`] flags.
pub mod lsm_rule {
    /// Only executables in `LEASH_LSM_EXEC_ALLOW` (by device and inode) may run, and only files
    /// there may be mapped executable (`mmap`/`mprotect` with `PROT_EXEC`; anonymous memory
    /// stays allowed); files with no link left (deleted, memfd) never.
    pub const EXEC_ALLOWLIST: u32 = 1 << 0;
    /// Files in `LEASH_LSM_DENY_OPEN` may not be opened.
    pub const DENY_OPEN: u32 = 1 << 1;
    /// Unix sockets (stream and datagram, pathname and abstract) reach only the sandbox's own
    /// (the peer socket was created in the sandbox) and those in `LEASH_LSM_UNIX_ALLOW`, by the
    /// name the peer bound.
    pub const UNIX_ALLOWLIST: u32 = 1 << 2;
    /// connect(2) and sendmsg(2) with an AF_INET/AF_INET6 address only to the proxy: the second
    /// line behind the cgroup programs, which also covers io_uring.
    pub const PROXY_ONLY: u32 = 1 << 3;
    /// The sandbox also covers every cgroup below its own.
    pub const DESCENDANTS: u32 = 1 << 4;
    /// Transparent mode ([`crate::SANDBOX_TRANSPARENT`]): with `PROXY_ONLY`, a socket created in
    /// the sandbox may connect or send anywhere, since the cgroup programs that run after this
    /// hook redirect it to the proxy or refuse it; the proxy's other two ports count as the proxy.
    pub const TRANSPARENT: u32 = 1 << 5;
    /// No process of the sandbox may take hold of another's memory either: ptrace attach,
    /// `PTRACE_TRACEME`, and every access checked in attach mode (writing `/proc/<pid>/mem`,
    /// `process_vm_writev`, `pidfd_getfd`). Set for a policy with `binaries:` rules, where code run
    /// inside an allowed executable would borrow its rights (and the credentials bound to it).
    pub const NO_ATTACH_INSIDE: u32 = 1 << 6;
    /// No process outside the sandbox but root reads its processes either (ptrace read mode:
    /// `/proc/<pid>/environ`, `fd`, `root`; the quiet checks `ps` makes pass). Set by `leash run`,
    /// whose proxy is leash itself (root); not for a node's sandboxes, whose pod runs its proxy
    /// outside the sandbox as the pod's user and reads the agent's `/proc` for `binaries:` rules.
    /// (Attaching from outside is root's alone for every sandbox.)
    pub const NO_READ_FROM_OUTSIDE: u32 = 1 << 7;
}

/// Values of `LEASH_LSM_EXEC_ALLOW`: what a sandbox may do with the file. Any entry may be mapped
/// executable; only [`exec_right::RUN`] entries may be executed.
pub mod exec_right {
    /// An executable of `kernel.exec.allow`: may be run (and mapped).
    pub const RUN: u8 = 1;
    /// A shared library (system library directories, or `*.so*` under an allowed path): may be
    /// mapped executable, not run.
    pub const MAP: u8 = 2;
}

/// Key of the inode maps: a file of one sandbox's list. `dev` is the kernel's encoding
/// (`major << 20 | minor`), not stat(2)'s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeKey {
    pub sandbox: u64,
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// What a learning sandbox did with a file ([`LearnEvent::kind`], [`LearnKey::kind`]).
pub mod learn_kind {
    /// Opened for reading only. Reported once per directory (the key names the directory).
    pub const READ: u32 = 1;
    /// Opened for writing.
    pub const WRITE: u32 = 2;
    /// Opened to be run: an executable, a script's interpreter, a program's ELF interpreter.
    pub const EXEC: u32 = 3;
}

/// Key of `map_names::LEARN_SEEN`: one file (a directory for reads) of one learning sandbox.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnKey {
    pub sandbox: u64,
    pub ino: u64,
    pub dev: u32,
    /// A [`learn_kind`] value.
    pub kind: u32,
}

/// Longest path a [`LearnEvent`] carries, its final zero byte included.
pub const LEARN_PATH_MAX: usize = 512;

/// One thing a learning sandbox did with a file, sent through the sandbox's own event ring
/// beside its [`DenyEvent`]s (userspace tells them apart by size). `path` is the file's path as
/// the opening task sees it (`bpf_d_path`), zero-terminated; empty when longer than
/// [`LEARN_PATH_MAX`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LearnEvent {
    pub cgroup_id: u64,
    /// A [`learn_kind`] value.
    pub kind: u32,
    pub _pad: u32,
    pub path: [u8; LEARN_PATH_MAX],
}

/// Longest unix socket address (`sun_path`).
pub const UNIX_PATH_MAX: usize = 108;

/// Key of the unix-socket allowlist: one sandbox and a socket address exactly as the kernel sees
/// it. A pathname socket is its path bytes (no NUL, zero-filled); an abstract socket starts with
/// a zero byte followed by its name. `len` counts the meaningful bytes of `path`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixKey {
    pub sandbox: u64,
    pub len: u32,
    pub path: [u8; UNIX_PATH_MAX],
}

/// Byte offsets of the kernel struct fields the LSM programs read, found in the running
/// kernel's BTF by userspace (the programs are built without CO-RE) and set as the read-only
/// global [`KERNEL_LAYOUT_GLOBAL`] when the object loads. `valid` is 1 once set; while 0, rules
/// that need a field deny (fail closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub valid: u32,
    /// `linux_binprm.file`, `linux_binprm.filename`.
    pub binprm_file: u32,
    pub binprm_filename: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_ino`, `inode.i_sb`, `inode.i_nlink`.
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_nlink: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `task_struct.tgid`, `task_struct.cgroups`.
    pub task_tgid: u32,
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`, `cgroup.level`, `cgroup.ancestors` (6.0+, pointers) or
    /// `cgroup.ancestor_ids` (before, ids): see `ancestors_are_ids`.
    pub cgroup_kn: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub ancestors_are_ids: u32,
    /// `kernfs_node.id`.
    pub kernfs_id: u32,
    /// `msghdr.msg_name`, `msghdr.msg_namelen`.
    pub msghdr_name: u32,
    pub msghdr_namelen: u32,
    /// `vm_area_struct.vm_file`.
    pub vma_file: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock_common.skc_daddr`, `skc_dport`, `skc_family`, `skc_v6_daddr` (the connected peer;
    /// `struct sock` starts with its `sock_common`).
    pub skc_daddr: u32,
    pub skc_dport: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    /// `sock.sk_cgrp_data` (the cgroup the socket was created in), `unix_sock.addr`,
    /// `unix_address.len`, `unix_address.name`.
    pub sk_cgrp_data: u32,
    pub unix_sock_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// 1 when the kernel lets BPF-LSM programs call `bpf_get_current_ancestor_cgroup_id` (5.11+):
    /// the ancestors of the current task are then found without reading kernel structs.
    pub ancestor_helper: u32,
    /// `file.f_flags`, `file.f_path`, `path.dentry`, `dentry.d_parent`, `dentry.d_inode`: for
    /// the learning program.
    pub file_flags: u32,
    pub file_path: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
}

/// The network reach of one sandbox: the proxy address and port, nothing else.
///
/// `addr` holds the address as the kernel's `bpf_sock_addr.user_ip6` does: four `u32` words
/// whose bytes are in network order. An IPv4 proxy is stored IPv4-mapped (`::ffff:a.b.c.d`), so
/// `addr[3]` then equals `bpf_sock_addr.user_ip4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxNet {
    pub addr: [u32; 4],
    /// Proxy port in host byte order.
    pub port: u16,
    /// With [`SANDBOX_TRANSPARENT`]: the port, at `addr`, of the proxy's listener for redirected
    /// TCP connections (host byte order).
    pub transparent_port: u16,
    /// 1 when `addr` is an IPv4-mapped address (the proxy listens on IPv4).
    pub is_ipv4: u32,
    /// `SANDBOX_*` flags.
    pub flags: u32,
    /// With [`SANDBOX_TRANSPARENT`]: the UDP port, at `addr`, of leash's resolver (host byte
    /// order).
    pub dns_port: u16,
    pub _pad2: [u8; 2],
    /// The network namespace (its cookie, `SO_NETNS_COOKIE`) the proxy listens in; connects
    /// from any other namespace are refused, so `127.0.0.1` means that namespace's loopback.
    /// 0: not checked (`leash run`, whose sandbox shares leash's own namespace).
    pub netns_cookie: u64,
}

/// [`SandboxNet::flags`]: record which process owns each proxy connection (the policy has
/// `binaries:` rules). Off by default: it costs two map updates per connection.
pub const SANDBOX_RECORD_OWNERS: u32 = 1;

/// [`SandboxNet::flags`]: the sandbox belongs to the node daemon (its garbage collection may
/// remove it); without it the sandbox is a `leash run`'s.
pub const SANDBOX_NODE: u32 = 2;

/// [`SandboxNet::flags`]: transparent mode. A TCP connect to anywhere but the proxy is redirected
/// to the proxy's `transparent_port` and a UDP datagram or connect to port 53 to `dns_port`; the
/// original destination is recorded for the proxy ([`ConnOwner::dest`], [`OriginalDest`]).
/// Requires [`SANDBOX_RECORD_OWNERS`] (the records are how the proxy learns the destination).
pub const SANDBOX_TRANSPARENT: u32 = 4;

/// The port DNS is served on: what transparent mode sends to leash's resolver.
pub const DNS_PORT: u16 = 53;

/// Where a redirected socket meant to go: the address in [`SandboxNet::addr`]'s encoding (IPv4
/// stored IPv4-mapped) and the port in host byte order; port 0 when the socket was not
/// redirected (it connected to the proxy itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDest {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Index of each verdict counter in [`Counters::values`].
pub mod counter {
    pub const CONNECT_ALLOWED: usize = 0;
    pub const CONNECT_DENIED: usize = 1;
    pub const SENDMSG_DENIED: usize = 2;
    pub const SOCK_CREATE_DENIED: usize = 3;
    // Packets that pass are not counted: that would cost a map update per packet.
    pub const SKB_EGRESS_DROPPED: usize = 4;
    pub const SKB_INGRESS_DROPPED: usize = 5;
    /// Records of a learning sandbox (`leash run --learn`) lost to a full event ring.
    pub const LEARN_LOST: usize = 6;
    /// Number of counters.
    pub const COUNT: usize = 7;
    /// Names in index order, for reports.
    pub const NAMES: [&str; COUNT] = [
        "connect_allowed",
        "connect_denied",
        "sendmsg_denied",
        "sock_create_denied",
        "skb_egress_dropped",
        "skb_ingress_dropped",
        "learn_records_lost",
    ];
}

/// Per-CPU verdict counters of one sandbox; userspace creates the zeroed entry with the sandbox
/// and sums the CPUs when reporting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; counter::COUNT],
}

/// The process that opened a connection, recorded by `connect4/6` (which run in the caller's
/// context) under the socket's cookie. The proxy looks it up at accept, by the cookie of the
/// socket at the connection's client end, to learn whether the connection is the sandbox's and
/// which executable is talking to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOwner {
    pub cgroup_id: u64,
    /// The client socket's cookie, the record's key.
    pub cookie: u64,
    /// Thread-group id (the process id userspace knows).
    pub pid: u32,
    pub uid: u32,
    /// Where the process connected to, when transparent mode redirected the connection.
    pub dest: OriginalDest,
    /// The proxy port the connection went to (the proxy's, or its transparent listener's), host
    /// byte order: a record counts only for a connection accepted on that port.
    pub listener_port: u16,
    pub _pad: u16,
}

/// Key of a DNS client's record (`LEASH_DNS_CLIENTS`): the client port and the resolver port it
/// sent to. Both are needed: the kernel lets two sockets share a client port when they go to
/// different ports, so another user's socket can hold the port of a sandbox's socket to another
/// of leash's ports.
pub const fn dns_client_key(client_port: u16, resolver_port: u16) -> u32 {
    ((client_port as u32) << 16) | resolver_port as u32
}

/// Which hook denied something, in [`DenyEvent::hook`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
    SockCreate = 5,
    SkbEgress = 6,
    SkbIngress = 7,
    LsmSocketCreate = 8,
    LsmBpf = 9,
    LsmPerfEvent = 10,
    LsmMount = 11,
    LsmKernelModule = 12,
    LsmPtrace = 13,
    LsmUserns = 14,
    LsmExec = 15,
    LsmOpen = 16,
    LsmKill = 17,
    LsmConnect = 18,
    LsmSendmsg = 19,
    LsmMmap = 20,
    LsmMprotect = 21,
    LsmUnixConnect = 22,
    LsmUnixSend = 23,
}

impl Hook {
    /// The policy rule a BPF-LSM denial of this hook enforces, from the table of LSM hooks; `None`
    /// for the network programs' hooks.
    pub fn rule(self) -> Option<&'static str> {
        program_names::LSM_HOOKS.iter().find(|h| h.event as u32 == self as u32).map(|h| h.rule)
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Connect4,
            2 => Self::Connect6,
            3 => Self::Sendmsg4,
            4 => Self::Sendmsg6,
            5 => Self::SockCreate,
            6 => Self::SkbEgress,
            7 => Self::SkbIngress,
            8 => Self::LsmSocketCreate,
            9 => Self::LsmBpf,
            10 => Self::LsmPerfEvent,
            11 => Self::LsmMount,
            12 => Self::LsmKernelModule,
            13 => Self::LsmPtrace,
            14 => Self::LsmUserns,
            15 => Self::LsmExec,
            16 => Self::LsmOpen,
            17 => Self::LsmKill,
            18 => Self::LsmConnect,
            19 => Self::LsmSendmsg,
            20 => Self::LsmMmap,
            21 => Self::LsmMprotect,
            22 => Self::LsmUnixConnect,
            23 => Self::LsmUnixSend,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SockCreate => "sock_create",
            Self::SkbEgress => "skb_egress",
            Self::SkbIngress => "skb_ingress",
            Self::LsmSocketCreate => "lsm_socket_create",
            Self::LsmBpf => "lsm_bpf",
            Self::LsmPerfEvent => "lsm_perf_event_open",
            Self::LsmMount => "lsm_mount",
            Self::LsmKernelModule => "lsm_kernel_module",
            Self::LsmPtrace => "lsm_ptrace",
            Self::LsmUserns => "lsm_userns_create",
            Self::LsmExec => "lsm_bprm_check_security",
            Self::LsmOpen => "lsm_file_open",
            Self::LsmKill => "lsm_task_kill",
            Self::LsmConnect => "lsm_socket_connect",
            Self::LsmSendmsg => "lsm_socket_sendmsg",
            Self::LsmMmap => "lsm_mmap_file",
            Self::LsmMprotect => "lsm_file_mprotect",
            Self::LsmUnixConnect => "lsm_unix_stream_connect",
            Self::LsmUnixSend => "lsm_unix_may_send",
        }
    }
}

/// One denial, sent to userspace through the `LEASH_EVENTS` ring buffer.
///
/// For packet hooks (`SkbEgress`, `SkbIngress`) there is no reliable current task: `pid`, `uid`
/// and `comm` are zero, and `addr`/`port` are the remote end of the packet.
///
/// For BPF-LSM hooks other than the socket ones, `family`, `sock_type` and `addr` are zero and
/// `protocol` carries the hook's one telling argument: the bpf command, the perf event type, the
/// ptrace access mode, the kernel load/read id, the signal; zero when there is none.
/// `target_dev`/`target_ino` name the file of `LsmExec`, `LsmOpen`, `LsmMmap` and `LsmMprotect`
/// (whose `protocol` is the requested `PROT_*` bits), `target_pid` the process
/// of `LsmKill`, and `path` the file name of `LsmExec` or the unix socket of `LsmConnect` and
/// `LsmSendmsg` (`family` 1; an abstract name starts with a zero byte), cut to 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DenyEvent {
    pub cgroup_id: u64,
    pub time_ns: u64,
    pub pid: u32,
    pub uid: u32,
    /// A [`Hook`] value.
    pub hook: u32,
    /// Address family (`AF_INET` 2, `AF_INET6` 10).
    pub family: u32,
    /// Socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_RAW` 3); 0 for packet hooks.
    pub sock_type: u32,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u32,
    /// Destination (or, for ingress, source) address in network order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Port in host order; 0 when there is none.
    pub port: u16,
    pub _pad: [u8; 6],
    pub comm: [u8; 16],
    pub target_ino: u64,
    pub target_dev: u32,
    pub target_pid: u32,
    pub path: [u8; 64],
}

/// What crosses the boundary between the programs and userspace has one size on both sides:
/// a field added, removed or retyped on one side only fails the build here.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<SandboxNet>() == 40);
    assert!(size_of::<Counters>() == 8 * counter::COUNT);
    assert!(size_of::<OriginalDest>() == 20);
    assert!(size_of::<ConnOwner>() == 48);
    assert!(size_of::<LsmPolicy>() == 32);
    assert!(size_of::<InodeKey>() == 24);
    assert!(size_of::<UnixKey>() == 8 + 4 + UNIX_PATH_MAX);
    assert!(size_of::<KernelLayout>() == 4 * 35);
    assert!(size_of::<DenyEvent>() == 160);
    assert!(size_of::<LearnKey>() == 24);
    assert!(size_of::<LearnEvent>() == 16 + LEARN_PATH_MAX);
    // The two records of an event ring are told apart by their size.
    assert!(size_of::<LearnEvent>() != size_of::<DenyEvent>());
    // Slots are taken from a hash's top bits or an id's low bits.
    assert!(DENY_OPEN_FILTER_SLOTS.is_power_of_two() && LSM_FILTER_SLOTS.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, contain only integers and have no padding bytes.
    unsafe impl aya::Pod for super::SandboxNet {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::DenyEvent {}
    unsafe impl aya::Pod for super::ConnOwner {}
    unsafe impl aya::Pod for super::LsmPolicy {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::UnixKey {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::LearnKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hook a BPF-LSM program reports has its rule in the table, and only those do.
    #[test]
    fn every_lsm_hook_names_its_rule_in_the_table() {
        for value in 1..=23 {
            let hook = Hook::from_u32(value).expect("a hook");
            let is_lsm = value >= Hook::LsmSocketCreate as u32;
            assert_eq!(hook.rule().is_some(), is_lsm, "{}", hook.name());
        }
        assert_eq!(Hook::LsmExec.rule(), Some("kernel.exec.allow"));
        assert_eq!(Hook::LsmMount.rule(), Some("mount"));
    }

    /// The files of one directory have inode numbers close together; their pre-filter slots must
    /// not be: a 1,000-file deny list should leave nearly every other file's slot at zero.
    #[test]
    fn inode_numbers_in_sequence_spread_over_the_deny_filter() {
        for start in [2u64, 1 << 20, 0x7eed_0000_0000] {
            let mut taken = [false; DENY_OPEN_FILTER_SLOTS as usize];
            for ino in start..start + 1000 {
                taken[deny_open_filter_slot(ino) as usize] = true;
            }
            let filled = taken.iter().filter(|t| **t).count();
            assert!(filled >= 990, "1,000 inodes from {start} fill only {filled} slots");
        }
    }

    /// A slot with entries never holds a value whose low byte is 0, whatever its count, so no
    /// value half-written a byte at a time reads as "none" (0) while the count moves by one.
    #[test]
    fn a_prefilter_count_never_passes_through_zero() {
        for count in [1, 255, 256, 65535, 65536, prefilter::MAX - 1] {
            let (from, to) = (prefilter::encode(count), prefilter::encode(count + 1));
            assert_eq!(prefilter::decode(from), count);
            // Every mix of the two values' bytes, as a copy a byte at a time could leave it.
            for mask in 0u32..16 {
                let bytes = (0..4).fold(0u32, |v, i| {
                    let pick = if mask & (1 << i) != 0 { to } else { from };
                    v | (pick & (0xff << (8 * i)))
                });
                assert_ne!(bytes, 0, "{count} -> {}: a half-written slot reads 0", count + 1);
            }
        }
        assert_eq!(prefilter::encode(0), 0);
    }
}
