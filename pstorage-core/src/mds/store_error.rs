//! The MDS databases' errors that have a cause: redb failing (the
//! pre-Raft [`super::MdsStore`] and the Raft storage), a record that
//! postcard cannot encode or decode, a logged command that no longer
//! applies, a Raft configuration openraft refuses. Each keeps its cause as
//! its source and converts into the public [`Error`] (the crate boundary)
//! with its kind; the enum becomes that error's source. A record of a
//! format this build does not read, an empty record or a log with a gap
//! have no cause and are plain kind + message errors (`mds/format`,
//! `mds/store.rs`).

use std::path::PathBuf;

use crate::error::{Error, ErrorKind};

/// An MDS database failure with an underlying cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MdsStoreError {
    /// redb failed on the database at `path` (`database` names which:
    /// "MDS database" or "MDS Raft database"): `Io`. The source is redb's
    /// own error type of the failed call (`DatabaseError`,
    /// `TransactionError`, `TableError`, `StorageError`, `CommitError`).
    #[error("{database} {}: {source}", path.display())]
    Database {
        /// Which database: "MDS database" or "MDS Raft database".
        database: &'static str,
        /// Its file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record could not be encoded: `Internal`.
    #[error("cannot encode MDS record: {source}")]
    Encode {
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// A record of a readable format does not decode: `Corrupt`.
    #[error("{what} in {} cannot be decoded: {source}", path.display())]
    Decode {
        /// Which record.
        what: String,
        /// The database file.
        path: PathBuf,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// A logged command that applied when it was logged is refused on
    /// replay (the source is the refusal): `Corrupt`.
    #[error("{what} in {} does not replay: {source}", path.display())]
    Replay {
        /// Which record.
        what: String,
        /// The database file.
        path: PathBuf,
        /// The state machine's refusal.
        #[source]
        source: Error,
    },
    /// openraft refuses the Raft configuration of `cluster`: `InvalidArgument`.
    #[error("bad Raft configuration for cluster {cluster}: {source}")]
    RaftConfig {
        /// The cluster's name.
        cluster: String,
        /// openraft's refusal.
        #[source]
        source: openraft::ConfigError,
    },
}

impl MdsStoreError {
    /// The public kind this error converts into.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MdsStoreError::Database { .. } => ErrorKind::Io,
            MdsStoreError::Encode { .. } => ErrorKind::Internal,
            MdsStoreError::Decode { .. } | MdsStoreError::Replay { .. } => ErrorKind::Corrupt,
            MdsStoreError::RaftConfig { .. } => ErrorKind::InvalidArgument,
        }
    }
}

impl From<MdsStoreError> for Error {
    fn from(e: MdsStoreError) -> Error {
        Error::with_source(e.kind(), e.to_string(), e)
    }
}

/// A redb failure on the database at `path` (see
/// [`MdsStoreError::Database`]).
pub(crate) fn db_error(
    database: &'static str,
    path: &std::path::Path,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    MdsStoreError::Database {
        database,
        path: path.to_path_buf(),
        source: Box::new(source),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mds::{MdsState, MdsStore};

    /// A database that redb cannot open is an `Io` error naming the file,
    /// with redb's error (and, below it, the operating system's) as the
    /// cause.
    #[test]
    fn a_database_redb_cannot_open_keeps_redbs_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        std::fs::write(&path, b"not a redb database, just some bytes").unwrap();
        let e = MdsStore::open(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(
            e.message()
                .starts_with(&format!("MDS database {}: ", path.display())),
            "{e}"
        );
        let module = e.find_source::<MdsStoreError>().expect("the enum");
        assert!(
            matches!(
                module,
                MdsStoreError::Database {
                    database: "MDS database",
                    ..
                }
            ),
            "{module:?}"
        );
        let redb = std::error::Error::source(module).expect("redb's error");
        assert!(redb.is::<redb::DatabaseError>(), "{redb:?}");

        // A directory where the file should be: the OS error is in the chain.
        let e = MdsStore::create(dir.path(), &MdsState::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(e.find_source::<MdsStoreError>().is_some(), "{e:?}");
    }

    #[test]
    fn decode_and_replay_errors_are_corrupt_and_keep_their_cause() {
        let source = postcard::from_bytes::<String>(&[]).unwrap_err();
        let e: Error = MdsStoreError::Decode {
            what: "MDS log entry 3".into(),
            path: PathBuf::from("/m/mds.redb"),
            source: source.clone(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(
            e.message(),
            format!("MDS log entry 3 in /m/mds.redb cannot be decoded: {source}")
        );
        assert_eq!(e.find_source::<postcard::Error>(), Some(&source));

        let refusal = Error::not_found("no such file /a");
        let e: Error = MdsStoreError::Replay {
            what: "MDS log entry 4".into(),
            path: PathBuf::from("/m/mds.redb"),
            source: refusal.clone(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(
            e.message(),
            "MDS log entry 4 in /m/mds.redb does not replay: no such file /a"
        );
        assert_eq!(e.find_source::<Error>(), Some(&refusal));

        let e: Error = MdsStoreError::Encode { source }.into();
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
