//! Which layers a policy needs that this run cannot enforce. Fail closed: `leash run` refuses to
//! start the agent when the list is not empty, unless `--allow-degraded`, which reports each.

use std::fmt;

/// The layer that tells the proxy's admission which socket holds a connection's client end
/// (`kernel/sock_diag.rs`); without it no connection can be matched to its record, and the proxy
/// serves none.
pub const PEER_SOCKETS: &str = "proxy admission by socket";

/// A layer the policy asks for and this run lacks.
#[derive(Debug, Clone)]
pub struct Missing {
    pub layer: &'static str,
    pub why: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.layer, self.why)
    }
}
