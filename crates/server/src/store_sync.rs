//! The periodic durable store sync, on a thread of its own.
//!
//! A durable redb commit writes out everything applied since the last one: milliseconds to
//! tens of them under load. Made on the replica thread, it stalled the member's whole write
//! path for that long, every few thousand entries (without it, the 64-client put p99 was a
//! tenth lower; BENCHMARKS.md, seventh session). [`Store::sync`] holds no lock while it
//! commits, so this thread makes it while the replica thread goes on applying, and the replica
//! thread releases the log before the durable index once it hears the result.
//!
//! ```text
//!  replica thread ──start()──▶ [1] ──▶ keel-store-sync: Store::sync() ──▶ [1] ──finished()──▶ release the log
//!                                      └ between syncs, every 50 ms: Store::start_writeback()
//! ```
//!
//! Between syncs the thread starts the writeback of the pages commits left dirty
//! ([`Store::start_writeback`]), so that a durable sync finds little left to write.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use keel_storage::mvcc::{MvccError, Store};

/// How often the thread starts writing back what commits left dirty, while entries are applied.
const WRITEBACK_EVERY: Duration = Duration::from_millis(50);

/// Starts durable syncs of `store` on its thread, one at a time, and hands back their results.
pub struct StoreSync {
    store: Arc<Store>,
    /// Started with the first call that needs it, if not at `new`.
    worker: Option<Worker>,
    /// A sync was started and its result not yet taken.
    running: bool,
}

struct Worker {
    /// Holds at most one request: only one sync runs at a time.
    requests: Option<SyncSender<()>>,
    results: Receiver<Result<u64, MvccError>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreSync {
    pub fn new(store: Arc<Store>) -> StoreSync {
        // Started now for the writeback between syncs; failing here only loses that, and
        // `start` tries again (and reports the error).
        let worker = Worker::spawn(Arc::clone(&store))
            .inspect_err(|error| tracing::warn!(%error, "store sync thread"))
            .ok();
        StoreSync {
            store,
            worker,
            running: false,
        }
    }

    /// Starts a durable sync; false (and nothing started) while one is running.
    pub fn start(&mut self) -> Result<bool, String> {
        if self.running {
            return Ok(false);
        }
        let worker = match &mut self.worker {
            Some(worker) => worker,
            None => self.worker.insert(Worker::spawn(Arc::clone(&self.store))?),
        };
        worker
            .requests
            .as_ref()
            .expect("requests close only on drop")
            .send(())
            .map_err(|_| "the store sync thread ended".to_owned())?;
        self.running = true;
        Ok(true)
    }

    /// The consistent index made durable by a sync that has finished since the last call.
    pub fn finished(&mut self) -> Result<Option<u64>, String> {
        let Some(worker) = self.worker.as_ref().filter(|_| self.running) else {
            return Ok(None);
        };
        match worker.results.try_recv() {
            Ok(result) => {
                self.running = false;
                result.map(Some).map_err(|error| format!("store: {error}"))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err("the store sync thread ended".into()),
        }
    }

    /// Waits for the running sync, if any, and returns its result.
    pub fn wait(&mut self) -> Result<Option<u64>, String> {
        let Some(worker) = self.worker.as_ref().filter(|_| self.running) else {
            return Ok(None);
        };
        self.running = false;
        match worker.results.recv() {
            Ok(result) => result.map(Some).map_err(|error| format!("store: {error}")),
            Err(_) => Err("the store sync thread ended".into()),
        }
    }
}

impl Worker {
    fn spawn(store: Arc<Store>) -> Result<Worker, String> {
        let (requests, asked) = sync_channel::<()>(1);
        let (answer, results) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("keel-store-sync".into())
            .spawn(move || {
                let mut written_back_through = store.consistent_index();
                loop {
                    match asked.recv_timeout(WRITEBACK_EVERY) {
                        Ok(()) => {
                            if answer.send(store.sync()).is_err() {
                                break;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            // Only while entries are applied: an idle member makes no call.
                            let applied = store.consistent_index();
                            if applied != written_back_through {
                                written_back_through = applied;
                                if let Err(error) = store.start_writeback() {
                                    tracing::debug!(%error, "store writeback");
                                }
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .map_err(|error| format!("cannot start the store sync thread: {error}"))?;
        Ok(Worker {
            requests: Some(requests),
            results,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    /// Lets a running sync finish: the process must not exit halfway through a commit.
    fn drop(&mut self) {
        drop(self.requests.take());
        while self.results.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            // The thread ends once its last answer is taken or the receiver is gone; it
            // cannot block on `answer` with the channel's one slot free.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, index: u64, key: &str) {
        let mut txn = store.write(index).unwrap();
        txn.put(key.as_bytes(), b"v".to_vec(), 0).unwrap();
        txn.commit(false).unwrap();
    }

    #[test]
    fn syncs_run_one_at_a_time_and_report_the_durable_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let mut syncs = StoreSync::new(Arc::clone(&store));
        assert_eq!(syncs.finished().unwrap(), None, "nothing started");
        put(&store, 2, "a");
        assert!(syncs.start().unwrap());
        assert!(!syncs.start().unwrap(), "one at a time");
        assert_eq!(syncs.wait().unwrap(), Some(2));
        assert_eq!(syncs.finished().unwrap(), None, "taken already");
        put(&store, 3, "b");
        assert!(syncs.start().unwrap());
        let durable = loop {
            if let Some(index) = syncs.finished().unwrap() {
                break index;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(durable, 3);
        drop(syncs);
        drop(store);
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.consistent_index(), 3);
    }

    #[test]
    fn dropping_waits_for_a_running_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let mut syncs = StoreSync::new(Arc::clone(&store));
        put(&store, 2, "a");
        assert!(syncs.start().unwrap());
        drop(syncs);
        assert_eq!(Arc::strong_count(&store), 1, "the thread is gone");
    }
}
