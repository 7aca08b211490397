//! The Confine API's frame decoder and request parser, fed what a pod writes to the daemon's
//! socket. Checks: no panic; no single allocation while decoding a frame larger than
//! `MAX_FRAME`; a decoded body never exceeds the limit; a parsed request re-encodes to itself;
//! every refusal is a well-formed error reply.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use leash::confine_api::protocol::{parse_request, read_frame, FrameError, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

/// The system allocator, remembering the largest request since the last reset.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// A reader that hands out at most `step` bytes per call, as a socket may.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mut reader = Trickle { data: stream, step: usize::from(step % 16) + 1 };
    // A connection carries any number of frames; the daemon stops at the first framing error.
    for _ in 0..64 {
        LARGEST.store(0, Ordering::Relaxed);
        let frame = read_frame(&mut reader);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(largest <= MAX_FRAME as usize, "read_frame allocated {largest} bytes");
        let body = match frame {
            Ok(body) => body,
            Err(FrameError::Closed | FrameError::TooLarge(_) | FrameError::Empty | FrameError::Io(_)) => return,
            Err(FrameError::TooManyDescriptors) => unreachable!("no descriptors on this reader"),
        };
        assert!(!body.is_empty() && body.len() <= MAX_FRAME as usize);
        match parse_request(&body) {
            Ok(request) => {
                let again = serde_json::to_vec(&request).expect("a request serialises");
                assert_eq!(parse_request(&again).expect("a re-encoded request parses"), request);
            }
            Err(reply) => {
                assert!(!reply.ok && reply.result.is_none() && reply.error.is_some());
                serde_json::to_vec(&reply).expect("an error reply serialises");
            }
        }
    }
});
