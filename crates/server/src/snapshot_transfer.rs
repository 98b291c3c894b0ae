//! Store snapshots between members (`keelraftpb.Raft/InstallSnapshot`): how a member behind the
//! leader's compacted log catches up.
//!
//! ```text
//!  leader replica thread            leader task                 follower peer service
//!  Raft emits a Snapshot message ─▶ redb read view streamed ──▶ chunks → <snap>/<index>.tmp
//!  (metadata rewritten to the       in 1 MiB chunks, CRC-32C    CRC checked, fsync, rename,
//!   store's applied index)          over all of them            then the message to Raft
//!  report_snapshot(ok?) ◀────────── RPC result                  replica installs the file
//! ```
//! The snapshot the Raft core holds marks only where the log was compacted; the data sent is the
//! store as it is when the message goes out, so its metadata is rewritten to the store's
//! applied index (etcd's merged snapshot does the same). The file stays on the receiver until
//! its store holds the snapshot durably, so a crash in between installs it at start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use keel_api::keelraftpb::raft_client::RaftClient;
use keel_api::keelraftpb::SnapshotChunk;
use keel_raft::{Message, MessageKind};
use keel_storage::mvcc::StoreSnapshot;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::replica::Input;
use crate::transport::{message_from_wire, message_to_wire};

/// Data bytes per chunk (well under the 4 MiB a gRPC message may have by default).
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks produced ahead of the network.
const CHUNKS_QUEUED_MAX: usize = 4;
/// A transfer that takes longer is abandoned (and retried by Raft).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// The receiver gives up on a sender silent for this long.
const CHUNK_WAIT: Duration = Duration::from_secs(30);

/// Where the snapshot at log index `index` is kept until the store holds it.
pub fn snapshot_file(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016x}.keelsnap"))
}

/// Removes every snapshot file and partial transfer (called once the store holds what it
/// needs, or at start when no snapshot is pending).
pub fn remove_snapshot_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove an old snapshot file");
        }
    }
}

/// Turns what the store writes into chunks on a bounded channel (runs on a blocking thread).
struct ChunkWriter {
    chunks: mpsc::Sender<SnapshotChunk>,
    buffer: Vec<u8>,
    crc: u32,
}

impl ChunkWriter {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.crc = crc32c::crc32c_append(self.crc, &data);
        let chunk = SnapshotChunk {
            data,
            last,
            crc32c: if last { self.crc } else { 0 },
            ..SnapshotChunk::default()
        };
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send(false)?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `snapshot` with the Raft `message` to the peer at `url`, then tells the replica
/// thread how it went.
pub async fn send_snapshot(
    cluster_id: u64,
    own_id: u64,
    url: String,
    message: Message,
    snapshot: StoreSnapshot,
    inbox: SyncSender<Input>,
) {
    let to = message.to;
    let index = snapshot.header().consistent_index;
    let started = std::time::Instant::now();
    tracing::info!(peer = format!("{to:x}"), index, "sending a store snapshot");
    let result = tokio::time::timeout(
        TRANSFER_TIMEOUT,
        transfer(cluster_id, own_id, url, message, snapshot),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let finished = match result {
        Ok(bytes) => {
            tracing::info!(
                peer = format!("{to:x}"),
                index,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sent a store snapshot"
            );
            true
        }
        Err(error) => {
            tracing::warn!(peer = format!("{to:x}"), index, %error, "sending a store snapshot failed; Raft retries");
            false
        }
    };
    // The report must not be lost (the peer would wait for a snapshot forever), so it waits
    // for room in the inbox.
    let _ = tokio::task::spawn_blocking(move || {
        inbox.send(Input::SnapshotStatus { to, finished }).is_ok()
    })
    .await;
}

async fn transfer(
    cluster_id: u64,
    own_id: u64,
    url: String,
    message: Message,
    snapshot: StoreSnapshot,
) -> Result<u64, String> {
    let (chunks, queued) = mpsc::channel(CHUNKS_QUEUED_MAX);
    chunks
        .send(SnapshotChunk {
            cluster_id,
            from: own_id,
            message: Some(message_to_wire(&message)),
            ..SnapshotChunk::default()
        })
        .await
        .map_err(|_| "the chunk queue closed".to_string())?;
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            chunks,
            buffer: Vec::with_capacity(CHUNK_BYTES),
            crc: 0,
        };
        let bytes = snapshot
            .write_to(&mut out)
            .map_err(|error| error.to_string())?;
        out.send(true).map_err(|error| error.to_string())?;
        Ok::<u64, String>(bytes)
    });
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|error| format!("invalid peer URL {url}: {error}"))?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|error| format!("connecting to {url}: {error}"))?;
    let mut client = RaftClient::new(channel).max_encoding_message_size(usize::MAX);
    let sent = client
        .install_snapshot(ReceiverStream::new(queued))
        .await
        .map_err(|status| format!("the peer answered: {}", status.message()));
    let written = writer
        .await
        .map_err(|error| format!("the snapshot writer failed: {error}"))?;
    sent?;
    written
}

fn internal(error: std::io::Error) -> Status {
    Status::internal(format!("keel: snapshot file: {error}"))
}

/// Writes the chunks, from `first` to the last, into a new file at `path` and makes it durable;
/// returns the data bytes. Checks the checksum the last chunk carries.
async fn write_chunks(
    first: SnapshotChunk,
    stream: &mut Streaming<SnapshotChunk>,
    path: &Path,
) -> Result<u64, Status> {
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut crc = 0;
    let mut bytes = 0u64;
    let mut chunk = first;
    loop {
        crc = crc32c::crc32c_append(crc, &chunk.data);
        bytes += chunk.data.len() as u64;
        file.write_all(&chunk.data).await.map_err(internal)?;
        if chunk.last {
            if chunk.crc32c != crc {
                return Err(Status::data_loss(
                    "keel: the snapshot's checksum does not match its data",
                ));
            }
            break;
        }
        chunk = match tokio::time::timeout(CHUNK_WAIT, stream.message()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Err(invalid("the stream ended before the last chunk")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "keel: the snapshot sender went silent",
                ))
            }
        };
    }
    file.sync_all().await.map_err(internal)?;
    Ok(bytes)
}

fn invalid(reason: &str) -> Status {
    Status::invalid_argument(format!("keel: invalid snapshot transfer: {reason}"))
}

/// The receiving side: stores the chunks in a file under `dir`, checks them, and returns the
/// Raft message to hand to the core once the file is durable at [`snapshot_file`].
/// `check_sender` vets the first chunk's cluster and member.
pub async fn receive_snapshot(
    mut stream: Streaming<SnapshotChunk>,
    dir: &Path,
    check_sender: impl FnOnce(u64, u64) -> Result<(), Status>,
) -> Result<Message, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| invalid("empty stream"))?;
    check_sender(first.cluster_id, first.from)?;
    let message = first
        .message
        .clone()
        .and_then(message_from_wire)
        .filter(|message| message.kind == MessageKind::Snapshot)
        .ok_or_else(|| invalid("the first chunk holds no snapshot message"))?;
    let index = message
        .snapshot
        .as_ref()
        .map(|snapshot| snapshot.metadata.index)
        .filter(|&index| index > 1)
        .ok_or_else(|| invalid("no snapshot index"))?;
    tokio::fs::create_dir_all(dir).await.map_err(internal)?;
    let partial = dir.join(format!("{index:016x}.{:x}.tmp", first.from));
    let written = write_chunks(first, &mut stream, &partial).await;
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(status) => {
            // Whatever went wrong, a partial transfer is never kept.
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(status);
        }
    };
    let path = snapshot_file(dir, index);
    tokio::fs::rename(&partial, &path).await.map_err(internal)?;
    let dir_owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir_owned)?.sync_all())
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(internal)?;
    tracing::info!(index, bytes, "received a store snapshot");
    Ok(message)
}
