//! Connection authentication (DESIGN.md invariant 8): every TCP connection
//! proves, in both directions, that its peer holds the cluster key before a
//! single request crosses it. The key and the password never cross the wire.
//!
//! # Handshake (format version 1, all integers little-endian)
//!
//! ```text
//! client -> server  hello      "PSTA" | version u16 | reserved u16 = 0            (8 bytes)
//! server -> client  challenge  "PSTA" | version u16 | status u8 | reserved u8
//!                              | server nonce [32]                               (40 bytes)
//! client -> server  proof      channel u8 | client nonce [32]
//!                              | HMAC(key, "pstorage-auth-v1 client" | server nonce
//!                                         | client nonce | channel)              (65 bytes)
//! server -> client  verdict    status u8 | HMAC(key, "pstorage-auth-v1 server"
//!                                         | client nonce | server nonce)         (33 bytes)
//! ```
//!
//! The challenge's `status` is 0, or 1 when the server does not speak the
//! client's version (it then closes; its own version tells the client which
//! side to upgrade). The verdict's `status` is 0 (accepted) or 1 (rejected,
//! MAC all zeros) so that a client with the wrong key learns why it is
//! refused instead of seeing a bare EOF. Both MACs are checked in constant
//! time. The distinct labels keep a server's answer from being replayed as a
//! client proof (reflection), and fresh nonces on both sides keep recorded
//! handshakes from being replayed at all.
//!
//! This authenticates connections; it does not encrypt them (no TLS): run the
//! cluster on a trusted network, as with the original pstorage.
//!
//! The whole handshake has a deadline on both sides ([`HANDSHAKE_TIMEOUT`],
//! and [`CONNECT_TIMEOUT`] for connecting plus the handshake), and every step
//! one of its own ([`HANDSHAKE_STEP_TIMEOUT`]), so a silent or slow peer (a
//! frozen process whose kernel still accepts connections) cannot hold a
//! server task or a dialing client for long.
//!
//! # Socket options
//!
//! Every TCP connection, dialed ([`connect`]) or accepted ([`accept`]), gets
//! TCP_NODELAY, TCP keepalive ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`],
//! [`KEEPALIVE_PROBES`]) and `TCP_USER_TIMEOUT` ([`TCP_USER_TIMEOUT`]) from
//! [`configure_socket`]: a peer whose host lost power or whose network is cut
//! is detected within about 15 s even while nothing is being sent, and an
//! unacknowledged send fails after 15 s. A frozen process on a live host
//! still acknowledges at the TCP level; call deadlines catch that.

use std::time::Duration;

use hmac::{Hmac, Mac};
use pstorage_core::conf::{ClusterKey, KEY_LEN};
use pstorage_core::error::{Error, ErrorKind, Result};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type HmacSha256 = Hmac<Sha256>;

/// The handshake magic: "PSTA" (pstorage authentication).
pub const AUTH_MAGIC: [u8; 4] = *b"PSTA";
/// The handshake format version this node speaks.
pub const AUTH_VERSION: u16 = 1;
/// PBKDF2 iterations of [`derive_key`].
pub const KEY_DERIVATION_ROUNDS: u32 = 100_000;
/// Deadline of each handshake step.
pub const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a whole handshake, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of [`connect`]: the TCP connection and the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered keepalive probes before the connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 3;
/// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged (and,
/// with keepalive, how long probes may go unanswered) before the kernel
/// drops the connection.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Sets TCP_NODELAY, keepalive and `TCP_USER_TIMEOUT` (see the module
/// documentation) on a connected socket. Errors: `Io` if the kernel refuses
/// an option.
pub fn configure_socket<S: std::os::fd::AsRawFd>(stream: &S) -> Result<()> {
    let fd = stream.as_raw_fd();
    let secs = |d: Duration| d.as_secs().max(1) as libc::c_int;
    let options: [(libc::c_int, libc::c_int, libc::c_int, &str); 6] = [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY, 1, "TCP_NODELAY"),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE"),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            secs(KEEPALIVE_IDLE),
            "TCP_KEEPIDLE",
        ),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            secs(KEEPALIVE_INTERVAL),
            "TCP_KEEPINTVL",
        ),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            KEEPALIVE_PROBES as libc::c_int,
            "TCP_KEEPCNT",
        ),
        (
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            TCP_USER_TIMEOUT.as_millis() as libc::c_int,
            "TCP_USER_TIMEOUT",
        ),
    ];
    for (level, name, value, what) in options {
        set_socket_option(fd, level, name, value)
            .map_err(|e| Error::from(e).context(format!("setting {what}")))?;
    }
    Ok(())
}

fn set_socket_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed from its owner for this call;
    // the option value is a valid c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads an integer socket option (tests).
#[cfg(test)]
fn socket_option(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as in `set_socket_option`; `value` and `len` outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    value
}

/// The server side of a new connection: sets the socket options
/// ([`configure_socket`]) and runs [`server_handshake`] within
/// [`HANDSHAKE_TIMEOUT`]. Returns the channel the client asked for; on
/// error the caller drops the connection.
pub async fn accept(stream: &mut TcpStream, key: &ClusterKey) -> Result<Channel> {
    configure_socket(stream)?;
    server_handshake(stream, key).await
}

const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const HELLO_LEN: usize = 8;
const CHALLENGE_LEN: usize = 8 + NONCE_LEN;
const PROOF_LEN: usize = 1 + NONCE_LEN + MAC_LEN;
const VERDICT_LEN: usize = 1 + MAC_LEN;

const STATUS_OK: u8 = 0;
const STATUS_VERSION_UNSUPPORTED: u8 = 1;
const STATUS_REJECTED: u8 = 1;

const CLIENT_LABEL: &[u8] = b"pstorage-auth-v1 client";
const SERVER_LABEL: &[u8] = b"pstorage-auth-v1 server";

const FIX_HINT: &str = "run `pstorage -c CLUSTER auth-node`";

/// Derives the cluster key from the cluster's password: PBKDF2-HMAC-SHA256,
/// [`KEY_DERIVATION_ROUNDS`] rounds, salted with the cluster name so equal
/// passwords of different clusters give different keys. Deterministic; takes
/// tens of milliseconds by design.
pub fn derive_key(cluster: &str, password: &str) -> ClusterKey {
    let salt = format!("pstorage-cluster-key:{cluster}");
    let mut key = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        password.as_bytes(),
        salt.as_bytes(),
        KEY_DERIVATION_ROUNDS,
        &mut key,
    );
    ClusterKey(key)
}

/// What follows the handshake on an authenticated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Cap'n Proto control RPC.
    Control,
    /// The framed data protocol of [`crate::data`].
    Data,
}

impl Channel {
    fn code(self) -> u8 {
        match self {
            Channel::Control => 1,
            Channel::Data => 2,
        }
    }

    fn from_code(code: u8) -> Option<Channel> {
        match code {
            1 => Some(Channel::Control),
            2 => Some(Channel::Data),
            _ => None,
        }
    }
}

/// Proves to the server at the other end of `stream` that we hold `key`,
/// checks that it holds it too, and announces `channel`.
///
/// Errors: `PermissionDenied` when either side does not hold the key,
/// `Protocol` when the peer is not a pstorage node or speaks another
/// version, `TimedOut` when a step exceeds [`HANDSHAKE_STEP_TIMEOUT`],
/// `Unavailable` when the connection breaks.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
    channel: Channel,
) -> Result<()> {
    whole_handshake(client_handshake_with_timeout(
        stream,
        key,
        channel,
        HANDSHAKE_STEP_TIMEOUT,
    ))
    .await
}

/// Runs a handshake within [`HANDSHAKE_TIMEOUT`].
async fn whole_handshake<T>(handshake: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "authentication handshake: not finished within {HANDSHAKE_TIMEOUT:?}; the \
                     peer is silent (stopped, overloaded, or not a pstorage node)"
                ),
            ))
        })
}

/// Checks that the client at the other end of `stream` holds `key`, proves
/// that we hold it too, and returns the channel the client asked for.
///
/// Errors as for [`client_handshake`]. On error the caller must drop the
/// connection without serving anything on it.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<Channel> {
    whole_handshake(server_handshake_with_timeout(
        stream,
        key,
        HANDSHAKE_STEP_TIMEOUT,
    ))
    .await
}

/// Connects to `addr` (`host:port`), sets the socket options
/// ([`configure_socket`]) and runs [`client_handshake`] for `channel`, all
/// within [`CONNECT_TIMEOUT`].
///
/// Errors: `Unavailable` when the address cannot be reached or does not
/// answer in time, otherwise as for [`client_handshake`]; every message
/// names `addr`.
pub async fn connect(addr: &str, key: &ClusterKey, channel: Channel) -> Result<TcpStream> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| AuthError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        configure_socket(&stream).map_err(|e| e.context(format!("the connection to {addr}")))?;
        client_handshake(&mut stream, key, channel)
            .await
            .map_err(|e| match e.kind() {
                // A silent peer is an unreachable one to a dialer.
                ErrorKind::TimedOut => {
                    Error::unavailable(format!("authenticating to {addr}: {}", e.message()))
                        .caused_by(e)
                }
                _ => e.context(format!("authenticating to {addr}")),
            })?;
        Ok(stream)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::unavailable(format!(
            "connecting to {addr} and authenticating took over {CONNECT_TIMEOUT:?}; is the host \
             reachable and the server running (not stopped)?"
        ))),
    }
}

pub(crate) async fn client_handshake_with_timeout<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
    channel: Channel,
    step_timeout: Duration,
) -> Result<()> {
    let mut hello = [0u8; HELLO_LEN];
    hello[..4].copy_from_slice(&AUTH_MAGIC);
    hello[4..6].copy_from_slice(&AUTH_VERSION.to_le_bytes());
    step(step_timeout, "sending the hello", stream.write_all(&hello)).await?;

    let mut challenge = [0u8; CHALLENGE_LEN];
    step(
        step_timeout,
        "reading the server's challenge",
        stream.read_exact(&mut challenge),
    )
    .await?;
    if challenge[..4] != AUTH_MAGIC {
        return Err(Error::protocol(
            "the peer is not a pstorage node (wrong handshake magic); check the address and port",
        ));
    }
    let server_version = u16::from_le_bytes([challenge[4], challenge[5]]);
    if server_version != AUTH_VERSION || challenge[6] == STATUS_VERSION_UNSUPPORTED {
        return Err(version_error(server_version));
    }
    if challenge[6] != STATUS_OK {
        return Err(Error::protocol(format!(
            "the server sent an unknown handshake status {}",
            challenge[6]
        )));
    }
    let server_nonce: [u8; NONCE_LEN] = challenge[8..].try_into().expect("fixed length");

    let client_nonce: [u8; NONCE_LEN] = rand::random();
    let mut proof = [0u8; PROOF_LEN];
    proof[0] = channel.code();
    proof[1..1 + NONCE_LEN].copy_from_slice(&client_nonce);
    let mac = client_mac(key, &server_nonce, &client_nonce, channel.code()).finalize();
    proof[1 + NONCE_LEN..].copy_from_slice(&mac.into_bytes());
    step(step_timeout, "sending our proof", stream.write_all(&proof)).await?;
    step(step_timeout, "sending our proof", stream.flush()).await?;

    let mut verdict = [0u8; VERDICT_LEN];
    step(
        step_timeout,
        "reading the server's verdict",
        stream.read_exact(&mut verdict),
    )
    .await?;
    match verdict[0] {
        STATUS_OK => {}
        STATUS_REJECTED => {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "authentication failed: the server rejected our cluster key (one of the two nodes holds another cluster's or a stale key); {FIX_HINT} on the node with the wrong key"
                ),
            ))
        }
        other => {
            return Err(Error::protocol(format!(
                "the server sent an unknown verdict status {other}"
            )))
        }
    }
    server_mac(key, &client_nonce, &server_nonce)
        .verify_slice(&verdict[1..])
        .map_err(|_| {
            Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "authentication failed: the server does not hold the cluster key (it belongs to another cluster or has a stale key); {FIX_HINT} on the server"
                ),
            )
        })
}

pub(crate) async fn server_handshake_with_timeout<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
    step_timeout: Duration,
) -> Result<Channel> {
    let mut hello = [0u8; HELLO_LEN];
    step(
        step_timeout,
        "reading the client's hello",
        stream.read_exact(&mut hello),
    )
    .await?;
    if hello[..4] != AUTH_MAGIC {
        return Err(Error::protocol(
            "the peer is not a pstorage node (wrong handshake magic)",
        ));
    }
    let client_version = u16::from_le_bytes([hello[4], hello[5]]);

    let server_nonce: [u8; NONCE_LEN] = rand::random();
    let mut challenge = [0u8; CHALLENGE_LEN];
    challenge[..4].copy_from_slice(&AUTH_MAGIC);
    challenge[4..6].copy_from_slice(&AUTH_VERSION.to_le_bytes());
    challenge[6] = if client_version == AUTH_VERSION {
        STATUS_OK
    } else {
        STATUS_VERSION_UNSUPPORTED
    };
    challenge[8..].copy_from_slice(&server_nonce);
    step(
        step_timeout,
        "sending the challenge",
        stream.write_all(&challenge),
    )
    .await?;
    step(step_timeout, "sending the challenge", stream.flush()).await?;
    if client_version != AUTH_VERSION {
        return Err(version_error(client_version));
    }

    let mut proof = [0u8; PROOF_LEN];
    step(
        step_timeout,
        "reading the client's proof",
        stream.read_exact(&mut proof),
    )
    .await?;
    let client_nonce: [u8; NONCE_LEN] = proof[1..1 + NONCE_LEN].try_into().expect("fixed length");
    // The MAC is checked before the channel byte is interpreted, so an
    // unauthenticated peer learns nothing from the answer but "rejected".
    let verified = client_mac(key, &server_nonce, &client_nonce, proof[0])
        .verify_slice(&proof[1 + NONCE_LEN..])
        .is_ok();
    let mut verdict = [0u8; VERDICT_LEN];
    if !verified {
        verdict[0] = STATUS_REJECTED;
        // Best effort: the client gets a clear reason; we fail either way.
        let _ = step(
            step_timeout,
            "sending the verdict",
            stream.write_all(&verdict),
        )
        .await;
        let _ = step(step_timeout, "sending the verdict", stream.flush()).await;
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "authentication failed: the peer does not hold the cluster key; {FIX_HINT} on the peer"
            ),
        ));
    }
    let channel = Channel::from_code(proof[0]).ok_or_else(|| {
        Error::protocol(format!(
            "the client asked for an unknown channel {}",
            proof[0]
        ))
    })?;
    verdict[0] = STATUS_OK;
    let mac = server_mac(key, &client_nonce, &server_nonce).finalize();
    verdict[1..].copy_from_slice(&mac.into_bytes());
    step(
        step_timeout,
        "sending the verdict",
        stream.write_all(&verdict),
    )
    .await?;
    step(step_timeout, "sending the verdict", stream.flush()).await?;
    Ok(channel)
}

fn client_mac(
    key: &ClusterKey,
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    channel: u8,
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(&key.0).expect("HMAC accepts any key length");
    mac.update(CLIENT_LABEL);
    mac.update(server_nonce);
    mac.update(client_nonce);
    mac.update(&[channel]);
    mac
}

fn server_mac(
    key: &ClusterKey,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(&key.0).expect("HMAC accepts any key length");
    mac.update(SERVER_LABEL);
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac
}

fn version_error(peer_version: u16) -> Error {
    let fix = if peer_version > AUTH_VERSION {
        "upgrade this node"
    } else {
        "upgrade the peer"
    };
    Error::protocol(format!(
        "the peer speaks handshake version {peer_version}, this node speaks {AUTH_VERSION}; {fix}"
    ))
}

/// A failure of the connection under a handshake, kept as the source of the
/// [`Error`] it converts into. The handshake's own refusals (wrong magic,
/// version or key) have no cause and are plain errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Dialing `addr` failed: `Unavailable`.
    #[error("cannot connect to {addr}: {source}; is the server running and the address right?")]
    Connect {
        /// The address dialed.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing step `what` of the handshake failed: the kind of
    /// the `io::Error` ([`ErrorKind::of_io`]; a closed connection is
    /// `Unavailable`).
    #[error(
        "authentication handshake: {what}: {source}; the peer closed the connection or is not a \
         pstorage node"
    )]
    Step {
        /// The step of the handshake.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl AuthError {
    /// The public kind this error converts into.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthError::Connect { .. } => ErrorKind::Unavailable,
            AuthError::Step { source, .. } => ErrorKind::of_io(source),
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        Error::with_source(e.kind(), e.to_string(), e)
    }
}

/// Runs one handshake step under `limit`, naming the step in errors.
async fn step<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(AuthError::Step {
            what: what.to_string(),
            source,
        }
        .into()),
        Err(_) => Err(Error::new(
            ErrorKind::TimedOut,
            format!(
                "authentication handshake: {what} timed out after {limit:?}; the peer is silent"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey([b; KEY_LEN])
    }

    async fn run_pair(
        client_key: ClusterKey,
        server_key: ClusterKey,
        channel: Channel,
    ) -> (Result<()>, Result<Channel>) {
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_handshake(&mut s, &server_key).await });
        let client = client_handshake(&mut c, &client_key, channel).await;
        (client, server.await.unwrap())
    }

    #[test]
    fn derive_key_is_deterministic_and_salted() {
        let a = derive_key("c1", "secret");
        assert_eq!(a, derive_key("c1", "secret"));
        assert_ne!(a, derive_key("c2", "secret"));
        assert_ne!(a, derive_key("c1", "secret2"));
    }

    #[tokio::test]
    async fn right_key_works_on_both_channels() {
        for channel in [Channel::Control, Channel::Data] {
            let (c, s) = run_pair(key(1), key(1), channel).await;
            c.unwrap();
            assert_eq!(s.unwrap(), channel);
        }
    }

    #[tokio::test]
    async fn wrong_key_fails_on_both_sides() {
        for channel in [Channel::Control, Channel::Data] {
            let (c, s) = run_pair(key(1), key(2), channel).await;
            let c = c.unwrap_err();
            let s = s.unwrap_err();
            assert_eq!(c.kind(), ErrorKind::PermissionDenied, "{c}");
            assert_eq!(s.kind(), ErrorKind::PermissionDenied, "{s}");
            assert!(s.message().contains("auth-node"), "{s}");
            assert!(c.message().contains("auth-node"), "{c}");
        }
    }

    #[tokio::test]
    async fn client_detects_a_server_without_the_key() {
        // A fake server that accepts anything but cannot compute the MAC.
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).await.unwrap();
            let mut challenge = [0u8; CHALLENGE_LEN];
            challenge[..4].copy_from_slice(&AUTH_MAGIC);
            challenge[4..6].copy_from_slice(&AUTH_VERSION.to_le_bytes());
            s.write_all(&challenge).await.unwrap();
            let mut proof = [0u8; PROOF_LEN];
            s.read_exact(&mut proof).await.unwrap();
            let verdict = [0u8; VERDICT_LEN]; // "accepted", with a bogus MAC
            s.write_all(&verdict).await.unwrap();
        });
        let err = client_handshake(&mut c, &key(1), Channel::Data)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_and_wrong_magic_fail_cleanly() {
        // Server side: an HTTP client.
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_handshake(&mut s, &key(1)).await });
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.message().contains("magic"), "{err}");

        // Client side: a server that answers garbage.
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).await.unwrap();
            s.write_all(&[0x55u8; CHALLENGE_LEN]).await.unwrap();
        });
        let err = client_handshake(&mut c, &key(1), Channel::Control)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        server.await.unwrap();

        // A truncated hello followed by EOF.
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_handshake(&mut s, &key(1)).await });
        c.write_all(b"PS").await.unwrap();
        drop(c);
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }

    #[tokio::test]
    async fn newer_version_is_refused_with_a_clear_error() {
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_handshake(&mut s, &key(1)).await });
        let mut hello = [0u8; HELLO_LEN];
        hello[..4].copy_from_slice(&AUTH_MAGIC);
        hello[4..6].copy_from_slice(&(AUTH_VERSION + 1).to_le_bytes());
        c.write_all(&hello).await.unwrap();
        let mut challenge = [0u8; CHALLENGE_LEN];
        c.read_exact(&mut challenge).await.unwrap();
        assert_eq!(challenge[6], STATUS_VERSION_UNSUPPORTED);
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.message().contains("version 2"), "{err}");
        assert!(err.message().contains("upgrade this node"), "{err}");

        // And a client facing a newer server.
        let (mut c, mut s) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).await.unwrap();
            let mut challenge = [0u8; CHALLENGE_LEN];
            challenge[..4].copy_from_slice(&AUTH_MAGIC);
            challenge[4..6].copy_from_slice(&(AUTH_VERSION + 1).to_le_bytes());
            challenge[6] = STATUS_VERSION_UNSUPPORTED;
            s.write_all(&challenge).await.unwrap();
        });
        let err = client_handshake(&mut c, &key(1), Channel::Data)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.message().contains("upgrade this node"), "{err}");
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let limit = Duration::from_millis(100);
        let (_c, mut s) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let err = server_handshake_with_timeout(&mut s, &key(1), limit)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let (mut c, _s) = tokio::io::duplex(1024);
        let err = client_handshake_with_timeout(&mut c, &key(1), Channel::Data, limit)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    }

    #[tokio::test]
    async fn connect_over_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            server_handshake(&mut s, &key(3)).await
        });
        let stream = connect(&addr, &key(3), Channel::Data).await.unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(server.await.unwrap().unwrap(), Channel::Data);
        assert_socket_options(&stream);

        // Nothing listens there any more.
        let err = connect(&addr, &key(3), Channel::Data).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains(&addr), "{err}");
        // The refusal is the cause, not only words in the message.
        assert!(
            matches!(
                err.find_source::<AuthError>(),
                Some(AuthError::Connect { .. })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.find_source::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
    }

    /// A peer that hangs up in the middle of the handshake: `Unavailable`
    /// (the kind of the EOF), naming the step, with the EOF as the cause.
    #[tokio::test]
    async fn a_peer_hanging_up_mid_handshake_keeps_the_io_error() {
        let (mut c, s) = tokio::io::duplex(1024);
        drop(s);
        let err = client_handshake(&mut c, &key(1), Channel::Data)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(
            err.message().starts_with("authentication handshake: "),
            "{err}"
        );
        assert!(
            matches!(err.find_source::<AuthError>(), Some(AuthError::Step { .. })),
            "{err:?}"
        );
        let io = err.find_source::<std::io::Error>().expect("the io::Error");
        assert!(
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof
            ),
            "{io:?}"
        );
    }

    fn assert_socket_options(stream: &TcpStream) {
        use std::os::fd::AsRawFd;
        let fd = stream.as_raw_fd();
        let get = |level, name| socket_option(fd, level, name) as u64;
        assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            KEEPALIVE_IDLE.as_secs()
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            KEEPALIVE_INTERVAL.as_secs()
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            KEEPALIVE_PROBES as u64
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
            TCP_USER_TIMEOUT.as_millis() as u64
        );
    }

    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_a_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let channel = accept(&mut s, &key(3)).await.unwrap();
            assert_socket_options(&s);
            channel
        });
        connect(&addr, &key(3), Channel::Control).await.unwrap();
        assert_eq!(server.await.unwrap(), Channel::Control);
    }

    /// A peer that stops answering mid-handshake (each step alone would
    /// wait 10 s) is cut off at the whole handshake's deadline, both ways.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_fails_the_whole_handshake_at_its_deadline() {
        let started = tokio::time::Instant::now();
        let (_c, mut s) = tokio::io::duplex(1024);
        let err = server_handshake(&mut s, &key(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);

        let started = tokio::time::Instant::now();
        let (mut c, mut s) = tokio::io::duplex(1024);
        // It sends a proper challenge, then freezes.
        let _peer = tokio::spawn(async move {
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).await.unwrap();
            let mut challenge = [0u8; CHALLENGE_LEN];
            challenge[..4].copy_from_slice(&AUTH_MAGIC);
            challenge[4..6].copy_from_slice(&AUTH_VERSION.to_le_bytes());
            s.write_all(&challenge).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            std::future::pending::<()>().await;
            drop(s);
        });
        let err = client_handshake(&mut c, &key(1), Channel::Control)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
    }

    /// A stopped server: its kernel accepts the TCP connection, nobody
    /// answers. `connect` gives up at its deadline.
    #[tokio::test]
    async fn connect_to_a_frozen_server_gives_up_in_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        let err = connect(&addr, &key(1), Channel::Control).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains(&addr), "{err}");
        let took = started.elapsed();
        assert!(
            took >= CONNECT_TIMEOUT - Duration::from_millis(100) && took < CONNECT_TIMEOUT * 3,
            "{took:?}"
        );
        drop(listener);
    }
}
