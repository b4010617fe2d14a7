//! The frame format of the data protocol (documented in [`crate::data`]):
//! encoding, validating decoding, a buffered frame reader and the batching
//! frame writer shared by the client and the server.

use bytes::{Buf, Bytes, BytesMut};
use pstorage_core::error::{Error, ErrorKind};
use pstorage_core::traits::{CheckedBytes, WritePayload, WriteRequest};
use pstorage_core::types::{
    ChunkId, CsId, MapVersion, Replica, BLOCK_SIZE, MAX_BLOCK_CRCS, MAX_CHUNK_SIZE, MAX_IO_SIZE,
    MAX_REPLICAS,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// First byte of every frame.
pub const FRAME_MAGIC: u8 = 0xD7;
/// The frame format version this node speaks (second byte of every frame).
pub const FRAME_VERSION: u8 = 2;
/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest accepted frame body: the largest I/O plus room for the request
/// fields and a full replica chain.
pub const MAX_BODY_LEN: usize = MAX_IO_SIZE as usize + 64 * 1024;
/// Largest chunk server address (`host:port`) in a chain.
pub const MAX_ADDR_LEN: usize = 255;
/// Largest error message sent; longer ones are cut at a character boundary.
pub const MAX_MESSAGE_LEN: usize = 4096;

pub(crate) const TYPE_WRITE: u8 = 1;
pub(crate) const TYPE_READ: u8 = 2;
pub(crate) const TYPE_FLUSH: u8 = 3;
pub(crate) const TYPE_BLOCK_CRCS: u8 = 4;
pub(crate) const TYPE_OK: u8 = 0x81;
pub(crate) const TYPE_ERROR: u8 = 0x82;

pub(crate) const WRITE_FIXED_LEN: usize = 36;
pub(crate) const READ_BODY_LEN: usize = 32;
pub(crate) const FLUSH_BODY_LEN: usize = 16;
pub(crate) const BLOCK_CRCS_BODY_LEN: usize = 32;
pub(crate) const ERROR_FIXED_LEN: usize = 8;

const PAYLOAD_DATA: u8 = 0;
const PAYLOAD_ZEROS: u8 = 1;
const ERROR_HAS_FAILED_CS: u8 = 1;

/// Smallest read the frame reader issues, so pipelined small frames arrive
/// many per system call.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much free buffer space the reader makes room before reading.
const MIN_SPARE: usize = 4096;
/// Most frames the writer gathers (by yielding) before it flushes.
const MAX_BATCH_FRAMES: usize = 64;
/// Output buffer of the frame writer.
const WRITE_BUFFER: usize = 64 * 1024;

/// A malformed frame or a broken connection. A malformed frame
/// desynchronizes the stream, so the connection carrying it is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("bad frame magic 0x{0:02x}: the peer does not speak the pstorage data protocol")]
    BadMagic(u8),
    #[error("frame format version {0} is not supported (this node speaks {FRAME_VERSION}); upgrade this node")]
    UnsupportedVersion(u8),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame type 0x{0:02x} is not valid in this direction")]
    WrongDirection(u8),
    #[error("reserved header flags 0x{0:02x} are set")]
    Flags(u8),
    #[error("frame body of {0} bytes exceeds the limit of {MAX_BODY_LEN} bytes")]
    TooLong(u32),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The crate boundary: an I/O error converts as every `io::Error` does (it
/// stays the source); a truncated frame is a connection lost (`Unavailable`),
/// any other malformed frame is `Protocol`, with the `FrameError` as the
/// source.
impl From<FrameError> for Error {
    fn from(e: FrameError) -> Error {
        match e {
            FrameError::Io(io) => Error::from(io),
            FrameError::Truncated => Error::with_source(ErrorKind::Unavailable, e.to_string(), e),
            other => Error::with_source(ErrorKind::Protocol, other.to_string(), other),
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub frame_type: u8,
    pub id: u64,
    pub body_len: u32,
}

pub(crate) fn decode_header(b: &[u8]) -> Result<Header, FrameError> {
    debug_assert!(b.len() >= HEADER_LEN);
    if b[0] != FRAME_MAGIC {
        return Err(FrameError::BadMagic(b[0]));
    }
    if b[1] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(b[1]));
    }
    let frame_type = b[2];
    if !matches!(
        frame_type,
        TYPE_WRITE | TYPE_READ | TYPE_FLUSH | TYPE_BLOCK_CRCS | TYPE_OK | TYPE_ERROR
    ) {
        return Err(FrameError::UnknownType(frame_type));
    }
    if b[3] != 0 {
        return Err(FrameError::Flags(b[3]));
    }
    let id = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
    let body_len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    if body_len as usize > MAX_BODY_LEN {
        return Err(FrameError::TooLong(body_len));
    }
    Ok(Header {
        frame_type,
        id,
        body_len,
    })
}

pub(crate) fn put_header(out: &mut Vec<u8>, frame_type: u8, id: u64, body_len: usize) {
    assert!(body_len <= MAX_BODY_LEN, "frame body of {body_len} bytes");
    out.extend_from_slice(&[FRAME_MAGIC, FRAME_VERSION, frame_type, 0]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
}

/// Sets the request id of an encoded frame (ids are assigned at send time).
pub(crate) fn set_id(head: &mut [u8], id: u64) {
    head[4..12].copy_from_slice(&id.to_le_bytes());
}

/// A frame to send: `head` (header and fixed fields) then `body` (bulk
/// data, not copied until it reaches the socket buffer).
pub(crate) struct OutFrame {
    pub head: Vec<u8>,
    pub body: Bytes,
    /// Held until the frame is written (server-side in-flight accounting).
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A request as decoded by the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Write(WriteRequest),
    Read {
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    },
    Flush {
        chunk: ChunkId,
        version: MapVersion,
    },
    BlockCrcs {
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    },
}

/// A response as decoded by the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Response {
    Ok(Bytes),
    Err {
        failed_cs: Option<CsId>,
        error: Error,
    },
}

/// Encodes a write request (id 0; see [`set_id`]). Refuses what the peer
/// would reject, so a bad request fails alone instead of closing the
/// connection.
pub(crate) fn encode_write(req: &WriteRequest) -> Result<OutFrame, Error> {
    if req.chain.len() > MAX_REPLICAS as usize {
        return Err(Error::invalid(format!(
            "write to chunk {:#x}: a chain of {} replicas exceeds the limit of {MAX_REPLICAS}",
            req.chunk,
            req.chain.len()
        )));
    }
    let (kind, zeros_len, data) = match &req.payload {
        WritePayload::Data(d) => {
            if d.len() as u64 > MAX_IO_SIZE {
                return Err(Error::invalid(format!(
                    "write of {} bytes to chunk {:#x} exceeds the limit of {MAX_IO_SIZE} bytes per request; split it",
                    d.len(),
                    req.chunk
                )));
            }
            (PAYLOAD_DATA, 0u64, d.clone())
        }
        WritePayload::Zeros(n) => {
            if *n > MAX_CHUNK_SIZE {
                return Err(Error::invalid(format!(
                    "zeroing {n} bytes of chunk {:#x} exceeds the largest chunk size {MAX_CHUNK_SIZE}",
                    req.chunk
                )));
            }
            (PAYLOAD_ZEROS, *n, Bytes::new())
        }
    };
    // Zeros carry no data, so no CRCs either.
    if req.crcs.len() != pstorage_core::checksums::piece_count(req.offset, data.len() as u64) {
        return Err(Error::protocol(format!(
            "write to chunk {:#x}: {} piece CRCs for {} bytes of data at offset {}",
            req.chunk,
            req.crcs.len(),
            data.len(),
            req.offset
        )));
    }
    let mut chain_len = 0;
    for r in &req.chain {
        if r.addr.is_empty() || r.addr.len() > MAX_ADDR_LEN {
            return Err(Error::invalid(format!(
                "write to chunk {:#x}: chain address {:?} of CS {} must be 1..={MAX_ADDR_LEN} bytes",
                req.chunk, r.addr, r.cs
            )));
        }
        chain_len += 4 + 1 + r.addr.len();
    }
    let crcs_len = req.crcs.len() * 8;
    let body_len = WRITE_FIXED_LEN + chain_len + crcs_len + data.len();
    let mut head = Vec::with_capacity(HEADER_LEN + WRITE_FIXED_LEN + chain_len + crcs_len);
    put_header(&mut head, TYPE_WRITE, 0, body_len);
    head.extend_from_slice(&req.chunk.0.to_le_bytes());
    head.extend_from_slice(&req.version.0.to_le_bytes());
    head.extend_from_slice(&req.offset.to_le_bytes());
    head.extend_from_slice(&zeros_len.to_le_bytes());
    head.extend_from_slice(&[kind, req.chain.len() as u8]);
    // At most MAX_IO_SIZE / 4096 + 1 pieces: fits.
    head.extend_from_slice(&(req.crcs.len() as u16).to_le_bytes());
    for r in &req.chain {
        head.extend_from_slice(&r.cs.0.to_le_bytes());
        head.push(r.addr.len() as u8);
        head.extend_from_slice(r.addr.as_bytes());
    }
    for crc in &req.crcs {
        head.extend_from_slice(&crc.to_le_bytes());
    }
    debug_assert_eq!(
        head.len(),
        HEADER_LEN + WRITE_FIXED_LEN + chain_len + crcs_len
    );
    Ok(OutFrame {
        head,
        body: data,
        permit: None,
    })
}

pub(crate) fn encode_read(chunk: ChunkId, version: MapVersion, offset: u64, len: u64) -> OutFrame {
    let mut head = Vec::with_capacity(HEADER_LEN + READ_BODY_LEN);
    put_header(&mut head, TYPE_READ, 0, READ_BODY_LEN);
    head.extend_from_slice(&chunk.0.to_le_bytes());
    head.extend_from_slice(&version.0.to_le_bytes());
    head.extend_from_slice(&offset.to_le_bytes());
    head.extend_from_slice(&len.to_le_bytes());
    OutFrame {
        head,
        body: Bytes::new(),
        permit: None,
    }
}

pub(crate) fn encode_flush(chunk: ChunkId, version: MapVersion) -> OutFrame {
    let mut head = Vec::with_capacity(HEADER_LEN + FLUSH_BODY_LEN);
    put_header(&mut head, TYPE_FLUSH, 0, FLUSH_BODY_LEN);
    head.extend_from_slice(&chunk.0.to_le_bytes());
    head.extend_from_slice(&version.0.to_le_bytes());
    OutFrame {
        head,
        body: Bytes::new(),
        permit: None,
    }
}

pub(crate) fn encode_block_crcs(
    chunk: ChunkId,
    version: MapVersion,
    offset: u64,
    len: u64,
) -> OutFrame {
    let mut head = Vec::with_capacity(HEADER_LEN + BLOCK_CRCS_BODY_LEN);
    put_header(&mut head, TYPE_BLOCK_CRCS, 0, BLOCK_CRCS_BODY_LEN);
    head.extend_from_slice(&chunk.0.to_le_bytes());
    head.extend_from_slice(&version.0.to_le_bytes());
    head.extend_from_slice(&offset.to_le_bytes());
    head.extend_from_slice(&len.to_le_bytes());
    OutFrame {
        head,
        body: Bytes::new(),
        permit: None,
    }
}

/// The reply length of a BlockCrcs request for `len` bytes of chunk, if the
/// request is within the limits (`len` a multiple of the block size, at
/// most `MAX_BLOCK_CRCS` blocks).
pub(crate) fn block_crcs_reply_len(len: u64) -> Option<u64> {
    (len.is_multiple_of(BLOCK_SIZE) && len / BLOCK_SIZE <= MAX_BLOCK_CRCS)
        .then_some(len / BLOCK_SIZE * 8)
}

/// CRC entries as a BlockCrcs reply body.
pub(crate) fn encode_crc_entries(entries: &[u64]) -> Bytes {
    let mut out = Vec::with_capacity(entries.len() * 8);
    for e in entries {
        out.extend_from_slice(&e.to_le_bytes());
    }
    Bytes::from(out)
}

/// Decodes a BlockCrcs reply body (its length is checked by the caller).
pub(crate) fn decode_crc_entries(body: &[u8]) -> Vec<u64> {
    body.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")))
        .collect()
}

pub(crate) fn encode_ok(id: u64, data: Bytes) -> OutFrame {
    let mut head = Vec::with_capacity(HEADER_LEN);
    put_header(&mut head, TYPE_OK, id, data.len());
    OutFrame {
        head,
        body: data,
        permit: None,
    }
}

/// The Ok response to a Read: the piece CRCs, then the data.
pub(crate) fn encode_read_ok(id: u64, read: CheckedBytes) -> OutFrame {
    let mut head = Vec::with_capacity(HEADER_LEN + read.crcs.len() * 8);
    put_header(
        &mut head,
        TYPE_OK,
        id,
        read.crcs.len() * 8 + read.data.len(),
    );
    for crc in &read.crcs {
        head.extend_from_slice(&crc.to_le_bytes());
    }
    OutFrame {
        head,
        body: read.data,
        permit: None,
    }
}

/// The body length of the Ok response to a Read of `len` bytes at
/// `offset`: its piece CRCs and its data.
pub(crate) fn read_reply_len(offset: u64, len: u64) -> u64 {
    pstorage_core::checksums::piece_count(offset, len) as u64 * 8 + len
}

/// Splits the body of the Ok response to a Read at `offset` (its length
/// checked by the caller) into the data and its piece CRCs.
pub(crate) fn decode_read_ok(offset: u64, len: u64, mut body: Bytes) -> CheckedBytes {
    let crcs_len = pstorage_core::checksums::piece_count(offset, len) * 8;
    let crcs = decode_crc_entries(&body[..crcs_len]);
    body.advance(crcs_len);
    CheckedBytes { data: body, crcs }
}

pub(crate) fn encode_error(id: u64, failed_cs: Option<CsId>, error: &Error) -> OutFrame {
    let message = truncate_utf8(error.message(), MAX_MESSAGE_LEN);
    let mut head = Vec::with_capacity(HEADER_LEN + ERROR_FIXED_LEN + message.len());
    put_header(&mut head, TYPE_ERROR, id, ERROR_FIXED_LEN + message.len());
    head.extend_from_slice(&error.kind().code().to_le_bytes());
    head.push(if failed_cs.is_some() {
        ERROR_HAS_FAILED_CS
    } else {
        0
    });
    head.push(0);
    head.extend_from_slice(&failed_cs.map_or(0, |cs| cs.0).to_le_bytes());
    head.extend_from_slice(message.as_bytes());
    OutFrame {
        head,
        body: Bytes::new(),
        permit: None,
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a request frame; the body is sliced, not copied.
pub(crate) fn decode_request(header: &Header, mut body: Bytes) -> Result<Request, FrameError> {
    debug_assert_eq!(body.len(), header.body_len as usize);
    match header.frame_type {
        TYPE_WRITE => {
            if body.len() < WRITE_FIXED_LEN {
                return Err(malformed(format!(
                    "write body of {} bytes is shorter than its {WRITE_FIXED_LEN} fixed bytes",
                    body.len()
                )));
            }
            let chunk = u64_at(&body, 0);
            let version = u64_at(&body, 8);
            let offset = u64_at(&body, 16);
            let zeros_len = u64_at(&body, 24);
            let (kind, chain_len) = (body[32], body[33] as usize);
            let crc_count = u16::from_le_bytes([body[34], body[35]]) as usize;
            if chain_len > MAX_REPLICAS as usize {
                return Err(malformed(format!(
                    "write chain of {chain_len} replicas exceeds the limit of {MAX_REPLICAS}"
                )));
            }
            body.advance(WRITE_FIXED_LEN);
            let mut chain = Vec::with_capacity(chain_len);
            for _ in 0..chain_len {
                if body.len() < 5 {
                    return Err(malformed("write chain entry is cut short"));
                }
                let cs = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
                let addr_len = body[4] as usize;
                body.advance(5);
                if addr_len == 0 || body.len() < addr_len {
                    return Err(malformed(format!(
                        "chain address of CS {cs} has a bad length {addr_len}"
                    )));
                }
                let addr = std::str::from_utf8(&body[..addr_len])
                    .map_err(|_| malformed(format!("chain address of CS {cs} is not UTF-8")))?
                    .to_string();
                body.advance(addr_len);
                chain.push(Replica { cs: CsId(cs), addr });
            }
            if body.len() < crc_count * 8 {
                return Err(malformed(format!(
                    "write of {crc_count} piece CRCs is cut short"
                )));
            }
            let crcs = decode_crc_entries(&body[..crc_count * 8]);
            body.advance(crc_count * 8);
            let payload = match kind {
                PAYLOAD_DATA => {
                    if zeros_len != 0 {
                        return Err(malformed("a data write carries a zeros length"));
                    }
                    if body.len() as u64 > MAX_IO_SIZE {
                        return Err(malformed(format!(
                            "write data of {} bytes exceeds the limit of {MAX_IO_SIZE}",
                            body.len()
                        )));
                    }
                    // The range must not wrap past 2^64 (piece_count would
                    // overflow); the chunk store refuses it anyway.
                    if offset.checked_add(body.len() as u64).is_none() {
                        return Err(malformed(format!(
                            "a write of {} bytes at offset {offset} runs past 2^64",
                            body.len()
                        )));
                    }
                    let pieces = pstorage_core::checksums::piece_count(offset, body.len() as u64);
                    if crc_count != pieces {
                        return Err(malformed(format!(
                            "a write of {} bytes at offset {offset} carries {crc_count} piece CRCs, not {pieces}",
                            body.len()
                        )));
                    }
                    WritePayload::Data(body)
                }
                PAYLOAD_ZEROS => {
                    if crc_count != 0 {
                        return Err(malformed("a zeros write carries piece CRCs"));
                    }
                    if !body.is_empty() {
                        return Err(malformed("a zeros write carries data"));
                    }
                    if zeros_len > MAX_CHUNK_SIZE {
                        return Err(malformed(format!(
                            "zeros write of {zeros_len} bytes exceeds the largest chunk size"
                        )));
                    }
                    WritePayload::Zeros(zeros_len)
                }
                other => return Err(malformed(format!("unknown write payload kind {other}"))),
            };
            Ok(Request::Write(WriteRequest {
                chunk: ChunkId(chunk),
                version: MapVersion(version),
                offset,
                payload,
                chain,
                crcs,
            }))
        }
        TYPE_READ => {
            if body.len() != READ_BODY_LEN {
                return Err(malformed(format!(
                    "read body of {} bytes, expected {READ_BODY_LEN}",
                    body.len()
                )));
            }
            Ok(Request::Read {
                chunk: ChunkId(u64_at(&body, 0)),
                version: MapVersion(u64_at(&body, 8)),
                offset: u64_at(&body, 16),
                len: u64_at(&body, 24),
            })
        }
        TYPE_FLUSH => {
            if body.len() != FLUSH_BODY_LEN {
                return Err(malformed(format!(
                    "flush body of {} bytes, expected {FLUSH_BODY_LEN}",
                    body.len()
                )));
            }
            Ok(Request::Flush {
                chunk: ChunkId(u64_at(&body, 0)),
                version: MapVersion(u64_at(&body, 8)),
            })
        }
        TYPE_BLOCK_CRCS => {
            if body.len() != BLOCK_CRCS_BODY_LEN {
                return Err(malformed(format!(
                    "block CRCs body of {} bytes, expected {BLOCK_CRCS_BODY_LEN}",
                    body.len()
                )));
            }
            Ok(Request::BlockCrcs {
                chunk: ChunkId(u64_at(&body, 0)),
                version: MapVersion(u64_at(&body, 8)),
                offset: u64_at(&body, 16),
                len: u64_at(&body, 24),
            })
        }
        other => Err(FrameError::WrongDirection(other)),
    }
}

/// Decodes a response frame; read data is sliced, not copied.
pub(crate) fn decode_response(header: &Header, body: Bytes) -> Result<Response, FrameError> {
    match header.frame_type {
        TYPE_OK => Ok(Response::Ok(body)),
        TYPE_ERROR => {
            if body.len() < ERROR_FIXED_LEN {
                return Err(malformed("error body is shorter than its fixed fields"));
            }
            let kind = ErrorKind::from_code(u16::from_le_bytes([body[0], body[1]]));
            let flags = body[2];
            if flags & !ERROR_HAS_FAILED_CS != 0 || body[3] != 0 {
                return Err(malformed("reserved error fields are set"));
            }
            let cs = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
            let failed_cs = (flags & ERROR_HAS_FAILED_CS != 0).then_some(CsId(cs));
            let message = std::str::from_utf8(&body[ERROR_FIXED_LEN..])
                .map_err(|_| malformed("error message is not UTF-8"))?;
            Ok(Response::Err {
                failed_cs,
                error: Error::new(kind, message),
            })
        }
        other => Err(FrameError::WrongDirection(other)),
    }
}

/// Reads whole frames from a stream through one reusable buffer: many small
/// pipelined frames arrive per system call, and bodies are handed out as
/// zero-copy slices of it.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The next frame, or `None` at a clean end of stream (between frames).
    /// The header is validated before its body is awaited, so an absurd
    /// length is refused without buffering anything.
    pub async fn next_frame(&mut self) -> Result<Option<(Header, Bytes)>, FrameError> {
        loop {
            let missing = if self.buf.len() >= HEADER_LEN {
                let header = decode_header(&self.buf[..HEADER_LEN])?;
                let total = HEADER_LEN + header.body_len as usize;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    frame.advance(HEADER_LEN);
                    return Ok(Some((header, frame.freeze())));
                }
                total - self.buf.len()
            } else {
                HEADER_LEN - self.buf.len()
            };
            // `reserve` reuses the buffer's allocation once every slice
            // handed out of it has been dropped; otherwise it allocates a
            // fresh one of at least READ_CHUNK bytes.
            if self.buf.capacity() - self.buf.len() < missing.max(MIN_SPARE) {
                self.buf.reserve(missing.max(READ_CHUNK));
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }
}

/// Writes queued frames, flushing once per batch (when the queue is empty)
/// rather than once per frame. `more_expected(batch_len)` tells whether
/// other requests in flight may queue frames soon (see the batching comment
/// below). Returns when every sender is gone and the queue is drained, or on
/// the first write error.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    inner: W,
    mut rx: mpsc::UnboundedReceiver<OutFrame>,
    more_expected: impl Fn(usize) -> bool,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, inner);
    while let Some(frame) = rx.recv().await {
        write_frame(&mut out, frame).await?;
        let mut batch_len = 1;
        loop {
            while let Ok(frame) = rx.try_recv() {
                write_frame(&mut out, frame).await?;
                batch_len += 1;
            }
            // When other requests are in flight, tasks are likely about to
            // queue more frames (callers woken by a burst of responses, or
            // requests finishing on the server): yield once so they share
            // this flush. Measured with examples/data_bench.rs, this halves
            // the CPU per 4 KiB write at queue depth 16 (one system call for
            // many frames). A lone request (queue depth 1) is flushed at
            // once, as the yield would only add latency there; the batch cap
            // bounds the delay of the first frame under sustained load.
            if batch_len >= MAX_BATCH_FRAMES || !more_expected(batch_len) {
                break;
            }
            tokio::task::yield_now().await;
            match rx.try_recv() {
                Ok(frame) => {
                    write_frame(&mut out, frame).await?;
                    batch_len += 1;
                }
                Err(_) => break,
            }
        }
        out.flush().await?;
    }
    out.shutdown().await
}

async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut BufWriter<W>,
    frame: OutFrame,
) -> std::io::Result<()> {
    out.write_all(&frame.head).await?;
    if !frame.body.is_empty() {
        out.write_all(&frame.body).await?;
    }
    drop(frame.permit);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(f: &OutFrame) -> (Header, Bytes) {
        let mut all = f.head.clone();
        all.extend_from_slice(&f.body);
        let h = decode_header(&all).unwrap();
        assert_eq!(h.body_len as usize, all.len() - HEADER_LEN);
        (h, Bytes::from(all).slice(HEADER_LEN..))
    }

    /// Each frame failure converts to the kind the data path has always
    /// reported, with the failure kept as the source.
    #[test]
    fn frame_errors_convert_to_their_kinds_and_keep_the_cause() {
        let e = Error::from(FrameError::BadMagic(0x47));
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(e.message(), FrameError::BadMagic(0x47).to_string());
        assert!(
            matches!(
                e.find_source::<FrameError>(),
                Some(FrameError::BadMagic(0x47))
            ),
            "{e:?}"
        );
        let e = Error::from(FrameError::TooLong(u32::MAX));
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(
            matches!(e.find_source::<FrameError>(), Some(FrameError::TooLong(_))),
            "{e:?}"
        );
        let e = Error::from(FrameError::Truncated);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.find_source::<FrameError>().is_some(), "{e:?}");
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = Error::from(FrameError::Io(io));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            e.find_source::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[test]
    fn write_round_trips() {
        let req = WriteRequest::new(
            ChunkId(0x1f2),
            MapVersion(7),
            4096,
            WritePayload::Data(Bytes::from_static(b"hello")),
            vec![
                Replica {
                    cs: CsId(2),
                    addr: "127.0.0.1:9102".into(),
                },
                Replica {
                    cs: CsId(3),
                    addr: "[::1]:9103".into(),
                },
            ],
        );
        let mut f = encode_write(&req).unwrap();
        set_id(&mut f.head, 42);
        let (h, body) = frame_bytes(&f);
        assert_eq!(h.id, 42);
        assert_eq!(
            decode_request(&h, body).unwrap(),
            Request::Write(req.clone())
        );

        let zeros = WriteRequest {
            payload: WritePayload::Zeros(1 << 20),
            chain: vec![],
            crcs: vec![],
            ..req
        };
        let f = encode_write(&zeros).unwrap();
        let (h, body) = frame_bytes(&f);
        assert_eq!(decode_request(&h, body).unwrap(), Request::Write(zeros));
    }

    #[test]
    fn read_flush_and_responses_round_trip() {
        let (h, b) = frame_bytes(&encode_read(ChunkId(1), MapVersion(2), 3, 4));
        assert_eq!(
            decode_request(&h, b).unwrap(),
            Request::Read {
                chunk: ChunkId(1),
                version: MapVersion(2),
                offset: 3,
                len: 4
            }
        );
        let (h, b) = frame_bytes(&encode_flush(ChunkId(5), MapVersion(6)));
        assert_eq!(
            decode_request(&h, b).unwrap(),
            Request::Flush {
                chunk: ChunkId(5),
                version: MapVersion(6)
            }
        );
        let (h, b) = frame_bytes(&encode_block_crcs(ChunkId(7), MapVersion(8), 4096, 1 << 20));
        assert_eq!(
            decode_request(&h, b).unwrap(),
            Request::BlockCrcs {
                chunk: ChunkId(7),
                version: MapVersion(8),
                offset: 4096,
                len: 1 << 20
            }
        );
        let (h, b) = frame_bytes(&encode_block_crcs(ChunkId(7), MapVersion(8), 0, 4096));
        let short = Header { body_len: 31, ..h };
        assert!(decode_request(&short, b.slice(..31)).is_err());
        let entries = [0, 1, u64::MAX, 0x0123_4567_89ab_cdef];
        assert_eq!(decode_crc_entries(&encode_crc_entries(&entries)), entries);
        assert_eq!(block_crcs_reply_len(1 << 20), Some(256 * 8));
        assert_eq!(block_crcs_reply_len(4095), None);
        assert_eq!(block_crcs_reply_len((MAX_BLOCK_CRCS + 1) * 4096), None);
        let (h, b) = frame_bytes(&encode_ok(9, Bytes::from_static(b"xyz")));
        assert_eq!(h.id, 9);
        assert_eq!(
            decode_response(&h, b).unwrap(),
            Response::Ok(Bytes::from_static(b"xyz"))
        );
        let err = Error::new(ErrorKind::NoSpace, "CS 4 is full ✓");
        let (h, b) = frame_bytes(&encode_error(10, Some(CsId(4)), &err));
        assert_eq!(
            decode_response(&h, b).unwrap(),
            Response::Err {
                failed_cs: Some(CsId(4)),
                error: err
            }
        );
        // A request type where a response is expected, and vice versa.
        let (h, b) = frame_bytes(&encode_flush(ChunkId(5), MapVersion(6)));
        assert!(matches!(
            decode_response(&h, b),
            Err(FrameError::WrongDirection(_))
        ));
        let (h, b) = frame_bytes(&encode_ok(1, Bytes::new()));
        assert!(matches!(
            decode_request(&h, b),
            Err(FrameError::WrongDirection(_))
        ));
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let msg = "é".repeat(MAX_MESSAGE_LEN);
        let err = Error::new(ErrorKind::Io, msg);
        let (h, b) = frame_bytes(&encode_error(1, None, &err));
        match decode_response(&h, b).unwrap() {
            Response::Err { error, failed_cs } => {
                assert_eq!(failed_cs, None);
                assert!(error.message().len() <= MAX_MESSAGE_LEN);
                assert_eq!(error.kind(), ErrorKind::Io);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut good = Vec::new();
        put_header(&mut good, TYPE_READ, 1, READ_BODY_LEN);
        decode_header(&good).unwrap();
        let mut b = good.clone();
        b[0] = b'G';
        assert!(matches!(decode_header(&b), Err(FrameError::BadMagic(b'G'))));
        let mut b = good.clone();
        b[1] = FRAME_VERSION + 1;
        assert!(matches!(
            decode_header(&b),
            Err(FrameError::UnsupportedVersion(_))
        ));
        let mut b = good.clone();
        b[2] = 0x77;
        assert!(matches!(
            decode_header(&b),
            Err(FrameError::UnknownType(0x77))
        ));
        let mut b = good.clone();
        b[3] = 1;
        assert!(matches!(decode_header(&b), Err(FrameError::Flags(1))));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&(MAX_BODY_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(decode_header(&b), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn bad_bodies_are_refused() {
        let req = WriteRequest::new(
            ChunkId(1),
            MapVersion(1),
            0,
            WritePayload::Data(Bytes::from_static(b"ab")),
            vec![Replica {
                cs: CsId(2),
                addr: "h:1".into(),
            }],
        );
        let f = encode_write(&req).unwrap();
        let (h, body) = frame_bytes(&f);
        let corrupt = |at: usize, val: u8| {
            let mut b = body.to_vec();
            b[at] = val;
            decode_request(&h, Bytes::from(b))
        };
        assert!(corrupt(32, 9).is_err()); // payload kind
        assert!(corrupt(33, MAX_REPLICAS + 1).is_err()); // chain length
        assert!(corrupt(33, 3).is_err()); // chain longer than the body
        assert!(corrupt(34, 2).is_err()); // a CRC count the data does not have
        assert!(corrupt(35, 1).is_err()); // a CRC count beyond the body
        assert!(corrupt(40, 0).is_err()); // empty address
        assert!(corrupt(41, 0xff).is_err()); // non-UTF-8 address
        assert!(corrupt(24, 1).is_err()); // zeros length on a data write
        let short = Header { body_len: 20, ..h };
        assert!(decode_request(&short, body.slice(..20)).is_err());
        // Data at an offset whose end passes 2^64 (found by the
        // data_request fuzz target: piece_count overflowed, a panic in
        // debug builds).
        for offset in [u64::MAX, u64::MAX - 1] {
            let mut b = body.to_vec();
            b[16..24].copy_from_slice(&offset.to_le_bytes());
            assert!(matches!(
                decode_request(&h, Bytes::from(b)),
                Err(FrameError::Malformed(_))
            ));
        }

        let (h, b) = frame_bytes(&encode_read(ChunkId(1), MapVersion(2), 3, 4));
        let short = Header { body_len: 31, ..h };
        assert!(decode_request(&short, b.slice(..31)).is_err());

        // Requests the encoder refuses instead of sending.
        let mut big = req.clone();
        big.payload = WritePayload::Data(Bytes::from(vec![0; MAX_IO_SIZE as usize + 1]));
        assert_eq!(
            encode_write(&big).err().unwrap().kind(),
            ErrorKind::InvalidArgument
        );
        let mut no_crcs = req.clone();
        no_crcs.crcs.clear();
        assert_eq!(
            encode_write(&no_crcs).err().unwrap().kind(),
            ErrorKind::Protocol
        );
        let mut long_chain = req.clone();
        long_chain.chain = vec![req.chain[0].clone(); MAX_REPLICAS as usize + 1];
        assert!(encode_write(&long_chain).is_err());
        let mut long_addr = req;
        long_addr.chain[0].addr = "x".repeat(MAX_ADDR_LEN + 1);
        assert!(encode_write(&long_addr).is_err());
    }

    #[tokio::test]
    async fn reader_splits_pipelined_frames_and_detects_truncation() {
        let mut wire = Vec::new();
        for i in 0..100u64 {
            let f = encode_ok(i, Bytes::from(vec![i as u8; i as usize * 100]));
            wire.extend_from_slice(&f.head);
            wire.extend_from_slice(&f.body);
        }
        let mut r = FrameReader::new(&wire[..]);
        for i in 0..100u64 {
            let (h, b) = r.next_frame().await.unwrap().unwrap();
            assert_eq!(h.id, i);
            assert_eq!(b.len(), i as usize * 100);
            assert!(b.iter().all(|&x| x == i as u8));
        }
        assert!(r.next_frame().await.unwrap().is_none());

        let mut r = FrameReader::new(&wire[..wire.len() - 1]);
        for _ in 0..99 {
            r.next_frame().await.unwrap().unwrap();
        }
        assert!(matches!(r.next_frame().await, Err(FrameError::Truncated)));
    }
}
