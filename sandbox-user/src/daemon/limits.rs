//! How much of the daemon one pod may hold: every pod reaches the socket, so none may take what
//! the others need (connections and their threads, sandboxes).
//!
//! | bound | value | past it |
//! |---|---|---|
//! | connections, whole node | [`MAX_CONNECTIONS`] | `busy`, closed |
//! | connections per pod | [`MAX_CONNECTIONS_PER_POD`] | `busy`, closed |
//! | descriptors per frame | [`MAX_FDS_PER_FRAME`] | extra ones closed on arrival; the request is refused |
//! | sandboxes, whole node | `--max-sandboxes` | `busy` |
//! | sandboxes per pod | `--max-sandboxes-per-pod`, by default [`sandboxes_per_pod`] | `busy` |
//!
//! Reading and writing are bounded in time by the protocol's `READ_TIMEOUT` and `WRITE_TIMEOUT`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Connections served at once on the node.
pub const MAX_CONNECTIONS: usize = 256;

/// Connections one pod (all its containers together) holds at once.
pub const MAX_CONNECTIONS_PER_POD: usize = 16;

/// Descriptors one frame may carry: `confine` passes one, or three in transparent mode.
pub const MAX_FDS_PER_FRAME: usize = 3;

/// Sandboxes one pod holds at once by default: half the node's limit (at least one), so that one
/// pod never takes the whole budget.
pub fn sandboxes_per_pod(max_sandboxes: usize) -> usize {
    (max_sandboxes / 2).max(1)
}

/// How many sandboxes the node, and each pod on it, may hold at once.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    pub node: usize,
    pub per_pod: usize,
}

impl SandboxLimits {
    /// `node` in all, `per_pod` for each pod (default [`sandboxes_per_pod`]), never above `node`.
    pub fn new(node: usize, per_pod: Option<usize>) -> Self {
        let node = node.max(1);
        Self { node, per_pod: per_pod.unwrap_or_else(|| sandboxes_per_pod(node)).clamp(1, node) }
    }
}

/// The open connections, counted per pod.
#[derive(Default, Clone)]
pub struct Connections {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_pod: HashMap<String, usize>,
}

/// One connection's place; dropping it (when the connection ends, or when its thread could not
/// start) gives the place back.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    pod: String,
}

impl Connections {
    /// A place for a connection of pod `pod` (`""` for callers outside every pod), or why not.
    pub fn acquire(&self, pod: &str) -> Result<Slot, &'static str> {
        let mut counts = self.counts.lock().map_err(|_| "connection counts poisoned")?;
        if counts.total >= MAX_CONNECTIONS {
            return Err("too many connections");
        }
        let mine = counts.per_pod.entry(pod.to_owned()).or_insert(0);
        if *mine >= MAX_CONNECTIONS_PER_POD {
            return Err("too many connections from this pod");
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot { counts: self.counts.clone(), pod: pod.to_owned() })
    }

    pub fn open(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.total = counts.total.saturating_sub(1);
            if let Some(n) = counts.per_pod.get_mut(&self.pod) {
                *n -= 1;
                if *n == 0 {
                    counts.per_pod.remove(&self.pod);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pod_cannot_take_every_connection_and_dropped_slots_come_back() {
        let c = Connections::default();
        let held: Vec<Slot> = (0..MAX_CONNECTIONS_PER_POD).map(|_| c.acquire("a").unwrap()).collect();
        assert!(c.acquire("a").is_err());
        let b = c.acquire("b").unwrap();
        drop(held);
        drop(b);
        assert_eq!(c.open(), 0);
        assert!(c.acquire("a").is_ok());
        assert_eq!(sandboxes_per_pod(2048), 1024);
        assert_eq!(sandboxes_per_pod(1), 1);
        let l = SandboxLimits::new(2048, None);
        assert_eq!((l.node, l.per_pod), (2048, 1024));
        let l = SandboxLimits::new(100, Some(10));
        assert_eq!((l.node, l.per_pod), (100, 10));
        // A pod never gets more than the node, nor nothing.
        assert_eq!(SandboxLimits::new(100, Some(1000)).per_pod, 100);
        assert_eq!(SandboxLimits::new(100, Some(0)).per_pod, 1);
    }
}
