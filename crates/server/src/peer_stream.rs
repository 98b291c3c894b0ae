//! Raft messages between members over plain TCP: one connection per ordered pair of members,
//! carrying length-prefixed [`Envelope`]s, with a thread at each end.
//!
//! Why not a gRPC stream (as Keel first had): a message used to cross four tasks and three
//! wake-ups on each side (replica thread → sender task → h2 body pipe → h2 connection → socket,
//! and back up on the receiver), about 0.25 ms of a 1.2 ms three-member put on this machine,
//! and most of a follower's CPU. Here the replica thread writes a batch's frame to the socket
//! itself (a non-blocking `send`), and the receiver's thread reads frames and hands them to
//! its replica thread: one wake-up per side. A writer thread per peer connects, greets, and
//! writes whatever the socket could not take at once, so the replica thread never blocks on a
//! slow peer; what it holds is bounded ([`PENDING_BYTES_MAX`]) and the rest is dropped, which
//! Raft tolerates (it retries by protocol) and is told of (`report_unreachable`).
//!
//! The peer port is shared with the gRPC peer services (snapshot transfer, forwarded lease and
//! membership calls, cluster information): a connection that opens with [`MAGIC`] is a Raft
//! stream, anything else (an HTTP/2 preface) goes to tonic. See [`serve_peer_connections`].
//!
//! Wire format (integers little-endian):
//! - greeting, sender → receiver: `MAGIC`, `cluster_id: u64`, `from: u64`;
//! - answer, receiver → sender: one byte, [`Answer`];
//! - then frames, sender → receiver: `length: u32`, an `Envelope` of `length` bytes.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use keel_api::keelraftpb::Envelope;
use prost::Message as _;

use crate::busy_poll::{Load, POLL_BEFORE_SLEEP};
use crate::replica::Input;

/// The first bytes of a Raft stream. An HTTP/2 connection starts with "PRI * HT".
pub const MAGIC: [u8; 8] = *b"KEELRAFT";
/// Bytes a writer holds for a peer (beyond what the socket took) before dropping new batches.
/// One batch is always taken, whatever its size, so a large catch-up append still goes out.
const PENDING_BYTES_MAX: usize = 16 * 1024 * 1024;
/// A frame larger than this is a broken stream, not a message (Raft's are ~1 MiB).
const FRAME_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Reads from the socket are buffered in this much.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Connecting to a peer gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The greeting and its answer give up after this long (a stopped peer accepts connections in
/// its kernel but never answers).
const GREETING_TIMEOUT: Duration = Duration::from_secs(2);
/// A write blocked this long (a peer that stopped reading) breaks the connection; the writer
/// reconnects.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before reconnecting to a peer that failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// The receiver's answer to a greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    Accepted = 0,
    /// The sender belongs to another cluster.
    OtherCluster = 1,
    /// The sender has been removed from this cluster.
    Removed = 2,
}

impl Answer {
    fn from_byte(byte: u8) -> Option<Answer> {
        [Answer::Accepted, Answer::OtherCluster, Answer::Removed]
            .into_iter()
            .find(|answer| *answer as u8 == byte)
    }
}

/// Decides whether a member's messages are taken (the receiver's side of the greeting, and of
/// every envelope, since a member can be removed while connected).
pub trait Gate: Send + Sync + 'static {
    fn admit(&self, cluster_id: u64, from: u64) -> Answer;
}

/// Whether a freshly accepted connection opens with [`MAGIC`] (without consuming anything).
pub async fn is_raft_stream(socket: &tokio::net::TcpStream) -> io::Result<bool> {
    let mut first = [0u8; MAGIC.len()];
    loop {
        let read = socket.peek(&mut first).await?;
        if read == 0 {
            return Ok(false);
        }
        if read < MAGIC.len() && first[..read] == MAGIC[..read] {
            // The rest of the magic is on its way; peek would return at once with the same.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        return Ok(first == MAGIC);
    }
}

/// Appends `envelope` to `buffer` as one frame.
pub fn encode_frame(envelope: &Envelope, buffer: &mut Vec<u8>) {
    let length = envelope.encoded_len();
    buffer.reserve(4 + length);
    buffer.extend_from_slice(&(length as u32).to_le_bytes());
    envelope
        .encode(buffer)
        .expect("a Vec grows to take any message");
}

/// The sending end of the stream to one peer. Dropping it closes the connection and ends its
/// writer thread.
#[derive(Debug)]
pub struct Link {
    inner: Arc<LinkInner>,
}

#[derive(Debug)]
struct LinkInner {
    state: Mutex<LinkState>,
    /// Wakes the writer thread: bytes pending, socket broken, or link closed.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Connected and greeted; None while (re)connecting.
    socket: Option<Arc<TcpStream>>,
    /// Bytes of whole frames the socket has not taken yet, in order.
    pending: Vec<u8>,
    /// Bytes the writer thread took from `pending` and is writing (nothing may overtake them;
    /// they count against the bound).
    writing_bytes: usize,
    /// The socket failed a write: the writer reconnects.
    broken: bool,
    closed: bool,
}

impl LinkInner {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Who a link connects to and on whose behalf.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub cluster_id: u64,
    pub own_id: u64,
    pub peer_id: u64,
    pub urls: Vec<String>,
}

impl Link {
    /// Starts the writer thread, which connects in the background; frames sent meanwhile wait
    /// for the connection (bounded).
    pub fn start(config: LinkConfig, inbox: SyncSender<Input>) -> io::Result<Link> {
        let inner = Arc::new(LinkInner {
            state: Mutex::new(LinkState::default()),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&inner);
        thread::Builder::new()
            .name(format!("keel-peer-{:x}", config.peer_id))
            .spawn(move || write_loop(&writer, &config, &inbox))?;
        Ok(Link { inner })
    }

    /// Sends one or more whole frames; false when they were dropped (too much pending, or the
    /// connection just broke).
    pub fn send(&self, frames: &[u8]) -> bool {
        let mut state = self.inner.lock();
        if state.closed {
            return false;
        }
        if state.writing_bytes == 0 && state.pending.is_empty() && !state.broken {
            if let Some(socket) = &state.socket {
                // The common case: the socket takes it all at once, from this thread.
                match send_now(socket, frames) {
                    Ok(written) if written == frames.len() => return true,
                    Ok(written) => {
                        state.pending.extend_from_slice(&frames[written..]);
                        self.inner.wake.notify_one();
                        return true;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        state.broken = true;
                        self.inner.wake.notify_one();
                        return false;
                    }
                }
            }
        }
        let waiting = state.pending.len() + state.writing_bytes;
        if waiting > 0 && waiting + frames.len() > PENDING_BYTES_MAX {
            return false;
        }
        state.pending.extend_from_slice(frames);
        self.inner.wake.notify_one();
        true
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.closed = true;
        if let Some(socket) = &state.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.inner.wake.notify_one();
    }
}

/// Writes without blocking; the socket itself stays blocking for the writer thread.
fn send_now(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Reads without blocking; the socket itself stays blocking for the receiving thread.
fn recv_now(socket: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is valid for writes of its length.
    let read = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(read).map_err(|_| io::Error::last_os_error())
}

fn write_loop(link: &LinkInner, config: &LinkConfig, inbox: &SyncSender<Input>) {
    let mut url_index = 0;
    loop {
        // Connect and greet.
        let socket = loop {
            if link.lock().closed {
                return;
            }
            let url = &config.urls[url_index % config.urls.len()];
            url_index += 1;
            match connect(url, config) {
                Ok(socket) => break Arc::new(socket),
                Err(ConnectError::Removed) => {
                    // The peer has applied this member's removal; so will this member never
                    // (it no longer hears from the leader), so it stops now, as etcd's does.
                    let _ = inbox.try_send(Input::Removed);
                    return;
                }
                Err(error) => {
                    tracing::debug!(peer = format!("{:x}", config.peer_id), %url, %error, "cannot reach a peer");
                    let state = link.lock();
                    let mut state = fail(state, inbox, config.peer_id);
                    if state.closed {
                        return;
                    }
                    // Woken early only by close.
                    state = link
                        .wake
                        .wait_timeout_while(state, RECONNECT_DELAY, |state| !state.closed)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                    if state.closed {
                        return;
                    }
                }
            }
        };
        {
            let mut state = link.lock();
            if state.closed {
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
            state.socket = Some(Arc::clone(&socket));
            state.broken = false;
        }
        // Write what the replica thread could not.
        let mut buffer = Vec::new();
        loop {
            let mut state = link
                .wake
                .wait_while(link.lock(), |state| {
                    state.pending.is_empty() && !state.broken && !state.closed
                })
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.closed {
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
            if state.broken {
                let _ = socket.shutdown(Shutdown::Both);
                drop(fail(state, inbox, config.peer_id));
                break;
            }
            std::mem::swap(&mut buffer, &mut state.pending);
            state.writing_bytes = buffer.len();
            drop(state);
            let written = (&*socket).write_all(&buffer);
            buffer.clear();
            let mut state = link.lock();
            state.writing_bytes = 0;
            if let Err(error) = written {
                tracing::debug!(peer = format!("{:x}", config.peer_id), %error, "lost the connection to a peer");
                let _ = socket.shutdown(Shutdown::Both);
                drop(fail(state, inbox, config.peer_id));
                break;
            }
        }
    }
}

/// Forgets the connection and what waited for it; Raft resends (it is told the peer is
/// unreachable).
fn fail<'a>(
    mut state: MutexGuard<'a, LinkState>,
    inbox: &SyncSender<Input>,
    peer_id: u64,
) -> MutexGuard<'a, LinkState> {
    state.socket = None;
    state.broken = false;
    state.pending.clear();
    let _ = inbox.try_send(Input::Unreachable(peer_id));
    state
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid peer URL")]
    InvalidUrl,
    #[error("the peer belongs to another cluster")]
    OtherCluster,
    #[error("this member was removed from the cluster")]
    Removed,
}

fn connect(url: &str, config: &LinkConfig) -> Result<TcpStream, ConnectError> {
    let address = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .filter(|address| !address.is_empty())
        .ok_or(ConnectError::InvalidUrl)?;
    let mut last_error = None;
    for address in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(socket) => {
                socket.set_nodelay(true)?;
                socket.set_read_timeout(Some(GREETING_TIMEOUT))?;
                socket.set_write_timeout(Some(GREETING_TIMEOUT))?;
                let mut greeting = Vec::with_capacity(24);
                greeting.extend_from_slice(&MAGIC);
                greeting.extend_from_slice(&config.cluster_id.to_le_bytes());
                greeting.extend_from_slice(&config.own_id.to_le_bytes());
                (&socket).write_all(&greeting)?;
                let mut answer = [0u8];
                (&socket).read_exact(&mut answer)?;
                return match Answer::from_byte(answer[0]) {
                    Some(Answer::Accepted) => {
                        socket.set_read_timeout(None)?;
                        socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
                        Ok(socket)
                    }
                    Some(Answer::OtherCluster) => Err(ConnectError::OtherCluster),
                    Some(Answer::Removed) => Err(ConnectError::Removed),
                    None => Err(ConnectError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unknown answer to the greeting",
                    ))),
                };
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error
        .map(ConnectError::Io)
        .unwrap_or(ConnectError::InvalidUrl))
}

/// The receiving end of one connection, on a thread of its own: answers the greeting, then
/// hands every message to the replica thread until the connection ends. Nothing of `socket`
/// has been read yet (its [`MAGIC`] was only peeked at). `load` says whether to poll the
/// connection before blocking on it.
pub fn receive(socket: TcpStream, gate: Arc<dyn Gate>, inbox: SyncSender<Input>, load: Arc<Load>) {
    let peer = socket.peer_addr().ok();
    if let Err(error) = receive_frames(socket, &*gate, &inbox, &load) {
        tracing::debug!(?peer, %error, "a peer's Raft stream ended");
    }
}

fn receive_frames(
    socket: TcpStream,
    gate: &dyn Gate,
    inbox: &SyncSender<Input>,
    load: &Load,
) -> io::Result<()> {
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(GREETING_TIMEOUT))?;
    let mut greeting = [0u8; 24];
    (&socket).read_exact(&mut greeting)?;
    if greeting[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Raft stream",
        ));
    }
    let word = |at: usize| u64::from_le_bytes(greeting[at..at + 8].try_into().expect("8 bytes"));
    let (cluster_id, from) = (word(8), word(16));
    let answer = gate.admit(cluster_id, from);
    (&socket).write_all(&[answer as u8])?;
    if answer != Answer::Accepted {
        return Ok(());
    }
    socket.set_read_timeout(None)?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, PollingReader(&socket, load));
    let mut frame = Vec::new();
    loop {
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
        let length = u32::from_le_bytes(length) as usize;
        if length > FRAME_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {length} bytes"),
            ));
        }
        frame.resize(length, 0);
        reader.read_exact(&mut frame)?;
        let envelope = Envelope::decode(frame.as_slice())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        // A member may be removed while connected; its connection ends with its next batch.
        if gate.admit(envelope.cluster_id, envelope.from) != Answer::Accepted {
            let _ = socket.shutdown(Shutdown::Both);
            return Ok(());
        }
        for message in envelope
            .messages
            .into_iter()
            .filter_map(crate::transport::message_from_wire)
        {
            // A snapshot with data comes only through InstallSnapshot, with its file.
            if message
                .snapshot
                .as_ref()
                .is_some_and(|snapshot| snapshot.metadata.index > 1)
            {
                tracing::warn!(
                    from = format!("{:x}", message.from),
                    "dropped a snapshot message sent without its data"
                );
                continue;
            }
            // A full inbox drops the message: Raft retries by protocol.
            if let Err(TrySendError::Disconnected(_)) = inbox.try_send(Input::Step(message)) {
                return Ok(());
            }
        }
    }
}

/// Reads a connection, polling it for a while before blocking on it while the load is light
/// (see [`crate::busy_poll`]). `BufReader` reads only when its buffer is empty, so this polls
/// only between batches.
struct PollingReader<'a>(&'a TcpStream, &'a Load);

impl Read for PollingReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let polled = self
            .1
            .poll(POLL_BEFORE_SLEEP, || match recv_now(self.0, buffer) {
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    None
                }
                result => Some(result),
            });
        match polled {
            Some(result) => result,
            None => (&*self.0).read(buffer),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{sync_channel, Receiver};
    use std::time::Instant;

    use keel_raft::{Entry, Message, MessageKind};

    use super::*;

    const CLUSTER: u64 = 0xc1;
    const SENDER: u64 = 1;
    const RECEIVER: u64 = 2;
    const WAIT: Duration = Duration::from_secs(10);

    /// Admits cluster `CLUSTER`; `removed` turns the sender away.
    struct TestGate {
        removed: AtomicBool,
    }

    impl Gate for TestGate {
        fn admit(&self, cluster_id: u64, _from: u64) -> Answer {
            if cluster_id != CLUSTER {
                Answer::OtherCluster
            } else if self.removed.load(Ordering::Relaxed) {
                Answer::Removed
            } else {
                Answer::Accepted
            }
        }
    }

    /// A receiving member: every accepted connection is received on a thread into `inbox`.
    fn receiver(gate: Arc<TestGate>) -> (String, Receiver<Input>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (inbox, messages) = sync_channel(100_000);
        thread::spawn(move || {
            for socket in listener.incoming() {
                let (gate, inbox) = (Arc::clone(&gate) as Arc<dyn Gate>, inbox.clone());
                thread::spawn(move || receive(socket.unwrap(), gate, inbox, Arc::default()));
            }
        });
        (url, messages)
    }

    fn link(cluster_id: u64, url: &str) -> (Link, Receiver<Input>) {
        let (inbox, events) = sync_channel(100_000);
        let config = LinkConfig {
            cluster_id,
            own_id: SENDER,
            peer_id: RECEIVER,
            urls: vec![url.to_owned()],
        };
        (Link::start(config, inbox).unwrap(), events)
    }

    fn frame(index: u64, data_bytes: usize) -> Vec<u8> {
        let message = Message {
            kind: MessageKind::Append,
            from: SENDER,
            to: RECEIVER,
            index,
            entries: vec![Entry {
                index: index + 1,
                data: vec![index as u8; data_bytes],
                ..Entry::default()
            }],
            ..Message::default()
        };
        let envelope = Envelope {
            cluster_id: CLUSTER,
            from: SENDER,
            messages: vec![crate::transport::message_to_wire(&message)],
        };
        let mut bytes = Vec::new();
        encode_frame(&envelope, &mut bytes);
        bytes
    }

    fn next_step(inbox: &Receiver<Input>) -> Message {
        match inbox.recv_timeout(WAIT).expect("a message arrives") {
            Input::Step(message) => message,
            _ => panic!("expected a Raft message"),
        }
    }

    #[test]
    fn batches_arrive_whole_and_in_order_through_direct_and_pending_writes() {
        let gate = Arc::new(TestGate {
            removed: AtomicBool::new(false),
        });
        let (url, received) = receiver(gate);
        let (link, _events) = link(CLUSTER, &url);
        // Small ones (written from this thread once connected) and 3 MiB ones (more than a
        // loopback socket takes at once, so the writer thread finishes them).
        let sizes: Vec<usize> = (0..200)
            .map(|i| if i % 50 == 7 { 3 << 20 } else { 300 })
            .collect();
        for (index, size) in sizes.iter().enumerate() {
            assert!(link.send(&frame(index as u64, *size)));
        }
        for (index, size) in sizes.iter().enumerate() {
            let message = next_step(&received);
            assert_eq!(message.index, index as u64);
            assert_eq!(message.entries[0].data, vec![index as u8; *size]);
        }
    }

    #[test]
    fn a_member_of_another_cluster_is_refused_and_told_its_peer_is_unreachable() {
        let gate = Arc::new(TestGate {
            removed: AtomicBool::new(false),
        });
        let (url, received) = receiver(gate);
        let (link, events) = link(CLUSTER + 1, &url);
        link.send(&frame(0, 10));
        match events.recv_timeout(WAIT).expect("the link reports") {
            Input::Unreachable(peer) => assert_eq!(peer, RECEIVER),
            _ => panic!("expected Unreachable"),
        }
        assert!(received.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn a_removed_member_learns_it_when_it_reconnects_and_its_messages_stop() {
        let gate = Arc::new(TestGate {
            removed: AtomicBool::new(false),
        });
        let (url, received) = receiver(Arc::clone(&gate));
        let (link, events) = link(CLUSTER, &url);
        assert!(link.send(&frame(0, 10)));
        assert_eq!(next_step(&received).index, 0);
        // Removed while connected: the next batch ends the connection undelivered, and the
        // reconnection's greeting says why.
        gate.removed.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + WAIT;
        loop {
            link.send(&frame(1, 10));
            match events.recv_timeout(Duration::from_millis(50)) {
                Ok(Input::Removed) => break,
                Ok(_) | Err(_) => assert!(Instant::now() < deadline, "never told it was removed"),
            }
        }
        assert!(
            received.try_recv().is_err(),
            "nothing after the removal is delivered"
        );
    }

    #[test]
    fn a_peer_that_stops_reading_never_blocks_the_sender_and_what_waits_is_bounded() {
        // Accepts and answers the greeting, then reads nothing.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (greeted, connected) = std::sync::mpsc::channel();
        let stalled = thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut greeting = [0u8; 24];
            socket.read_exact(&mut greeting).unwrap();
            socket.write_all(&[Answer::Accepted as u8]).unwrap();
            greeted.send(()).unwrap();
            thread::sleep(Duration::from_secs(3));
        });
        let (link, _events) = link(CLUSTER, &url);
        // Connected first: a link dropped before its writer thread connects never connects
        // (and this peer would wait for it forever).
        connected.recv_timeout(WAIT).expect("the link connects");
        let batch = frame(0, 1 << 20);
        let mut accepted = 0usize;
        let mut dropped = 0usize;
        for _ in 0..100 {
            let started = Instant::now();
            if link.send(&batch) {
                accepted += 1;
            } else {
                dropped += 1;
            }
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "send blocked"
            );
        }
        // At most PENDING_BYTES_MAX was taken beyond what the kernel's socket buffers can hold
        // (net.ipv4.tcp_wmem and tcp_rmem maxima here: 4 and 32 MiB).
        assert!(dropped > 0, "a stalled peer must not take everything");
        let kernel_bytes = 40 << 20;
        assert!(accepted * batch.len() <= PENDING_BYTES_MAX + kernel_bytes);
        drop(link);
        stalled.join().unwrap();
    }

    #[test]
    fn garbage_after_the_greeting_ends_the_connection_without_delivering_anything() {
        let gate = Arc::new(TestGate {
            removed: AtomicBool::new(false),
        });
        let (url, received) = receiver(gate);
        let address = url.trim_start_matches("http://");
        for garbage in [
            vec![0xff; 64],                                 // a 4 GiB frame
            [&8u32.to_le_bytes()[..], &[0xff; 8]].concat(), // not an envelope
        ] {
            let mut socket = TcpStream::connect(address).unwrap();
            let mut greeting = MAGIC.to_vec();
            greeting.extend_from_slice(&CLUSTER.to_le_bytes());
            greeting.extend_from_slice(&SENDER.to_le_bytes());
            socket.write_all(&greeting).unwrap();
            let mut answer = [9u8];
            socket.read_exact(&mut answer).unwrap();
            assert_eq!(answer[0], Answer::Accepted as u8);
            socket.write_all(&garbage).unwrap();
            socket.set_read_timeout(Some(WAIT)).unwrap();
            // The receiver closes its end.
            assert_eq!(socket.read(&mut [0u8; 1]).unwrap_or(0), 0);
        }
        assert!(received.try_recv().is_err());
    }
}
