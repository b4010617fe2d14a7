//! NBD wire constants and message encoding (fixed newstyle handshake, simple
//! replies), after the protocol document of the NBD project
//! (`doc/proto.md` in github.com/NetworkBlockDevice/nbd). All integers are
//! big-endian on the wire.

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second server magic, and the prefix of every client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
/// `NBD_FLAG_FIXED_NEWSTYLE` of the protocol.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// `NBD_FLAG_NO_ZEROES` of the protocol.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE`.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag `NBD_FLAG_C_NO_ZEROES`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
/// `NBD_FLAG_HAS_FLAGS` of the protocol.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// `NBD_FLAG_READ_ONLY` of the protocol.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH` of the protocol.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_FLAG_SEND_FUA` of the protocol.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// `NBD_FLAG_SEND_TRIM` of the protocol.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_FLAG_SEND_WRITE_ZEROES` of the protocol.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_FLAG_CAN_MULTI_CONN` of the protocol.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
/// `NBD_OPT_EXPORT_NAME` of the protocol.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT` of the protocol.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST` of the protocol.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS` of the protocol.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO` of the protocol.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO` of the protocol.
pub const OPT_GO: u32 = 7;

// Option replies.
/// `NBD_REP_ACK` of the protocol.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER` of the protocol.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO` of the protocol.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_ERR_UNSUP` of the protocol.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// `NBD_REP_ERR_POLICY` of the protocol.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// `NBD_REP_ERR_INVALID` of the protocol.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// `NBD_REP_ERR_TLS_REQD` of the protocol.
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
/// `NBD_REP_ERR_UNKNOWN` of the protocol.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// `NBD_REP_ERR_SHUTDOWN` of the protocol.
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
/// `NBD_REP_ERR_TOO_BIG` of the protocol.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Information types of NBD_REP_INFO.
/// `NBD_INFO_EXPORT` of the protocol.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME` of the protocol.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION` of the protocol.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE` of the protocol.
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
/// `NBD_CMD_READ` of the protocol.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE` of the protocol.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC` of the protocol.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH` of the protocol.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM` of the protocol.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE` of the protocol.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES` of the protocol.
pub const CMD_WRITE_ZEROES: u16 = 6;

// Command flags.
/// `NBD_CMD_FLAG_FUA` of the protocol.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE` of the protocol.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

// Error values of replies.
/// Reply error `NBD_EPERM`.
pub const EPERM: u32 = 1;
/// Reply error `NBD_EIO`.
pub const EIO: u32 = 5;
/// Reply error `NBD_EINVAL`.
pub const EINVAL: u32 = 22;
/// Reply error `NBD_ENOSPC`.
pub const ENOSPC: u32 = 28;
/// Reply error `NBD_ESHUTDOWN`.
pub const ESHUTDOWN: u32 = 108;

/// Size of a transmission request header.
pub const REQUEST_BYTES: usize = 28;
/// Size of a simple reply header.
pub const REPLY_BYTES: usize = 16;

/// The largest READ or WRITE payload the server accepts (the protocol's
/// recommended interoperable maximum, advertised as the maximum block size).
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;
/// Preferred block size advertised to clients: the chunk servers checksum
/// 4 KiB blocks, smaller writes cost a read-modify-write.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// Longest export name (the protocol's string limit).
pub const MAX_NAME_BYTES: usize = 4096;

/// One transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`NBD_CMD_*`).
    pub kind: u16,
    /// The client's handle, echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes (of the payload, for WRITE).
    pub length: u32,
}

impl Request {
    /// Decodes a header; `None` if the magic is wrong (the stream cannot be
    /// resynchronized then).
    pub fn decode(b: &[u8; REQUEST_BYTES]) -> Option<Request> {
        if be32(b, 0) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: be16(b, 4),
            kind: be16(b, 6),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    /// Encodes a header (tests and clients).
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut b = [0u8; REQUEST_BYTES];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; REPLY_BYTES] {
    let mut b = [0u8; REPLY_BYTES];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// An option reply: header plus `data`.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REP_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// Name of a command for logs.
pub fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_DISC => "DISC",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_CACHE => "CACHE",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        _ => "unknown",
    }
}

/// The big-endian `u16` at `at` of `b` (the caller checked the length).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian `u32` at `at` of `b` (the caller checked the length).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian `u64` at `at` of `b` (the caller checked the length).
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(Request::decode(&r.encode()), Some(r));
        let mut bad = r.encode();
        bad[0] ^= 1;
        assert_eq!(Request::decode(&bad), None);
    }

    #[test]
    fn reply_layout() {
        let b = simple_reply(EINVAL, 7);
        assert_eq!(&b[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(u32::from_be_bytes(b[4..8].try_into().unwrap()), 22);
        assert_eq!(u64::from_be_bytes(b[8..16].try_into().unwrap()), 7);
        let o = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(o.len(), 20);
        assert_eq!(&o[0..8], &REP_MAGIC.to_be_bytes());
    }
}
