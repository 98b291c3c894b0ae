//! Polling before sleeping, for the threads on the write path: the replica thread (its inbox)
//! and the threads reading peer connections.
//!
//! Within one request the next input of such a thread (a follower's acknowledgement, the
//! leader's next append, the client's next proposal) usually comes within a few hundred
//! microseconds. A thread that went to sleep in between costs 35–55 µs to wake on this kind of
//! virtual machine, more when its vCPU halted, and a put crosses four such hand-offs between
//! these threads. So they poll for up to [`POLL_BEFORE_SLEEP`] before they block, yielding the
//! CPU between polls, and stop polling as soon as a yield shows that another thread wanted the
//! CPU: polling only uses time the CPU would otherwise idle away. A/B (BENCHMARKS.md): a single
//! client's put p50 0.88 → 0.57 ms; 64 clients unchanged within the noise. Polling without the
//! contention check raised the 64-client put p99 by a fifth to a third (threads spinning on two
//! cores under load).

use std::time::{Duration, Instant};

/// How long a write-path thread polls for its next input before blocking on it.
pub const POLL_BEFORE_SLEEP: Duration = Duration::from_micros(300);

/// A yield that takes longer than this means another thread wanted the CPU.
const CONTENDED_YIELD: Duration = Duration::from_micros(30);

/// Calls `attempt` until it gives a value or `limit` has passed since the first call, yielding
/// the CPU between calls. Gives up early once a yield shows that other threads want the CPU:
/// polling helps only while the CPU would otherwise idle. `None` when it gave up; `attempt` is
/// called at least once.
pub fn poll_for<T>(limit: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        let before_yield = Instant::now();
        if before_yield.duration_since(started) >= limit {
            return None;
        }
        std::thread::yield_now();
        if before_yield.elapsed() >= CONTENDED_YIELD {
            return attempt();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_comes_while_polling_is_taken() {
        let mut calls = 0;
        let value = poll_for(Duration::from_secs(10), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(value, Some(3));
    }

    #[test]
    fn polling_gives_up_having_tried_at_least_once() {
        // It gives up at the limit or earlier, when other threads want the CPU (as other tests
        // may, running in parallel).
        let mut calls = 0;
        let value: Option<()> = poll_for(Duration::from_millis(2), || {
            calls += 1;
            None
        });
        assert_eq!(value, None);
        assert!(calls >= 1);

        let mut calls = 0;
        let value: Option<()> = poll_for(Duration::ZERO, || {
            calls += 1;
            None
        });
        assert_eq!((value, calls), (None, 1));
    }
}
