//! Connections between nodes (DESIGN.md invariant 8): every TCP connection
//! is TLS 1.3 with certificates of the cluster CA on both sides
//! ([`crate::tls`]) before a single request crosses it. The client names
//! the channel it wants by ALPN in its ClientHello: `pstorage/4 control`
//! (Cap'n Proto control RPC), `pstorage/4 data` (the framed data protocol
//! of [`crate::data`]) or `pstorage/4 enroll` ([`crate::enroll`]: a node
//! proves the cluster password and gets a certificate; the only channel
//! served to a client without one). A ClientHello without ALPN (`openssl
//! s_client`) is a control connection.
//!
//! Once the handshake is done and the server has checked the client's
//! certificate (against the CA and the revoked ones) and the channel, it
//! sends one byte inside TLS, the server's word, before anything else on
//! the control and data channels: [`ACCEPTED`], or on the data channel of
//! a cluster made with a clear data path ([`crate::pki::DataPath`])
//! [`ACCEPTED_CLEAR`], after which both ends leave TLS and use the TCP
//! connection itself. The client reads it before it returns from
//! [`connect`]: in TLS 1.3 a server refuses a client's certificate after
//! the client has finished its side of the handshake, so without the word
//! a refused client would learn it only at its first request.
//!
//! A server reads the channel from the ClientHello before the handshake,
//! without consuming it ([`peek_channel`]: `MSG_PEEK`, parsed by rustls),
//! so that it can hand the connection to the thread that serves that
//! channel, which runs the handshake. A node of an older build, which
//! opens with the HMAC handshake's hello ("PSTA", version 1), is answered
//! that version's 40-byte challenge with status 1 ("version unsupported")
//! and this build's version, so it reports which side to upgrade.
//!
//! The cluster password never crosses the wire, nor anything that allows
//! guessing it offline: enrollment runs SPAKE2 inside the TLS session.
//!
//! Reading the ClientHello and the TLS handshake have deadlines on both sides
//! ([`HANDSHAKE_TIMEOUT`], and [`CONNECT_TIMEOUT`] for connecting plus the
//! handshake), so a silent or slow peer (a frozen process whose kernel
//! still accepts connections) cannot hold a server task or a dialing client
//! for long.
//!
//! # Socket options
//!
//! Every TCP connection, dialed ([`connect`]) or accepted, gets
//! TCP_NODELAY, TCP keepalive ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`],
//! [`KEEPALIVE_PROBES`]) and `TCP_USER_TIMEOUT` ([`TCP_USER_TIMEOUT`]) from
//! [`configure_socket`]: a peer whose host lost power or whose network is cut
//! is detected within about 15 s even while nothing is being sent, and an
//! unacknowledged send fails after 15 s. A frozen process on a live host
//! still acknowledges at the TCP level; call deadlines catch that.

use std::time::Duration;

use pstorage_core::conf::{ClusterKey, KEY_LEN};
use pstorage_core::error::{Error, ErrorKind, Result};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::node_stream::NodeStream;
use crate::pki::{DataPath, Peer};
use crate::tls::{handshake_error, peer_of, server_name, Credentials};

/// The magic of the HMAC handshake of older builds: "PSTA".
pub const AUTH_MAGIC: [u8; 4] = *b"PSTA";
/// The connection protocol version this node speaks (1 was the HMAC
/// handshake; 2 TLS with ALPN; 3 adds the server's word).
pub const AUTH_VERSION: u16 = 3;
/// PBKDF2 iterations of [`derive_key`].
pub const KEY_DERIVATION_ROUNDS: u32 = 100_000;
/// Deadline of each handshake step.
pub const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a whole handshake (ClientHello and TLS), on either side.
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

/// The client end of a connection to a node.
pub type ClientStream = NodeStream<tokio_rustls::client::TlsStream<TcpStream>>;
/// The server end of a connection from a node.
pub type ServerStream = NodeStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// The server's word: the connection is accepted and stays in TLS.
pub const ACCEPTED: u8 = 1;
/// The server's word on the data channel of a clear-data-path cluster:
/// accepted, and both ends continue on the TCP connection without TLS.
pub const ACCEPTED_CLEAR: u8 = 2;

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

/// A connection whose handshake (ClientHello and TLS) has not finished,
/// counted against a server's bound ([`crate::node::MAX_HANDSHAKES`]) until
/// dropped, on whichever thread finishes it.
pub struct HandshakeSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl HandshakeSlot {
    /// Counts one more handshake in `count`.
    pub fn take(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> HandshakeSlot {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        HandshakeSlot(count.clone())
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Length of the version 1 challenge, answered to nodes of older builds.
const V1_CHALLENGE_LEN: usize = 40;
const STATUS_VERSION_UNSUPPORTED: u8 = 1;
/// Largest ClientHello a server waits for (rustls sends about 300 bytes).
pub const MAX_CLIENT_HELLO: usize = 16 << 10;

const FIX_HINT: &str = "run `pstorage -c CLUSTER auth-node`";

/// Derives the cluster key from the cluster's password: PBKDF2-HMAC-SHA256,
/// [`KEY_DERIVATION_ROUNDS`] rounds, salted with the cluster name so equal
/// passwords of different clusters give different keys. Deterministic; takes
/// tens of milliseconds by design. The MDSes keep it to check enrollments
/// ([`crate::enroll`]); other nodes keep certificates instead.
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

/// What a connection is for, named by ALPN. The discriminants are the
/// positions in [`Channel::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Cap'n Proto control RPC.
    Control = 0,
    /// The framed data protocol of [`crate::data`].
    Data = 1,
    /// Enrollment: a node without a certificate proves the password and
    /// gets one ([`crate::enroll`]).
    Enroll = 2,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 3] = [Channel::Control, Channel::Data, Channel::Enroll];

    /// Its ALPN protocol name.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Channel::Control => b"pstorage/4 control",
            Channel::Data => b"pstorage/4 data",
            Channel::Enroll => b"pstorage/4 enroll",
        }
    }

    fn from_alpn(name: &[u8]) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.alpn() == name)
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not all of the ClientHello has arrived yet.
    Incomplete,
    /// A TLS ClientHello asking for this channel.
    Tls(Channel),
    /// The HMAC handshake of an older build, of this version.
    OldNode(u16),
}

/// Classifies the first bytes of a connection (a pure function: fuzzed).
/// Errors: `Protocol` for bytes that are neither a TLS ClientHello nor an
/// older node's hello, or a ClientHello offering only foreign protocols.
pub fn classify_hello(bytes: &[u8]) -> Result<Hello> {
    if bytes.len() < 4 && AUTH_MAGIC.starts_with(bytes) {
        return Ok(Hello::Incomplete);
    }
    if bytes.starts_with(&AUTH_MAGIC) {
        if bytes.len() < 6 {
            return Ok(Hello::Incomplete);
        }
        return Ok(Hello::OldNode(u16::from_le_bytes([bytes[4], bytes[5]])));
    }
    // A TLS record of type handshake (22).
    if bytes.first().is_some_and(|b| *b != 22) {
        return Err(Error::protocol(
            "the peer is not a pstorage node (neither TLS nor a pstorage handshake)",
        ));
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(Error::protocol(format!("a malformed TLS ClientHello: {e}"))),
        }
    }
    match acceptor.accept() {
        Ok(None) if bytes.len() >= MAX_CLIENT_HELLO => Err(Error::protocol(format!(
            "no complete TLS ClientHello in {MAX_CLIENT_HELLO} bytes"
        ))),
        Ok(None) => Ok(Hello::Incomplete),
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let Some(mut offered) = hello.alpn() else {
                return Ok(Hello::Tls(Channel::Control));
            };
            offered
                .find_map(Channel::from_alpn)
                .map(Hello::Tls)
                .ok_or_else(|| {
                    Error::protocol(
                        "the TLS client offers no pstorage protocol (ALPN); it is not a \
                         pstorage node of this version",
                    )
                })
        }
        Err((e, _)) => Err(Error::protocol(format!("a malformed TLS ClientHello: {e}"))),
    }
}

/// Reads (without consuming: `MSG_PEEK`) the ClientHello of a new
/// connection and returns the channel it asks for, within
/// [`HANDSHAKE_TIMEOUT`]. A node of an older build gets the answer it
/// understands ("unsupported version"). Errors: `Protocol` for anything but
/// a ClientHello of ours, `TimedOut`, `Unavailable` on a closed connection;
/// the caller then drops it.
pub async fn peek_channel(stream: &mut TcpStream) -> Result<Channel> {
    whole_handshake(async {
        let mut buf = vec![0u8; MAX_CLIENT_HELLO];
        let mut seen = 0;
        loop {
            let n = step(
                HANDSHAKE_STEP_TIMEOUT,
                "reading the client's hello",
                stream.peek(&mut buf),
            )
            .await?;
            if n == 0 {
                return Err(AuthError::Step {
                    what: "reading the client's hello".into(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                }
                .into());
            }
            match classify_hello(&buf[..n])? {
                Hello::Tls(channel) => return Ok(channel),
                Hello::OldNode(version) => {
                    let mut challenge = [0u8; V1_CHALLENGE_LEN];
                    challenge[..4].copy_from_slice(&AUTH_MAGIC);
                    challenge[4..6].copy_from_slice(&AUTH_VERSION.to_le_bytes());
                    challenge[6] = STATUS_VERSION_UNSUPPORTED;
                    let _ = step(
                        HANDSHAKE_STEP_TIMEOUT,
                        "answering",
                        stream.write_all(&challenge),
                    )
                    .await;
                    return Err(version_error(version));
                }
                Hello::Incomplete => {
                    // Peeked bytes stay readable, so a peer that closed
                    // after a partial hello shows only as a closed read side.
                    let ready =
                        stream
                            .ready(tokio::io::Interest::READABLE)
                            .await
                            .map_err(|source| AuthError::Step {
                                what: "reading the client's hello".into(),
                                source,
                            })?;
                    if ready.is_read_closed() {
                        return Err(AuthError::Step {
                            what: "reading the client's hello".into(),
                            source: std::io::ErrorKind::UnexpectedEof.into(),
                        }
                        .into());
                    }
                    // Peeking returns at once while the bytes seen so far
                    // are there: wait a little for the rest.
                    if n == seen {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    seen = n;
                }
            }
        }
    })
    .await
}

/// Runs a handshake within [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn whole_handshake<T>(
    handshake: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "handshake: not finished within {HANDSHAKE_TIMEOUT:?}; the peer is silent \
                     (stopped, overloaded, or not a pstorage node)"
                ),
            ))
        })
}

/// The server's TLS handshake on a connection whose ClientHello asked for
/// `channel` ([`peek_channel`]), within [`HANDSHAKE_TIMEOUT`]: returns the
/// stream and the peer. Every channel but [`Channel::Enroll`] needs a
/// client certificate of the cluster CA (`PermissionDenied` without one).
pub async fn accept_tls(
    stream: TcpStream,
    credentials: &Credentials,
    channel: Channel,
) -> Result<(ServerStream, Option<Peer>)> {
    let peer_addr = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "a client".into());
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config());
    whole_handshake(async {
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| handshake_error(e, &peer_addr))?;
        let negotiated = tls.get_ref().1.alpn_protocol().and_then(Channel::from_alpn);
        if negotiated.unwrap_or(Channel::Control) != channel {
            return Err(Error::protocol(format!(
                "{peer_addr} negotiated {negotiated:?}, not the {channel:?} channel it asked for"
            )));
        }
        let peer = peer_of(tls.get_ref().1.peer_certificates())?;
        if peer.is_none() && channel != Channel::Enroll {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{peer_addr} showed no certificate for the {channel:?} channel; {FIX_HINT} on it"
                ),
            ));
        }
        if channel == Channel::Enroll {
            return Ok((NodeStream::Tls(tls), peer));
        }
        let clear = channel == Channel::Data && credentials.data_path() == DataPath::Clear;
        let mut tls = tls;
        let word = if clear { ACCEPTED_CLEAR } else { ACCEPTED };
        tls.write_all(&[word]).await?;
        tls.flush().await?;
        if !clear {
            return Ok((NodeStream::Tls(tls), peer));
        }
        let (tcp, mut conn) = tls.into_inner();
        no_bytes_after_the_word(&mut conn, &peer_addr)?;
        Ok((NodeStream::Clear(tcp), peer))
    })
    .await
}

/// Checks that a TLS connection left at the server's word holds nothing
/// read beyond it (the protocol leaves none: the client waits for the
/// word, the server sends nothing after it). `Protocol` otherwise.
fn no_bytes_after_the_word<D>(conn: &mut rustls::ConnectionCommon<D>, peer: &str) -> Result<()> {
    use std::io::Read;
    let mut byte = [0u8; 1];
    match conn.reader().read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        _ => Err(Error::protocol(format!(
            "{peer} sent data before the data channel left TLS"
        ))),
    }
}

/// Connects to `addr` (`host:port`), sets the socket options
/// ([`configure_socket`]) and runs the TLS handshake for `channel` with
/// `credentials`, all within [`CONNECT_TIMEOUT`]. The server
/// must show a certificate of our cluster CA with a server's role (MDS or
/// chunk server).
///
/// Errors: `Unavailable` when the address cannot be reached or does not
/// answer in time, `PermissionDenied` when either side refuses the other's
/// certificate, `Protocol` for a peer that is not a pstorage node; every
/// message names `addr`.
pub async fn connect(
    addr: &str,
    credentials: &Credentials,
    channel: Channel,
) -> Result<ClientStream> {
    let connector = tokio_rustls::TlsConnector::from(credentials.client_config(channel));
    let attempt = async {
        let stream = dial(addr).await?;
        let tls = connector
            .connect(server_name(), stream)
            .await
            .map_err(|e| handshake_error(e, addr))?;
        match peer_of(tls.get_ref().1.peer_certificates())? {
            Some(peer) if peer.role.is_server() => {}
            Some(peer) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("{addr} shows the certificate of {peer}, not a server's: refused"),
                ))
            }
            None => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("{addr} showed no certificate: refused"),
                ))
            }
        }
        // The server's word: a refusal of our certificate arrives here.
        let mut tls = tls;
        let mut word = [0u8; 1];
        tls.read_exact(&mut word)
            .await
            .map_err(|e| handshake_error(e, addr))?;
        match word[0] {
            ACCEPTED => Ok(NodeStream::Tls(tls)),
            ACCEPTED_CLEAR
                if channel == Channel::Data && credentials.data_path() == DataPath::Clear =>
            {
                let (tcp, mut conn) = tls.into_inner();
                no_bytes_after_the_word(&mut conn, addr)?;
                Ok(NodeStream::Clear(tcp))
            }
            other => Err(Error::protocol(format!(
                "{addr} answered the {channel:?} channel with {other:#x}, not a word this node \
                 accepts (its cluster CA's data path is {:?})",
                credentials.data_path()
            ))),
        }
    };
    within_connect_timeout(addr, attempt).await
}

/// Opens the TCP connection to `addr` and sets its options (the TLS
/// handshake is the caller's).
pub(crate) async fn dial(addr: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| AuthError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    configure_socket(&stream).map_err(|e| e.context(format!("the connection to {addr}")))?;
    Ok(stream)
}

/// Runs `attempt` (a connection to `addr`) within [`CONNECT_TIMEOUT`].
pub(crate) async fn within_connect_timeout<T>(
    addr: &str,
    attempt: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.kind() == ErrorKind::TimedOut => {
            Err(Error::unavailable(format!("connecting to {addr}: {}", e.message())).caused_by(e))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::unavailable(format!(
            "connecting to {addr} and authenticating took over {CONNECT_TIMEOUT:?}; is the host \
             reachable and the server running (not stopped)?"
        ))),
    }
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
pub(crate) async fn step<T>(
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
    use crate::pki::{ClusterCa, Role};
    use tokio::io::AsyncReadExt;

    fn creds(ca: &ClusterCa, role: Role, name: &str) -> Credentials {
        Credentials::new(ca.issue_identity(role, name).unwrap()).unwrap()
    }

    #[test]
    fn derive_key_is_deterministic_and_salted() {
        let a = derive_key("c1", "secret");
        assert_eq!(a, derive_key("c1", "secret"));
        assert_ne!(a, derive_key("c2", "secret"));
        assert_ne!(a, derive_key("c1", "secret2"));
    }

    /// The first flight a client of `channel` sends: its ClientHello.
    fn client_hello(channel: Channel) -> Vec<u8> {
        let creds = crate::tls::test_credentials(Role::Client);
        let mut conn =
            rustls::ClientConnection::new(creds.client_config(channel), server_name()).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        hello
    }

    #[test]
    fn the_client_hello_names_every_channel() {
        for channel in Channel::ALL {
            let hello = client_hello(channel);
            assert_eq!(classify_hello(&hello).unwrap(), Hello::Tls(channel));
            // Any prefix is only incomplete.
            for cut in [1, 5, 40, hello.len() - 1] {
                assert_eq!(classify_hello(&hello[..cut]).unwrap(), Hello::Incomplete);
            }
        }
    }

    #[test]
    fn garbage_and_old_nodes_are_told_apart() {
        let err = classify_hello(b"GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.message().contains("not a pstorage node"), "{err}");
        let mut old = AUTH_MAGIC.to_vec();
        old.extend_from_slice(&1u16.to_le_bytes());
        assert_eq!(classify_hello(&old).unwrap(), Hello::OldNode(1));
        assert_eq!(classify_hello(b"PS").unwrap(), Hello::Incomplete);
        // A TLS record that is not a ClientHello.
        let err = classify_hello(&[22, 3, 1, 0, 4, 2, 0, 0, 0]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    }

    #[tokio::test]
    async fn an_old_node_is_told_to_upgrade_and_garbage_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                outcomes.push(peek_channel(&mut s).await);
            }
            outcomes
        });
        // A node of the HMAC handshake (version 1) gets its "unsupported".
        let mut old = TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 8];
        hello[..4].copy_from_slice(&AUTH_MAGIC);
        hello[4..6].copy_from_slice(&1u16.to_le_bytes());
        old.write_all(&hello).await.unwrap();
        let mut challenge = [0u8; V1_CHALLENGE_LEN];
        old.read_exact(&mut challenge).await.unwrap();
        assert_eq!(&challenge[..4], &AUTH_MAGIC);
        assert_eq!(
            u16::from_le_bytes([challenge[4], challenge[5]]),
            AUTH_VERSION
        );
        assert_eq!(challenge[6], STATUS_VERSION_UNSUPPORTED);
        // An HTTP client.
        let mut http = TcpStream::connect(addr).await.unwrap();
        http.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // A hello cut short by the client closing: the EOF is the cause.
        let mut cut = TcpStream::connect(addr).await.unwrap();
        cut.write_all(&client_hello(Channel::Data)[..20])
            .await
            .unwrap();
        drop(cut);
        let outcomes = server.await.unwrap();
        let err = outcomes[0].as_ref().unwrap_err();
        assert!(err.message().contains("upgrade the peer"), "{err}");
        assert_eq!(
            outcomes[1].as_ref().unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let err = outcomes[2].as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(
            matches!(err.find_source::<AuthError>(), Some(AuthError::Step { .. })),
            "{err:?}"
        );
    }

    /// A peer that sends nothing is cut off at the handshake's deadline.
    #[tokio::test]
    async fn a_silent_peer_fails_at_the_handshake_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let started = std::time::Instant::now();
        let err = peek_channel(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        let took = started.elapsed();
        assert!(
            took >= HANDSHAKE_TIMEOUT && took < HANDSHAKE_TIMEOUT * 3,
            "{took:?}"
        );
    }

    /// A TCP server that reads the ClientHello and runs the TLS handshake with
    /// `server`; returns the channel and peer it saw.
    async fn serve_one(
        server: Credentials,
    ) -> (
        String,
        tokio::task::JoinHandle<Result<(Channel, Option<Peer>)>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            configure_socket(&s)?;
            let channel = peek_channel(&mut s).await?;
            assert_socket_options(&s);
            let (mut tls, peer) = accept_tls(s, &server, channel).await?;
            // Let the client finish its side, then close.
            let mut byte = [0u8; 1];
            let _ = tls.read(&mut byte).await;
            Ok((channel, peer))
        });
        (addr, task)
    }

    #[tokio::test]
    async fn connect_over_tcp_with_tls_both_ways() {
        let ca = ClusterCa::generate("c").unwrap();
        let (addr, server) = serve_one(creds(&ca, Role::Mds, "mds 1")).await;
        let stream = connect(&addr, &creds(&ca, Role::Client, "h1"), Channel::Data)
            .await
            .unwrap();
        assert_socket_options(stream.tcp());
        assert_eq!(
            stream.tls().unwrap().get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        drop(stream);
        let (channel, peer) = server.await.unwrap().unwrap();
        assert_eq!(channel, Channel::Data);
        assert_eq!(peer.unwrap().role, Role::Client);

        // Nothing listens there any more.
        let err = connect(&addr, &creds(&ca, Role::Client, "h1"), Channel::Data)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains(&addr), "{err}");
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

    /// The server's word: a client the server refuses after the handshake
    /// (TLS 1.3 checks the client's certificate last) learns it from
    /// `connect`, not at its first request.
    #[tokio::test]
    async fn a_refused_client_learns_it_at_connect() {
        let ca = ClusterCa::generate("c").unwrap();
        let server = creds(&ca, Role::Mds, "mds 1");
        let client = creds(&ca, Role::Client, "h1");
        server
            .revocations()
            .extend(0, &[client.identity().peer.serial]);
        let (addr, served) = serve_one(server).await;
        let err = connect(&addr, &client, Channel::Data).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("revoked"), "{err}");
        assert_eq!(
            served.await.unwrap().unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
    }

    /// A cluster whose CA says the data path is clear: the data channel
    /// leaves TLS after the word, bytes cross in clear both ways; the
    /// control channel stays in TLS.
    #[tokio::test]
    async fn a_clear_data_path_leaves_tls_after_the_word() {
        let ca = ClusterCa::generate_with("c", DataPath::Clear).unwrap();
        let server = creds(&ca, Role::Cs, "cs 1");
        assert_eq!(server.data_path(), DataPath::Clear);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let channel = peek_channel(&mut s).await.unwrap();
                let (mut stream, _) = accept_tls(s, &server, channel).await.unwrap();
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf).await.unwrap();
                stream.write_all(b"world").await.unwrap();
                stream.flush().await.unwrap();
                seen.push((channel, stream.is_clear(), buf));
            }
            seen
        });
        let client = creds(&ca, Role::Client, "h1");
        for channel in [Channel::Data, Channel::Control] {
            let mut stream = connect(&addr, &client, channel).await.unwrap();
            assert_eq!(stream.is_clear(), channel == Channel::Data);
            stream.write_all(b"hello").await.unwrap();
            stream.flush().await.unwrap();
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"world");
        }
        let seen = task.await.unwrap();
        assert_eq!(
            seen,
            vec![
                (Channel::Data, true, *b"hello"),
                (Channel::Control, false, *b"hello")
            ]
        );
    }

    #[tokio::test]
    async fn certificates_of_another_cluster_are_refused_on_both_sides() {
        let ca = ClusterCa::generate("c").unwrap();
        let other = ClusterCa::generate("c").unwrap();
        // A client of another cluster.
        let (addr, server) = serve_one(creds(&ca, Role::Mds, "mds 1")).await;
        let _ = connect(&addr, &creds(&other, Role::Admin, "x"), Channel::Control).await;
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("auth-node"), "{err}");
        // A server of another cluster.
        let (addr, _server) = serve_one(creds(&other, Role::Mds, "mds 1")).await;
        let err = connect(&addr, &creds(&ca, Role::Admin, "a"), Channel::Control)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    }

    #[tokio::test]
    async fn a_client_certificate_cannot_pose_as_a_server() {
        let ca = ClusterCa::generate("c").unwrap();
        let (addr, _server) = serve_one(creds(&ca, Role::Client, "h")).await;
        let err = connect(&addr, &creds(&ca, Role::Admin, "a"), Channel::Control)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("not a server"), "{err}");
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_gets_only_enrollment() {
        let ca = ClusterCa::generate("c").unwrap();
        for (channel, allowed) in [
            (Channel::Control, false),
            (Channel::Data, false),
            (Channel::Enroll, true),
        ] {
            let (addr, server) = serve_one(creds(&ca, Role::Mds, "mds 1")).await;
            let stream = dial(&addr).await.unwrap();
            // A client without a certificate, asking for `channel`.
            let mut config = (*crate::tls::enrollment_client_config().unwrap()).clone();
            config.alpn_protocols = vec![channel.alpn().to_vec()];
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let tls = connector.connect(server_name(), stream).await;
            drop(tls);
            let outcome = server.await.unwrap();
            if allowed {
                assert_eq!(outcome.unwrap(), (Channel::Enroll, None));
            } else {
                assert_eq!(outcome.unwrap_err().kind(), ErrorKind::PermissionDenied);
            }
        }
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

    /// A stopped server: its kernel accepts the TCP connection, nobody
    /// answers. `connect` gives up at its deadline.
    #[tokio::test]
    async fn connect_to_a_frozen_server_gives_up_in_time() {
        let ca = ClusterCa::generate("c").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        let err = connect(&addr, &creds(&ca, Role::Client, "h"), Channel::Control)
            .await
            .unwrap_err();
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
