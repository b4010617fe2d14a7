//! The data path (client -> CS, CS -> CS): a lean, hand-framed binary
//! protocol carrying [`ChunkService`](pstorage_core::traits::ChunkService)
//! calls over TCP.
//!
//! Cap'n Proto RPC costs about 40 us of CPU per small call; this protocol
//! about 5 us, which is what 4 KiB I/O at high queue depths needs. The
//! connection is authenticated first ([`crate::auth`], [`Channel::Data`]);
//! after that both sides exchange frames. Requests are pipelined: a client
//! sends any number without waiting, and the server answers each as soon as
//! it completes, in any order, matched by request id.
//!
//! # Frame format (version 2; all integers little-endian)
//!
//! Every frame is a 16-byte header followed by `body_len` bytes of body:
//!
//! ```text
//! offset size field
//!      0    1 magic       0xD7
//!      1    1 version     2 (a frame of another version closes the connection)
//!      2    1 type        1 Write, 2 Read, 3 Flush, 4 BlockCrcs (requests);
//!                         0x81 Ok, 0x82 Error (responses)
//!      3    1 flags       0 (reserved)
//!      4    8 request id  chosen by the client, echoed by the response
//!     12    4 body_len    <= MAX_BODY_LEN (MAX_IO_SIZE + 64 KiB)
//! ```
//!
//! Bodies:
//!
//! ```text
//! Write  chunk u64 | version u64 | offset u64 | zeros_len u64
//!        | payload kind u8 (0 data, 1 zeros) | chain_len u8 (<= MAX_REPLICAS)
//!        | crc_count u16 (the data's pieces; 0 for zeros)
//!        | chain_len x (cs u32 | addr_len u8 (1..=255) | addr UTF-8)
//!        | crc_count x crc u64 (the CRC-64 of each piece of the data: the
//!          range split at 4 KiB block boundaries of the chunk)
//!        | data (the rest of the body: <= MAX_IO_SIZE bytes; empty for zeros;
//!          zeros_len is 0 for data and <= MAX_CHUNK_SIZE for zeros)
//! Read   chunk u64 | version u64 | offset u64 | len u64        (32 bytes)
//! Flush  chunk u64 | version u64                               (16 bytes)
//! BlockCrcs
//!        chunk u64 | version u64 | offset u64 | len u64        (32 bytes)
//!        (offset and len multiples of 4096, len at most MAX_BLOCK_CRCS
//!        blocks: the range whose CRC-table entries are wanted)
//! Ok     for a Read, one u64 CRC per piece of `[offset, offset + len)`
//!        (a whole block's is its CRC-table entry, a partial one's computed),
//!        then the data read (exactly `len` bytes); for a BlockCrcs,
//!        one u64 CRC-table entry per block (exactly `len / 4096 * 8`
//!        bytes); empty otherwise
//! Error  kind u16 (ErrorKind::code) | flags u8 (bit 0: failed_cs present)
//!        | reserved u8 = 0 | failed_cs u32 | message UTF-8 (the rest, <= 4 KiB)
//! ```
//!
//! The chain of a Write is the rest of the replica chain after the receiver
//! (see [`WriteRequest`](pstorage_core::traits::WriteRequest)); `failed_cs`
//! of an Error names the replica that failed a chain write
//! ([`ReplicaError`](pstorage_core::traits::ReplicaError)).
//!
//! Format 2 added the piece CRCs (end-to-end checksums,
//! [`pstorage_core::checksums`]); format 1 had none (and a reserved u16
//! where the CRC count is).
//!
//! Every field is checked on decode. A frame that breaks the format (bad
//! magic or version, unknown type, oversized or inconsistent lengths,
//! non-UTF-8 text, reserved bits set) desynchronizes the stream, so the side
//! that receives it logs it and closes that connection; nothing else is
//! affected. A well-formed request the server cannot serve (a read larger
//! than `MAX_IO_SIZE`, a stale version, ...) gets an Error response instead.
//!
//! Both sides bound the bytes in flight per connection
//! ([`CLIENT_INFLIGHT_BYTES`], [`SERVER_INFLIGHT_BYTES`]); past the bound the
//! client's callers wait and the server stops reading.
//!
//! [`Channel::Data`]: crate::auth::Channel::Data

mod client;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod server;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{
    DataClient, TcpChunkConnector, ABANDONED_TEARDOWN_AFTER, CLIENT_INFLIGHT_BYTES,
    DEFAULT_CONNECT_TIMEOUT,
};
pub use server::{serve_data_connection, SERVER_INFLIGHT_BYTES};
pub use wire::{
    FRAME_MAGIC, FRAME_VERSION, HEADER_LEN, MAX_ADDR_LEN, MAX_BODY_LEN, MAX_MESSAGE_LEN,
};
