//! End-to-end checksums of the data path.
//!
//! Data crossing the network carries the CRC-64 of each of its *pieces*:
//! the range split at the 4 KiB block boundaries of the chunk, so a piece
//! is a whole block or the part of one block the range covers. The
//! client computes them for a write, and every chunk server in the chain
//! checks them before the write is journalled (and forwards the same
//! CRCs); a chunk server computes them for a read after checking the
//! blocks against its CRC table, and the client checks them before it
//! hands the data on. A mismatch is [`ErrorKind::Checksum`]: the bytes
//! changed between two nodes (on the wire, in a buffer), nothing was
//! stored, and sending again may succeed.
//!
//! For a whole block the piece CRC is the block's CRC-64, the value the
//! chunk's CRC table stores (see [`crate::chunk::encode_block_crc`]).

use bytes::Bytes;

use crate::chunk::{crc64, encode_block_crc};
use crate::error::{Error, ErrorKind, Result};
use crate::types::{ChunkId, BLOCK_SIZE};

/// Whether two piece CRCs agree. They are compared as the CRC table
/// stores them ([`encode_block_crc`]: CRCs 0 and 1 are stored as 2), so a
/// whole block's table entry can stand for its CRC.
pub fn same_crc(a: u64, b: u64) -> bool {
    encode_block_crc(a) == encode_block_crc(b)
}

/// The CRC-64 of a block of zeros (what a table entry of 0 stands for).
pub fn zero_block_crc() -> u64 {
    static CRC: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CRC.get_or_init(|| crc64(&[0u8; BLOCK_SIZE as usize]))
}

/// How many pieces `[offset, offset + len)` of a chunk has.
pub fn piece_count(offset: u64, len: u64) -> usize {
    if len == 0 {
        return 0;
    }
    let first = offset / BLOCK_SIZE;
    let last = (offset + len - 1) / BLOCK_SIZE;
    (last - first + 1) as usize
}

/// Calls `f(piece_offset_in_data, piece)` for every piece of `data`, which
/// starts at `offset` of the chunk.
fn for_each_piece(offset: u64, data: &[u8], mut f: impl FnMut(usize, &[u8])) {
    let mut at = 0usize;
    while at < data.len() {
        let pos = offset + at as u64;
        let room = (BLOCK_SIZE - pos % BLOCK_SIZE) as usize;
        let end = (at + room).min(data.len());
        f(at, &data[at..end]);
        at = end;
    }
}

/// The CRC-64 of every piece of `data`, which starts at `offset` of the
/// chunk.
pub fn piece_crcs(offset: u64, data: &[u8]) -> Vec<u64> {
    let mut crcs = Vec::with_capacity(piece_count(offset, data.len() as u64));
    for_each_piece(offset, data, |_, piece| crcs.push(crc64(piece)));
    crcs
}

/// Checks `data` (at `offset` of `chunk`) against its sender's piece
/// CRCs: `Checksum` naming the first piece that differs, `Protocol` for a
/// CRC list of the wrong length.
pub fn verify_piece_crcs(
    chunk: ChunkId,
    offset: u64,
    data: &[u8],
    crcs: &[u64],
    what: &str,
) -> Result<()> {
    let expected = piece_count(offset, data.len() as u64);
    if crcs.len() != expected {
        return Err(Error::protocol(format!(
            "{what} of chunk {chunk:#x} at offset {offset} ({} bytes) carries {} piece CRCs, \
             not {expected}",
            data.len(),
            crcs.len()
        )));
    }
    let mut bad = None;
    let mut i = 0;
    for_each_piece(offset, data, |at, piece| {
        if bad.is_none() && !same_crc(crc64(piece), crcs[i]) {
            bad = Some((at, piece.len()));
        }
        i += 1;
    });
    match bad {
        None => Ok(()),
        Some((at, len)) => Err(Error::new(
            ErrorKind::Checksum,
            format!(
                "{what} of chunk {chunk:#x}: the {len} bytes at chunk offset {} do not match the \
                 CRC its sender computed (changed on the wire or in memory); nothing was taken",
                offset + at as u64
            ),
        )),
    }
}

/// Data read from a chunk, with the CRC of each of its pieces as the chunk
/// server computed them after checking its stored CRCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBytes {
    /// The bytes read.
    pub data: Bytes,
    /// The CRC of each piece of `data`, in order ([`piece_crcs`] layout).
    pub crcs: Vec<u64>,
}

impl CheckedBytes {
    /// `data`, at `offset` of its chunk, with its piece CRCs computed.
    pub fn new(offset: u64, data: Bytes) -> CheckedBytes {
        let crcs = piece_crcs(offset, &data);
        CheckedBytes { data, crcs }
    }

    /// `data`, at `offset` of its chunk, read and checked against the CRC
    /// table whose entries for the blocks it touches are `entries`: a whole
    /// block's piece CRC is its entry as stored (so a block that changed
    /// after its check here still fails at the client), a partial block's
    /// is computed.
    pub fn from_entries(offset: u64, data: Bytes, entries: &[u64]) -> CheckedBytes {
        let mut crcs = Vec::with_capacity(entries.len());
        let mut i = 0;
        for_each_piece(offset, &data, |_, piece| {
            crcs.push(if piece.len() as u64 == BLOCK_SIZE {
                match entries[i] {
                    0 => zero_block_crc(),
                    entry => entry,
                }
            } else {
                crc64(piece)
            });
            i += 1;
        });
        CheckedBytes { data, crcs }
    }

    /// The data once it matches its CRCs (see [`verify_piece_crcs`]).
    pub fn verified(self, chunk: ChunkId, offset: u64) -> Result<Bytes> {
        verify_piece_crcs(chunk, offset, &self.data, &self.crcs, "a read")?;
        Ok(self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_split_at_block_boundaries() {
        assert_eq!(piece_count(0, 0), 0);
        assert_eq!(piece_count(100, 11), 1);
        assert_eq!(piece_count(4000, 200), 2);
        assert_eq!(piece_count(0, 3 * BLOCK_SIZE), 3);
        assert_eq!(piece_count(1, 3 * BLOCK_SIZE), 4);
        let data = vec![7u8; 200];
        let crcs = piece_crcs(4000, &data);
        assert_eq!(crcs, vec![crc64(&data[..96]), crc64(&data[96..])]);
        // A whole block's piece CRC is its CRC-64.
        let block = vec![3u8; BLOCK_SIZE as usize];
        assert_eq!(piece_crcs(BLOCK_SIZE, &block), vec![crc64(&block)]);
    }

    #[test]
    fn a_changed_byte_or_a_wrong_list_is_refused() {
        let data = vec![1u8; 3 * BLOCK_SIZE as usize];
        let crcs = piece_crcs(10, &data);
        verify_piece_crcs(ChunkId(1), 10, &data, &crcs, "a write").unwrap();
        let mut changed = data.clone();
        changed[5000] ^= 0x10;
        let e = verify_piece_crcs(ChunkId(1), 10, &changed, &crcs, "a write").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Checksum);
        assert!(e.message().contains("chunk offset 4096"), "{e}");
        let e = verify_piece_crcs(ChunkId(1), 10, &data, &crcs[1..], "a write").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        let read = CheckedBytes::new(10, Bytes::from(changed));
        let read = CheckedBytes {
            crcs: crcs.clone(),
            ..read
        };
        assert_eq!(
            read.verified(ChunkId(1), 10).unwrap_err().kind(),
            ErrorKind::Checksum
        );
    }

    #[test]
    fn whole_blocks_carry_their_table_entries() {
        let mut data = vec![0u8; 2 * BLOCK_SIZE as usize + 10];
        data[BLOCK_SIZE as usize] = 9;
        let second = crc64(&data[BLOCK_SIZE as usize..2 * BLOCK_SIZE as usize]);
        let read = CheckedBytes::from_entries(0, Bytes::from(data.clone()), &[0, second, 77]);
        assert_eq!(read.crcs[0], zero_block_crc());
        assert_eq!(read.crcs[1], second);
        assert_eq!(read.crcs[2], crc64(&data[2 * BLOCK_SIZE as usize..]));
        read.clone().verified(ChunkId(1), 0).unwrap();
        // A block that differs from its entry fails at the reader.
        let stale = CheckedBytes::from_entries(0, Bytes::from(data), &[0, second ^ 4, 77]);
        assert_eq!(
            stale.verified(ChunkId(1), 0).unwrap_err().kind(),
            ErrorKind::Checksum
        );
        // CRCs 0 and 1 are stored as 2: still the same CRC.
        assert!(same_crc(0, 2) && same_crc(1, 2) && !same_crc(2, 3));
    }

    proptest! {
        #[test]
        fn piece_crcs_cover_every_byte_once(offset in 0u64..3 * BLOCK_SIZE, len in 0usize..20_000) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let crcs = piece_crcs(offset, &data);
            prop_assert_eq!(crcs.len(), piece_count(offset, len as u64));
            let mut covered = 0usize;
            for_each_piece(offset, &data, |at, piece| {
                assert_eq!(at, covered);
                let pos = offset + at as u64;
                assert!(pos % BLOCK_SIZE + piece.len() as u64 <= BLOCK_SIZE);
                covered += piece.len();
            });
            prop_assert_eq!(covered, len);
            prop_assert!(verify_piece_crcs(ChunkId(1), offset, &data, &crcs, "x").is_ok());
        }
    }
}
