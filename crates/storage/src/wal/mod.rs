//! The write-ahead log: a member's Raft log on disk, as a directory of checksummed segments.
//!
//! The WAL knows records, not Raft: it stores entries (term, index, opaque data), hard states
//! (term, vote, commit) and snapshot markers, makes them durable on `sync`, and hands back on
//! `open` what a restart needs. Today the single-node server appends one entry per client write
//! and syncs before acknowledging; later the Raft runtime drives it. Byte layouts are drawn in
//! `docs/design/wal.md`.
//!
//! ```text
//!  append_entries / append_hard_state / append_snapshot_marker
//!        │  encode + checksum into the in-memory buffer (bounded by buffer_bytes_max)
//!        ▼
//!  sync  ──► one write() of the whole buffer + one fdatasync (group commit); every
//!        │   128 KiB or so, zeros written ahead of the records ride along (`zeros_ahead`)
//!        │   then, if the segment reached segment_size_bytes_max, cut a new segment
//!        ▼
//!  <dir>/<sequence:016x>-<first_index:016x>.wal   (header, then records)
//! ```
//!
//! # Invariants
//!
//! - **Durable means synced.** Nothing appended is durable until `sync` returns `Ok`; after it
//!   does, everything appended before it survives a crash.
//! - **Fail-stop.** After any I/O error while writing (`sync`, a segment cut, `release_before`)
//!   the `Wal` is poisoned and every later call returns `WalError::Poisoned`. A failed fsync
//!   leaves the page cache in an unknown state (the Postgres "fsyncgate" lesson); retrying could
//!   report success for data that is gone, so the process must restart and replay from disk. An
//!   `Err` from `sync` means "unknown", not "not written".
//! - **Segments appear whole.** A segment is written to `<name>.tmp`, fsynced, renamed, and the
//!   directory fsynced, so after a crash it either doesn't exist or has its header and first
//!   records. A segment is only cut after the previous one is synced, so every segment but the
//!   last ends exactly at a record boundary.
//! - **Segments chain.** A segment's header carries its sequence, its first index, and the CRC
//!   of the previous segment's last record; sequences are consecutive. A missing, reordered or
//!   foreign segment fails `open`.
//! - **Records chain.** Each record's CRC32C covers its length, type and payload, seeded with
//!   the previous record's CRC (the header's CRC for the first one), so a lost or duplicated
//!   record in the middle is detected. Lengths are bounded by 64 MiB before anything is
//!   allocated. Integers are little-endian, always.
//! - **Each segment restates the state.** A new segment begins with the latest hard state and
//!   snapshot marker, so `release_before` can drop older segments without losing them.
//! - **The log is contiguous.** An entry with index `i` replaces every entry with index `>= i`
//!   (how Raft records truncation on conflict); otherwise indices increase by one. An append
//!   that would leave a gap, or write below the snapshot marker, is refused before anything is
//!   buffered; a gap on disk is corruption. `open` returns the entries after the latest
//!   snapshot marker, contiguous.
//! - **A torn tail is repaired; anything else is refused, untouched.** A record that fails to
//!   decode at the end of the last segment with nothing valid after it (a short header, a short
//!   payload, a CRC mismatch) is a crash mid-write: `open` truncates the file to the last good
//!   record, fsyncs, logs a warning with the bytes dropped, and succeeds. Zeros after the last
//!   record are the end of the log (segments are written full of zeros ahead of their records)
//!   and stay, for appends to overwrite. Damage
//!   anywhere else returns `WalError::Corrupt` naming the file and offset, and `open` modifies
//!   nothing on disk.
//! - **Every buffer is bounded**: the append buffer (`buffer_bytes_max`, past which an append
//!   syncs), a record (64 MiB), a segment file read at open (2 GiB).
//!
//! Deliberately absent: Raft rules (who may write what), locking against a second process
//! opening the same directory.

// The on-disk format must never depend on the host's byte order.
#![deny(clippy::host_endian_bytes)]
#![warn(clippy::pedantic)]

mod error;
mod format;
mod prepare;
mod replay;
mod segment;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use error::WalError;

use format::{SegmentHeader, ENTRY_DATA_BYTES_MAX, SEGMENT_HEADER_BYTES};
use replay::{LogPosition, ReplayState};
use segment::{SegmentFile, SegmentName};

/// One log entry. `data` is opaque to the WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub data: Vec<u8>,
}

/// Raft's persistent state besides the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Records that the log up to and including `index` was compacted into a snapshot whose last
/// entry has `term`. Replay returns only entries after `index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub term: u64,
    pub index: u64,
}

/// What `Wal::open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The latest hard state appended, if any.
    pub hard_state: Option<HardState>,
    /// The latest snapshot marker appended, if any.
    pub snapshot: Option<SnapshotMarker>,
    /// The log after the snapshot marker: contiguous, each index written last wins.
    pub entries: Vec<Entry>,
}

const MIB: u64 = 1024 * 1024;
const SEGMENT_SIZE_BYTES_MAX_LIMIT: u64 = 1024 * MIB;
const BUFFER_BYTES_MAX_LIMIT: usize = 256 * 1024 * 1024;
/// How far past its records the writer keeps the active segment written with zeros.
const ZERO_AHEAD_BYTES: u64 = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is cut at the first `sync` after the current one reaches this size.
    /// 1 byte ..= 1 GiB; default 64 MiB.
    pub segment_size_bytes_max: u64,
    /// Appended records wait in memory up to this size; an append that fills it syncs.
    /// 1 byte ..= 256 MiB; default 8 MiB.
    pub buffer_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_size_bytes_max: 64 * MIB,
            buffer_bytes_max: 8 * 1024 * 1024,
        }
    }
}

impl WalOptions {
    /// The limits keep every segment file (limit + buffer + one record) under the 2 GiB that
    /// `open` is willing to read.
    fn validate(&self) -> Result<(), WalError> {
        if !(1..=SEGMENT_SIZE_BYTES_MAX_LIMIT).contains(&self.segment_size_bytes_max) {
            return Err(WalError::InvalidOptions {
                reason: format!(
                    "segment_size_bytes_max {} is outside 1..={SEGMENT_SIZE_BYTES_MAX_LIMIT}",
                    self.segment_size_bytes_max
                ),
            });
        }
        if !(1..=BUFFER_BYTES_MAX_LIMIT).contains(&self.buffer_bytes_max) {
            return Err(WalError::InvalidOptions {
                reason: format!(
                    "buffer_bytes_max {} is outside 1..={BUFFER_BYTES_MAX_LIMIT}",
                    self.buffer_bytes_max
                ),
            });
        }
        Ok(())
    }
}

/// An open write-ahead log. See the module documentation for its invariants.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// The segments on disk, oldest first; the last one is being appended to.
    segments: Vec<SegmentName>,
    active_file: Box<dyn SegmentFile>,
    /// Bytes of the active segment already written and synced.
    active_bytes: u64,
    /// The active segment's bytes known to be written, records or zeros (see `zeros_ahead`).
    written_bytes: u64,
    /// The next segment's file, zero-filled ahead of the cut.
    preparer: prepare::Preparer,
    /// Encoded records not yet written.
    buffer: Vec<u8>,
    /// The chain value of the last record encoded (in the buffer or on disk).
    crc_last: u32,
    /// The log position including buffered records.
    position: LogPosition,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMarker>,
    poisoned: bool,
}

impl fmt::Debug for Wal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("active_bytes", &self.active_bytes)
            .field("buffer_bytes", &self.buffer.len())
            .field("position", &self.position)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Whether `dir` holds WAL segments, i.e. whether to `open` rather than `create`.
    ///
    /// # Errors
    /// `Io` if the directory can't be listed, `Corrupt` for a malformed segment name.
    pub fn exists(dir: &Path) -> Result<bool, WalError> {
        if !dir.exists() {
            return Ok(false);
        }
        Ok(!segment::list(dir)?.segments.is_empty())
    }

    /// Creates a new empty WAL in `dir`, creating the directory if needed. Fails with
    /// `AlreadyExists` if it holds segments. Writes and fsyncs the first segment and fsyncs the
    /// directory. The first entry appended must have index 1, unless a snapshot marker comes
    /// first.
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidOptions`, or `Io` (nothing usable was created).
    pub fn create(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        options.validate()?;
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(WalError::io(dir))?;
            // Make the new directory's own entry durable.
            let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty());
            segment::sync_dir(parent.unwrap_or(Path::new(".")))?;
        }
        let listing = segment::list(dir)?;
        if !listing.segments.is_empty() {
            return Err(WalError::AlreadyExists {
                dir: dir.to_owned(),
            });
        }
        remove_temporary_files(dir, &listing.temporary_files)?;
        let name = SegmentName {
            sequence: 0,
            first_index: 1,
        };
        let header = SegmentHeader {
            sequence: name.sequence,
            first_index: name.first_index,
            previous_crc: 0,
        };
        let (header_bytes, chain_seed) = header.encode();
        let file = segment::create(dir, name, &header_bytes)?;
        // The first segment is written full of zeros here and now (~50 ms for 64 MiB), once in
        // a member's life; later ones are prepared on a thread (`prepare.rs`).
        let header_len = header_bytes.len() as u64;
        let zeroed = segment::write_zeros(
            &file,
            header_len,
            options.segment_size_bytes_max.saturating_sub(header_len),
        )
        .and_then(|()| file.sync_all());
        let written_bytes = match zeroed {
            Ok(()) => options.segment_size_bytes_max.max(header_len),
            Err(error) => {
                tracing::debug!(%error, "cannot zero the first WAL segment; preallocating it");
                segment::preallocate(&file, options.segment_size_bytes_max);
                header_len
            }
        };
        tracing::info!(dir = %dir.display(), "created WAL");
        Ok(Wal {
            dir: dir.to_owned(),
            options,
            segments: vec![name],
            active_file: Box::new(file),
            active_bytes: SEGMENT_HEADER_BYTES as u64,
            written_bytes,
            preparer: prepare::Preparer::default(),
            buffer: Vec::new(),
            crc_last: chain_seed,
            position: LogPosition {
                last_index: 0,
                snapshot_index: 0,
            },
            hard_state: None,
            snapshot: None,
            poisoned: false,
        })
    }

    /// Opens an existing WAL: verifies every segment and record, truncates a torn tail of the
    /// last segment (logging the bytes dropped), removes leftover `.tmp` files, and returns
    /// what the log holds.
    ///
    /// # Errors
    /// `NotFound` when the directory holds no segments; `NotAWal`, `UnsupportedVersion` or
    /// `Corrupt` when a segment fails verification (then nothing on disk was modified); `Io`;
    /// `InvalidOptions`.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Replay), WalError> {
        options.validate()?;
        let listing = segment::list(dir)?;

        // Verify everything before touching anything.
        let read_segment = |name: SegmentName| -> Result<_, WalError> {
            let path = dir.join(name.file_name());
            let bytes = segment::read(&path)?;
            let (header, chain_seed) = segment::verify_header(&path, &bytes, name)?;
            Ok((path, bytes, header, chain_seed))
        };
        let Some((&first, rest)) = listing.segments.split_first() else {
            return Err(WalError::NotFound {
                dir: dir.to_owned(),
            });
        };
        let (mut state, mut verified, mut active_path) = {
            let (path, bytes, header, chain_seed) = read_segment(first)?;
            let mut state = ReplayState::new(header.first_index);
            let verified =
                segment::verify_records(&path, &bytes, chain_seed, &mut state, rest.is_empty())?;
            (state, verified, path)
        };
        let mut previous = first;
        for (rest_number, &name) in rest.iter().enumerate() {
            let (path, bytes, header, chain_seed) = read_segment(name)?;
            check_segment_follows(&path, previous, verified.crc_last, &header, &state)?;
            let is_last = rest_number + 1 == rest.len();
            verified = segment::verify_records(&path, &bytes, chain_seed, &mut state, is_last)?;
            previous = name;
            active_path = path;
        }

        // Repair: only a torn tail of the last segment, and leftover temporary files.
        let mut active_file = OpenOptions::new()
            .write(true)
            .open(&active_path)
            .map_err(WalError::io(&active_path))?;
        if let Some(torn_tail) = &verified.torn_tail {
            if torn_tail.zeros {
                // Most likely the zeroed or preallocated rest of the segment (or a write that
                // grew the file but never landed): nothing was lost either way, and appends
                // overwrite them, so they stay.
                tracing::debug!(
                    segment = %active_path.display(),
                    offset = verified.valid_bytes,
                    zero_bytes = torn_tail.dropped_bytes,
                    "WAL ends in zeros"
                );
            } else {
                tracing::warn!(
                    segment = %active_path.display(),
                    offset = verified.valid_bytes,
                    dropped_bytes = torn_tail.dropped_bytes,
                    reason = %torn_tail.reason,
                    "WAL ends in a torn write; truncating it"
                );
                active_file
                    .set_len(verified.valid_bytes)
                    .and_then(|()| active_file.sync_all())
                    .map_err(WalError::io(&active_path))?;
            }
        }
        active_file
            .seek(SeekFrom::Start(verified.valid_bytes))
            .map_err(WalError::io(&active_path))?;
        if verified.valid_bytes < options.segment_size_bytes_max {
            segment::preallocate(&active_file, options.segment_size_bytes_max);
        }
        remove_temporary_files(dir, &listing.temporary_files)?;

        let wal = Wal {
            dir: dir.to_owned(),
            options,
            segments: listing.segments,
            active_file: Box::new(active_file),
            active_bytes: verified.valid_bytes,
            // Whether the rest was written or only allocated is not known; zero it again.
            written_bytes: verified.valid_bytes,
            preparer: prepare::Preparer::default(),
            buffer: Vec::new(),
            crc_last: verified.crc_last,
            position: state.position,
            hard_state: state.hard_state,
            snapshot: state.snapshot,
            poisoned: false,
        };
        tracing::info!(
            dir = %dir.display(),
            segments = wal.segments.len(),
            last_index = wal.position.last_index,
            "opened WAL"
        );
        Ok((wal, state.into_replay()))
    }

    /// Buffers entries; they are durable once `sync` returns. Each entry's index must be above
    /// the snapshot marker and at most `last_index() + 1` (lower overwrites a suffix). Checks
    /// the whole batch before buffering any of it.
    ///
    /// # Errors
    /// `InvalidAppend` (nothing buffered, the `Wal` stays usable); `Poisoned`; `Io` from the
    /// sync an append does when the buffer is full.
    pub fn append_entries(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.check_poisoned()?;
        let mut position = self.position;
        for entry in entries {
            if entry.data.len() > ENTRY_DATA_BYTES_MAX {
                return Err(WalError::InvalidAppend {
                    reason: format!(
                        "entry {} has {} data bytes, more than the {ENTRY_DATA_BYTES_MAX} a record holds",
                        entry.index,
                        entry.data.len()
                    ),
                });
            }
            position
                .check_entry(entry.index)
                .map_err(|reason| WalError::InvalidAppend { reason })?;
            position.apply_entry(entry.index);
        }
        for entry in entries {
            self.crc_last = format::encode_entry(&mut self.buffer, self.crc_last, entry);
            self.position.apply_entry(entry.index);
            self.sync_if_buffer_full()?;
        }
        debug_assert_eq!(self.position, position);
        Ok(())
    }

    /// Buffers a hard state; the latest one appended is what `open` returns.
    ///
    /// # Errors
    /// `Poisoned`; `Io` from the sync an append does when the buffer is full.
    pub fn append_hard_state(&mut self, hard_state: &HardState) -> Result<(), WalError> {
        self.check_poisoned()?;
        self.crc_last = format::encode_hard_state(&mut self.buffer, self.crc_last, hard_state);
        self.hard_state = Some(*hard_state);
        self.sync_if_buffer_full()
    }

    /// Buffers a snapshot marker: entries up to and including `marker.index` are no longer
    /// replayed. Markers must not move backwards.
    ///
    /// # Errors
    /// `InvalidAppend` for a marker below the previous one; `Poisoned`; `Io` from the sync an
    /// append does when the buffer is full.
    pub fn append_snapshot_marker(&mut self, marker: &SnapshotMarker) -> Result<(), WalError> {
        self.check_poisoned()?;
        self.position
            .check_snapshot_marker(marker)
            .map_err(|reason| WalError::InvalidAppend { reason })?;
        self.crc_last = format::encode_snapshot_marker(&mut self.buffer, self.crc_last, marker);
        self.position.apply_snapshot_marker(marker);
        self.snapshot = Some(*marker);
        self.sync_if_buffer_full()
    }

    /// Makes everything appended so far durable with one write and one fdatasync, then cuts a
    /// new segment if the current one is full. Does nothing when nothing was appended.
    ///
    /// # Errors
    /// `Io` on any I/O failure, after which the `Wal` is poisoned; `Poisoned`.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        let result = self.write_and_sync();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// The index of the last entry appended (buffered or not), or of the snapshot marker if
    /// that is higher; 0 for an empty log.
    #[must_use]
    pub fn last_index(&self) -> u64 {
        self.position.last_index
    }

    /// Deletes, oldest first, whole segments whose entries all have index below `index`,
    /// because a state-machine snapshot made them unnecessary. Never deletes the segment being
    /// written. Before it deletes any, it syncs what was appended (the snapshot marker that
    /// says why they may go); when it deletes none, what was appended waits for the next
    /// `sync` (a marker lost in a crash only means more entries to replay).
    ///
    /// # Errors
    /// `Io` on any I/O failure, after which the `Wal` is poisoned; `Poisoned`.
    pub fn release_before(&mut self, index: u64) -> Result<(), WalError> {
        self.check_poisoned()?;
        if self.segments.len() >= 2 && self.segments[1].first_index <= index {
            self.sync()?;
        }
        // A segment's entries are all below the next segment's first index.
        while self.segments.len() >= 2 && self.segments[1].first_index <= index {
            let path = self.dir.join(self.segments[0].file_name());
            // One removal per directory fsync, oldest first: a crash must leave a contiguous
            // run of segments, never a gap that `open` would call corruption.
            let removed = fs::remove_file(&path)
                .map_err(WalError::io(&path))
                .and_then(|()| segment::sync_dir(&self.dir));
            if let Err(error) = removed {
                self.poisoned = true;
                return Err(error);
            }
            tracing::debug!(segment = %path.display(), "released WAL segment");
            self.segments.remove(0);
        }
        Ok(())
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn sync_if_buffer_full(&mut self) -> Result<(), WalError> {
        if self.buffer.len() >= self.options.buffer_bytes_max {
            self.sync()
        } else {
            Ok(())
        }
    }

    fn active_path(&self) -> PathBuf {
        let active = self.segments.last().expect("a WAL always has a segment");
        self.dir.join(active.file_name())
    }

    fn write_and_sync(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            // Nothing to make durable. Not cutting here keeps a run of empty syncs from
            // creating a run of empty segments.
            return Ok(());
        }
        let path = self.active_path();
        let end = self.active_bytes + self.buffer.len() as u64;
        let zeros = self.zeros_ahead(end);
        self.active_file
            .write_all(&self.buffer)
            .and_then(|()| match zeros {
                Some((offset, bytes)) => self.active_file.write_zeros_at(offset, bytes),
                None => Ok(()),
            })
            .and_then(|()| self.active_file.sync_data())
            .map_err(WalError::io(path))?;
        self.active_bytes = end;
        self.written_bytes = self.written_bytes.max(end);
        if let Some((offset, bytes)) = zeros {
            self.written_bytes = offset + bytes;
        }
        if self.active_bytes >= self.options.segment_size_bytes_max / 2 {
            self.preparer
                .start(&self.dir, self.options.segment_size_bytes_max);
        }
        self.buffer.clear();
        // One huge record mustn't pin its allocation forever.
        if self.buffer.capacity() > 2 * self.options.buffer_bytes_max {
            self.buffer.shrink_to(self.options.buffer_bytes_max);
        }
        if self.active_bytes >= self.options.segment_size_bytes_max {
            self.cut()?;
        }
        Ok(())
    }

    /// The zeros to write with the records that end at `end`: a stretch of up to
    /// `ZERO_AHEAD_BYTES` past them once less than half of that is left written ahead.
    ///
    /// Why: a preallocated block is an "unwritten" extent to ext4, and the first write into one
    /// changes the extent tree, which the fdatasync must then commit through the journal: with
    /// every small append landing in fresh blocks, that was every fsync. Written ahead in
    /// stretches, the journal commit comes once per stretch and the fsyncs between overwrite
    /// written blocks (a probe here: 2.4 KB appends, fdatasync p50 ~210 → ~130–150 µs, p90
    /// ~280 → ~150–190 µs). A larger stretch makes the one fsync that carries it slower.
    fn zeros_ahead(&self, end: u64) -> Option<(u64, u64)> {
        let limit = self.options.segment_size_bytes_max;
        if self.written_bytes >= end + ZERO_AHEAD_BYTES / 2 || end >= limit {
            return None;
        }
        let from = self.written_bytes.max(end);
        let to = (end + ZERO_AHEAD_BYTES).min(limit);
        (to > from).then(|| (from, to - from))
    }

    /// Starts a new segment. The current one must be fully synced.
    fn cut(&mut self) -> Result<(), WalError> {
        assert!(
            self.buffer.is_empty(),
            "cutting a segment with unsynced records"
        );
        let previous = *self.segments.last().expect("a WAL always has a segment");
        let name = SegmentName {
            sequence: previous.sequence + 1,
            first_index: self.position.last_index + 1,
        };
        let header = SegmentHeader {
            sequence: name.sequence,
            first_index: name.first_index,
            previous_crc: self.crc_last,
        };
        let (header_bytes, mut crc) = header.encode();
        let mut contents = header_bytes.to_vec();
        if let Some(hard_state) = &self.hard_state {
            crc = format::encode_hard_state(&mut contents, crc, hard_state);
        }
        if let Some(marker) = &self.snapshot {
            crc = format::encode_snapshot_marker(&mut contents, crc, marker);
        }
        // The full segment ends at its last record before the next one exists (invariant 4).
        let previous_path = self.active_path();
        self.active_file
            .finish(self.active_bytes)
            .map_err(WalError::io(previous_path))?;
        let (file, written_bytes) = if let Some(prepared) = self.preparer.take_ready() {
            (
                segment::install(&self.dir, name, &contents, prepared)?,
                self.options.segment_size_bytes_max,
            )
        } else {
            let file = segment::create(&self.dir, name, &contents)?;
            segment::preallocate(&file, self.options.segment_size_bytes_max);
            (file, contents.len() as u64)
        };
        tracing::debug!(
            segment = %name.file_name(),
            previous_bytes = self.active_bytes,
            prepared = written_bytes > contents.len() as u64,
            "cut WAL segment"
        );
        self.active_file = Box::new(file);
        self.active_bytes = contents.len() as u64;
        self.written_bytes = written_bytes.max(self.active_bytes);
        self.crc_last = crc;
        self.segments.push(name);
        Ok(())
    }
}

/// Checks that a segment continues the one before it: the next sequence, the chain value the
/// previous one ended with, and the next index.
fn check_segment_follows(
    path: &Path,
    previous: SegmentName,
    previous_crc: u32,
    header: &SegmentHeader,
    state: &ReplayState,
) -> Result<(), WalError> {
    let corrupt = |reason: String| WalError::Corrupt {
        segment: path.to_owned(),
        offset: 0,
        reason,
    };
    if previous.sequence.checked_add(1) != Some(header.sequence) {
        return Err(corrupt(format!(
            "segment sequence {} follows {}: a segment is missing",
            header.sequence, previous.sequence
        )));
    }
    if header.previous_crc != previous_crc {
        return Err(corrupt(format!(
            "header chains from CRC {:#010x} but the previous segment ends with {previous_crc:#010x}: \
             segments are mixed or the previous one lost records",
            header.previous_crc
        )));
    }
    if state.position.last_index.checked_add(1) != Some(header.first_index) {
        return Err(corrupt(format!(
            "segment first index {} does not follow last index {}",
            header.first_index, state.position.last_index
        )));
    }
    Ok(())
}

fn remove_temporary_files(dir: &Path, temporary_files: &[PathBuf]) -> Result<(), WalError> {
    for path in temporary_files {
        tracing::info!(file = %path.display(), "removing unfinished WAL segment");
        fs::remove_file(path).map_err(WalError::io(path))?;
    }
    if !temporary_files.is_empty() {
        segment::sync_dir(dir)?;
    }
    Ok(())
}
