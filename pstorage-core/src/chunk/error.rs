//! The chunk store's errors that have a cause: a failed operation on its
//! disk (chunk files, the journal, the dirty log, `store.id`,
//! `journal.location`), an unreadable store id, a thread that did not
//! start. Each keeps its cause as its source and converts into the public
//! [`Error`] (the crate boundary) with the kind the chunk store has always
//! reported; the enum becomes that error's source. Failures found by the
//! store's own checks (a CRC mismatch, a bad header, a newer format) have no
//! cause and are plain kind + message errors.

use std::num::ParseIntError;
use std::path::PathBuf;

use crate::error::{Error, ErrorKind};

/// A chunk store failure with an underlying cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkStoreError {
    /// An operation on the store's disk failed; `what` says which and on
    /// which file. `NoSpace` for ENOSPC/EDQUOT, `NotFound` for ENOENT,
    /// `Corrupt` for a short read (the file is not what its header
    /// promises), else `Io`.
    #[error("{what}: {source}{}", io_hint(io_kind(source)))]
    Io {
        /// The operation and the file it was on.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `store.id` does not hold 16 hex digits: `Corrupt`.
    #[error("{} does not hold a store id (16 hex digits): {text:?}", path.display())]
    BadStoreId {
        /// The `store.id` file.
        path: PathBuf,
        /// What it holds.
        text: String,
        /// Why that is not a store id.
        #[source]
        source: ParseIntError,
    },
    /// The journal's thread could not be started: `Internal`.
    #[error("cannot start the journal thread: {source}")]
    Thread {
        /// Why the thread could not start.
        #[source]
        source: std::io::Error,
    },
}

impl ChunkStoreError {
    /// The public kind this error converts into.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ChunkStoreError::Io { source, .. } => io_kind(source),
            ChunkStoreError::BadStoreId { .. } => ErrorKind::Corrupt,
            ChunkStoreError::Thread { .. } => ErrorKind::Internal,
        }
    }
}

impl From<ChunkStoreError> for Error {
    fn from(e: ChunkStoreError) -> Error {
        Error::with_source(e.kind(), e.to_string(), e)
    }
}

/// The kind of an I/O error on the store's disk: [`ErrorKind::of_io`] for
/// a full disk or a missing file, `Corrupt` for a short read, `Io` for the
/// rest (a disk has no connection to lose or time out).
fn io_kind(e: &std::io::Error) -> ErrorKind {
    match ErrorKind::of_io(e) {
        kind @ (ErrorKind::NoSpace | ErrorKind::NotFound) => kind,
        _ if e.kind() == std::io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
        _ => ErrorKind::Io,
    }
}

/// What the operator should do about an I/O error of `kind`.
fn io_hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NoSpace => ": free space on this chunk server's disk",
        ErrorKind::Io => ": check the disk (dmesg, smartctl)",
        _ => "",
    }
}

/// An I/O error on the chunk store's disk, with what was being done (see
/// [`ChunkStoreError::Io`]).
pub(crate) fn io_error(e: std::io::Error, what: std::fmt::Arguments<'_>) -> Error {
    ChunkStoreError::Io {
        what: what.to_string(),
        source: e,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds and messages are the ones the chunk store reported before
    /// its errors kept their cause, and the cause is there.
    #[test]
    fn io_errors_keep_their_cause_and_kind() {
        let cases = [
            (
                std::io::Error::from_raw_os_error(libc::ENOSPC),
                ErrorKind::NoSpace,
                ": free space on this chunk server's disk",
            ),
            (
                std::io::Error::from_raw_os_error(libc::ENOENT),
                ErrorKind::NotFound,
                "",
            ),
            (
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ErrorKind::Corrupt,
                "",
            ),
            (
                std::io::Error::from_raw_os_error(libc::EIO),
                ErrorKind::Io,
                ": check the disk (dmesg, smartctl)",
            ),
            (
                std::io::Error::from(std::io::ErrorKind::TimedOut),
                ErrorKind::Io,
                ": check the disk (dmesg, smartctl)",
            ),
        ];
        for (io, kind, hint) in cases {
            let text = io.to_string();
            let raw = io.raw_os_error();
            let io_kind = io.kind();
            let e = io_error(io, format_args!("reading {}", "/x/y.chunk"));
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.message(), format!("reading /x/y.chunk: {text}{hint}"));
            let source = e.find_source::<std::io::Error>().expect("the io::Error");
            assert_eq!((source.raw_os_error(), source.kind()), (raw, io_kind));
            let module = e.find_source::<ChunkStoreError>().expect("the enum");
            assert!(matches!(module, ChunkStoreError::Io { .. }), "{module:?}");
            // Context and clones keep the cause.
            let e = e.context("chunk 0x1").clone();
            assert!(e.find_source::<std::io::Error>().is_some(), "{e:?}");
        }
    }

    /// A store that cannot be opened says why in its message and keeps the
    /// operating system's error as the cause.
    #[test]
    fn opening_a_store_under_a_file_keeps_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = match crate::chunk::FileChunkStore::open(file.join("store")) {
            Ok(_) => panic!("a store under a regular file must not open"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(e.message().contains("not-a-dir/store"), "{e}");
        let io = e.find_source::<std::io::Error>().expect("the io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::ENOTDIR), "{e:?}");
        assert!(e.find_source::<ChunkStoreError>().is_some(), "{e:?}");
    }

    #[test]
    fn store_id_and_thread_errors_convert_to_their_kinds() {
        let parse = u64::from_str_radix("zz", 16).unwrap_err();
        let e: Error = ChunkStoreError::BadStoreId {
            path: PathBuf::from("/cs/store.id"),
            text: "zz".into(),
            source: parse.clone(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(
            e.message(),
            "/cs/store.id does not hold a store id (16 hex digits): \"zz\""
        );
        assert_eq!(e.find_source::<ParseIntError>(), Some(&parse));

        let e: Error = ChunkStoreError::Thread {
            source: std::io::Error::from_raw_os_error(libc::EAGAIN),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.message().starts_with("cannot start the journal thread: "));
        assert_eq!(
            e.find_source::<std::io::Error>()
                .and_then(|e| e.raw_os_error()),
            Some(libc::EAGAIN)
        );
    }
}
