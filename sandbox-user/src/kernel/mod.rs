//! Everything leash asks of the kernel: finding cgroup v2 and bpffs, sandbox cgroups, loading
//! and attaching the eBPF programs, one sandbox's kernel state (`sandbox`), the hooks kept on
//! between sandboxes (`hold`), pins that outlive
//! leash, reaping what a crash left behind, and probing which layers this kernel supports.

pub mod attach;
pub mod btf;
pub mod cgroup;
pub mod deny_open;
pub mod events;
pub mod fs_root;
pub mod generation;
pub mod hold;
pub mod learning;
pub mod lsm;
pub mod lsm_rules;
pub mod mounts;
pub mod pins;
pub mod probes;
pub mod proc_stat;
pub mod programs;
pub mod reaper;
pub mod sandbox;
pub mod sandbox_id;
pub mod sock_diag;
