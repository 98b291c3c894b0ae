//! The WAL's byte format: the segment header and the record framing. Pure functions, no I/O.
//!
//! Every integer is little-endian and converted with `to_le_bytes` / `from_le_bytes`, never
//! host-endian, so a segment written on one machine reads the same on any other.
//! `docs/design/wal.md` draws these layouts byte by byte.

use std::fmt;

use super::{Entry, HardState, SnapshotMarker};

/// The first eight bytes of every segment file.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";

/// The on-disk format version this build writes and reads.
pub(super) const FORMAT_VERSION: u32 = 1;

/// magic (8) + version (4) + sequence (8) + first index (8) + previous CRC (4) + header CRC (4).
pub(super) const SEGMENT_HEADER_BYTES: usize = 36;

/// length (4) + CRC (4) + type (1).
pub(super) const RECORD_HEADER_BYTES: usize = 9;

/// The largest payload a record may carry. A corrupt length field is rejected against this
/// bound before anything is allocated, so it can never make us allocate gigabytes.
pub(super) const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// term (8) + index (8); the entry's data follows.
const ENTRY_FIXED_BYTES: usize = 16;
/// term (8) + vote (8) + commit (8).
const HARD_STATE_BYTES: usize = 24;
/// term (8) + index (8).
const SNAPSHOT_MARKER_BYTES: usize = 16;

/// The largest `Entry::data` that fits in one record.
pub(super) const ENTRY_DATA_BYTES_MAX: usize = RECORD_PAYLOAD_BYTES_MAX - ENTRY_FIXED_BYTES;

/// The smallest payload of any record type; used to skip impossible candidates quickly.
const RECORD_PAYLOAD_BYTES_MIN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RecordType {
    Entry = 1,
    HardState = 2,
    SnapshotMarker = 3,
}

impl RecordType {
    fn from_byte(byte: u8) -> Option<RecordType> {
        match byte {
            1 => Some(RecordType::Entry),
            2 => Some(RecordType::HardState),
            3 => Some(RecordType::SnapshotMarker),
            _ => None,
        }
    }

    fn payload_bytes_valid(self, payload_bytes: usize) -> bool {
        match self {
            RecordType::Entry => {
                (ENTRY_FIXED_BYTES..=RECORD_PAYLOAD_BYTES_MAX).contains(&payload_bytes)
            }
            RecordType::HardState => payload_bytes == HARD_STATE_BYTES,
            RecordType::SnapshotMarker => payload_bytes == SNAPSHOT_MARKER_BYTES,
        }
    }
}

/// The fixed header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    pub(super) sequence: u64,
    /// Every entry in earlier segments has an index below this one.
    pub(super) first_index: u64,
    /// The chain value (CRC) of the previous segment's last record; 0 for sequence 0.
    pub(super) previous_crc: u32,
}

/// Why the first bytes of a file are not a usable segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeaderError {
    NotAWal,
    UnsupportedVersion(u32),
    Short { file_bytes: usize },
    CrcMismatch { stored: u32, computed: u32 },
}

impl SegmentHeader {
    /// Returns the encoded header and its CRC, which seeds the chain of this segment's records.
    pub(super) fn encode(&self) -> ([u8; SEGMENT_HEADER_BYTES], u32) {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[20..28].copy_from_slice(&self.first_index.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.previous_crc.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..32]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        (bytes, crc)
    }

    /// Decodes the header at the start of `bytes`; returns it and its CRC (the chain seed).
    pub(super) fn decode(bytes: &[u8]) -> Result<(SegmentHeader, u32), HeaderError> {
        if bytes.len() < SEGMENT_MAGIC.len() || bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::NotAWal);
        }
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderError::Short {
                file_bytes: bytes.len(),
            });
        }
        let version = read_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let stored = read_u32(bytes, 32);
        let computed = crc32c::crc32c(&bytes[0..32]);
        if stored != computed {
            return Err(HeaderError::CrcMismatch { stored, computed });
        }
        let header = SegmentHeader {
            sequence: read_u64(bytes, 12),
            first_index: read_u64(bytes, 20),
            previous_crc: read_u32(bytes, 28),
        };
        Ok((header, computed))
    }
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Record {
    Entry(Entry),
    HardState(HardState),
    SnapshotMarker(SnapshotMarker),
}

/// Why the bytes at an offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RecordError {
    /// Fewer bytes remain than a record header.
    ShortHeader {
        available_bytes: usize,
    },
    /// The length field exceeds `RECORD_PAYLOAD_BYTES_MAX`.
    LengthTooLarge {
        payload_bytes: u64,
    },
    /// The length field points past the end of the file.
    ShortPayload {
        payload_bytes: usize,
        available_bytes: usize,
    },
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    /// The CRC matches, so these are the bytes that were written, but we can't read them.
    UnknownType(u8),
    /// The CRC matches, but the payload length doesn't fit the record type.
    BadPayloadLength {
        record_type: RecordType,
        payload_bytes: usize,
    },
}

impl RecordError {
    /// True when the CRC verified: the bytes are exactly what a writer wrote, so this can't be
    /// a torn write and is corruption wherever it appears.
    pub(super) fn crc_verified(self) -> bool {
        matches!(
            self,
            RecordError::UnknownType(_) | RecordError::BadPayloadLength { .. }
        )
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordError::ShortHeader { available_bytes } => write!(
                formatter,
                "only {available_bytes} bytes left, less than a {RECORD_HEADER_BYTES}-byte record header"
            ),
            RecordError::LengthTooLarge { payload_bytes } => write!(
                formatter,
                "record length {payload_bytes} exceeds the maximum {RECORD_PAYLOAD_BYTES_MAX}"
            ),
            RecordError::ShortPayload {
                payload_bytes,
                available_bytes,
            } => write!(
                formatter,
                "record length {payload_bytes} but only {available_bytes} bytes left in the file"
            ),
            RecordError::CrcMismatch { stored, computed } => write!(
                formatter,
                "record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            RecordError::UnknownType(byte) => write!(formatter, "unknown record type {byte}"),
            RecordError::BadPayloadLength {
                record_type,
                payload_bytes,
            } => write!(
                formatter,
                "{record_type:?} record with invalid payload length {payload_bytes}"
            ),
        }
    }
}

/// Appends one framed record to `buffer`, chained from `crc_previous`; returns its CRC.
///
/// The CRC covers the length field, the type byte and the payload, seeded with the previous
/// record's CRC, so a dropped, duplicated or reordered record breaks the chain.
fn encode_frame(
    buffer: &mut Vec<u8>,
    crc_previous: u32,
    record_type: RecordType,
    payload_parts: &[&[u8]],
) -> u32 {
    let payload_bytes: usize = payload_parts.iter().map(|part| part.len()).sum();
    assert!(
        record_type.payload_bytes_valid(payload_bytes),
        "encoding a {record_type:?} record with payload length {payload_bytes}"
    );
    let length = u32::try_from(payload_bytes).expect("payload length is bounded by 64 MiB");
    let start = buffer.len();
    buffer.reserve(RECORD_HEADER_BYTES + payload_bytes);
    buffer.extend_from_slice(&length.to_le_bytes());
    buffer.extend_from_slice(&[0u8; 4]);
    buffer.push(record_type as u8);
    for part in payload_parts {
        buffer.extend_from_slice(part);
    }
    let crc = frame_crc(
        crc_previous,
        &buffer[start..start + 4],
        &buffer[start + 8..],
    );
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    crc
}

fn frame_crc(crc_previous: u32, length_bytes: &[u8], type_and_payload: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c_append(crc_previous, length_bytes),
        type_and_payload,
    )
}

pub(super) fn encode_entry(buffer: &mut Vec<u8>, crc_previous: u32, entry: &Entry) -> u32 {
    encode_frame(
        buffer,
        crc_previous,
        RecordType::Entry,
        &[
            &entry.term.to_le_bytes(),
            &entry.index.to_le_bytes(),
            &entry.data,
        ],
    )
}

pub(super) fn encode_hard_state(
    buffer: &mut Vec<u8>,
    crc_previous: u32,
    hard_state: &HardState,
) -> u32 {
    encode_frame(
        buffer,
        crc_previous,
        RecordType::HardState,
        &[
            &hard_state.term.to_le_bytes(),
            &hard_state.vote.to_le_bytes(),
            &hard_state.commit.to_le_bytes(),
        ],
    )
}

pub(super) fn encode_snapshot_marker(
    buffer: &mut Vec<u8>,
    crc_previous: u32,
    marker: &SnapshotMarker,
) -> u32 {
    encode_frame(
        buffer,
        crc_previous,
        RecordType::SnapshotMarker,
        &[&marker.term.to_le_bytes(), &marker.index.to_le_bytes()],
    )
}

/// The extent of the record whose header starts `bytes`: checks the length field against the
/// bound and against the bytes present, and touches nothing else.
struct Frame {
    payload_bytes: usize,
    crc_stored: u32,
}

impl Frame {
    fn parse(bytes: &[u8]) -> Result<Frame, RecordError> {
        if bytes.len() < RECORD_HEADER_BYTES {
            return Err(RecordError::ShortHeader {
                available_bytes: bytes.len(),
            });
        }
        let length = read_u32(bytes, 0);
        let payload_bytes = usize::try_from(length).unwrap_or(usize::MAX);
        if payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
            return Err(RecordError::LengthTooLarge {
                payload_bytes: u64::from(length),
            });
        }
        let available_bytes = bytes.len() - RECORD_HEADER_BYTES;
        if payload_bytes > available_bytes {
            return Err(RecordError::ShortPayload {
                payload_bytes,
                available_bytes,
            });
        }
        Ok(Frame {
            payload_bytes,
            crc_stored: read_u32(bytes, 4),
        })
    }

    fn record_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_bytes
    }

    fn crc_computed(&self, bytes: &[u8], crc_previous: u32) -> u32 {
        frame_crc(crc_previous, &bytes[0..4], &bytes[8..self.record_bytes()])
    }
}

/// Decodes the record at the start of `bytes`, chained from `crc_previous`.
///
/// Returns the record, its size in bytes, and its CRC (the chain value for the next record).
/// The CRC is checked before the type and payload, so damage is reported as damage.
pub(super) fn decode_record(
    bytes: &[u8],
    crc_previous: u32,
) -> Result<(Record, usize, u32), RecordError> {
    let frame = Frame::parse(bytes)?;
    let computed = frame.crc_computed(bytes, crc_previous);
    if frame.crc_stored != computed {
        return Err(RecordError::CrcMismatch {
            stored: frame.crc_stored,
            computed,
        });
    }
    let type_byte = bytes[8];
    let record_type =
        RecordType::from_byte(type_byte).ok_or(RecordError::UnknownType(type_byte))?;
    if !record_type.payload_bytes_valid(frame.payload_bytes) {
        return Err(RecordError::BadPayloadLength {
            record_type,
            payload_bytes: frame.payload_bytes,
        });
    }
    let payload = &bytes[RECORD_HEADER_BYTES..frame.record_bytes()];
    let record = match record_type {
        RecordType::Entry => Record::Entry(Entry {
            term: read_u64(payload, 0),
            index: read_u64(payload, 8),
            data: payload[ENTRY_FIXED_BYTES..].to_vec(),
        }),
        RecordType::HardState => Record::HardState(HardState {
            term: read_u64(payload, 0),
            vote: read_u64(payload, 8),
            commit: read_u64(payload, 16),
        }),
        RecordType::SnapshotMarker => Record::SnapshotMarker(SnapshotMarker {
            term: read_u64(payload, 0),
            index: read_u64(payload, 8),
        }),
    };
    Ok((record, frame.record_bytes(), computed))
}

/// The chain values the record after a damaged record at the start of `bytes` could have been
/// seeded with: the CRC stored in its header (right unless the CRC field itself is damaged),
/// and the CRC of its bytes as they are (right if the CRC field is the damaged part).
pub(super) fn possible_chain_values(bytes: &[u8], crc_previous: u32) -> Vec<u32> {
    let mut seeds = Vec::with_capacity(2);
    if bytes.len() >= RECORD_HEADER_BYTES {
        seeds.push(read_u32(bytes, 4));
    }
    if let Ok(frame) = Frame::parse(bytes) {
        seeds.push(frame.crc_computed(bytes, crc_previous));
    }
    seeds
}

/// Whether a well-formed record starting at `bytes[0]` verifies under one of `seeds`.
///
/// Cheap checks (type, length for the type, extent) run first, so most candidates are
/// rejected without hashing. Charges the bytes it hashes to `crc_bytes_budget`; returns `None`
/// once the budget runs out, so a scan over garbage can't hash without bound.
pub(super) fn verifies_with_any_seed(
    bytes: &[u8],
    seeds: &[u32],
    crc_bytes_budget: &mut u64,
) -> Option<bool> {
    if bytes.len() < RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MIN {
        return Some(false);
    }
    let Some(record_type) = RecordType::from_byte(bytes[8]) else {
        return Some(false);
    };
    let Ok(frame) = Frame::parse(bytes) else {
        return Some(false);
    };
    if !record_type.payload_bytes_valid(frame.payload_bytes) {
        return Some(false);
    }
    let hashed_bytes = u64::try_from(frame.record_bytes()).unwrap_or(u64::MAX);
    for &seed in seeds {
        *crc_bytes_budget = crc_bytes_budget.checked_sub(hashed_bytes)?;
        if frame.crc_computed(bytes, seed) == frame.crc_stored {
            return Some(true);
        }
    }
    Some(false)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}
