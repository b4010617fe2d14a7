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
//! Every step has a deadline ([`HANDSHAKE_STEP_TIMEOUT`]) so a silent or slow
//! peer cannot hold a server task forever.

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
/// Deadline of each handshake step (and of the TCP connect in [`connect`]).
pub const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(10);

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
    client_handshake_with_timeout(stream, key, channel, HANDSHAKE_STEP_TIMEOUT).await
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
    server_handshake_with_timeout(stream, key, HANDSHAKE_STEP_TIMEOUT).await
}

/// Connects to `addr` (`host:port`) within [`HANDSHAKE_STEP_TIMEOUT`], sets
/// TCP_NODELAY and runs [`client_handshake`] for `channel`.
///
/// Errors: `Unavailable` when the address cannot be reached, otherwise as
/// for [`client_handshake`]; every message names `addr`.
pub async fn connect(addr: &str, key: &ClusterKey, channel: Channel) -> Result<TcpStream> {
    let mut stream = match tokio::time::timeout(HANDSHAKE_STEP_TIMEOUT, TcpStream::connect(addr))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Error::unavailable(format!(
                "cannot connect to {addr}: {e}; is the server running and the address right?"
            )))
        }
        Err(_) => {
            return Err(Error::unavailable(format!(
                "connecting to {addr} timed out after {HANDSHAKE_STEP_TIMEOUT:?}; is the host reachable?"
            )))
        }
    };
    stream.set_nodelay(true).map_err(|e| {
        Error::from(e).context(format!("setting TCP_NODELAY on the connection to {addr}"))
    })?;
    client_handshake(&mut stream, key, channel)
        .await
        .map_err(|e| e.context(format!("authenticating to {addr}")))?;
    Ok(stream)
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

/// Runs one handshake step under `limit`, naming the step in errors.
async fn step<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let detail = e.to_string();
            let kind = Error::from(e).kind();
            Err(Error::new(
                kind,
                format!("authentication handshake: {what}: {detail}; the peer closed the connection or is not a pstorage node"),
            ))
        }
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

        // Nothing listens there any more.
        let err = connect(&addr, &key(3), Channel::Data).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains(&addr), "{err}");
    }
}
