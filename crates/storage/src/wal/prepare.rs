//! The next segment file, written full of zeros on a thread of its own before it is needed
//! (etcd's file pipeline, with zeros where etcd allocates).
//!
//! Why zeros and not `fallocate` alone: blocks that `fallocate` reserves are "unwritten"
//! extents to ext4, and the first write into one changes the extent tree, which the next
//! fdatasync must commit through the journal. In a segment written full of zeros beforehand,
//! every append overwrites written blocks and its fdatasync flushes data only. Writing 64 MiB
//! and syncing it takes ~50 ms here, too long for the thread that answers proposals; so the
//! writer starts preparing once its segment is half full and takes the file at the cut only if
//! it is ready (otherwise it creates one as before, and zeros ahead of its records).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use super::segment;

/// The prepared file's name: a temporary file, so `open` removes one a crash left behind.
pub(super) const PREPARED_FILE_NAME: &str = "prepared.wal.tmp";

/// The zeros written and synced at a time: ~0.5 ms of this disk's time, so a WAL fsync that
/// comes meanwhile waits at most about that long.
const STRETCH_BYTES: u64 = 1024 * 1024;
/// Leaves the disk to the writers between stretches: 64 MiB take ~0.3 s, well within the
/// time the writer takes to fill the second half of its segment.
const PAUSE_AFTER_STRETCH: Duration = Duration::from_millis(4);

/// A zero-filled file of a segment's size, not yet a segment.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) file: File,
    pub(super) path: PathBuf,
}

/// At most one preparation at a time, and at most one prepared file.
#[derive(Debug, Default)]
pub(super) struct Preparer {
    preparing: Option<JoinHandle<io::Result<Prepared>>>,
}

impl Preparer {
    /// Starts writing `bytes` zeros into a new prepared file in `dir`, unless a preparation is
    /// under way or its file not yet taken.
    pub(super) fn start(&mut self, dir: &Path, bytes: u64) {
        if self.preparing.is_some() {
            return;
        }
        let path = dir.join(PREPARED_FILE_NAME);
        let spawned = std::thread::Builder::new()
            .name("keel-wal-prepare".to_owned())
            .spawn(move || prepare(path, bytes));
        match spawned {
            Ok(handle) => self.preparing = Some(handle),
            // Only speed is lost: the cut creates its segment itself.
            Err(error) => tracing::debug!(%error, "cannot start preparing a WAL segment"),
        }
    }

    /// The prepared file, if its preparation has finished and succeeded. Never waits.
    pub(super) fn take_ready(&mut self) -> Option<Prepared> {
        if !self.preparing.as_ref()?.is_finished() {
            return None;
        }
        let handle = self.preparing.take()?;
        match handle.join() {
            Ok(Ok(prepared)) => Some(prepared),
            Ok(Err(error)) => {
                tracing::debug!(%error, "preparing a WAL segment failed; creating it at the cut");
                None
            }
            Err(_) => {
                tracing::warn!("the thread preparing a WAL segment panicked");
                None
            }
        }
    }
}

impl Preparer {
    /// Whether the preparation under way has finished; None when there is none.
    #[cfg(test)]
    pub(super) fn finished(&self) -> Option<bool> {
        self.preparing.as_ref().map(JoinHandle::is_finished)
    }
}

fn prepare(path: PathBuf, bytes: u64) -> io::Result<Prepared> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    // In stretches, each synced, with a pause after: 64 MiB written and synced at once held
    // the members' WAL fsyncs on the shared disk behind it (a put took 135 ms).
    let mut offset = 0;
    while offset < bytes {
        let stretch = (bytes - offset).min(STRETCH_BYTES);
        segment::write_zeros(&file, offset, stretch)?;
        file.sync_data()?;
        offset += stretch;
        std::thread::sleep(PAUSE_AFTER_STRETCH);
    }
    file.sync_all()?;
    Ok(Prepared { file, path })
}
