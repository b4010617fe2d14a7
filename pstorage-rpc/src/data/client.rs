//! The client side of the data protocol (client -> CS and CS -> CS).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::tls::Credentials;
use async_trait::async_trait;
use bytes::Bytes;
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::traits::{
    CheckedBytes, ChunkConnector, ChunkService, ReplicaError, WriteRequest,
};
use pstorage_core::types::{ChunkId, MapVersion, BLOCK_SIZE, MAX_BLOCK_CRCS, MAX_IO_SIZE};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::wire::{self, FrameReader, OutFrame, Response};
use crate::auth::{self, Channel};

/// Bytes of requests and responses one [`DataClient`] keeps in flight at
/// most; further requests wait for earlier ones to complete.
pub const CLIENT_INFLIGHT_BYTES: usize = 64 << 20;

/// How long [`TcpChunkConnector`] waits for a connection (TCP connect and
/// the authentication handshake) by default: a frozen chunk server process
/// still completes TCP connects in the kernel, but never the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request given up on after waiting at least this long, on a connection
/// that received nothing since the request was sent, condemns the
/// connection: it is closed, and the connector dials anew at the next call.
/// (Shorter waits are cancellations, not evidence of a dead peer.)
pub const ABANDONED_TEARDOWN_AFTER: Duration = Duration::from_millis(500);

/// What a pending request expects back.
#[derive(Clone, Copy)]
enum Expect {
    Empty,
    Data(u64),
}

struct PendingEntry {
    reply: oneshot::Sender<Result<Response>>,
    expect: Expect,
}

struct Pending {
    map: HashMap<u64, PendingEntry>,
    next_id: u64,
    /// Why the connection closed; set once, never cleared.
    closed: Option<String>,
    /// When the last frame arrived from the peer (or the connection opened).
    last_rx: Instant,
}

struct Shared {
    peer: String,
    pending: Mutex<Pending>,
    /// Mirrors `pending.closed.is_some()` for a lock-free [`DataClient::is_closed`].
    closed: AtomicBool,
    /// Mirrors `pending.map.len()` for the writer's batching.
    outstanding: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    fn unavailable(&self, reason: &str) -> Error {
        Error::unavailable(format!(
            "data connection to chunk server {} is closed ({reason}); requests in flight may or may not have been applied; reconnect and retry",
            self.peer
        ))
    }

    /// Forgets request `id` whose caller gave up after it was sent at
    /// `sent` (its late reply is discarded), and closes the connection if
    /// the peer has sent nothing since: it is frozen or gone, and the next
    /// call through the connector dials anew.
    fn abandon(&self, id: u64, sent: Instant) {
        let condemned = {
            let mut p = self.pending.lock();
            if p.map.remove(&id).is_none() {
                return;
            }
            self.outstanding.store(p.map.len(), Ordering::Relaxed);
            let waited = sent.elapsed();
            (waited >= ABANDONED_TEARDOWN_AFTER && p.last_rx < sent).then_some(waited)
        };
        if let Some(waited) = condemned {
            tracing::warn!(peer = %self.peer, waited_ms = waited.as_millis() as u64,
                "data connection: a request was given up on and the chunk server sent nothing since; closing the connection");
            self.close(format!(
                "the chunk server sent nothing for {} ms while a request waited",
                waited.as_millis()
            ));
        }
    }

    /// Marks the connection closed and fails every pending request. Idempotent.
    fn close(&self, reason: String) {
        let drained: Vec<PendingEntry> = {
            let mut p = self.pending.lock();
            if p.closed.is_some() {
                return;
            }
            self.closed.store(true, Ordering::Release);
            p.closed = Some(reason.clone());
            self.outstanding.store(0, Ordering::Relaxed);
            p.map.drain().map(|(_, e)| e).collect()
        };
        if !drained.is_empty() {
            tracing::debug!(peer = %self.peer, pending = drained.len(), %reason, "data connection closed");
        }
        for entry in drained {
            let _ = entry.reply.send(Err(self.unavailable(&reason)));
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// A pipelined data-protocol connection to one chunk server, usable as its
/// [`ChunkService`].
///
/// Any number of tasks may issue requests concurrently over the one TCP
/// connection; they are written in batches by a writer task and answered,
/// in any order, through a reader task. At most [`CLIENT_INFLIGHT_BYTES`]
/// are in flight. Once the connection breaks, every pending and later
/// request fails with `Unavailable` (a write as a [`ReplicaError`] with
/// `failed_cs: None`) and [`DataClient::is_closed`] turns true; connections
/// are not re-established here (see [`TcpChunkConnector`]).
///
/// A request has no deadline of its own: callers bound it (pstorage-core
/// wraps every data-path call in `tokio::time::timeout`). A caller that
/// gives up removes its request (a late reply is discarded), and if the
/// peer sent nothing since that request went out (after at least
/// [`ABANDONED_TEARDOWN_AFTER`]), the connection is closed so that the next
/// call dials anew: a frozen peer that resumes, or a restarted one, works
/// again.
pub struct DataClient {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<OutFrame>,
    inflight: Semaphore,
}

impl DataClient {
    /// Takes over an authenticated connection (see [`auth::connect`] with
    /// [`Channel::Data`]) and starts its reader and writer tasks on the
    /// current tokio runtime. Panics outside a runtime.
    pub fn new(stream: auth::ClientStream) -> DataClient {
        let peer = stream
            .tcp()
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "unknown peer".to_string());
        let (read_half, write_half) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            peer,
            pending: Mutex::new(Pending {
                map: HashMap::new(),
                next_id: 1,
                closed: None,
                last_rx: Instant::now(),
            }),
            closed: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let more_expected =
                    |batch_len| shared.outstanding.load(Ordering::Relaxed) > batch_len;
                let reason = match wire::write_frames(write_half, rx, more_expected).await {
                    Ok(()) => "the client was dropped".to_string(),
                    Err(e) => format!("sending failed: {e}"),
                };
                shared.close(reason);
            })
        };
        let reader = tokio::spawn(read_responses(read_half, shared.clone()));
        shared
            .tasks
            .lock()
            .extend([writer.abort_handle(), reader.abort_handle()]);
        DataClient {
            shared,
            tx,
            inflight: Semaphore::new(CLIENT_INFLIGHT_BYTES),
        }
    }

    /// The chunk server's address as connected.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Whether the connection has broken (or was closed); a closed client
    /// fails every request and should be replaced.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Requests sent and not answered yet (tests, diagnostics).
    pub fn pending_requests(&self) -> usize {
        self.shared.pending.lock().map.len()
    }

    /// Sends one request and waits for its response. A caller that gives up
    /// (drops this future, e.g. on a deadline) removes its pending entry,
    /// and may condemn the connection (see [`ABANDONED_TEARDOWN_AFTER`]).
    async fn call(&self, mut frame: OutFrame, expect: Expect) -> Result<Response> {
        let weight = frame.head.len()
            + frame.body.len()
            + match expect {
                Expect::Data(n) => n as usize,
                Expect::Empty => 0,
            };
        let _permit = self
            .inflight
            .acquire_many(weight.clamp(1, CLIENT_INFLIGHT_BYTES) as u32)
            .await
            .expect("the semaphore is never closed");
        let (reply, response) = oneshot::channel();
        let id = {
            let mut p = self.shared.pending.lock();
            if let Some(reason) = &p.closed {
                return Err(self.shared.unavailable(reason));
            }
            let id = p.next_id;
            p.next_id += 1;
            p.map.insert(id, PendingEntry { reply, expect });
            self.shared
                .outstanding
                .store(p.map.len(), Ordering::Relaxed);
            wire::set_id(&mut frame.head, id);
            // Sent under the lock so that frames leave in id order and a
            // concurrent `close` cannot slip between insert and send.
            if self.tx.send(frame).is_err() {
                p.map.remove(&id);
                self.shared
                    .outstanding
                    .store(p.map.len(), Ordering::Relaxed);
                return Err(self.shared.unavailable("the sender stopped"));
            }
            id
        };
        let mut waiting = Waiting {
            shared: &self.shared,
            id,
            sent: Instant::now(),
            answered: false,
        };
        let result = match response.await {
            Ok(r) => r,
            Err(_) => Err(self.shared.unavailable("the reader stopped")),
        };
        waiting.answered = true;
        result
    }
}

/// A request in flight; dropped unanswered, it abandons the request.
struct Waiting<'a> {
    shared: &'a Shared,
    id: u64,
    sent: Instant,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.shared.abandon(self.id, self.sent);
        }
    }
}

impl Drop for DataClient {
    fn drop(&mut self) {
        // No request can be pending (each borrows the client), so nothing
        // is lost by closing the socket now rather than draining it.
        self.shared.close("the client was dropped".to_string());
    }
}

async fn read_responses(read_half: tokio::io::ReadHalf<auth::ClientStream>, shared: Arc<Shared>) {
    let mut reader = FrameReader::new(crate::tls::CloseAsEof(read_half));
    let reason = loop {
        let (header, body) = match reader.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the chunk server closed the connection".to_string(),
            Err(e) => break format!("receiving failed: {e}"),
        };
        let response = match wire::decode_response(&header, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %shared.peer, error = %e, "data connection: malformed response; closing it");
                break format!("malformed response: {e}");
            }
        };
        let (entry, issued) = {
            let mut p = shared.pending.lock();
            p.last_rx = Instant::now();
            let entry = p.map.remove(&header.id);
            shared.outstanding.store(p.map.len(), Ordering::Relaxed);
            (entry, header.id < p.next_id)
        };
        let Some(entry) = entry else {
            if issued {
                // A late reply to a request its caller gave up on.
                tracing::debug!(peer = %shared.peer, id = header.id, "data connection: discarding a late response");
                continue;
            }
            tracing::warn!(peer = %shared.peer, id = header.id, "data connection: response to an unknown request; closing it");
            break format!("response to unknown request {}", header.id);
        };
        let result = match (response, entry.expect) {
            (Response::Ok(data), Expect::Data(len)) if data.len() as u64 != len => {
                Err(Error::protocol(format!(
                    "chunk server {} answered a read ({len} bytes with CRCs) with {} bytes",
                    shared.peer,
                    data.len()
                )))
            }
            (Response::Ok(data), Expect::Empty) if !data.is_empty() => {
                Err(Error::protocol(format!(
                    "chunk server {} answered a write or flush with {} bytes of data",
                    shared.peer,
                    data.len()
                )))
            }
            (r, _) => Ok(r),
        };
        // The requester may have given up (dropped its future); fine.
        let _ = entry.reply.send(result);
    };
    shared.close(reason);
}

fn into_result(response: Response) -> Result<Bytes, ReplicaError> {
    match response {
        Response::Ok(data) => Ok(data),
        Response::Err { failed_cs, error } => Err(ReplicaError { failed_cs, error }),
    }
}

#[async_trait]
impl ChunkService for DataClient {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        let _timer = crate::call_metrics::CLIENT_CS.start("write");
        let frame = wire::encode_write(&request).map_err(ReplicaError::local)?;
        let response = self
            .call(frame, Expect::Empty)
            .await
            .map_err(ReplicaError::local)?;
        into_result(response).map(drop)
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        if len > MAX_IO_SIZE {
            return Err(Error::invalid(format!(
                "read of {len} bytes from chunk {chunk:#x} exceeds the limit of {MAX_IO_SIZE} bytes per request; split it"
            )));
        }
        let _timer = crate::call_metrics::CLIENT_CS.start("read");
        let response = self
            .call(
                wire::encode_read(chunk, version, offset, len),
                Expect::Data(wire::read_reply_len(offset, len)),
            )
            .await?;
        let body = into_result(response).map_err(|e| e.error)?;
        Ok(wire::decode_read_ok(offset, len, body))
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        let _timer = crate::call_metrics::CLIENT_CS.start("flush");
        let response = self
            .call(wire::encode_flush(chunk, version), Expect::Empty)
            .await?;
        into_result(response).map(drop).map_err(|e| e.error)
    }

    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        let Some(reply_len) = wire::block_crcs_reply_len(len) else {
            return Err(Error::invalid(format!(
                "CRC entries of {len} bytes of chunk {chunk:#x}: the length must be a multiple \
                 of {BLOCK_SIZE} and at most {MAX_BLOCK_CRCS} blocks per request; page through \
                 larger ranges"
            )));
        };
        let _timer = crate::call_metrics::CLIENT_CS.start("block_crcs");
        let response = self
            .call(
                wire::encode_block_crcs(chunk, version, offset, len),
                Expect::Data(reply_len),
            )
            .await?;
        let body = into_result(response).map_err(|e| e.error)?;
        Ok(wire::decode_crc_entries(&body))
    }
}

#[derive(Default)]
struct Slot {
    client: Option<Arc<DataClient>>,
    /// Serializes dialing, so concurrent callers share one new connection.
    dial: Arc<tokio::sync::Mutex<()>>,
}

/// Hands out one shared, authenticated [`DataClient`] per chunk server
/// address, dialing (with [`auth::connect`] on [`Channel::Data`]) when there
/// is none or the cached one has closed. At most one dial per address runs
/// at a time. Thread-safe.
pub struct TcpChunkConnector {
    credentials: Credentials,
    slots: Mutex<HashMap<String, Slot>>,
    connect_timeout: Duration,
}

impl TcpChunkConnector {
    /// A connector that connects with `credentials`, giving up on a
    /// connection after [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(credentials: Credentials) -> TcpChunkConnector {
        TcpChunkConnector {
            credentials,
            slots: Mutex::new(HashMap::new()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The same with another deadline for connecting (TCP connect and
    /// authentication handshake).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> TcpChunkConnector {
        self.connect_timeout = timeout;
        self
    }

    /// The live cached client for `addr`, or the lock to dial it under.
    fn cached(
        &self,
        addr: &str,
    ) -> std::result::Result<Arc<DataClient>, Arc<tokio::sync::Mutex<()>>> {
        let mut slots = self.slots.lock();
        let slot = slots.entry(addr.to_string()).or_default();
        match &slot.client {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => Err(slot.dial.clone()),
        }
    }
}

#[async_trait]
impl ChunkConnector for TcpChunkConnector {
    /// Errors: `Unavailable` when the chunk server cannot be reached,
    /// `TimedOut` when connecting takes longer than the connect timeout,
    /// `PermissionDenied` when it does not share our cluster key.
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>> {
        let dial = match self.cached(addr) {
            Ok(client) => return Ok(client),
            Err(dial) => dial,
        };
        let _dialing = dial.lock().await;
        // Someone else may have dialed while we waited.
        if let Ok(client) = self.cached(addr) {
            return Ok(client);
        }
        let stream =
            match tokio::time::timeout(self.connect_timeout, auth::connect(addr, &self.credentials, Channel::Data))
                .await
            {
                Ok(connected) => connected.map_err(|e| e.context(format!("chunk server {addr}")))?,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "connecting to chunk server {addr} (TCP and authentication) did not complete within {} ms; is the process stopped or the host down?",
                            self.connect_timeout.as_millis()
                        ),
                    ))
                }
            };
        let client = Arc::new(DataClient::new(stream));
        self.slots
            .lock()
            .entry(addr.to_string())
            .or_default()
            .client = Some(client.clone());
        Ok(client)
    }
}
