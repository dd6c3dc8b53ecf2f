//! The time a leader stamps on commands.
//!
//! Lease deadlines are written in the leader's time. A wall clock may jump (NTP stepping it, an
//! operator setting it), and a jump forward would expire leases early. So a leader reads the
//! wall clock once, when it takes office, and from then on advances that reading by the
//! monotonic clock. Across leaders, `Promote` rebases deadlines onto the new leader's reading
//! (see the allocator), so members' clocks need not agree either.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::allocator::Millis;

#[derive(Debug)]
pub struct Clock {
    /// Added to the system clock's reading: a fault the chaos tests inject, 0 otherwise.
    skew_ms: AtomicI64,
    anchor: Mutex<(Millis, Instant)>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let c = Clock {
            skew_ms: AtomicI64::new(0),
            anchor: Mutex::new((0, Instant::now())),
        };
        c.take_office();
        c
    }

    /// This member's wall clock, as the system (and any injected skew) has it now.
    pub fn wall_ms(&self) -> Millis {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        crate::now_ms().saturating_add_signed(skew)
    }

    /// Re-reads the wall clock; a member calls it when it becomes leader.
    pub fn take_office(&self) -> Millis {
        let wall = self.wall_ms();
        *self.anchor.lock().unwrap_or_else(|p| p.into_inner()) = (wall, Instant::now());
        wall
    }

    /// Leader time: the wall clock read at taking office, advanced by monotonic time since.
    pub fn now_ms(&self) -> Millis {
        let (wall, at) = *self.anchor.lock().unwrap_or_else(|p| p.into_inner());
        wall.saturating_add(at.elapsed().as_millis() as u64)
    }

    /// Steps this member's wall clock by `ms` (negative: back), as a misbehaving NTP would.
    pub fn step(&self, ms: i64) {
        self.skew_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_moves_leader_time_only_at_the_next_term() {
        let c = Clock::new();
        let before = c.now_ms();
        c.step(60_000);
        let during = c.now_ms();
        assert!(
            during < before + 1_000,
            "leader time jumped with the wall clock"
        );
        assert!(c.wall_ms() >= before + 60_000);
        let next = c.take_office();
        assert!(next >= before + 60_000 && c.now_ms() >= next);
    }
}
