//! The NBD server's protocol violations: a client that breaks the
//! handshake or the transmission protocol. Each converts into the public
//! [`Error`] (kind `Protocol`, or `InvalidArgument` for a malformed
//! `NBD_OPT_INFO`/`NBD_OPT_GO`) with the violation as its source. An I/O
//! error on the connection converts directly (`From<std::io::Error>`,
//! which keeps it as the source); a failed cluster operation is the
//! cluster's [`Error`], answered with [`super::transmission`]'s narrowing of
//! [`ErrorKind::errno`].

use pstorage_core::{Error, ErrorKind};

/// A protocol violation by an NBD client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The client flags carry bits this server does not know.
    #[error("client sent unknown handshake flags {0:#x}")]
    UnknownClientFlags(u32),
    /// An option does not start with `IHAVEOPT`.
    #[error("option with bad magic {0:#x} (expected IHAVEOPT)")]
    BadOptionMagic(u64),
    /// An option's payload is over the limit.
    #[error("option {option} carries {len} bytes, more than the {limit} accepted")]
    OptionTooLong { option: u32, len: u32, limit: u32 },
    /// The client kept sending options without choosing an export.
    #[error("client sent {0} options without choosing an export")]
    TooManyOptions(usize),
    /// A malformed `NBD_OPT_INFO` / `NBD_OPT_GO` payload (answered, not
    /// fatal): `InvalidArgument`.
    #[error("malformed NBD_OPT_INFO/GO: {0}")]
    MalformedInfo(&'static str),
    /// A transmission request without the request magic: the stream cannot
    /// be resynchronized.
    #[error("request with bad magic {0:#010x}: hanging up (the stream cannot be resynchronized)")]
    BadRequestMagic(u32),
}

impl NbdError {
    /// The public kind this error converts into.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NbdError::MalformedInfo(_) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Protocol,
        }
    }
}

impl From<NbdError> for Error {
    fn from(e: NbdError) -> Error {
        Error::with_source(e.kind(), e.to_string(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_convert_to_their_kinds_and_stay_the_source() {
        let e = Error::from(NbdError::BadOptionMagic(0x1234));
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(
            e.message(),
            "option with bad magic 0x1234 (expected IHAVEOPT)"
        );
        assert!(
            matches!(
                e.find_source::<NbdError>(),
                Some(NbdError::BadOptionMagic(0x1234))
            ),
            "{e:?}"
        );
        let e = Error::from(NbdError::BadRequestMagic(0x2560_9513));
        assert_eq!(
            e.message(),
            "request with bad magic 0x25609513: hanging up (the stream cannot be resynchronized)"
        );
        let e = Error::from(NbdError::MalformedInfo("shorter than 6 bytes"));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            e.message(),
            "malformed NBD_OPT_INFO/GO: shorter than 6 bytes"
        );
    }
}
