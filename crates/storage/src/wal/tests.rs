//! WAL tests. Each opens with the bug it guards against.

use std::collections::BTreeMap;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::format::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::segment::SegmentFile;
use super::{Entry, HardState, Replay, SnapshotMarker, Wal, WalError, WalOptions};

// ---- helpers ----------------------------------------------------------------------------------

/// Segments of 4 MiB: every test's active segment is preallocated to its full size, and the
/// tests that rewrite files byte by byte would spend their time on 64 MiB of zeros.
fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 4 * 1024 * 1024,
        ..WalOptions::default()
    }
}

/// Small enough that a few entries fill a segment.
fn options_small_segments() -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 256,
        ..WalOptions::default()
    }
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        data: format!("put k{index} = v{index}@t{term}").into_bytes(),
    }
}

fn entries(term: u64, indices: RangeInclusive<u64>) -> Vec<Entry> {
    indices.map(|index| entry(term, index)).collect()
}

fn create(dir: &Path, options: WalOptions) -> Wal {
    Wal::create(dir, options).expect("create WAL")
}

fn open(dir: &Path, options: WalOptions) -> (Wal, Replay) {
    Wal::open(dir, options).expect("open WAL")
}

/// Writes entries `indices` with `term`, one sync per `batch` entries.
fn append_synced(wal: &mut Wal, term: u64, indices: RangeInclusive<u64>, batch: usize) {
    for chunk in entries(term, indices).chunks(batch) {
        wal.append_entries(chunk).unwrap();
        wal.sync().unwrap();
    }
}

/// The segment files, oldest first.
fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|dir_entry| dir_entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Every file in `dir` with its contents, to assert that a failed `open` modified nothing.
fn dir_contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|dir_entry| {
            let path = dir_entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// The (start, length) of every record in a segment file (which ends in zeros where it was
/// preallocated).
fn record_extents(bytes: &[u8]) -> Vec<(usize, usize)> {
    let (_, mut crc) = SegmentHeader::decode(bytes).unwrap();
    let mut extents = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() && bytes[offset..].iter().any(|&byte| byte != 0) {
        let (_, record_bytes, crc_record) = format::decode_record(&bytes[offset..], crc).unwrap();
        extents.push((offset, record_bytes));
        offset += record_bytes;
        crc = crc_record;
    }
    extents
}

/// Opens `dir` expecting `Corrupt`, checks that nothing on disk changed, and returns the
/// segment and offset reported.
fn open_expecting_corrupt(dir: &Path) -> (PathBuf, u64, String) {
    let before = dir_contents(dir);
    let error = Wal::open(dir, options()).expect_err("open must fail");
    assert_eq!(
        dir_contents(dir),
        before,
        "a failed open modified the directory"
    );
    match error {
        WalError::Corrupt {
            segment,
            offset,
            reason,
        } => (segment, offset, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn flip_bit(path: &Path, offset: usize, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for (path, bytes) in dir_contents(from) {
        std::fs::write(to.join(path.file_name().unwrap()), bytes).unwrap();
    }
}

/// A segment file whose writes or syncs fail, standing in for a failing disk.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Write,
    Sync,
}

struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    fault: Fault,
}

impl SegmentFile for FaultyFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.fault {
            Fault::Write => Err(io::Error::other("injected write failure")),
            Fault::Sync => self.inner.write_all(bytes),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        match self.fault {
            Fault::Write => self.inner.sync_data(),
            Fault::Sync => Err(io::Error::other("injected fsync failure")),
        }
    }

    fn write_zeros_at(&mut self, offset: u64, bytes: u64) -> io::Result<()> {
        self.inner.write_zeros_at(offset, bytes)
    }

    fn finish(&mut self, bytes: u64) -> io::Result<()> {
        self.inner.finish(bytes)
    }
}

/// Holds the place of the active file while it is being wrapped.
struct Detached;

impl SegmentFile for Detached {
    fn write_all(&mut self, _: &[u8]) -> io::Result<()> {
        unreachable!("detached segment file")
    }

    fn sync_data(&mut self) -> io::Result<()> {
        unreachable!("detached segment file")
    }

    fn write_zeros_at(&mut self, _: u64, _: u64) -> io::Result<()> {
        unreachable!("detached segment file")
    }

    fn finish(&mut self, _: u64) -> io::Result<()> {
        unreachable!("detached segment file")
    }
}

impl Wal {
    fn inject_fault(&mut self, fault: Fault) {
        let inner = std::mem::replace(&mut self.active_file, Box::new(Detached));
        self.active_file = Box::new(FaultyFile { inner, fault });
    }
}

// ---- round trip and log semantics -------------------------------------------------------------

/// Guards against records that are acknowledged by `sync` but not returned by `open`.
#[test]
fn synced_records_round_trip_through_open() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    assert_eq!(wal.last_index(), 0);
    wal.append_entries(&entries(1, 1..=5)).unwrap();
    wal.append_hard_state(&HardState {
        term: 1,
        vote: 7,
        commit: 5,
    })
    .unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.last_index(), 5);
    drop(wal);

    let (mut wal, replay) = open(dir.path(), options());
    assert_eq!(
        replay,
        Replay {
            hard_state: Some(HardState {
                term: 1,
                vote: 7,
                commit: 5
            }),
            snapshot: None,
            entries: entries(1, 1..=5),
        }
    );
    assert_eq!(wal.last_index(), 5);

    // Appending after open continues the CRC chain where the file ends.
    wal.append_entries(&[Entry {
        term: 2,
        index: 6,
        data: Vec::new(),
    }])
    .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, replay) = open(dir.path(), options());
    assert_eq!(replay.entries.len(), 6);
    assert_eq!(replay.entries[5].data, Vec::<u8>::new());
}

/// Guards against Raft's conflict truncation (a new suffix) leaving stale entries behind.
#[test]
fn appending_a_suffix_overwrites_entries_from_its_first_index() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=10, 10);
    append_synced(&mut wal, 2, 6..=8, 3);
    assert_eq!(wal.last_index(), 8);
    drop(wal);

    let (wal, replay) = open(dir.path(), options());
    let mut expected = entries(1, 1..=5);
    expected.extend(entries(2, 6..=8));
    assert_eq!(replay.entries, expected);
    assert_eq!(wal.last_index(), 8);
}

/// Guards against appends that would leave a log `open` calls corrupt: they are refused
/// before anything is buffered, and the `Wal` stays usable.
#[test]
fn appends_that_would_break_contiguity_are_refused_before_buffering() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    // A fresh log starts at index 1.
    assert!(matches!(
        wal.append_entries(&[entry(1, 2)]),
        Err(WalError::InvalidAppend { .. })
    ));
    append_synced(&mut wal, 1, 1..=3, 3);
    // A gap, even in the middle of a batch, refuses the whole batch.
    assert!(matches!(
        wal.append_entries(&[entry(1, 4), entry(1, 6)]),
        Err(WalError::InvalidAppend { .. })
    ));
    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 2 })
        .unwrap();
    // Index 2 is covered by the snapshot.
    assert!(matches!(
        wal.append_entries(&[entry(2, 2)]),
        Err(WalError::InvalidAppend { .. })
    ));
    // Markers don't move backwards.
    assert!(matches!(
        wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 1 }),
        Err(WalError::InvalidAppend { .. })
    ));
    wal.append_entries(&[entry(1, 4)]).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (_, replay) = open(dir.path(), options());
    assert_eq!(replay.entries, vec![entry(1, 3), entry(1, 4)]);
}

/// Guards against a client write acknowledged before its bytes reach the file: appends only
/// buffer, and `sync` is what writes.
#[test]
fn appends_are_not_written_until_sync() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=2, 2);
    wal.append_entries(&entries(1, 3..=4)).unwrap();
    drop(wal);
    let (_, replay) = open(dir.path(), options());
    assert_eq!(replay.entries, entries(1, 1..=2));
}

/// Guards against an unbounded append buffer: once it fills, the append syncs.
#[test]
fn append_syncs_once_the_buffer_is_full() {
    let dir = TempDir::new().unwrap();
    // 40 data bytes make a 65-byte record, so every second append fills a 100-byte buffer.
    let options = WalOptions {
        buffer_bytes_max: 100,
        ..WalOptions::default()
    };
    let mut wal = create(dir.path(), options.clone());
    let appended: Vec<Entry> = (1..=20)
        .map(|index| Entry {
            term: 1,
            index,
            data: vec![b'x'; 40],
        })
        .collect();
    for entry in &appended {
        wal.append_entries(std::slice::from_ref(entry)).unwrap();
        assert!(wal.buffer.len() < 100);
    }
    assert!(wal.buffer.is_empty());
    drop(wal);
    let (_, replay) = open(dir.path(), options);
    assert_eq!(replay.entries, appended);
}

/// Guards against losing the hard state or snapshot marker, and against replaying entries the
/// snapshot already covers.
#[test]
fn latest_hard_state_and_snapshot_marker_win_and_covered_entries_are_not_replayed() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    let hard_state_old = HardState {
        term: 1,
        vote: 1,
        commit: 2,
    };
    let hard_state_new = HardState {
        term: 2,
        vote: 3,
        commit: 9,
    };
    wal.append_entries(&entries(1, 1..=10)).unwrap();
    wal.append_hard_state(&hard_state_old).unwrap();
    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 3 })
        .unwrap();
    wal.append_hard_state(&hard_state_new).unwrap();
    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 6 })
        .unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (wal, replay) = open(dir.path(), options());
    assert_eq!(replay.hard_state, Some(hard_state_new));
    assert_eq!(replay.snapshot, Some(SnapshotMarker { term: 1, index: 6 }));
    assert_eq!(replay.entries, entries(1, 7..=10));
    assert_eq!(wal.last_index(), 10);
}

/// Guards against a snapshot installed from a leader (beyond the local log) being read as a
/// gap: entries continue after the marker's index.
#[test]
fn snapshot_marker_beyond_the_log_restarts_it_after_the_marker() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=5, 5);
    wal.append_snapshot_marker(&SnapshotMarker { term: 3, index: 20 })
        .unwrap();
    assert_eq!(wal.last_index(), 20);
    wal.append_entries(&entries(3, 21..=22)).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (wal, replay) = open(dir.path(), options());
    assert_eq!(replay.snapshot, Some(SnapshotMarker { term: 3, index: 20 }));
    assert_eq!(replay.entries, entries(3, 21..=22));
    assert_eq!(wal.last_index(), 22);
}

// ---- segments ---------------------------------------------------------------------------------

/// Guards against losing or misordering records at segment boundaries.
#[test]
fn segments_roll_over_at_the_size_limit_and_replay_across_them() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    append_synced(&mut wal, 1, 1..=40, 3);
    append_synced(&mut wal, 2, 35..=50, 4);
    drop(wal);

    let paths = segment_paths(dir.path());
    assert!(paths.len() > 5, "expected several segments, got {paths:?}");
    for path in &paths {
        // Each segment passes the limit by less than one sync's batch.
        assert!(std::fs::metadata(path).unwrap().len() < 256 + 4 * 64);
    }
    let (wal, replay) = open(dir.path(), options_small_segments());
    let mut expected = entries(1, 1..=34);
    expected.extend(entries(2, 35..=50));
    assert_eq!(replay.entries, expected);
    assert_eq!(wal.last_index(), 50);
}

/// Guards against a run of empty syncs (or a segment size below the header's) creating a run
/// of empty segments.
#[test]
fn only_a_sync_that_writes_can_cut_a_segment() {
    let dir = TempDir::new().unwrap();
    let options = WalOptions {
        segment_size_bytes_max: 1,
        ..WalOptions::default()
    };
    let mut wal = create(dir.path(), options.clone());
    for _ in 0..3 {
        wal.sync().unwrap();
    }
    assert_eq!(segment_paths(dir.path()).len(), 1);
    append_synced(&mut wal, 1, 1..=3, 1);
    wal.sync().unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 4);
    drop(wal);
    let (_, replay) = open(dir.path(), options);
    assert_eq!(replay.entries, entries(1, 1..=3));
}

/// Guards against segments deleted before the marker that allows it is durable (a crash would
/// leave a log that starts at a gap), and against an fsync for a marker that deletes nothing
/// (the replica thread made one per durable store sync, stalling every proposal).
#[test]
fn release_before_syncs_the_marker_only_when_it_deletes_segments() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    append_synced(&mut wal, 1, 1..=30, 2);
    let segments = segment_paths(dir.path()).len();
    assert!(segments >= 3, "test needs several segments");

    // Nothing to delete below index 2: the marker stays buffered.
    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 1 })
        .unwrap();
    wal.release_before(2).unwrap();
    assert!(
        !wal.buffer.is_empty(),
        "synced a marker that deleted nothing"
    );
    assert_eq!(segment_paths(dir.path()).len(), segments);

    // Segments to delete: the marker is made durable first.
    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 20 })
        .unwrap();
    wal.release_before(21).unwrap();
    assert!(wal.buffer.is_empty());
    assert!(segment_paths(dir.path()).len() < segments);
    drop(wal);
    let (_, replay) = open(dir.path(), options_small_segments());
    assert_eq!(replay.snapshot, Some(SnapshotMarker { term: 1, index: 20 }));
    assert_eq!(replay.entries, entries(1, 21..=30));
}

/// Guards against `release_before` deleting entries still needed, deleting the active segment,
/// or losing the hard state and snapshot marker that only older segments recorded.
#[test]
fn release_before_removes_only_segments_wholly_below_the_index() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    wal.append_hard_state(&HardState {
        term: 1,
        vote: 1,
        commit: 0,
    })
    .unwrap();
    append_synced(&mut wal, 1, 1..=30, 2);
    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 12 })
        .unwrap();
    append_synced(&mut wal, 1, 31..=40, 2);

    let first_indices: Vec<u64> = wal.segments.iter().map(|name| name.first_index).collect();
    let release_index = 13;
    wal.release_before(release_index).unwrap();
    // Kept: the segment holding `release_index - 1` and everything after it.
    let kept_from = first_indices
        .iter()
        .rposition(|&first_index| first_index <= release_index)
        .unwrap();
    assert!(
        kept_from >= 2,
        "test needs segments to release: {first_indices:?}"
    );
    assert_eq!(
        segment_paths(dir.path()).len(),
        first_indices.len() - kept_from
    );
    assert!(wal.segments[0].first_index <= release_index);

    // Releasing everything keeps the segment being written.
    wal.release_before(u64::MAX).unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 1);
    wal.append_entries(&[entry(1, 41)]).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (wal, replay) = open(dir.path(), options_small_segments());
    assert_eq!(
        replay.hard_state,
        Some(HardState {
            term: 1,
            vote: 1,
            commit: 0
        })
    );
    assert_eq!(replay.snapshot, Some(SnapshotMarker { term: 1, index: 12 }));
    assert_eq!(replay.entries.last(), Some(&entry(1, 41)));
    assert_eq!(wal.last_index(), 41);
}

/// Guards against a release that leaves entries still above the index: with the first kept
/// segment intact, replay still starts at or below the index.
#[test]
fn release_before_keeps_every_entry_at_or_above_the_index() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    append_synced(&mut wal, 1, 1..=30, 1);
    for release_index in [1, 5, 9, 17, 25] {
        wal.release_before(release_index).unwrap();
        let (_, replay) = open(dir.path(), options_small_segments());
        assert!(replay.entries[0].index <= release_index);
        assert_eq!(replay.entries.last().unwrap().index, 30);
    }
}

/// Guards against a crash between writing a new segment and renaming it leaving debris that
/// breaks the next open.
#[test]
fn leftover_temporary_segment_is_removed_by_open() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=3, 3);
    drop(wal);
    let temporary = dir.path().join("0000000000000001-0000000000000004.wal.tmp");
    std::fs::write(&temporary, b"half a segment").unwrap();

    let (_, replay) = open(dir.path(), options());
    assert_eq!(replay.entries, entries(1, 1..=3));
    assert!(!temporary.exists());
}

/// Guards against two WALs sharing a directory.
#[test]
fn create_refuses_a_directory_that_holds_a_wal_and_open_refuses_an_empty_one() {
    let dir = TempDir::new().unwrap();
    assert!(matches!(
        Wal::open(dir.path(), options()),
        Err(WalError::NotFound { .. })
    ));
    assert!(!Wal::exists(dir.path()).unwrap());
    drop(create(dir.path(), options()));
    assert!(Wal::exists(dir.path()).unwrap());
    assert!(matches!(
        Wal::create(dir.path(), options()),
        Err(WalError::AlreadyExists { .. })
    ));
}

// ---- torn tails -------------------------------------------------------------------------------

/// Guards against refusing to start after a crash mid-write, and against keeping a partial
/// record: every truncation point inside the last record yields exactly the complete records,
/// and the repaired log accepts new appends.
#[test]
fn torn_tail_at_every_byte_of_the_last_record_is_truncated_to_the_complete_records() {
    let original = TempDir::new().unwrap();
    let mut wal = create(original.path(), options());
    append_synced(&mut wal, 1, 1..=4, 4);
    drop(wal);
    let path = segment_paths(original.path()).remove(0);
    let bytes = std::fs::read(&path).unwrap();
    let &(last_start, last_bytes) = record_extents(&bytes).last().unwrap();
    let end = last_start + last_bytes;
    assert!(bytes[end..].iter().all(|&byte| byte == 0), "preallocated");

    for cut in last_start..end {
        let dir = TempDir::new().unwrap();
        let torn_path = dir.path().join(path.file_name().unwrap());
        std::fs::write(&torn_path, &bytes[..cut]).unwrap();

        let (mut wal, replay) = open(dir.path(), options());
        assert_eq!(replay.entries, entries(1, 1..=3), "cut at {cut}");
        // The partial record is gone (the file is preallocated again after it).
        let repaired = std::fs::read(&torn_path).unwrap();
        assert_eq!(repaired[..last_start], bytes[..last_start], "cut at {cut}");
        assert!(
            repaired[last_start..].iter().all(|&byte| byte == 0),
            "cut at {cut}"
        );
        assert_eq!(wal.last_index(), 3);

        wal.append_entries(&[entry(2, 4)]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, replay) = open(dir.path(), options());
        assert_eq!(replay.entries.last(), Some(&entry(2, 4)), "cut at {cut}");
    }
}

/// Guards against treating zeros after the last record (a file grown but never written, as a
/// crash or preallocation leaves) as corruption.
#[test]
fn trailing_zeros_are_the_end_of_the_log() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=4, 4);
    drop(wal);
    let path = segment_paths(dir.path()).remove(0);
    let mut bytes = std::fs::read(&path).unwrap();
    let (start, length) = *record_extents(&bytes).last().unwrap();
    let length_good = start + length;
    bytes.truncate(length_good);
    bytes.resize(length_good + 4096, 0);
    std::fs::write(&path, &bytes).unwrap();

    let (mut wal, replay) = open(dir.path(), options());
    assert_eq!(replay.entries, entries(1, 1..=4));
    // The zeros stay for appends to overwrite, and the rest is preallocated to the segment size.
    let reopened = std::fs::read(&path).unwrap();
    assert_eq!(reopened.len() as u64, options().segment_size_bytes_max);
    assert_eq!(reopened[..length_good], bytes[..length_good]);
    assert!(reopened[length_good..].iter().all(|&byte| byte == 0));
    append_synced(&mut wal, 1, 5..=6, 1);
    drop(wal);
    assert_eq!(open(dir.path(), options()).1.entries, entries(1, 1..=6));
}

/// Guards the cheaper fdatasync (see `segment::preallocate`): the segment being written is
/// preallocated to its full size, reopening finds its records and appends after them, and a
/// segment that is cut ends exactly at its last record, as older segments must.
#[test]
fn the_active_segment_is_preallocated_and_a_cut_one_ends_at_its_last_record() {
    let dir = TempDir::new().unwrap();
    let options = WalOptions {
        segment_size_bytes_max: 64 * 1024,
        ..options()
    };
    let big = |index: u64| Entry {
        term: 1,
        index,
        data: vec![u8::try_from(index).unwrap() | 1; 8 * 1024],
    };
    let length = |path: &Path| std::fs::metadata(path).unwrap().len();
    let mut wal = create(dir.path(), options.clone());
    wal.append_entries(&[big(1), big(2)]).unwrap();
    wal.sync().unwrap();
    let first = segment_paths(dir.path()).remove(0);
    assert_eq!(length(&first), 64 * 1024);
    drop(wal);

    let (mut wal, replay) = open(dir.path(), options.clone());
    assert_eq!(replay.entries, vec![big(1), big(2)]);
    assert_eq!(length(&first), 64 * 1024);
    for index in 3..=20 {
        wal.append_entries(&[big(index)]).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let paths = segment_paths(dir.path());
    assert!(
        paths.len() >= 2,
        "20 entries of 8 KiB fill a 64 KiB segment"
    );
    for older in &paths[..paths.len() - 1] {
        let bytes = std::fs::read(older).unwrap();
        let &(start, record_bytes) = record_extents(&bytes).last().unwrap();
        assert_eq!(start + record_bytes, bytes.len(), "{}", older.display());
    }
    assert_eq!(length(paths.last().unwrap()), 64 * 1024);
    let (_, replay) = open(dir.path(), options);
    assert_eq!(replay.entries, (1..=20).map(big).collect::<Vec<_>>());
}

/// Guards against a last record whose pages never reached the disk (zeros inside it) being
/// called corruption.
#[test]
fn last_record_partly_zeroed_is_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=4, 4);
    drop(wal);
    let path = segment_paths(dir.path()).remove(0);
    let mut bytes = std::fs::read(&path).unwrap();
    let &(last_start, last_bytes) = record_extents(&bytes).last().unwrap();
    bytes[last_start + last_bytes / 2..].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let (_, replay) = open(dir.path(), options());
    assert_eq!(replay.entries, entries(1, 1..=3));
}

// ---- corruption -------------------------------------------------------------------------------

/// Guards against truncating acknowledged records: a damaged record with valid records after it
/// is corruption, whichever byte (length, CRC, type or payload) is damaged, and `open` leaves
/// the file byte-for-byte unchanged.
#[test]
fn flipped_bit_in_a_middle_record_of_the_last_segment_is_corruption_and_modifies_nothing() {
    let original = TempDir::new().unwrap();
    let mut wal = create(original.path(), options());
    append_synced(&mut wal, 1, 1..=5, 5);
    drop(wal);
    let path = segment_paths(original.path()).remove(0);
    let (middle_start, middle_bytes) = record_extents(&std::fs::read(&path).unwrap())[2];

    for offset in middle_start..middle_start + middle_bytes {
        for bit in [0, 7] {
            let dir = TempDir::new().unwrap();
            copy_dir(original.path(), dir.path());
            let damaged = dir.path().join(path.file_name().unwrap());
            flip_bit(&damaged, offset, bit);

            let (segment, reported_offset, reason) = open_expecting_corrupt(dir.path());
            assert_eq!(segment, damaged);
            assert_eq!(
                reported_offset, middle_start as u64,
                "flip at {offset}: {reason}"
            );
        }
    }
}

/// Guards against an older segment's damage being "repaired" like a torn tail.
#[test]
fn flipped_bit_in_an_older_segment_is_corruption() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    append_synced(&mut wal, 1, 1..=30, 3);
    drop(wal);
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 3);
    let bytes = std::fs::read(&paths[1]).unwrap();
    let &(last_start, last_bytes) = record_extents(&bytes).last().unwrap();
    // The last record of a non-last segment: in the last segment this would be a torn tail.
    flip_bit(&paths[1], last_start + last_bytes - 1, 3);

    let (segment, offset, reason) = open_expecting_corrupt(dir.path());
    assert_eq!(segment, paths[1]);
    assert_eq!(offset, last_start as u64);
    assert!(reason.contains("not the last"), "{reason}");
}

/// Guards against an older segment that lost its tail being accepted as complete.
#[test]
fn truncated_older_segment_is_corruption() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    append_synced(&mut wal, 1, 1..=30, 3);
    drop(wal);
    let paths = segment_paths(dir.path());
    let bytes = std::fs::read(&paths[0]).unwrap();
    std::fs::write(&paths[0], &bytes[..bytes.len() - 5]).unwrap();

    let (segment, _, _) = open_expecting_corrupt(dir.path());
    assert_eq!(segment, paths[0]);
}

/// Guards against a lost middle segment silently dropping entries.
#[test]
fn missing_middle_segment_is_corruption() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options_small_segments());
    append_synced(&mut wal, 1, 1..=30, 3);
    drop(wal);
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 3);
    std::fs::remove_file(&paths[1]).unwrap();

    let (segment, offset, reason) = open_expecting_corrupt(dir.path());
    assert_eq!(segment, paths[2]);
    assert_eq!(offset, 0);
    assert!(reason.contains("missing"), "{reason}");
}

/// Guards against mixing segments of two WALs that happen to have the same file names.
#[test]
fn segment_from_another_wal_is_corruption() {
    let ours = TempDir::new().unwrap();
    let theirs = TempDir::new().unwrap();
    for (dir, term) in [(&ours, 1), (&theirs, 2)] {
        let mut wal = create(dir.path(), options_small_segments());
        append_synced(&mut wal, term, 1..=30, 3);
    }
    let our_paths = segment_paths(ours.path());
    let their_paths = segment_paths(theirs.path());
    assert_eq!(
        our_paths[1].file_name(),
        their_paths[1].file_name(),
        "test needs identical names"
    );
    std::fs::copy(&their_paths[1], &our_paths[1]).unwrap();

    let (segment, _, reason) = open_expecting_corrupt(ours.path());
    assert_eq!(segment, our_paths[1]);
    assert!(reason.contains("chains"), "{reason}");
}

/// Guards against overwriting or "repairing" a file that isn't ours.
#[test]
fn file_that_is_not_a_wal_is_rejected_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("0000000000000000-0000000000000001.wal");
    std::fs::write(&path, b"this is somebody's notes, not a log").unwrap();
    let before = dir_contents(dir.path());

    let error = Wal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(&error, WalError::NotAWal { path: reported } if *reported == path));
    assert!(error.to_string().contains("not a Keel WAL"), "{error}");
    assert_eq!(dir_contents(dir.path()), before);
    assert!(matches!(
        Wal::create(dir.path(), options()),
        Err(WalError::AlreadyExists { .. })
    ));
}

/// Guards against a corrupt length field making `open` allocate or read gigabytes.
#[test]
fn huge_length_field_in_a_middle_record_is_corruption() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=3, 3);
    drop(wal);
    let path = segment_paths(dir.path()).remove(0);
    let mut bytes = std::fs::read(&path).unwrap();
    let (middle_start, _) = record_extents(&bytes)[1];
    bytes[middle_start..middle_start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let (_, offset, reason) = open_expecting_corrupt(dir.path());
    assert_eq!(offset, middle_start as u64);
    assert!(reason.contains("exceeds the maximum"), "{reason}");
}

// ---- fail-stop --------------------------------------------------------------------------------

fn assert_poisoned(wal: &mut Wal) {
    assert!(matches!(
        wal.append_entries(&[entry(1, 3)]),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(
        wal.append_hard_state(&HardState::default()),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(
        wal.append_snapshot_marker(&SnapshotMarker::default()),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    assert!(matches!(wal.release_before(1), Err(WalError::Poisoned)));
}

/// Guards against fsyncgate: after a failed fsync, a retry must not report success.
#[test]
fn failed_fsync_poisons_the_wal() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=1, 1);
    wal.inject_fault(Fault::Sync);
    wal.append_entries(&[entry(1, 2)]).unwrap();
    assert!(matches!(wal.sync(), Err(WalError::Io { .. })));
    assert_poisoned(&mut wal);
    drop(wal);
    // Restart and replay is the way out: the log on disk still opens.
    let (_, replay) = open(dir.path(), options());
    assert_eq!(replay.entries[0], entry(1, 1));
}

/// Guards against continuing after a failed write, whose bytes may be partly in the file.
#[test]
fn failed_write_poisons_the_wal() {
    let dir = TempDir::new().unwrap();
    let mut wal = create(dir.path(), options());
    append_synced(&mut wal, 1, 1..=1, 1);
    wal.inject_fault(Fault::Write);
    wal.append_entries(&[entry(1, 2)]).unwrap();
    let error = wal.sync().unwrap_err();
    assert!(
        error.to_string().contains("injected write failure"),
        "{error}"
    );
    assert_poisoned(&mut wal);
}

// ---- zeros written ahead ----------------------------------------------------------------------

fn options_with_segment_bytes(bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes_max: bytes,
        ..WalOptions::default()
    }
}

/// An entry of ~1,000 bytes, so that a few hundred fill a test segment.
fn entry_1k(index: u64) -> Entry {
    Entry {
        term: 1,
        index,
        data: vec![7; 1000],
    }
}

/// Records the stretches of zeros the writer asks for, passing every call on.
struct ZeroLog {
    inner: Box<dyn SegmentFile>,
    zeros: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
}

impl SegmentFile for ZeroLog {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn write_zeros_at(&mut self, offset: u64, bytes: u64) -> io::Result<()> {
        self.zeros.lock().unwrap().push((offset, bytes));
        self.inner.write_zeros_at(offset, bytes)
    }

    fn finish(&mut self, bytes: u64) -> io::Result<()> {
        self.inner.finish(bytes)
    }
}

/// Guards against zeros written over records (the log would lose them at the next open), past
/// the end of the segment, or at every sync (each would cost an fsync its time), and against
/// fsyncs that land in never-written blocks (each commits ext4's journal: the reason for them).
#[test]
fn zeros_are_written_ahead_of_the_records_in_stretches() {
    let dir = TempDir::new().unwrap();
    let options = options_with_segment_bytes(1024 * 1024);
    // A reopened segment: whether its rest was written before is not known, so the writer
    // zeros ahead (a new segment is written full of zeros, see the next test).
    let mut wal = create(dir.path(), options.clone());
    append_synced(&mut wal, 1, 1..=1, 1);
    drop(wal);
    let (mut wal, _) = open(dir.path(), options.clone());
    let zeros = std::sync::Arc::default();
    let inner = std::mem::replace(&mut wal.active_file, Box::new(Detached));
    wal.active_file = Box::new(ZeroLog {
        inner,
        zeros: std::sync::Arc::clone(&zeros),
    });
    // ~1,000-byte entries, one sync each, up to about three quarters of the segment.
    let mut ends = Vec::new();
    for index in 2..=750 {
        wal.append_entries(&[entry_1k(index)]).unwrap();
        wal.sync().unwrap();
        ends.push(wal.active_bytes);
        assert!(
            wal.written_bytes >= wal.active_bytes,
            "records past the written stretch"
        );
    }
    let zeros = zeros.lock().unwrap().clone();
    let first_end = ends[0];
    assert_eq!(zeros[0], (first_end, super::ZERO_AHEAD_BYTES));
    // Contiguous stretches, each starting where the last ended, never at the records' end
    // again before half the stretch is used: a few writes, not 750.
    for pair in zeros.windows(2) {
        assert_eq!(pair[0].0 + pair[0].1, pair[1].0, "{zeros:?}");
    }
    assert!(zeros.len() <= 8, "{} stretches of zeros", zeros.len());
    let last = zeros.last().unwrap();
    assert!(last.0 + last.1 <= options.segment_size_bytes_max);

    // Past the segment's size the writer cuts, and the new segment starts over.
    append_synced(&mut wal, 1, 751..=1200, 1);
    let (_, replay) = open(dir.path(), options);
    assert_eq!(replay.entries.len(), 1200);
    assert_eq!(replay.entries[0], entry(1, 1));
    assert_eq!(replay.entries[749], entry_1k(750));
    assert_eq!(replay.entries[1199], entry(1, 1200));
}

/// Guards against segments whose blocks are only allocated (every fsync into them commits
/// ext4's journal), against a cut that waits for the next segment's zeros, and against a
/// prepared file mistaken for a segment or left behind.
#[test]
fn segments_are_written_full_of_zeros_and_the_next_one_prepared() {
    let dir = TempDir::new().unwrap();
    let options = options_with_segment_bytes(256 * 1024);
    let mut wal = create(dir.path(), options.clone());
    let first = segment_paths(dir.path()).remove(0);
    let bytes = std::fs::read(&first).unwrap();
    assert_eq!(bytes.len() as u64, options.segment_size_bytes_max);
    assert_eq!(wal.written_bytes, options.segment_size_bytes_max);

    // Half full: the next segment's file is being prepared.
    let mut index = 0;
    while wal.active_bytes < options.segment_size_bytes_max / 2 {
        index += 1;
        wal.append_entries(&[entry_1k(index)]).unwrap();
        wal.sync().unwrap();
    }
    while !wal.preparer.finished().expect("preparing the next segment") {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let prepared = dir.path().join(super::prepare::PREPARED_FILE_NAME);
    assert_eq!(
        std::fs::metadata(&prepared).unwrap().len(),
        options.segment_size_bytes_max
    );

    // The cut takes it: the new segment is the prepared file, renamed, its first bytes the
    // header; the writer needs no zeros ahead in it.
    while segment_paths(dir.path()).len() == 1 {
        index += 1;
        wal.append_entries(&[entry_1k(index)]).unwrap();
        wal.sync().unwrap();
    }
    assert!(!prepared.exists(), "the prepared file was not taken");
    assert_eq!(wal.written_bytes, options.segment_size_bytes_max);
    let second = segment_paths(dir.path()).remove(1);
    assert_eq!(
        std::fs::metadata(&second).unwrap().len(),
        options.segment_size_bytes_max
    );
    index += 1;
    wal.append_entries(&[entry_1k(index)]).unwrap();
    wal.sync().unwrap();
    drop(wal);

    // A prepared file a crash left behind is removed at open, not read as a segment.
    std::fs::write(&prepared, vec![0; 4096]).unwrap();
    let (_, replay) = open(dir.path(), options);
    assert_eq!(replay.entries.len() as u64, index);
    assert_eq!(replay.entries.last(), Some(&entry_1k(index)));
    assert!(!prepared.exists());
}
