//! The public error of pstorage.
//!
//! Every error is an [`Error`]: one stable [`ErrorKind`] plus a message that
//! names the thing and, where possible, the fix. (Per-module `thiserror`
//! enums that keep their source are not written yet.) [`ErrorKind::errno`]
//! is the one errno mapping (C ABI, FUSE, NBD narrowed to its few codes),
//! each kind has its Python exception class, and the kind's numeric code is
//! what crosses the wire.

use std::fmt;

/// The stable, public classification of every pstorage error.
///
/// The numeric values are part of the wire protocol and the C ABI: never
/// renumber, only append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorKind {
    /// No such file, directory, chunk or server.
    NotFound = 1,
    /// The name already exists.
    AlreadyExists = 2,
    /// A path component that must be a directory is not one.
    NotADirectory = 3,
    /// A file operation was applied to a directory.
    IsADirectory = 4,
    /// The directory is not empty.
    NotEmpty = 5,
    /// A bad argument: malformed path, out-of-range offset, bad attribute.
    InvalidArgument = 6,
    /// Authentication failed or the cluster key is missing.
    PermissionDenied = 7,
    /// The file is held by another client's lease.
    Busy = 8,
    /// The caller's chunk map or lease is out of date; refresh and retry.
    Stale = 9,
    /// Not enough chunk servers or replicas are reachable right now.
    Unavailable = 10,
    /// An operation did not finish within its deadline.
    TimedOut = 11,
    /// No space left on the chunk servers (or the margin is reached).
    NoSpace = 12,
    /// Stored data failed its checksum.
    Corrupt = 13,
    /// A local I/O error (disk, file system).
    Io = 14,
    /// A malformed or unexpected message from a peer.
    Protocol = 15,
    /// The file would exceed the maximum file size.
    FileTooLarge = 16,
    /// The handle was opened without the lease this operation needs.
    BadHandle = 17,
    /// A bug or an unexpected internal state.
    Internal = 18,
    /// Data no longer matches the CRCs its sender computed: it changed on
    /// the wire or in memory between two nodes (end-to-end checksums).
    /// Nothing was stored; the same request may succeed when sent again.
    Checksum = 19,
}

impl ErrorKind {
    /// All kinds, in code order.
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::NotADirectory,
        ErrorKind::IsADirectory,
        ErrorKind::NotEmpty,
        ErrorKind::InvalidArgument,
        ErrorKind::PermissionDenied,
        ErrorKind::Busy,
        ErrorKind::Stale,
        ErrorKind::Unavailable,
        ErrorKind::TimedOut,
        ErrorKind::NoSpace,
        ErrorKind::Corrupt,
        ErrorKind::Io,
        ErrorKind::Protocol,
        ErrorKind::FileTooLarge,
        ErrorKind::BadHandle,
        ErrorKind::Internal,
        ErrorKind::Checksum,
    ];

    /// The wire / ABI code of this kind.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Decodes a wire code; unknown codes (from a newer peer) become `Internal`.
    pub fn from_code(code: u16) -> ErrorKind {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.code() == code)
            .unwrap_or(ErrorKind::Internal)
    }

    /// The positive errno value this kind maps onto (C ABI returns its negation).
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::NotADirectory => libc::ENOTDIR,
            ErrorKind::IsADirectory => libc::EISDIR,
            ErrorKind::NotEmpty => libc::ENOTEMPTY,
            ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::PermissionDenied => libc::EACCES,
            ErrorKind::Busy => libc::EBUSY,
            ErrorKind::Stale => libc::ESTALE,
            ErrorKind::Unavailable => libc::EAGAIN,
            ErrorKind::TimedOut => libc::ETIMEDOUT,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::Corrupt => libc::EIO,
            ErrorKind::Io => libc::EIO,
            ErrorKind::Protocol => libc::EPROTO,
            ErrorKind::FileTooLarge => libc::EFBIG,
            ErrorKind::BadHandle => libc::EBADF,
            ErrorKind::Internal => libc::EIO,
            ErrorKind::Checksum => libc::EIO,
        }
    }

    /// Whether a client may retry the operation after refreshing its state
    /// (chunk map, connection) without the user's involvement.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Stale | ErrorKind::Unavailable | ErrorKind::TimedOut | ErrorKind::Checksum
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::NotADirectory => "not a directory",
            ErrorKind::IsADirectory => "is a directory",
            ErrorKind::NotEmpty => "directory not empty",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Busy => "busy",
            ErrorKind::Stale => "stale",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::Corrupt => "data corrupt",
            ErrorKind::Io => "I/O error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::FileTooLarge => "file too large",
            ErrorKind::BadHandle => "bad handle",
            ErrorKind::Internal => "internal error",
            ErrorKind::Checksum => "checksum mismatch in transit",
        };
        f.write_str(s)
    }
}

/// The words every "not the leader" answer carries (see
/// [`Error::not_leader`]).
const NOT_LEADER: &str = "this MDS is not the leader";

/// The public error: a stable kind plus a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A new error of `kind`; `message` should name the object and the fix.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An `Unavailable` answer from an MDS that is not (or no longer) the
    /// leader: the command was not applied there, and that MDS now knows
    /// who leads, so the same call sent again at once is forwarded to the
    /// leader. Recognised by [`Error::is_not_leader`] on both sides of the
    /// wire (which carries the kind and the message).
    pub fn not_leader(detail: impl fmt::Display) -> Error {
        Error::unavailable(format!("{NOT_LEADER} ({detail})"))
    }

    /// Whether this is a [`Error::not_leader`] answer (possibly with
    /// context added in front).
    pub fn is_not_leader(&self) -> bool {
        self.kind == ErrorKind::Unavailable && self.message.contains(NOT_LEADER)
    }

    /// Prefixes the message with context, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }

    /// Shorthands for the common kinds.
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, m)
    }
    /// An `InvalidArgument` error.
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, m)
    }
    /// A `Stale` error.
    pub fn stale(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Stale, m)
    }
    /// An `Unavailable` error.
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, m)
    }
    /// A `Protocol` error.
    pub fn protocol(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, m)
    }
    /// An `Internal` error.
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, m)
    }
    /// A `Corrupt` error.
    pub fn corrupt(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Corrupt, m)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::ENOENT) => ErrorKind::NotFound,
            _ => match e.kind() {
                std::io::ErrorKind::TimedOut => ErrorKind::TimedOut,
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::NotConnected => ErrorKind::Unavailable,
                std::io::ErrorKind::InvalidData => ErrorKind::Protocol,
                _ => ErrorKind::Io,
            },
        };
        Error::new(kind, e.to_string())
    }
}

/// The result type used throughout pstorage.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(k.code()), k);
        }
        let mut codes: Vec<u16> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::from_code(9999), ErrorKind::Internal);
    }

    #[test]
    fn io_errors_map_to_kinds() {
        let e: Error = std::io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        let e: Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}
