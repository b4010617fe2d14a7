//! The data-path frame decoders for [`crate::fuzzing`] (the `fuzzing`
//! feature): `wire` is private to this module, so they are reached from
//! here. The input is a stream of frames, read as the server and the client
//! read them ([`FrameReader`]), each frame decoded until the first error;
//! what decodes must encode back to the same frame.

use bytes::Bytes;
use pstorage_core::checksums::piece_count;
use pstorage_core::traits::CheckedBytes;
use pstorage_core::types::MAX_IO_SIZE;

use super::wire::{
    block_crcs_reply_len, decode_crc_entries, decode_read_ok, decode_request, decode_response,
    encode_block_crcs, encode_crc_entries, encode_error, encode_flush, encode_ok, encode_read,
    encode_read_ok, encode_write, set_id, FrameReader, Header, OutFrame, Request, Response,
    HEADER_LEN,
};

/// At most this many frames of one input are decoded.
const MAX_FRAMES: usize = 64;

/// Splits `bytes` into frames with the frame reader, as far as they go.
fn frames(bytes: &[u8]) -> Vec<(Header, Bytes)> {
    let mut reader = FrameReader::new(bytes);
    let mut out = Vec::new();
    // A reader over a slice never waits, so this runs to completion.
    futures::executor::block_on(async {
        while out.len() < MAX_FRAMES {
            match reader.next_frame().await {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) | Err(_) => break,
            }
        }
    });
    out
}

/// The header and body of an encoded frame.
fn reparse(frame: &OutFrame) -> (Header, Bytes) {
    let mut all = frame.head.clone();
    all.extend_from_slice(&frame.body);
    let header = super::wire::decode_header(&all[..HEADER_LEN]).expect("an encoded header decodes");
    assert_eq!(header.body_len as usize, all.len() - HEADER_LEN);
    (header, Bytes::from(all).slice(HEADER_LEN..))
}

/// Request frames, as a chunk server reads them.
pub(crate) fn requests(bytes: &[u8]) {
    for (header, body) in frames(bytes) {
        let Ok(request) = decode_request(&header, body) else {
            continue;
        };
        let mut frame = match &request {
            Request::Write(w) => encode_write(w).expect("a decoded write encodes"),
            Request::Read {
                chunk,
                version,
                offset,
                len,
            } => encode_read(*chunk, *version, *offset, *len),
            Request::Flush { chunk, version } => encode_flush(*chunk, *version),
            Request::BlockCrcs {
                chunk,
                version,
                offset,
                len,
            } => encode_block_crcs(*chunk, *version, *offset, *len),
        };
        set_id(&mut frame.head, header.id);
        let (h2, b2) = reparse(&frame);
        assert_eq!(h2, header);
        assert_eq!(decode_request(&h2, b2).expect("re-decodes"), request);
    }
}

/// Response frames, as a client reads them: an Ok body is also split as the
/// reply to a Read (at an offset taken from the request id) and to a
/// BlockCrcs when its length fits one.
pub(crate) fn responses(bytes: &[u8]) {
    for (header, body) in frames(bytes) {
        let Ok(response) = decode_response(&header, body.clone()) else {
            continue;
        };
        let frame = match &response {
            Response::Ok(data) => {
                read_reply(header.id % (1 << 30), data.clone());
                crc_reply(data);
                encode_ok(header.id, data.clone())
            }
            Response::Err { failed_cs, error } => encode_error(header.id, *failed_cs, error),
        };
        let (h2, b2) = reparse(&frame);
        assert_eq!(h2.id, header.id);
        assert_eq!(decode_response(&h2, b2).expect("re-decodes"), response);
    }
}

/// `data` as the Ok reply to a Read at `offset` of the length whose reply
/// is `data.len()` bytes (the client checks that length first), if any.
fn read_reply(offset: u64, data: Bytes) {
    let total = data.len() as u64;
    // len + 8 * pieces(offset, len) == total, pieces <= total / 4096 + 2.
    let Some(len) = (0..=total / 4096 + 2)
        .filter_map(|pieces| total.checked_sub(pieces * 8))
        .find(|&len| len <= MAX_IO_SIZE && len + 8 * piece_count(offset, len) as u64 == total)
    else {
        return;
    };
    let read: CheckedBytes = decode_read_ok(offset, len, data.clone());
    assert_eq!(read.data.len() as u64, len);
    assert_eq!(read.crcs.len(), piece_count(offset, len));
    let frame = encode_read_ok(7, read);
    let (_, body) = reparse(&frame);
    assert_eq!(body, data);
}

/// `data` as the reply to a BlockCrcs, when its length is one.
fn crc_reply(data: &[u8]) {
    if !data.len().is_multiple_of(8)
        || block_crcs_reply_len(data.len() as u64 / 8 * 4096) != Some(data.len() as u64)
    {
        return;
    }
    let entries = decode_crc_entries(data);
    assert_eq!(encode_crc_entries(&entries), data);
}
