//! At most so many of one kind of line a second: what the agent can make leash say is bounded,
//! and what was held back is counted.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A per-second budget of lines.
pub struct Rate {
    per_second: u32,
    /// Start of the current second, lines admitted in it, lines held back in it.
    window: Mutex<(Instant, u32, u64)>,
}

impl Rate {
    pub fn new(per_second: u32) -> Self {
        Self { per_second, window: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// Whether this one gets its line; and, when it opens a new second after some were held
    /// back, how many were (for one line saying so).
    pub fn admit(&self) -> (bool, u64) {
        let mut w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, count, held) = &mut *w;
        let mut reported = 0;
        if start.elapsed() >= Duration::from_secs(1) {
            reported = *held;
            (*start, *count, *held) = (Instant::now(), 0, 0);
        }
        *count += 1;
        if *count > self.per_second {
            *held += 1;
            return (false, reported);
        }
        (true, reported)
    }

    /// The lines held back in the current second, no longer counted here (said at the end).
    pub fn take_held(&self) -> u64 {
        let mut w = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut w.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_rate_are_held_back_and_counted_when_the_next_second_opens() {
        let rate = Rate::new(20);
        let admitted = (0..50).filter(|_| rate.admit().0).count();
        assert_eq!(admitted, 20);
        std::thread::sleep(Duration::from_millis(1010));
        assert_eq!(rate.admit(), (true, 30), "a new second admits again, and says what was held back");
        assert_eq!(rate.admit(), (true, 0));
        for _ in 0..25 {
            rate.admit();
        }
        assert_eq!(rate.take_held(), 7, "what the second held back, at the end");
        assert_eq!(rate.take_held(), 0);
    }
}
