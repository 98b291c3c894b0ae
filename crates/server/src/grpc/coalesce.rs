//! Client connections whose writes are coalesced: everything HTTP/2 writes while it serves one
//! round of a connection goes to the socket in one `write`, as grpc-go's loopy writer (etcd's)
//! does, instead of one `writev` per response frame.
//!
//! The h2 crate writes each DATA frame larger than 256 bytes from its own buffer, flushing
//! what came before it first: a unary reply took two `writev`s (headers and data, then the
//! trailers) and a watch stream's 16.5 KB batch two (one per 16 KiB frame). Under 64 clients a
//! member made 1.7 `writev`s per serializable range where etcd made 0.17 `write`s; on loopback
//! each one also runs the receiver's TCP path and wakes it, so the client paid for them too.
//!
//! [`CoalescedIo`] takes every write into a bounded buffer and answers at once; a flush hands
//! the buffer to the connection's writer task, which a flush wakes but which runs only once
//! the connection's task has yielded (tokio runs a task woken by the running one right after
//! it), and so writes all that round produced in one system call; a small write first lets
//! the other ready tasks run once, so that replies finishing together go out together.
//!
//! ```text
//!  connection task (hyper/h2) ──poll_write──▶ pending (≤ PENDING_BYTES_MAX)
//!                             ──poll_flush──▶ wake ──▶ writer task: swap, write_all(socket)
//! ```
//!
//! A flush answered before the bytes reach the socket promises no more than a `write` to a
//! socket does: they go out in order, ahead of anything written later, and a write error is
//! reported by the next write, flush or shutdown. Shutdown waits until everything written
//! before it is out, or [`LINGER`] has passed (a client that stopped reading); a dropped
//! connection's writer task gets as long, then ends.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a connection may have written but not yet handed to its socket; past this its writes
/// wait for the writer task (which holds at most as much again, being written). A watch stream
/// queues at most 4 × 64 KiB itself.
const PENDING_BYTES_MAX: usize = 256 * 1024;

/// A buffer larger than this is freed once written (idle connections keep little memory).
const KEPT_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// How long a closed (shut down or dropped) connection's writer task may take to write what
/// was left (shorter in unit tests, which wait it out).
const LINGER: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_millis(300)
} else {
    std::time::Duration::from_secs(10)
};

/// A write smaller than this waits for the other tasks that are ready to run first, once (as
/// grpc-go's loopy writer does for less than its `minBatchSize`, 1,000 bytes): a reply's
/// frames are ~400 bytes, and under load other replies of the connection are about to come.
const MIN_BATCH_BYTES: usize = 1000;

/// A client connection: reads go straight to the socket, writes through the writer task.
pub struct CoalescedIo {
    read: OwnedReadHalf,
    shared: Arc<Shared>,
    info: TcpConnectInfo,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task: something to write, or the connection closing.
    writer: Notify,
    /// Told (once, with a permit) when the connection closes: ends a write waiting on a client
    /// that does not read at the deadline.
    closing: Notify,
}

#[derive(Default)]
struct State {
    /// Written by the connection, not yet taken by the writer task.
    pending: Vec<u8>,
    /// The connection's task, waiting for room in `pending`.
    blocked: Option<Waker>,
    /// The writer task failed; every later write, flush or shutdown fails with this.
    failed: Option<(io::ErrorKind, String)>,
    /// Set when the connection is shut down or dropped: the writer task writes what is pending
    /// by then, at the latest (else it gives up), and shuts the socket down.
    linger_until: Option<tokio::time::Instant>,
    /// The writer task has shut the socket down.
    closed: bool,
    /// The connection's task, waiting in `poll_shutdown`.
    shutting_down: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves nothing half-changed worth refusing.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection closes (shut down or dropped): the writer task gets [`LINGER`] from now
    /// to write what is pending.
    fn close(&self) {
        let mut state = self.lock();
        if state.linger_until.is_none() {
            state.linger_until = Some(tokio::time::Instant::now() + LINGER);
            drop(state);
            self.closing.notify_one();
        }
        self.writer.notify_one();
    }
}

impl State {
    fn error(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    /// The connection's task may write again: the writer task took what was pending.
    fn unblock(&mut self) {
        if let Some(blocked) = self.blocked.take() {
            blocked.wake();
        }
    }

    /// The writer task ends, after `failure` if any: later writes, flushes and shutdowns
    /// fail with it (or a shutdown succeeds), and nobody waits on the task any more.
    fn end(&mut self, failure: Option<io::Error>) {
        if let Some(error) = failure {
            self.failed.get_or_insert((error.kind(), error.to_string()));
        }
        self.closed = true;
        self.pending = Vec::new();
        self.unblock();
        if let Some(waiter) = self.shutting_down.take() {
            waiter.wake();
        }
    }
}

impl CoalescedIo {
    /// Takes over `socket` and starts its writer task (on the current tokio runtime).
    pub fn new(socket: TcpStream) -> CoalescedIo {
        let info = socket.connect_info();
        let (read, write) = socket.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: Notify::new(),
            closing: Notify::new(),
        });
        tokio::spawn(write_loop(Arc::clone(&shared), write));
        CoalescedIo { read, shared, info }
    }

    /// Takes what fits under [`PENDING_BYTES_MAX`] of `bufs`; waits for room when none is left.
    fn write_from(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        if let Some(error) = state.error() {
            return Poll::Ready(Err(error));
        }
        if state.linger_until.is_some() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = PENDING_BYTES_MAX - state.pending.len();
        if room == 0 && bufs.iter().any(|buf| !buf.is_empty()) {
            state.blocked = Some(cx.waker().clone());
            drop(state);
            self.shared.writer.notify_one();
            return Poll::Pending;
        }
        // A short write when the room runs out (h2 writes the rest next).
        let mut written = 0;
        for buf in bufs {
            let taken = buf.len().min(room - written);
            state.pending.extend_from_slice(&buf[..taken]);
            written += taken;
            if written == room {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }
}

/// The writer task: writes whatever the connection has written, in order, until it closes.
async fn write_loop(shared: Arc<Shared>, mut socket: OwnedWriteHalf) {
    let mut taken = Vec::new();
    loop {
        let linger_until = {
            let mut state = shared.lock();
            std::mem::swap(&mut state.pending, &mut taken);
            state.unblock();
            state.linger_until
        };
        if taken.is_empty() {
            if linger_until.is_some() {
                let shut = socket.shutdown().await;
                shared.lock().end(shut.err());
                return;
            }
            // A burst's buffers are not kept for a connection that has gone quiet.
            if taken.capacity() > KEPT_BUFFER_BYTES_MAX {
                taken = Vec::new();
            }
            shared.writer.notified().await;
            continue;
        }
        if taken.len() < MIN_BATCH_BYTES {
            // Other responses of this connection may be a task away: let them join this write.
            tokio::task::yield_now().await;
            let mut state = shared.lock();
            taken.extend_from_slice(&state.pending);
            state.pending.clear();
            state.unblock();
        }
        // Once the connection closes (shut down or dropped), what is left gets a bounded time:
        // a client that stopped reading must not keep this task and its socket forever.
        let linger = async {
            let until = match linger_until {
                Some(until) => until,
                None => {
                    // Level-triggered: a close signalled since the state was read left a permit.
                    shared.closing.notified().await;
                    shared
                        .lock()
                        .linger_until
                        .expect("the close is signalled after its deadline is set")
                }
            };
            tokio::time::sleep_until(until).await;
        };
        let written = tokio::select! {
            biased;
            written = socket.write_all(&taken) => written,
            () = linger => Err(io::ErrorKind::TimedOut.into()),
        };
        if let Err(error) = written {
            shared.lock().end(Some(error));
            return;
        }
        taken.clear();
        if taken.capacity() > KEPT_BUFFER_BYTES_MAX {
            taken = Vec::new();
        }
    }
}

impl AsyncRead for CoalescedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_from(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_from(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let state = self.shared.lock();
        if let Some(error) = state.error() {
            return Poll::Ready(Err(error));
        }
        let anything = !state.pending.is_empty();
        drop(state);
        if anything {
            self.shared.writer.notify_one();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Poll::Ready(state.error().map_or(Ok(()), Err));
        }
        state.shutting_down = Some(cx.waker().clone());
        drop(state);
        self.shared.close();
        Poll::Pending
    }
}

impl Drop for CoalescedIo {
    fn drop(&mut self) {
        // The writer task writes what is left (within the deadline), shuts the socket down and
        // ends.
        self.shared.close();
    }
}

impl Connected for CoalescedIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn pair() -> (CoalescedIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (CoalescedIo::new(server), client)
    }

    /// Guards against bytes lost, reordered or held back: everything written and flushed
    /// arrives, in order, without another write to push it out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushed_writes_arrive_in_order() {
        let (mut io, mut client) = pair().await;
        let mut expected = Vec::new();
        for round in 0..200u32 {
            for piece in 0..7u32 {
                let bytes = format!("{round}:{piece};").into_bytes();
                io.write_all(&bytes).await.unwrap();
                expected.extend_from_slice(&bytes);
            }
            io.flush().await.unwrap();
            // Small rounds, each left to the writer task (and its wait for more) in turn.
            if round % 3 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut received = vec![0; expected.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_exact(&mut received),
        )
        .await
        .expect("flushed bytes arrive")
        .unwrap();
        assert_eq!(received, expected);
    }

    /// Guards against an unbounded buffer, or a writer that blocks for good, when the peer
    /// reads slowly: writes wait past the bound and go on as the peer reads.
    #[tokio::test]
    async fn a_slow_reader_holds_writes_back_within_the_bound() {
        let (mut io, mut client) = pair().await;
        let total = 128 * PENDING_BYTES_MAX; // 32 MiB, more than the sockets buffer
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 16 * 1024];
            let mut written = 0;
            while written < total {
                io.write_all(&chunk).await.unwrap();
                io.flush().await.unwrap();
                written += chunk.len();
                let pending = io.shared.lock().pending.len();
                assert!(pending <= PENDING_BYTES_MAX, "{pending} bytes pending");
            }
            io.shutdown().await.unwrap();
        });
        // Nothing read for a while: the socket's buffers fill and the writer waits.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!writer.is_finished());
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received.len(), total);
        assert!(received.iter().all(|&byte| byte == 7));
    }

    /// Guards against a shutdown that cuts off what was written before it.
    #[tokio::test]
    async fn shutdown_writes_everything_first() {
        let (mut io, mut client) = pair().await;
        io.write_all(b"last words").await.unwrap();
        io.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
    }

    /// Writes to a client that never reads until the writes wait: more than the sockets
    /// buffer, then the bounded buffer full.
    async fn fill_until_blocked(io: &mut CoalescedIo) {
        let chunk = vec![3u8; 1024 * 1024];
        for _ in 0..128 {
            let written =
                tokio::time::timeout(std::time::Duration::from_millis(100), io.write_all(&chunk))
                    .await;
            if written.is_err() {
                return;
            }
            io.flush().await.unwrap();
        }
        panic!("128 MiB went to a client that does not read");
    }

    /// Guards against a task and socket kept forever for a dropped connection whose client
    /// stopped reading.
    #[tokio::test]
    async fn a_dropped_connection_lets_go_of_a_client_that_does_not_read() {
        let (mut io, client) = pair().await;
        let shared = Arc::clone(&io.shared);
        fill_until_blocked(&mut io).await;
        drop(io);
        tokio::time::sleep(LINGER + std::time::Duration::from_secs(1)).await;
        assert!(shared.lock().closed, "the writer task gave up");
        drop(client);
    }

    /// Guards against a graceful shutdown that waits forever on a client that stopped reading.
    #[tokio::test]
    async fn shutdown_gives_up_on_a_client_that_does_not_read() {
        let (mut io, client) = pair().await;
        fill_until_blocked(&mut io).await;
        let shut = tokio::time::timeout(LINGER * 4, io.shutdown())
            .await
            .expect("the shutdown ends at the deadline");
        assert_eq!(shut.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    /// Guards against a write error that is swallowed: once the peer is gone, writes fail.
    #[tokio::test]
    async fn a_failed_write_is_reported() {
        let (mut io, client) = pair().await;
        drop(client);
        let chunk = vec![1u8; 64 * 1024];
        let mut failed = false;
        for _ in 0..1000 {
            let result = async {
                io.write_all(&chunk).await?;
                io.flush().await
            }
            .await;
            if result.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(failed, "writes to a closed peer fail");
    }
}
