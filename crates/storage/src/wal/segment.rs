//! Segment files: their names, the directory listing, verifying one segment's bytes, creating a
//! new segment durably, and the small file trait the writer does its I/O through.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::WalError;
use super::format::{
    self, HeaderError, Record, RecordError, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use super::prepare::Prepared;
use super::replay::ReplayState;

/// Segment files are `<sequence:016x>-<first_index:016x>.wal`.
const SEGMENT_SUFFIX: &str = ".wal";
/// A segment being created is written under this suffix and renamed once it is durable.
const TEMPORARY_SUFFIX: &str = ".wal.tmp";

/// No segment this WAL writes gets near this size (see `WalOptions::validate`); a larger file
/// is refused before it is read into memory.
const SEGMENT_FILE_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// How many bytes the torn-tail check may hash while looking for valid records after a damaged
/// one. Past this it gives up and reports corruption, the answer that loses nothing.
const TORN_TAIL_SCAN_CRC_BYTES_MAX: u64 = 1024 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentName {
    pub(super) sequence: u64,
    pub(super) first_index: u64,
}

impl SegmentName {
    pub(super) fn file_name(self) -> String {
        format!(
            "{:016x}-{:016x}{SEGMENT_SUFFIX}",
            self.sequence, self.first_index
        )
    }

    fn parse(file_name: &str) -> Option<SegmentName> {
        let stem = file_name.strip_suffix(SEGMENT_SUFFIX)?;
        let (sequence, first_index) = stem.split_once('-')?;
        let parse_hex = |digits: &str| {
            let well_formed = digits.len() == 16
                && digits
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            well_formed
                .then(|| u64::from_str_radix(digits, 16).ok())
                .flatten()
        };
        Some(SegmentName {
            sequence: parse_hex(sequence)?,
            first_index: parse_hex(first_index)?,
        })
    }
}

/// What a WAL directory holds.
#[derive(Debug)]
pub(super) struct Listing {
    /// Sorted by sequence; sequences are unique.
    pub(super) segments: Vec<SegmentName>,
    /// Leftovers of segment creations a crash interrupted.
    pub(super) temporary_files: Vec<PathBuf>,
}

/// Lists `dir`. Files that are neither segments nor temporary segments are ignored; a `.wal`
/// file with a malformed name or a duplicated sequence is an error, as it means someone else
/// has been writing here.
pub(super) fn list(dir: &Path) -> Result<Listing, WalError> {
    let mut segments = Vec::new();
    let mut temporary_files = Vec::new();
    for dir_entry in fs::read_dir(dir).map_err(WalError::io(dir))? {
        let dir_entry = dir_entry.map_err(WalError::io(dir))?;
        let file_name = dir_entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name.ends_with(TEMPORARY_SUFFIX) {
            temporary_files.push(dir_entry.path());
        } else if file_name.ends_with(SEGMENT_SUFFIX) {
            let name = SegmentName::parse(file_name).ok_or_else(|| WalError::Corrupt {
                segment: dir_entry.path(),
                offset: 0,
                reason: "file name is not <sequence:016x>-<first_index:016x>.wal".to_owned(),
            })?;
            segments.push(name);
        }
    }
    segments.sort_by_key(|name| name.sequence);
    if let Some(pair) = segments
        .windows(2)
        .find(|pair| pair[0].sequence == pair[1].sequence)
    {
        return Err(WalError::Corrupt {
            segment: dir.join(pair[1].file_name()),
            offset: 0,
            reason: format!(
                "two segments with sequence {} ({} and {})",
                pair[0].sequence,
                pair[0].file_name(),
                pair[1].file_name()
            ),
        });
    }
    Ok(Listing {
        segments,
        temporary_files,
    })
}

/// Reads a whole segment file, refusing one larger than any segment we write.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, WalError> {
    let file_bytes = fs::metadata(path).map_err(WalError::io(path))?.len();
    if file_bytes > SEGMENT_FILE_BYTES_MAX {
        return Err(WalError::Corrupt {
            segment: path.to_owned(),
            offset: 0,
            reason: format!(
                "file is {file_bytes} bytes, larger than any segment ({SEGMENT_FILE_BYTES_MAX})"
            ),
        });
    }
    fs::read(path).map_err(WalError::io(path))
}

/// Decodes a segment's header and checks it against its file name. Returns the header and the
/// chain seed for its first record.
pub(super) fn verify_header(
    path: &Path,
    bytes: &[u8],
    name: SegmentName,
) -> Result<(SegmentHeader, u32), WalError> {
    let corrupt = |reason: String| WalError::Corrupt {
        segment: path.to_owned(),
        offset: 0,
        reason,
    };
    let (header, chain_seed) = SegmentHeader::decode(bytes).map_err(|error| match error {
        HeaderError::NotAWal => WalError::NotAWal {
            path: path.to_owned(),
        },
        HeaderError::UnsupportedVersion(version) => WalError::UnsupportedVersion {
            path: path.to_owned(),
            version,
            supported: FORMAT_VERSION,
        },
        HeaderError::Short { file_bytes } => corrupt(format!(
            "file is {file_bytes} bytes, shorter than the {SEGMENT_HEADER_BYTES}-byte segment header"
        )),
        HeaderError::CrcMismatch { stored, computed } => corrupt(format!(
            "segment header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )),
    })?;
    if header.sequence != name.sequence || header.first_index != name.first_index {
        return Err(corrupt(format!(
            "header says sequence {} and first index {}, the file name says {} and {}",
            header.sequence, header.first_index, name.sequence, name.first_index
        )));
    }
    if header.first_index == 0 {
        return Err(corrupt("segment first index is 0".to_owned()));
    }
    Ok((header, chain_seed))
}

/// The outcome of reading one segment's records.
#[derive(Debug)]
pub(super) struct VerifiedSegment {
    /// The file length up to the end of the last good record.
    pub(super) valid_bytes: u64,
    /// The chain value after the last good record.
    pub(super) crc_last: u32,
    /// Set when the last segment ends in a torn write that `open` must truncate.
    pub(super) torn_tail: Option<TornTail>,
}

#[derive(Debug)]
pub(super) struct TornTail {
    pub(super) dropped_bytes: u64,
    pub(super) reason: String,
    /// Only zeros follow: usually the preallocated end of the segment, not a torn write.
    pub(super) zeros: bool,
}

/// Reads every record after the header into `state`.
///
/// A record that fails to decode is a torn tail only in the last segment, and only when
/// nothing valid follows it; anywhere else it is corruption.
pub(super) fn verify_records(
    path: &Path,
    bytes: &[u8],
    chain_seed: u32,
    state: &mut ReplayState,
    is_last: bool,
) -> Result<VerifiedSegment, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        segment: path.to_owned(),
        offset: offset as u64,
        reason,
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut crc = chain_seed;
    // Each pass consumes at least one record header, so this ends within `bytes.len()` passes.
    while offset < bytes.len() {
        match format::decode_record(&bytes[offset..], crc) {
            Ok((record, record_bytes, crc_record)) => {
                let applied = match record {
                    Record::Entry(entry) => state.apply_entry(entry),
                    Record::HardState(hard_state) => {
                        state.apply_hard_state(hard_state);
                        Ok(())
                    }
                    Record::SnapshotMarker(marker) => state.apply_snapshot_marker(marker),
                };
                applied.map_err(|reason| corrupt(offset, reason))?;
                offset += record_bytes;
                crc = crc_record;
            }
            Err(error) if !is_last => {
                return Err(corrupt(
                    offset,
                    format!("{error}, in a segment that is not the last"),
                ));
            }
            Err(error) => {
                judge_damaged_tail(&bytes[offset..], crc, error)
                    .map_err(|reason| corrupt(offset, reason))?;
                return Ok(VerifiedSegment {
                    valid_bytes: offset as u64,
                    crc_last: crc,
                    torn_tail: Some(TornTail {
                        dropped_bytes: (bytes.len() - offset) as u64,
                        reason: error.to_string(),
                        zeros: bytes[offset..].iter().all(|&byte| byte == 0),
                    }),
                });
            }
        }
    }
    Ok(VerifiedSegment {
        valid_bytes: offset as u64,
        crc_last: crc,
        torn_tail: None,
    })
}

/// Decides whether a damaged record at the start of `tail`, in the last segment, is a torn
/// write (`Ok`) or corruption (`Err` with the reason).
///
/// A crash mid-write leaves a prefix of the last write, possibly followed by zeros where the
/// file grew but the data never landed. So the damage is torn when nothing after it verifies.
/// We look for a record that chains from the damaged one (seeded with its stored or its
/// computed CRC, whichever part of it is damaged), at every byte offset, because a damaged
/// length field hides where the next record starts.
fn judge_damaged_tail(tail: &[u8], crc_previous: u32, error: RecordError) -> Result<(), String> {
    if error.crc_verified() {
        return Err(error.to_string());
    }
    if tail.iter().all(|&byte| byte == 0) {
        return Ok(());
    }
    if matches!(error, RecordError::ShortHeader { .. }) {
        return Ok(());
    }
    let seeds = format::possible_chain_values(tail, crc_previous);
    let mut crc_bytes_budget = TORN_TAIL_SCAN_CRC_BYTES_MAX;
    // A record's type byte (its 9th) is never zero, so none starts in the trailing zeros (the
    // preallocated rest of the segment, up to 64 MiB): don't scan them.
    let last_nonzero = tail.iter().rposition(|&byte| byte != 0).unwrap_or(0);
    for start in 1..tail.len().min(last_nonzero + 1) {
        match format::verifies_with_any_seed(&tail[start..], &seeds, &mut crc_bytes_budget) {
            Some(false) => {}
            Some(true) => {
                return Err(format!(
                    "{error}, and a valid record follows {start} bytes later"
                ))
            }
            None => {
                return Err(format!(
                    "{error}; could not rule out valid records after it within the scan budget"
                ))
            }
        }
    }
    Ok(())
}

/// Creates a segment durably: writes `contents` (header and first records) to a temporary
/// file, fsyncs it, renames it into place and fsyncs the directory, so after a crash the
/// segment either doesn't exist or exists whole. Returns the file, positioned at its end.
pub(super) fn create(dir: &Path, name: SegmentName, contents: &[u8]) -> Result<File, WalError> {
    let path = dir.join(name.file_name());
    let temporary_path = dir.join(format!("{}.tmp", name.file_name()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary_path)
        .map_err(WalError::io(&temporary_path))?;
    Write::write_all(&mut file, contents)
        .and_then(|()| file.sync_all())
        .map_err(WalError::io(&temporary_path))?;
    fs::rename(&temporary_path, &path).map_err(WalError::io(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a prepared file (`prepare.rs`) the segment `name` durably, as `create` does: writes
/// `contents` over its first zeros, fsyncs, renames it into place and fsyncs the directory.
/// Returns the file, positioned after `contents`.
pub(super) fn install(
    dir: &Path,
    name: SegmentName,
    contents: &[u8],
    prepared: Prepared,
) -> Result<File, WalError> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(name.file_name());
    let Prepared {
        mut file,
        path: prepared_path,
    } = prepared;
    file.write_all_at(contents, 0)
        .and_then(|()| file.sync_data())
        .and_then(|()| file.seek(SeekFrom::Start(contents.len() as u64)).map(drop))
        .map_err(WalError::io(&prepared_path))?;
    fs::rename(&prepared_path, &path).map_err(WalError::io(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `bytes` zeros at `offset` (positioned writes: the file's own position stays).
pub(super) fn write_zeros(file: &File, mut offset: u64, bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let end = offset + bytes;
    while offset < end {
        let length = usize::try_from(end - offset).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
        file.write_all_at(&ZEROS[..length], offset)?;
        offset += length as u64;
    }
    Ok(())
}

/// Reserves the segment's blocks up to `bytes` (best effort: an error only costs speed).
///
/// Why: an fdatasync after an append that grows the file also commits the new size through
/// the filesystem's journal; within a preallocated file it does not. On ext4 here that halves
/// the fdatasync of a small write (p50 ~250 → ~120 µs), the largest part of a put's latency.
/// The file reads as zeros past its records; `open` takes those for the end of the log.
/// etcd preallocates its WAL segments the same way. The blocks stay "unwritten" extents,
/// though, so the writer also zeros a stretch ahead of its records (`Wal::write_and_sync`).
pub(super) fn preallocate(file: &File, bytes: u64) {
    if let Err(error) = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        tracing::debug!(%error, "cannot preallocate a WAL segment; appending instead");
    }
}

/// Makes creations, renames and removals of directory entries durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(WalError::io(dir))
}

/// The I/O the writer does on the segment it appends to. A trait so tests can inject failures.
pub(super) trait SegmentFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    /// Writes `bytes` zeros at `offset`, past the records, without moving the append position.
    fn write_zeros_at(&mut self, offset: u64, bytes: u64) -> io::Result<()>;
    /// Cuts off the preallocated rest after `bytes` (the end of the last record) durably, so
    /// a segment that is no longer the last ends exactly at a record boundary.
    fn finish(&mut self, bytes: u64) -> io::Result<()>;
}

impl SegmentFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn write_zeros_at(&mut self, offset: u64, bytes: u64) -> io::Result<()> {
        write_zeros(self, offset, bytes)
    }

    fn finish(&mut self, bytes: u64) -> io::Result<()> {
        self.set_len(bytes)?;
        self.sync_all()
    }
}
