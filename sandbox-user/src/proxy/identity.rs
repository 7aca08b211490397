//! Which executable is talking to the proxy. The sandbox's `sock_ops` program records the owner
//! of every connection by client port; at accept the proxy looks the peer port up and reads that
//! one process's executable link (no scan of /proc). Under `leash run` the proxy reads the map
//! itself; under `leash confine` it asks the node daemon, which holds the map.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::daemon::client::Client;
use crate::daemon::protocol::{Op, Owner};
use crate::kernel::programs::ConnectionOwners;

/// Where the proxy learns who opened a connection.
pub trait OwnerSource: Send + Sync {
    /// The executable of the process that opened the connection from `peer`, if known.
    fn binary(&self, peer: SocketAddr) -> Option<PathBuf>;
}

impl OwnerSource for ConnectionOwners {
    fn binary(&self, peer: SocketAddr) -> Option<PathBuf> {
        let owner = self.owner(peer.port())?;
        std::fs::read_link(format!("/proc/{}/exe", owner.pid)).ok()
    }
}

/// The node daemon's answer for one sandbox (`owner` requests on one kept connection).
pub struct DaemonOwners {
    socket: PathBuf,
    sandbox: String,
    client: Mutex<Option<Client>>,
}

impl DaemonOwners {
    pub fn new(socket: &Path, sandbox: &str) -> Self {
        Self { socket: socket.to_path_buf(), sandbox: sandbox.to_owned(), client: Mutex::new(None) }
    }

    fn ask(&self, port: u16) -> Option<Owner> {
        let mut slot = self.client.lock().ok()?;
        for _ in 0..2 {
            if slot.is_none() {
                *slot = Client::connect(&self.socket).ok();
            }
            let client = slot.as_mut()?;
            match client.call(Op::Owner { sandbox: self.sandbox.clone(), port }) {
                Ok(v) => return serde_json::from_value(v).ok(),
                // An answer that says no: no owner. A broken connection: reconnect once.
                Err(crate::daemon::client::ClientError::Refused(_)) => return None,
                Err(_) => *slot = None,
            }
        }
        None
    }
}

impl OwnerSource for DaemonOwners {
    fn binary(&self, peer: SocketAddr) -> Option<PathBuf> {
        let owner = self.ask(peer.port())?;
        // The daemon reads the link when it can; else this process, in the agent's pid
        // namespace, reads it by the pid the daemon translated.
        owner
            .exe
            .map(PathBuf::from)
            .or_else(|| (owner.pid != 0).then(|| std::fs::read_link(format!("/proc/{}/exe", owner.pid)).ok()).flatten())
    }
}
