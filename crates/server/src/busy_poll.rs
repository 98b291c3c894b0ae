//! Polling before sleeping, for the threads on the write path: the replica thread (its inbox)
//! and the threads reading peer connections.
//!
//! Within one request the next input of such a thread (a follower's acknowledgement, the
//! leader's next append, the client's next proposal) usually comes within a few hundred
//! microseconds. A thread that went to sleep in between costs 35–55 µs to wake on this kind of
//! virtual machine, more when its vCPU halted, and a put crosses four such hand-offs between
//! these threads. So they poll for up to [`POLL_BEFORE_SLEEP`] before they block, yielding the
//! CPU between polls.
//!
//! How hard they poll depends on the load ([`Load`]). While the write path is lightly loaded
//! all of them poll, giving up only when a yield shows a thread with real work had the CPU.
//! Under load the peer readers do not poll at all and the replica thread gives up at the first
//! sign of contention: the next input comes soon anyway, and a spinning thread takes the CPU
//! from threads with work to do; the replica thread keeps polling because every proposal and
//! acknowledgement is handed to it, and a hand-off to a thread that is awake costs its sender
//! less. A/B (BENCHMARKS.md, fifth session), 3-member clusters on two cores, 4 rounds: against
//! polling always (all threads, the strict check), a single client's put p50 0.48–0.53 →
//! 0.44–0.46 ms and the 64-client put p99 8.8–9.8 → 7.4–8.1 ms at the same throughput. Not
//! polling under load at all gave the same p99 but 3–5 % fewer puts per second; not polling at
//! all, a single client's p50 of ~0.73 ms.
//!
//! Nobody polls while inputs come far apart (`SPARSE_INPUTS_PER_WINDOW`): at a few puts a
//! second each input comes long after any poll has given up, and every poll only takes a CPU
//! from the threads with work (on the benchmark machine three members' replica and peer
//! threads, nine pollers on two vCPUs, spent ~2.7 ms of CPU polling per put at 50 puts/s, in
//! the moment the members sent 1,000 watchers the put's event). A/B (BENCHMARKS.md, eleventh
//! session): watch event p99 lower in 9 of 12 rounds (median ratio 0.85), a single client's
//! and 64 clients' puts unchanged.
//!
//! A watch stream with many watchers holds polling off for a moment while it delivers
//! ([`Load::hold_off`]): for 1,000 watchers the members' encoding and the clients' decoding
//! want both vCPUs for ~2 ms after each put, and nothing the polling threads wait for is due.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a write-path thread polls for its next input before blocking on it.
pub const POLL_BEFORE_SLEEP: Duration = Duration::from_micros(300);

/// The write path counts as busy while the replica thread appends more log entries than this
/// in a [`LOAD_WINDOW`] (4,000 entries/s). A single client's puts append ~2,000/s on the
/// benchmark machine; 64 clients' ~17,000/s.
const BUSY_ENTRIES_PER_WINDOW: u64 = 40;

/// Below this many inputs to the replica thread in a [`LOAD_WINDOW`] (800/s) nobody polls:
/// inputs that far apart come after any poll has given up. A single client's puts give a
/// leader ~3 inputs each (the proposal, two acknowledgements), ~4,000/s back to back on the
/// benchmark machine; at 50 puts/s a window holds at most a put's few, and polling for each
/// only took the CPU from the work that followed (1,000 watchers being sent the event).
const SPARSE_INPUTS_PER_WINDOW: u64 = 8;

/// How long the rate of appended entries is counted over before deciding again.
const LOAD_WINDOW: Duration = Duration::from_millis(10);

/// While the load is light, a yield that takes longer than this means a thread with real work
/// had the CPU (polling threads yield to each other within a few microseconds).
const CONTENDED_YIELD_LIGHT: Duration = Duration::from_micros(200);

/// Under load, the replica thread stops polling after a yield this long.
const CONTENDED_YIELD_BUSY: Duration = Duration::from_micros(30);

/// Whether this member's write path is lightly loaded, so that its threads should poll before
/// they sleep. Written by the replica thread ([`LoadMeter`]), read by every polling thread.
#[derive(Debug)]
pub struct Load {
    light: AtomicBool,
    /// Inputs come too far apart for polling to catch any ([`SPARSE_INPUTS_PER_WINDOW`]).
    sparse: AtomicBool,
    /// No polling before this time ([`Load::hold_off`]), in nanoseconds since `epoch`.
    quiet_until_nanos: AtomicU64,
    epoch: Instant,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            light: AtomicBool::new(true),
            sparse: AtomicBool::new(true),
            quiet_until_nanos: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Load {
    /// Whether polling pays now.
    pub fn is_light(&self) -> bool {
        self.light.load(Ordering::Relaxed)
            && !self.is_sparse()
            && self.nanos_now() >= self.quiet_until_nanos.load(Ordering::Relaxed)
    }

    /// Whether inputs come too far apart for polling to catch them: then nobody polls.
    fn is_sparse(&self) -> bool {
        self.sparse.load(Ordering::Relaxed)
    }

    /// Stops polling for `duration`: other threads of this member have a burst of work for
    /// the CPU (a watch stream delivering to many watchers), and polling threads would take
    /// it from them while nothing they poll for is coming.
    pub fn hold_off(&self, duration: Duration) {
        let until = self.nanos_now() + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.quiet_until_nanos.fetch_max(until, Ordering::Relaxed);
    }

    fn nanos_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// For the peer readers: polls `attempt` (see [`poll_for`]) while the load is light;
    /// otherwise tries it once.
    pub fn poll<T>(&self, limit: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
        if self.is_light() {
            poll_for(limit, CONTENDED_YIELD_LIGHT, attempt)
        } else {
            attempt()
        }
    }

    /// For the replica thread: polls `attempt`, under load only until the first sign of
    /// contention.
    pub fn poll_replica<T>(
        &self,
        limit: Duration,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if self.is_sparse() {
            return attempt();
        }
        let contended_yield = if self.is_light() {
            CONTENDED_YIELD_LIGHT
        } else {
            CONTENDED_YIELD_BUSY
        };
        poll_for(limit, contended_yield, attempt)
    }
}

/// Counts the log entries the replica thread appends and decides, once per [`LOAD_WINDOW`],
/// whether the write path is busy. A window is closed by the first append (or call with none)
/// after it ended, so a member that went quiet counts as lightly loaded again from its next
/// input on.
#[derive(Debug)]
pub struct LoadMeter {
    window_started: Instant,
    entries: u64,
    inputs: u64,
}

impl LoadMeter {
    pub fn new(now: Instant) -> LoadMeter {
        LoadMeter {
            window_started: now,
            entries: 0,
            inputs: 0,
        }
    }

    /// The replica thread took an input (a proposal, a read, a peer's message).
    pub fn input(&mut self) {
        self.inputs += 1;
    }

    /// `entries` were appended at `now`; publishes the verdict into `load` when a window ends.
    pub fn appended(&mut self, entries: usize, now: Instant, load: &Load) {
        self.entries += entries as u64;
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed < LOAD_WINDOW {
            return;
        }
        // A window that ended long ago says nothing about now: count it as quiet (and the
        // member as idle: sparse, until a window shows inputs coming closer together).
        let recent = elapsed < LOAD_WINDOW * 2;
        let busy = recent && self.entries > BUSY_ENTRIES_PER_WINDOW;
        // A rate, not a count: the window closes 10 to 20 ms after it opened.
        let sparse = !recent
            || u128::from(self.inputs) * LOAD_WINDOW.as_nanos()
                < u128::from(SPARSE_INPUTS_PER_WINDOW) * elapsed.as_nanos();
        load.light.store(!busy, Ordering::Relaxed);
        load.sparse.store(sparse, Ordering::Relaxed);
        self.window_started = now;
        self.entries = 0;
        self.inputs = 0;
    }
}

/// Calls `attempt` until it gives a value or `limit` has passed since the first call, yielding
/// the CPU between calls. Gives up early once a yield takes `contended_yield` or longer (another
/// thread had work for the CPU). `None` when it gave up; `attempt` is called at least once.
pub fn poll_for<T>(
    limit: Duration,
    contended_yield: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> Option<T> {
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
        if before_yield.elapsed() >= contended_yield {
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
        let value = poll_for(Duration::from_secs(10), CONTENDED_YIELD_LIGHT, || {
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
        let value: Option<()> = poll_for(Duration::from_millis(2), CONTENDED_YIELD_BUSY, || {
            calls += 1;
            None
        });
        assert_eq!(value, None);
        assert!(calls >= 1);

        let mut calls = 0;
        let value: Option<()> = poll_for(Duration::ZERO, CONTENDED_YIELD_BUSY, || {
            calls += 1;
            None
        });
        assert_eq!((value, calls), (None, 1));
    }

    /// A window of `entries` appended entries, each batch after `inputs_per_batch` inputs,
    /// in ten batches spread over `[at, at + LOAD_WINDOW)`.
    fn feed(
        meter: &mut LoadMeter,
        load: &Load,
        at: Instant,
        entries: usize,
        inputs_per_batch: u64,
    ) {
        for step in 0..10 {
            for _ in 0..inputs_per_batch {
                meter.input();
            }
            meter.appended(entries / 10, at + LOAD_WINDOW * step / 10, load);
        }
    }

    /// A member whose inputs come close together polls (it left the sparse state).
    fn active_load() -> (Load, LoadMeter, Instant) {
        let load = Load::default();
        let start = Instant::now();
        let mut meter = LoadMeter::new(start);
        feed(&mut meter, &load, start, 0, 1);
        meter.appended(0, start + LOAD_WINDOW, &load);
        assert!(load.is_light());
        (load, meter, start + LOAD_WINDOW)
    }

    #[test]
    fn a_busy_write_path_does_not_poll() {
        let (load, mut meter, start) = active_load();
        // A window with more entries than the limit: busy.
        feed(&mut meter, &load, start, 50, 1);
        assert!(load.is_light(), "decided only when the window ends");
        meter.appended(5, start + LOAD_WINDOW, &load);
        assert!(!load.is_light());
        assert_tried_once(&load, Poller::PeerReader);
        // A quiet window (inputs, few entries): light again.
        let quiet = start + LOAD_WINDOW * 2 + Duration::from_millis(1);
        feed(&mut meter, &load, quiet, 10, 1);
        meter.appended(1, quiet + LOAD_WINDOW, &load);
        assert!(load.is_light());
        let value = load.poll(Duration::from_secs(10), || Some(7));
        assert_eq!(value, Some(7));
    }

    /// Guards against polling at a few requests a second, where no poll catches its input and
    /// every poll takes a CPU from the threads with work (or against never polling again).
    #[test]
    fn sparse_inputs_are_not_polled_for() {
        let load = Load::default();
        let start = Instant::now();
        let mut meter = LoadMeter::new(start);
        // A member starts idle.
        assert!(!load.is_light());
        assert_tried_once(&load, Poller::PeerReader);
        assert_tried_once(&load, Poller::Replica);
        // A window with fewer inputs than the limit: still sparse.
        for _ in 0..SPARSE_INPUTS_PER_WINDOW - 1 {
            meter.input();
        }
        meter.appended(1, start + LOAD_WINDOW, &load);
        assert!(!load.is_light());
        assert_tried_once(&load, Poller::Replica);
        // Inputs close together: polled for.
        let active = start + LOAD_WINDOW;
        feed(&mut meter, &load, active, 0, 1);
        meter.appended(0, active + LOAD_WINDOW, &load);
        assert!(load.is_light());
        let mut calls = 0;
        let value = load.poll_replica(Duration::from_secs(10), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(value, Some(3), "polled until the input came");
        // Then nothing for a long while: the next input finds the member idle again, however
        // busy its last window was.
        feed(&mut meter, &load, active + LOAD_WINDOW, 0, 5);
        meter.appended(0, active + Duration::from_secs(5), &load);
        assert!(!load.is_light());
        assert_tried_once(&load, Poller::Replica);
    }

    /// Which of a load's polls a test checks: the peer readers' or the replica thread's.
    #[derive(Clone, Copy)]
    enum Poller {
        PeerReader,
        Replica,
    }

    /// Guards against a hold-off or an idle member that polls anyway, or a poll that never
    /// tries at all.
    fn assert_tried_once(load: &Load, poller: Poller) {
        let mut calls = 0;
        let attempt = || {
            calls += 1;
            None::<()>
        };
        let value = match poller {
            Poller::PeerReader => load.poll(Duration::from_secs(10), attempt),
            Poller::Replica => load.poll_replica(Duration::from_secs(10), attempt),
        };
        assert_eq!((value, calls), (None, 1), "tried once, not polled");
    }

    /// Guards against a hold-off that never ends (the single-client put path would lose its
    /// polling for good) or that does not stop polling while it lasts.
    #[test]
    fn a_hold_off_stops_polling_until_it_ends() {
        let (load, _meter, _) = active_load();
        load.hold_off(Duration::from_millis(50));
        assert!(!load.is_light());
        assert_tried_once(&load, Poller::PeerReader);
        // A shorter hold-off does not cut a longer one short.
        load.hold_off(Duration::ZERO);
        assert!(!load.is_light());
        std::thread::sleep(Duration::from_millis(60));
        assert!(load.is_light());
    }
}
