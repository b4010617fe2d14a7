//! The chunk server side of the data protocol.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::ServerStream;
use crate::pki::Peer;
use bytes::Bytes;
use futures::FutureExt;
use pstorage_core::error::Error;
use pstorage_core::traits::ChunkService;
use pstorage_core::types::{BLOCK_SIZE, MAX_BLOCK_CRCS, MAX_IO_SIZE};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::wire::{self, FrameReader, OutFrame, Request};

/// Bytes of requests and responses one connection may have in flight on the
/// server; beyond it the server stops reading, which pushes back on the
/// client through TCP.
pub const SERVER_INFLIGHT_BYTES: usize = 128 << 20;

/// Serves the data protocol on a TLS connection from `peer` (see
/// [`crate::auth::accept_tls`]; every role may use the data path: clients
/// read and write, chunk servers forward chain writes and copy replicas)
/// until the peer closes it.
///
/// Every request runs as its own task, so requests are served concurrently
/// and may complete out of order; responses are batched into as few writes
/// as possible. A malformed frame is logged and closes this connection only.
/// Returns once the peer has closed the connection and every response has
/// been written (or the connection broke). Dropping the returned future
/// closes the connection; requests already handed to `service` still run to
/// completion, their answers discarded.
pub async fn serve_data_connection(
    stream: ServerStream,
    peer: Option<Peer>,
    service: Arc<dyn ChunkService>,
) {
    let addr = stream
        .tcp()
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown peer".to_string());
    let peer = match &peer {
        Some(p) => format!("{p} at {addr}"),
        None => addr,
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel::<OutFrame>();
    // Requests handed to the service whose answer is not queued yet.
    let processing = Arc::new(AtomicUsize::new(0));
    let writer = {
        let processing = processing.clone();
        AbortOnDrop(tokio::spawn(async move {
            wire::write_frames(write_half, rx, |_| processing.load(Ordering::Relaxed) > 0).await
        }))
    };
    let inflight = Arc::new(Semaphore::new(SERVER_INFLIGHT_BYTES));
    let mut reader = FrameReader::new(crate::tls::CloseAsEof(read_half));
    loop {
        let (header, body) = match reader.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "data connection: bad frame or broken connection; closing it");
                return; // drops `writer`, which closes the socket
            }
        };
        let weight = header.body_len as usize;
        let request = match wire::decode_request(&header, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, id = header.id, "data connection: malformed request; closing it");
                return;
            }
        };
        let expected = match &request {
            Request::Read { len, .. } => (*len).min(MAX_IO_SIZE) as usize,
            Request::BlockCrcs { len, .. } => {
                wire::block_crcs_reply_len(*len).unwrap_or(0) as usize
            }
            _ => 0,
        };
        let permits = (weight + expected).clamp(1, SERVER_INFLIGHT_BYTES) as u32;
        let permit = inflight
            .clone()
            .acquire_many_owned(permits)
            .await
            .expect("the semaphore is never closed");
        let tx = tx.clone();
        let service = service.clone();
        let id = header.id;
        let processing = processing.clone();
        processing.fetch_add(1, Ordering::Relaxed);
        let counted = pstorage_core::chunk::DataRequest::begin();
        tokio::spawn(async move {
            let mut frame = match AssertUnwindSafe(handle(service.as_ref(), id, request))
                .catch_unwind()
                .await
            {
                Ok(frame) => frame,
                Err(_) => wire::encode_error(
                    id,
                    None,
                    &Error::internal(
                        "the chunk service panicked serving this request; see the chunk server log",
                    ),
                ),
            };
            frame.permit = Some(permit);
            // Fails only when the connection is gone; the answer is moot then.
            let _ = tx.send(frame);
            processing.fetch_sub(1, Ordering::Relaxed);
            drop(counted);
        });
    }
    drop(tx);
    match writer.join().await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "data connection: writing responses failed")
        }
        Err(e) => tracing::warn!(%peer, error = %e, "data connection: response writer failed"),
    }
}

async fn handle(service: &dyn ChunkService, id: u64, request: Request) -> OutFrame {
    let op = match &request {
        Request::Write(_) => "write",
        Request::Read { .. } => "read",
        Request::Flush { .. } => "flush",
        Request::BlockCrcs { .. } => "block_crcs",
    };
    let _timer = crate::call_metrics::SERVED_CS.start(op);
    match request {
        Request::Write(req) => match service.write(req).await {
            Ok(()) => wire::encode_ok(id, Bytes::new()),
            Err(e) => wire::encode_error(id, e.failed_cs, &e.error),
        },
        Request::Read {
            chunk,
            version,
            offset,
            len,
        } => {
            if len > MAX_IO_SIZE {
                return wire::encode_error(
                    id,
                    None,
                    &Error::invalid(format!(
                        "read of {len} bytes from chunk {chunk:#x} exceeds the limit of {MAX_IO_SIZE} bytes per request; split it"
                    )),
                );
            }
            match service.read(chunk, version, offset, len).await {
                Ok(read)
                    if read.data.len() as u64 == len
                        && read.crcs.len()
                            == pstorage_core::checksums::piece_count(offset, len) =>
                {
                    wire::encode_read_ok(id, read)
                }
                Ok(read) => wire::encode_error(
                    id,
                    None,
                    &Error::internal(format!(
                        "the chunk service returned {} bytes and {} piece CRCs for a read of {len} bytes from chunk {chunk:#x}",
                        read.data.len(),
                        read.crcs.len()
                    )),
                ),
                Err(e) => wire::encode_error(id, None, &e),
            }
        }
        Request::Flush { chunk, version } => match service.flush(chunk, version).await {
            Ok(()) => wire::encode_ok(id, Bytes::new()),
            Err(e) => wire::encode_error(id, None, &e),
        },
        Request::BlockCrcs {
            chunk,
            version,
            offset,
            len,
        } => {
            let Some(reply_len) = wire::block_crcs_reply_len(len) else {
                return wire::encode_error(
                    id,
                    None,
                    &Error::invalid(format!(
                        "CRC entries of {len} bytes of chunk {chunk:#x} requested: the length \
                         must be a multiple of {BLOCK_SIZE} and at most {MAX_BLOCK_CRCS} blocks; \
                         page through larger ranges"
                    )),
                );
            };
            match service.block_crcs(chunk, version, offset, len).await {
                Ok(entries) if entries.len() as u64 * 8 == reply_len => {
                    wire::encode_ok(id, wire::encode_crc_entries(&entries))
                }
                Ok(entries) => wire::encode_error(
                    id,
                    None,
                    &Error::internal(format!(
                        "the chunk service returned {} CRC entries for {} blocks of chunk {chunk:#x}",
                        entries.len(),
                        reply_len / 8
                    )),
                ),
                Err(e) => wire::encode_error(id, None, &e),
            }
        }
    }
}

/// A task that is aborted when its owner goes away.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
