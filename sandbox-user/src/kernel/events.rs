//! Reading a sandbox's event ring and handing each record to a sink: deny events (to the audit
//! log) and, while `leash run --learn` runs, what the learning program saw.

use std::sync::Arc;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use sandbox_common::{DenyEvent, LearnEvent};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// One record of an event ring.
pub enum KernelEvent {
    Deny(DenyEvent),
    Learned(Box<LearnEvent>),
}

/// A running event reader; [`EventPump::stop`] drains what is left (a full ring at most) and
/// ends it.
pub struct EventPump {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPump {
    /// Starts reading `ring` on the current tokio runtime, calling `sink` for every event.
    pub fn start(ring: RingBuf<MapData>, sink: impl Fn(&KernelEvent) + Send + 'static) -> Result<Self> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as
        // the AsyncFd owns the ring.
        let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    guard = fd.readable_mut() => {
                        let Ok(mut guard) = guard else { return };
                        if drain(guard.get_inner_mut(), &sink, BATCH) {
                            guard.clear_ready();
                        } else {
                            // More to read: after the rest of leash has had its turn.
                            drop(guard);
                            tokio::task::yield_now().await;
                        }
                    }
                    _ = stopped.notified() => {
                        drain(fd.get_mut(), &sink, LAST);
                        return;
                    }
                }
            }
        });
        Ok(Self { stop, task })
    }

    /// Delivers the events still in the ring (as many as it holds at most), then stops.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// Records handed to the sink at one wake-up. The pump shares leash's thread with the proxy and
/// the agent's supervision: a sandbox making denials faster than they are written must not hold
/// that thread.
const BATCH: usize = 256;
/// Records the last drain reads at most: more than a full ring holds (of the smaller record), so
/// every record made before the stop is read. A process of the sandbox still making denials when
/// leash stops must not keep it from tearing the sandbox down.
const LAST: usize = sandbox_common::EVENTS_BYTES as usize / SMALLER_RECORD;
const SMALLER_RECORD: usize = {
    let (deny, learn) = (std::mem::size_of::<DenyEvent>(), std::mem::size_of::<LearnEvent>());
    if deny < learn {
        deny
    } else {
        learn
    }
};

/// Hands up to `limit` records of `ring` to `sink`; true when the ring was emptied.
fn drain(ring: &mut RingBuf<MapData>, sink: &impl Fn(&KernelEvent), limit: usize) -> bool {
    for _ in 0..limit {
        let Some(item) = ring.next() else { return true };
        if let Some(event) = decode(&item) {
            sink(&event);
        }
    }
    false
}

/// Copies a record out of the ring, telling the two kinds apart by their size (they differ,
/// `sandbox-common` checks); a record of any other size (never written by our programs) is
/// skipped.
fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    if bytes.len() == std::mem::size_of::<DenyEvent>() {
        // SAFETY: length checked; DenyEvent is plain old data, read unaligned.
        return Some(KernelEvent::Deny(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) }));
    }
    if bytes.len() == std::mem::size_of::<LearnEvent>() {
        // SAFETY: length checked; LearnEvent is plain old data, read unaligned.
        let event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<LearnEvent>()) };
        return Some(KernelEvent::Learned(Box::new(event)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_told_apart_by_size() {
        let deny = vec![0u8; std::mem::size_of::<DenyEvent>()];
        assert!(matches!(decode(&deny), Some(KernelEvent::Deny(_))));
        let mut learned = vec![0u8; std::mem::size_of::<LearnEvent>()];
        learned[8] = sandbox_common::learn_kind::EXEC as u8;
        match decode(&learned) {
            Some(KernelEvent::Learned(e)) => assert_eq!(e.kind, sandbox_common::learn_kind::EXEC),
            _ => panic!("a learning record"),
        }
        assert!(decode(&deny[..deny.len() - 1]).is_none());
        assert!(decode(&[0u8; 600]).is_none());
    }
}
