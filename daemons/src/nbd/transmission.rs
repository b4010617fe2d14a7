//! The transmission phase: requests are read in order, each runs in its own
//! task (so many are in flight per connection), and a writer task puts the
//! replies on the socket in completion order, batching them into one write
//! when several are ready.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use pstorage_core::{Error, ErrorKind, Result};

use super::export::Export;
use super::proto::*;
use super::NbdError;

/// Payload bytes (reads and writes) in flight per connection; reading
/// requests pauses beyond it, which bounds a connection's memory.
const MAX_INFLIGHT_BYTES: usize = 256 << 20;
/// Fixed cost of a request against the in-flight budget, so a flood of
/// zero-length requests is bounded too.
const REQUEST_COST_BYTES: u32 = 4096;
/// How long a shutdown waits for a client to read the replies of its
/// requests in flight.
const REPLY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest TRIM handed to the client library at once.
const MAX_ZERO_SLICE_BYTES: u64 = 1 << 30;

/// A reply for the writer task.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Bytes>,
    /// The request's share of the in-flight budget, given back once the
    /// reply is on the socket (or dropped): a client that sends READs and
    /// never reads the replies stops being read from, instead of making
    /// the server queue its replies without limit.
    permit: Option<OwnedSemaphorePermit>,
}

/// Why transmission ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection.
    Closed,
    /// The server is shutting down.
    Shutdown,
}

/// Serves requests on one connection until the client disconnects, the
/// server shuts down, or the client breaks the protocol (`Err`, after which
/// the connection is dropped). Returns after every request in flight was
/// answered (or the socket failed).
pub async fn serve<R, W>(
    reader: R,
    writer: W,
    export: Arc<Export>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Ending>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer_task = tokio::spawn(write_replies(writer, rx));
    let budget = Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES));
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    let result = loop {
        let mut header = [0u8; REQUEST_BYTES];
        tokio::select! {
            read = reader.read_exact(&mut header) => match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(Ending::Closed),
                Err(e) => break Err(Error::from(e)),
            },
            _ = shutdown.wait_for(|stop| *stop) => break Ok(Ending::Shutdown),
        }
        let Some(request) = Request::decode(&header) else {
            break Err(NbdError::BadRequestMagic(be32(&header, 0)).into());
        };
        if request.kind == CMD_DISC {
            break Ok(Ending::Disconnect);
        }
        let payload_bytes = match request.kind {
            CMD_READ | CMD_WRITE => request.length.min(MAX_PAYLOAD_BYTES),
            _ => 0,
        };
        // Waits while the client's earlier replies are not on the socket
        // yet (a client that does not read them is not read from either).
        let permit = tokio::select! {
            permit = budget
                .clone()
                .acquire_many_owned(payload_bytes + REQUEST_COST_BYTES) => {
                permit.expect("the in-flight budget is never closed")
            }
            _ = shutdown.wait_for(|stop| *stop) => break Ok(Ending::Shutdown),
        };
        let payload = if request.kind == CMD_WRITE {
            if request.length > MAX_PAYLOAD_BYTES {
                // Skip the payload so the stream stays in step, then refuse.
                let skipped = tokio::io::copy(
                    &mut (&mut reader).take(request.length as u64),
                    &mut tokio::io::sink(),
                )
                .await;
                match skipped {
                    Ok(n) if n == request.length as u64 => {}
                    Ok(_) => break Ok(Ending::Closed),
                    Err(e) => break Err(Error::from(e)),
                }
                let reason = format!(
                    "WRITE of {} bytes is larger than the {MAX_PAYLOAD_BYTES} bytes this server accepts",
                    request.length
                );
                let mut reply = refuse(&export, &request, EINVAL, &reason);
                reply.permit = Some(permit);
                let _ = tx.send(reply);
                continue;
            }
            let mut buf = BytesMut::zeroed(request.length as usize);
            if let Err(e) = reader.read_exact(&mut buf).await {
                break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Ok(Ending::Closed)
                } else {
                    Err(Error::from(e))
                };
            }
            Some(buf.freeze())
        } else {
            None
        };
        let tx = tx.clone();
        let export = export.clone();
        tokio::spawn(async move {
            let mut reply = execute(&export, request, payload).await;
            reply.permit = Some(permit);
            let _ = tx.send(reply);
        });
    };
    // The writer ends once every request task has sent its reply and the
    // replies are written. Once no more requests are read (a disconnect, a
    // shutdown), a client that does not read its replies gets
    // REPLY_DRAIN_TIMEOUT to do so.
    drop(tx);
    let mut writer_task = writer_task;
    let drained = match tokio::time::timeout(REPLY_DRAIN_TIMEOUT, &mut writer_task).await {
        Ok(done) => Some(done),
        Err(_) => {
            writer_task.abort();
            tracing::warn!(export = %export.path,
                "the client did not read its replies within {REPLY_DRAIN_TIMEOUT:?}; closed");
            None
        }
    };
    match drained {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => {
            tracing::debug!(export = %export.path, error = %e, "writing replies failed")
        }
        Some(Err(e)) => {
            tracing::warn!(export = %export.path, error = %e, "reply writer task failed")
        }
    }
    result
}

async fn write_replies<W>(writer: W, mut rx: mpsc::UnboundedReceiver<Reply>) -> Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut out = BufWriter::with_capacity(256 << 10, writer);
    let mut broken: Option<Error> = None;
    while let Some(first) = rx.recv().await {
        if broken.is_some() {
            // Keep draining so request tasks never block; nothing can be sent.
            continue;
        }
        let mut next = Some(first);
        let written: std::io::Result<()> = async {
            while let Some(reply) = next.take() {
                out.write_all(&simple_reply(reply.error, reply.cookie))
                    .await?;
                if let Some(data) = &reply.data {
                    out.write_all(data).await?;
                }
                next = rx.try_recv().ok();
            }
            out.flush().await
        }
        .await;
        if let Err(e) = written {
            broken = Some(e.into());
        }
    }
    match broken {
        Some(e) => Err(e),
        None => {
            let _ = out.shutdown().await;
            Ok(())
        }
    }
}

/// An error reply, logged.
fn refuse(export: &Export, request: &Request, error: u32, reason: &str) -> Reply {
    tracing::warn!(export = %export.path, command = command_name(request.kind),
        offset = request.offset, length = request.length, error, reason, "request refused");
    Reply {
        cookie: request.cookie,
        error,
        data: None,
        permit: None,
    }
}

/// The NBD error for a failed cluster operation: [`ErrorKind::errno`], the
/// one errno mapping of the C ABI, the mount and Python, narrowed to the
/// few values the NBD protocol has.
fn nbd_errno(kind: ErrorKind) -> u32 {
    match kind.errno() {
        libc::ENOSPC | libc::EFBIG => ENOSPC,
        libc::EINVAL => EINVAL,
        libc::EPERM | libc::EACCES | libc::EBADF => EPERM,
        _ => EIO,
    }
}

/// Runs one request and builds its reply.
async fn execute(export: &Export, request: Request, payload: Option<Bytes>) -> Reply {
    let started = std::time::Instant::now();
    let reply = run(export, request, payload).await;
    export.metrics.done(
        command_name(request.kind),
        request.length,
        reply.error,
        started.elapsed(),
    );
    reply
}

/// [`execute`] without the accounting.
async fn run(export: &Export, request: Request, payload: Option<Bytes>) -> Reply {
    match check(export, &request) {
        Ok(()) => {}
        Err((errno, reason)) => return refuse(export, &request, errno, &reason),
    }
    let offset = request.offset;
    let len = request.length as u64;
    let fua = request.flags & CMD_FLAG_FUA != 0;
    let result: Result<Option<Bytes>> = async {
        match request.kind {
            CMD_READ => {
                let data = export.file.read_at_bytes(offset, len).await?;
                if data.len() as u64 != len {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "read of {len} bytes at {offset} returned {}: {} shrank under the export",
                            data.len(),
                            export.path
                        ),
                    ));
                }
                Ok(Some(data))
            }
            CMD_WRITE => {
                let data = payload.expect("WRITE requests carry their payload");
                debug_assert_eq!(data.len() as u64, len);
                export.file.write_at_bytes(offset, data).await?;
                if fua {
                    export.flush().await?;
                }
                Ok(None)
            }
            CMD_FLUSH => export.flush().await.map(|_| None),
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let mut at = offset;
                let end = offset + len;
                while at < end {
                    let n = (end - at).min(MAX_ZERO_SLICE_BYTES);
                    export.file.write_zeros(at, n).await?;
                    at += n;
                }
                if fua {
                    export.flush().await?;
                }
                Ok(None)
            }
            // CACHE is a hint: reads are not cached here, so nothing to do.
            CMD_CACHE => Ok(None),
            _ => unreachable!("check() refuses unknown commands"),
        }
    }
    .await;
    match result {
        Ok(data) => Reply {
            cookie: request.cookie,
            error: 0,
            data,
            permit: None,
        },
        Err(e) => refuse(export, &request, nbd_errno(e.kind()), e.message()),
    }
}

/// Validates a request against the protocol and the export: the error to
/// answer and why, or `Ok` to run it.
fn check(export: &Export, r: &Request) -> std::result::Result<(), (u32, String)> {
    let allowed_flags = match r.kind {
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        other => return Err((EINVAL, format!("unknown command {other}"))),
    };
    if r.flags & !allowed_flags != 0 {
        return Err((
            EINVAL,
            format!(
                "flags {:#x} are not valid for {}",
                r.flags,
                command_name(r.kind)
            ),
        ));
    }
    let writes = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && export.read_only {
        return Err((EPERM, "the export is read-only".to_string()));
    }
    if matches!(r.kind, CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES | CMD_CACHE)
        && r.length > MAX_PAYLOAD_BYTES
    {
        return Err((
            EINVAL,
            format!(
                "length {} is larger than the maximum block size of {MAX_PAYLOAD_BYTES} bytes",
                r.length
            ),
        ));
    }
    if r.kind == CMD_FLUSH {
        return Ok(());
    }
    let size = export.size_bytes();
    let in_range = r
        .offset
        .checked_add(r.length as u64)
        .is_some_and(|end| end <= size);
    if !in_range {
        // The protocol asks for ENOSPC when a write goes past the end, and
        // EINVAL for other requests beyond it.
        let errno = if writes && r.kind != CMD_TRIM {
            ENOSPC
        } else {
            EINVAL
        };
        return Err((
            errno,
            format!(
                "{} bytes at offset {} go beyond the export size of {size} bytes",
                r.length, r.offset
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind has an NBD error, the nearest to its errno: the kinds a
    /// hypervisor acts on (no space, bad request, no permission) keep
    /// theirs, everything else is `EIO` as from a disk.
    #[test]
    fn nbd_errors_follow_the_errno_mapping() {
        for kind in ErrorKind::ALL {
            let want = match kind {
                ErrorKind::NoSpace | ErrorKind::FileTooLarge => ENOSPC,
                ErrorKind::InvalidArgument => EINVAL,
                ErrorKind::PermissionDenied | ErrorKind::BadHandle => EPERM,
                _ => EIO,
            };
            assert_eq!(nbd_errno(kind), want, "{kind:?} (errno {})", kind.errno());
        }
    }
}
