//! Reading deny events from the kernel's ring buffer and handing each to a sink (the audit log).

use std::sync::Arc;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use sandbox_common::DenyEvent;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// A running event reader; [`EventPump::stop`] drains what is left and ends it.
pub struct EventPump {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPump {
    /// Starts reading `ring` on the current tokio runtime, calling `sink` for every event.
    pub fn start(ring: RingBuf<MapData>, sink: impl Fn(&DenyEvent) + Send + 'static) -> Result<Self> {
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
                        drain(guard.get_inner_mut(), &sink);
                        guard.clear_ready();
                    }
                    _ = stopped.notified() => {
                        drain(fd.get_mut(), &sink);
                        return;
                    }
                }
            }
        });
        Ok(Self { stop, task })
    }

    /// Delivers the events still in the ring, then stops.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

fn drain(ring: &mut RingBuf<MapData>, sink: &impl Fn(&DenyEvent)) {
    while let Some(item) = ring.next() {
        if let Some(event) = decode(&item) {
            sink(&event);
        }
    }
}

/// Copies a record out of the ring; a short record (never written by our programs) is skipped.
fn decode(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() < std::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: length checked; DenyEvent is plain old data, read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}
