//! The public error of pstorage.
//!
//! Every error is an [`Error`]: one stable [`ErrorKind`] plus a message that
//! names the thing and, where possible, the fix, plus the cause it came
//! from ([`std::error::Error::source`]) when there is one. The kind's
//! numeric code and the message are what crosses the wire; the source stays
//! in the process that saw the failure.
//!
//! Modules whose failures have an underlying cause (an `io::Error`, a redb
//! or postcard error, a malformed frame) have their own `thiserror` enum
//! that keeps it as its `#[source]`, and convert into [`Error`] with the
//! right kind at the crate boundary (`From<ModuleError> for Error`, the
//! enum becoming the [`Error`]'s source): [`crate::chunk::ChunkStoreError`]
//! (chunk files, journal, dirty log), [`crate::mds::MdsStoreError`] (the MDS
//! databases and their records), in `pstorage-rpc` the data path's
//! `FrameError` and the handshake's `AuthError`, and the NBD server's
//! `NbdError` (`docs/design.md`, "Errors", lists them all). An `io::Error` converts
//! directly (`From<std::io::Error>`, kind by [`ErrorKind::of_io`]) and stays
//! the source. Failures with no cause (a bad argument, a version check, a
//! state conflict) are built from a kind and a message.
//!
//! [`ErrorKind::errno`] is the one errno mapping: the C ABI, FUSE, NBD
//! (narrowed to its few codes, from `errno()`) and Python (the kind's
//! exception class, with `errno()` as its `errno`).

use std::fmt;
use std::sync::Arc;

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
    /// A name (or symbolic link target) is longer than allowed.
    NameTooLong = 20,
    /// The operation or attribute is not supported (an extended attribute
    /// outside the stored name spaces).
    NotSupported = 21,
    /// The extended attribute does not exist.
    NoData = 22,
    /// A file would get more hard links than allowed.
    TooManyLinks = 23,
    /// A lock is held by someone else (`EAGAIN`: a non-blocking lock
    /// request, `F_SETLK` or `flock(LOCK_NB)`).
    WouldBlock = 24,
    /// Too many locks are held on the file or in the cluster (`ENOLCK`).
    NoLocks = 25,
}

impl ErrorKind {
    /// All kinds, in code order.
    pub const ALL: [ErrorKind; 25] = [
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
        ErrorKind::NameTooLong,
        ErrorKind::NotSupported,
        ErrorKind::NoData,
        ErrorKind::TooManyLinks,
        ErrorKind::WouldBlock,
        ErrorKind::NoLocks,
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
            ErrorKind::NameTooLong => libc::ENAMETOOLONG,
            ErrorKind::NotSupported => libc::EOPNOTSUPP,
            ErrorKind::NoData => libc::ENODATA,
            ErrorKind::TooManyLinks => libc::EMLINK,
            ErrorKind::WouldBlock => libc::EAGAIN,
            ErrorKind::NoLocks => libc::ENOLCK,
        }
    }

    /// The kind of a local or connection `io::Error`: the one mapping from
    /// errno and `io::ErrorKind` back to a kind (`From<std::io::Error>`
    /// and the modules' enums use it).
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        match e.raw_os_error() {
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
            ErrorKind::NameTooLong => "name too long",
            ErrorKind::NotSupported => "not supported",
            ErrorKind::NoData => "no such attribute",
            ErrorKind::TooManyLinks => "too many links",
            ErrorKind::WouldBlock => "locked by another owner",
            ErrorKind::NoLocks => "too many locks",
        };
        f.write_str(s)
    }
}

/// The words every "not the leader" answer carries (see
/// [`Error::not_leader`]).
const NOT_LEADER: &str = "this MDS is not the leader";

/// The cause of an [`Error`], shared so that [`Error`] stays `Clone`.
type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The public error: a stable kind plus a message for humans, and the
/// cause when there is one.
///
/// The message already says what the cause said (it is all the wire
/// carries), so show an error with `Display` alone; walk
/// [`std::error::Error::source`] (or use [`Error::find_source`]) to act on
/// the cause, e.g. the `io::Error` of a failed disk operation. Two errors
/// are equal when their kinds and messages are: the source is not compared.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl Error {
    /// A new error of `kind`; `message` should name the object and the fix.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A new error of `kind` caused by `source`, which
    /// [`std::error::Error::source`] returns. `message` is what crosses the
    /// wire: it should say what the source says too.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// This error with `source` as its cause (replacing any it had); kind
    /// and message unchanged.
    pub fn caused_by(self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            source: Some(Arc::new(source)),
            ..self
        }
    }

    /// The first error of type `E` in the source chain (not this error
    /// itself), e.g. `find_source::<std::io::Error>()` for the disk or
    /// socket error behind a failure.
    pub fn find_source<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            next = e.source();
        }
        None
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

    /// Prefixes the message with context, keeping the kind and the source.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            message: format!("{what}: {}", self.message),
            ..self
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
    /// Kind by [`ErrorKind::of_io`], the `io::Error`'s text as the message,
    /// and the `io::Error` itself as the source.
    fn from(e: std::io::Error) -> Error {
        Error::with_source(ErrorKind::of_io(&e), e.to_string(), e)
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

    /// An `io::Error` stays the source; the message is its text, as before.
    #[test]
    fn io_errors_are_kept_as_the_source() {
        use std::error::Error as _;
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let text = io.to_string();
        let e = Error::from(io).context("opening /a");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.message(), format!("opening /a: {text}"));
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(
            e.find_source::<std::io::Error>().map(|e| e.kind()),
            Some(io.kind())
        );
        // A clone shares the source.
        assert!(e.clone().find_source::<std::io::Error>().is_some());
    }

    #[test]
    fn sources_chain_and_are_not_compared() {
        use std::error::Error as _;
        let io = std::io::Error::other("disk on fire");
        let inner = Error::with_source(ErrorKind::Io, "writing x: disk on fire", io);
        let outer = Error::corrupt("replica out of service").caused_by(inner.clone());
        assert_eq!(outer.find_source::<Error>(), Some(&inner));
        assert_eq!(
            outer.find_source::<std::io::Error>().map(|e| e.to_string()),
            Some("disk on fire".to_string())
        );
        assert!(outer.find_source::<std::fmt::Error>().is_none());
        // Equality is kind and message: what the wire carries.
        assert_eq!(outer, Error::corrupt("replica out of service"));
        assert_ne!(outer, Error::internal("replica out of service"));
        assert!(Error::corrupt("x").source().is_none());
        assert_eq!(outer.to_string(), "replica out of service");
    }
}
