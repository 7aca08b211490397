//! leash: confine an AI coding agent so it reaches the network only through a local proxy.
//!
//! Data flows `policy` (file -> compiled policy; the `sandbox-policy` crate) -> `kernel` (cgroup, eBPF programs and maps,
//! pins) and `launcher` (Landlock, identity, the agent's process) and `proxy` (where a
//! connection is judged) -> `audit` (OCSF events). `doctor` probes what the kernel offers.
//! `accounts` is where users and groups are looked up.
//! `daemon` is the node agent that confines pods' processes on request (`leash daemon`), and
//! `launcher::confine` its client inside a pod (`leash confine`); `confine_api` is what the two
//! say to each other.

// Lines on stderr go through `say!` (`stderr.rs`), which never panics.
#![deny(clippy::print_stderr)]

pub mod accounts;
pub mod audit;
pub mod confine_api;
pub mod daemon;
pub mod doctor;
pub mod kernel;
pub mod launcher;
pub mod proxy;
pub mod stderr;

/// The policy file and the decisions made from it live in their own crate (`sandbox-policy`),
/// which builds and tests with stable Rust alone.
pub use sandbox_policy as policy;
