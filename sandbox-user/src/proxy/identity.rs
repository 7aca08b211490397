//! Which executable is talking to the proxy. The sandbox's `sock_ops` program records the owner
//! of every connection by client port; at accept the proxy looks the peer port up and reads that
//! one process's executable link (no scan of /proc).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::kernel::programs::ConnectionOwners;

/// The executable of the process that opened the connection from `peer`, if recorded.
pub fn binary_of(owners: &ConnectionOwners, peer: SocketAddr) -> Option<PathBuf> {
    let owner = owners.owner(peer.port())?;
    std::fs::read_link(format!("/proc/{}/exe", owner.pid)).ok()
}
