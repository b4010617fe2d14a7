//! Enrollment: a node that knows the cluster password gets a certificate
//! (`auth-node`, `make-mds -a -p`), without the password, or anything that
//! allows guessing it offline, crossing the wire.
//!
//! The node dials an MDS on channel [`crate::auth::Channel::Enroll`]: TLS 1.3 in which
//! the node does not check the MDS's certificate yet (it has no CA), then
//! SPAKE2 (symmetric, Ed25519) on the cluster key (the PBKDF2 of the
//! password, [`crate::auth::derive_key`]), the only secret both sides hold.
//! Each side proves it derived the same SPAKE2 key by a MAC over the TLS
//! session's exported keying material, so a man in the middle, who must
//! run two TLS sessions, fails both proofs; an active attacker gets one
//! password guess per connection, and the MDS limits failed attempts
//! ([`FailureLimiter`]). A passive one sees only TLS.
//!
//! # Messages (inside TLS, integers little-endian)
//!
//! ```text
//! node -> mds   len u16 | SPAKE2 message
//! mds  -> node  status u8 | len u16 | SPAKE2 message
//! node -> mds   MAC(k, "pstorage-enroll-v1 client" | exporter) [32]
//!               | role u8 | name len u16 | name | CSR len u32 | CSR (DER)
//! mds  -> node  status u8 | MAC(k, "pstorage-enroll-v1 server" | exporter) [32]
//!               | certificate len u32 | certificate (PEM)
//!               | CA len u32 | CA certificate (PEM)         (status 0 only)
//! ```
//!
//! Status 0 is success, 1 a wrong password, 2 too many failed attempts
//! from this address (try later), 3 a bad request (a message follows: len
//! u16 | text). The exporter is 32 bytes of `EXPORTER-pstorage-enroll-v1`.
//! The node then checks that the MDS's TLS certificate is one of the CA it
//! received.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use pstorage_core::conf::ClusterKey;
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::traits::CertificateRegistry;
use pstorage_core::types::EventLevel;
use rustls::client::danger::ServerCertVerifier;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::auth::{self, step, ServerStream, HANDSHAKE_STEP_TIMEOUT};
use crate::pki::{
    CertRequest, ClusterCa, NodeIdentity, Role, MAX_CSR_LEN, MAX_NODE_NAME, MAX_PEM_LEN,
};
use crate::tls::{enrollment_client_config, handshake_error, server_name};

type HmacSha256 = Hmac<Sha256>;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-pstorage-enroll-v1";
const CLIENT_LABEL: &[u8] = b"pstorage-enroll-v1 client";
const SERVER_LABEL: &[u8] = b"pstorage-enroll-v1 server";
const MAC_LEN: usize = 32;
/// Longest SPAKE2 message either side reads (Ed25519's are 33 bytes).
const MAX_SPAKE_MSG: usize = 64;

const STATUS_OK: u8 = 0;
const STATUS_WRONG_PASSWORD: u8 = 1;
const STATUS_TOO_MANY_FAILURES: u8 = 2;
const STATUS_BAD_REQUEST: u8 = 3;

/// Deadline of a whole enrollment on the MDS (a peer cannot hold it longer).
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(20);
/// Failed attempts one address may make within [`FAILURE_WINDOW`].
pub const FAILURES_PER_ADDRESS: usize = 5;
/// Failed attempts of all addresses together within [`FAILURE_WINDOW`].
pub const FAILURES_IN_ALL: usize = 100;
/// The window of the failure limits.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses the limiter remembers at most.
const MAX_TRACKED_ADDRESSES: usize = 4096;

fn spake_identity(cluster: &str) -> Identity {
    Identity::new(format!("pstorage-enroll-v1:{cluster}").as_bytes())
}

fn confirmation(key: &[u8], label: &[u8], exporter: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(label);
    mac.update(exporter);
    mac
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Admin => 1,
        Role::Client => 2,
        Role::Cs => 3,
        Role::Mds => 4,
    }
}

fn role_of_code(code: u8) -> Option<Role> {
    Role::ALL.into_iter().find(|r| role_code(*r) == code)
}

/// Counts failed enrollments per address and in all, within a sliding
/// window; an address over its limit (or everyone, over the total) is
/// refused until old failures leave the window. Memory is bounded.
pub struct FailureLimiter {
    per_address: HashMap<IpAddr, Vec<Instant>>,
    all: Vec<Instant>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new()
    }
}

impl FailureLimiter {
    /// No failures yet.
    pub fn new() -> FailureLimiter {
        FailureLimiter {
            per_address: HashMap::new(),
            all: Vec::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        let fresh = |t: &Instant| now.duration_since(*t) < FAILURE_WINDOW;
        self.all.retain(fresh);
        self.per_address.retain(|_, times| {
            times.retain(fresh);
            !times.is_empty()
        });
    }

    /// Whether `addr` may try now.
    pub fn allows(&mut self, addr: IpAddr, now: Instant) -> bool {
        self.prune(now);
        self.all.len() < FAILURES_IN_ALL
            && self
                .per_address
                .get(&addr)
                .is_none_or(|t| t.len() < FAILURES_PER_ADDRESS)
    }

    /// Records a failed attempt of `addr`.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        self.prune(now);
        if self.per_address.len() >= MAX_TRACKED_ADDRESSES && !self.per_address.contains_key(&addr)
        {
            // Forget the address whose last failure is oldest.
            if let Some(oldest) = self
                .per_address
                .iter()
                .min_by_key(|(_, t)| t.last().copied())
                .map(|(a, _)| *a)
            {
                self.per_address.remove(&oldest);
            }
        }
        self.per_address.entry(addr).or_default().push(now);
        self.all.push(now);
    }
}

/// The MDS side: what it needs to enroll nodes.
pub struct Enrollment {
    cluster: String,
    key: ClusterKey,
    ca: Arc<ClusterCa>,
    limiter: parking_lot::Mutex<FailureLimiter>,
    /// Where issued certificates are recorded and refused enrollments
    /// logged (the MDS's certificate table); none in tests and fuzzing.
    registry: Option<Arc<dyn CertificateRegistry>>,
}

impl Enrollment {
    /// Enrolls nodes of `cluster` that prove `key`, with certificates of `ca`.
    pub fn new(cluster: &str, key: ClusterKey, ca: Arc<ClusterCa>) -> Enrollment {
        Enrollment {
            cluster: cluster.to_string(),
            key,
            ca,
            limiter: parking_lot::Mutex::new(FailureLimiter::new()),
            registry: None,
        }
    }

    /// Records every certificate issued in `registry` before handing it
    /// out (none goes out unrecorded), and logs refused enrollments there.
    pub fn with_registry(mut self, registry: Arc<dyn CertificateRegistry>) -> Enrollment {
        self.registry = Some(registry);
        self
    }

    /// Signs a certificate for the key of `csr` with `role` and `name`
    /// ([`ClusterCa::issue`]) and records it; returns it (PEM). Errors of
    /// either; a certificate that could not be recorded is not handed out.
    pub async fn issue(&self, csr: &[u8], role: Role, name: &str) -> Result<String> {
        let cert = self.ca.issue(csr, role, name)?;
        if let Some(registry) = &self.registry {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            registry
                .record_certificate(crate::pki::record_of(&cert, now_ms)?)
                .await?;
        }
        Ok(cert)
    }

    /// Logs a refused enrollment in the cluster's event log (best effort:
    /// the refusal stands whatever happens to the log).
    async fn log_refusal(&self, message: &str) {
        if let Some(registry) = &self.registry {
            if let Err(e) = registry
                .log_security_event(EventLevel::Warning, message)
                .await
            {
                warn!("cannot log a refused enrollment in the event log: {e}");
            }
        }
    }

    /// Forgets every failed attempt (fuzzing).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn forget_failures(&self) {
        *self.limiter.lock() = FailureLimiter::new();
    }

    /// The cluster CA.
    pub fn ca(&self) -> &Arc<ClusterCa> {
        &self.ca
    }

    /// The cluster key (handed to a new MDS).
    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// Serves one enrollment on an accepted TLS stream from `from`, within
    /// [`ENROLL_TIMEOUT`]. Returns the role and name it certified.
    pub async fn serve(&self, mut stream: ServerStream, from: IpAddr) -> Result<(Role, String)> {
        let tls = stream
            .tls()
            .ok_or_else(|| Error::protocol("an enrollment outside TLS"))?;
        let exporter = export(tls.get_ref().1)?;
        let outcome =
            tokio::time::timeout(ENROLL_TIMEOUT, self.exchange(&mut stream, &exporter, from))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("enrollment not finished within {ENROLL_TIMEOUT:?}"),
                    ))
                });
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        outcome
    }

    pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        exporter: &[u8],
        from: IpAddr,
    ) -> Result<(Role, String)> {
        let client_msg = read_sized(stream, 2, MAX_SPAKE_MSG, "the node's SPAKE2 message").await?;
        if !self.limiter.lock().allows(from, Instant::now()) {
            write_all(stream, &[STATUS_TOO_MANY_FAILURES, 0, 0]).await?;
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "enrollment from {from} refused: over {FAILURES_PER_ADDRESS} failed attempts \
                     from it (or {FAILURES_IN_ALL} in all) within {} s",
                    FAILURE_WINDOW.as_secs()
                ),
            ));
        }
        let (spake, server_msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(self.key.0),
            &spake_identity(&self.cluster),
        );
        let mut reply = vec![STATUS_OK];
        reply.extend_from_slice(&(server_msg.len() as u16).to_le_bytes());
        reply.extend_from_slice(&server_msg);
        write_all(stream, &reply).await?;
        let mut proof = [0u8; MAC_LEN];
        read_exact(stream, &mut proof, "the node's proof").await?;
        let mut head = [0u8; 3];
        read_exact(stream, &mut head, "the request").await?;
        let role = role_of_code(head[0]);
        let name_len = u16::from_le_bytes([head[1], head[2]]) as usize;
        if name_len > MAX_NODE_NAME {
            return Err(Error::protocol(format!(
                "enrollment: a name of {name_len} bytes"
            )));
        }
        let mut name = vec![0u8; name_len];
        read_exact(stream, &mut name, "the request").await?;
        let csr = read_sized(stream, 4, MAX_CSR_LEN, "the certificate request").await?;

        let shared = spake.finish(&client_msg).ok();
        let proven = shared.as_ref().is_some_and(|k| {
            confirmation(k, CLIENT_LABEL, exporter)
                .verify_slice(&proof)
                .is_ok()
        });
        let Some(shared) = shared.filter(|_| proven) else {
            self.limiter.lock().failed(from, Instant::now());
            write_all(stream, &[STATUS_WRONG_PASSWORD]).await?;
            warn!("enrollment from {from}: wrong cluster password");
            let name = String::from_utf8_lossy(&name);
            self.log_refusal(&format!(
                "refused an enrollment from {from} (node name {name:?}): wrong cluster password"
            ))
            .await;
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("enrollment from {from}: wrong cluster password"),
            ));
        };
        let server_proof = confirmation(&shared, SERVER_LABEL, exporter)
            .finalize()
            .into_bytes();
        let issued = match (role, String::from_utf8(name)) {
            (Some(role), Ok(name)) => self
                .issue(&csr, role, &name)
                .await
                .map(|cert| (role, name, cert)),
            (None, _) => Err(Error::invalid(format!("unknown role code {}", head[0]))),
            (_, Err(_)) => Err(Error::invalid("the node name is not UTF-8")),
        };
        match issued {
            Ok((role, name, cert)) => {
                let mut reply = vec![STATUS_OK];
                reply.extend_from_slice(&server_proof);
                for pem in [cert.as_str(), self.ca.cert_pem()] {
                    reply.extend_from_slice(&(pem.len() as u32).to_le_bytes());
                    reply.extend_from_slice(pem.as_bytes());
                }
                write_all(stream, &reply).await?;
                info!("enrolled {name} ({role}) from {from}");
                Ok((role, name))
            }
            Err(e) => {
                let text = e.message().as_bytes();
                let text = &text[..text.len().min(1024)];
                let mut reply = vec![STATUS_BAD_REQUEST];
                reply.extend_from_slice(&server_proof);
                reply.extend_from_slice(&(text.len() as u16).to_le_bytes());
                reply.extend_from_slice(text);
                write_all(stream, &reply).await?;
                Err(e)
            }
        }
    }
}

fn export<D>(conn: &rustls::ConnectionCommon<D>) -> Result<[u8; 32]> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| Error::internal(format!("TLS keying material export: {e}")))
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<()> {
    step(
        HANDSHAKE_STEP_TIMEOUT,
        "enrollment: sending",
        stream.write_all(bytes),
    )
    .await?;
    step(
        HANDSHAKE_STEP_TIMEOUT,
        "enrollment: sending",
        stream.flush(),
    )
    .await
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    step(
        HANDSHAKE_STEP_TIMEOUT,
        &format!("enrollment: reading {what}"),
        stream.read_exact(buf),
    )
    .await
    .map(drop)
}

/// Reads a length-prefixed field (`len_bytes` of length, little-endian),
/// refusing one over `max` bytes.
async fn read_sized<S: AsyncRead + Unpin>(
    stream: &mut S,
    len_bytes: usize,
    max: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_exact(stream, &mut len[..len_bytes], what).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(Error::protocol(format!(
            "enrollment: {what} of {len} bytes (at most {max})"
        )));
    }
    let mut buf = vec![0u8; len];
    read_exact(stream, &mut buf, what).await?;
    Ok(buf)
}

/// The node side: proves `key` to the MDS at `addr` and gets a certificate
/// for a new key pair, with `role` and `name`. Errors: `PermissionDenied`
/// for a wrong password (or too many failed attempts), `Unavailable` when
/// the MDS cannot be reached, `Protocol` for an MDS that fails its own
/// proof (a man in the middle) or is not an MDS.
pub async fn enroll(
    addr: &str,
    cluster: &str,
    key: &ClusterKey,
    role: Role,
    name: &str,
) -> Result<NodeIdentity> {
    crate::pki::check_node_name(name)?;
    let request = CertRequest::generate()?;
    let connector = tokio_rustls::TlsConnector::from(enrollment_client_config()?);
    let attempt = async {
        let stream = auth::dial(addr).await?;
        connector
            .connect(server_name(), stream)
            .await
            .map_err(|e| handshake_error(e, addr))
    };
    let mut tls = auth::within_connect_timeout(addr, attempt).await?;
    let exporter = export(tls.get_ref().1)?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| Error::protocol(format!("{addr} showed no certificate")))?;
    let exchange = async {
        let (spake, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(key.0),
            &spake_identity(cluster),
        );
        let mut out = (msg.len() as u16).to_le_bytes().to_vec();
        out.extend_from_slice(&msg);
        write_all(&mut tls, &out).await?;
        let mut status = [0u8; 1];
        read_exact(&mut tls, &mut status, "the MDS's answer").await?;
        if status[0] == STATUS_TOO_MANY_FAILURES {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{addr} refuses enrollments from this address for now: too many failed \
                     attempts (wrong passwords); try again in a minute"
                ),
            ));
        }
        if status[0] != STATUS_OK {
            return Err(Error::protocol(format!(
                "{addr} answered enrollment status {}",
                status[0]
            )));
        }
        let server_msg = read_sized(&mut tls, 2, MAX_SPAKE_MSG, "the MDS's SPAKE2 message").await?;
        let shared = spake
            .finish(&server_msg)
            .map_err(|e| Error::protocol(format!("{addr}: a bad SPAKE2 message: {e:?}")))?;
        let mut out = confirmation(&shared, CLIENT_LABEL, &exporter)
            .finalize()
            .into_bytes()
            .to_vec();
        out.push(role_code(role));
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(request.csr_der.len() as u32).to_le_bytes());
        out.extend_from_slice(&request.csr_der);
        write_all(&mut tls, &out).await?;
        read_exact(&mut tls, &mut status, "the MDS's verdict").await?;
        if status[0] == STATUS_WRONG_PASSWORD {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("wrong password for cluster {cluster} (refused by the MDS at {addr})"),
            ));
        }
        let mut proof = [0u8; MAC_LEN];
        read_exact(&mut tls, &mut proof, "the MDS's proof").await?;
        confirmation(&shared, SERVER_LABEL, &exporter)
            .verify_slice(&proof)
            .map_err(|_| {
                Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "{addr} failed to prove it knows the cluster password: it is not an MDS \
                         of cluster {cluster}, or someone is in the middle; nothing was stored"
                    ),
                )
            })?;
        match status[0] {
            STATUS_OK => {}
            STATUS_BAD_REQUEST => {
                let text = read_sized(&mut tls, 2, 1024, "the MDS's message").await?;
                return Err(Error::invalid(format!(
                    "{addr} refused the request: {}",
                    String::from_utf8_lossy(&text)
                )));
            }
            other => {
                return Err(Error::protocol(format!(
                    "{addr} answered enrollment status {other}"
                )))
            }
        }
        let cert = read_sized(&mut tls, 4, MAX_PEM_LEN, "the certificate").await?;
        let ca = read_sized(&mut tls, 4, MAX_PEM_LEN, "the CA certificate").await?;
        let text = |b: Vec<u8>| {
            String::from_utf8(b)
                .map_err(|_| Error::protocol(format!("{addr}: a certificate that is not text")))
        };
        Ok((text(cert)?, text(ca)?))
    };
    let (cert_pem, ca_pem) = tokio::time::timeout(ENROLL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(Error::unavailable(format!(
                "enrollment with {addr} not finished within {ENROLL_TIMEOUT:?}"
            )))
        })?;
    let identity = NodeIdentity::from_pem(ca_pem, cert_pem, request.key_pem).map_err(|e| {
        Error::protocol(format!("{addr} sent a certificate that does not fit: {e}"))
    })?;
    // The MDS we spoke to must itself hold a certificate of that CA.
    let roots = crate::tls::ca_roots(&identity)
        .map_err(|e| Error::protocol(format!("{addr}: {}", e.message())))?;
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, crate::tls::provider())
        .build()
        .map_err(|e| Error::protocol(format!("{addr}: the CA certificate: {e}")))?
        .verify_server_cert(
            &server_cert,
            &[],
            &server_name(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|e| {
            Error::protocol(format!(
                "{addr} holds no certificate of the cluster CA it sent ({e}); nothing was stored"
            ))
        })?;
    Ok(identity)
}

/// [`enroll`] with the first MDS of `addrs` that answers; a wrong password
/// fails at once.
pub async fn enroll_any(
    addrs: &[String],
    cluster: &str,
    key: &ClusterKey,
    role: Role,
    name: &str,
) -> Result<NodeIdentity> {
    let mut last = Error::unavailable("the bootstrap list is empty");
    for addr in addrs {
        match enroll(addr, cluster, key, role, name).await {
            Ok(identity) => return Ok(identity),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::InvalidArgument
                ) =>
            {
                return Err(e)
            }
            Err(e) => last = e.context(format!("MDS {addr}")),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MDS that serves enrollments on a fresh port until dropped.
    async fn enrolling_mds(enrollment: Arc<Enrollment>) -> (String, tokio::task::JoinHandle<()>) {
        let ca = enrollment.ca().clone();
        let creds =
            crate::tls::Credentials::new(ca.issue_identity(Role::Mds, "mds 1").unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, peer) = listener.accept().await.unwrap();
                let creds = creds.clone();
                let enrollment = enrollment.clone();
                tokio::spawn(async move {
                    let channel = auth::peek_channel(&mut s).await.unwrap();
                    let (tls, _) = auth::accept_tls(s, &creds, channel).await.unwrap();
                    let _ = enrollment.serve(tls, peer.ip()).await;
                });
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn the_password_gets_a_certificate_and_a_wrong_one_is_limited() {
        let key = auth::derive_key("c1", "correct horse");
        let ca = Arc::new(ClusterCa::generate("c1").unwrap());
        let enrollment = Arc::new(Enrollment::new("c1", key.clone(), ca.clone()));
        let (addr, task) = enrolling_mds(enrollment).await;

        let id = enroll(&addr, "c1", &key, Role::Admin, "host-a")
            .await
            .unwrap();
        assert_eq!(
            (id.peer.role, id.peer.name.as_str()),
            (Role::Admin, "host-a")
        );
        assert_eq!(id.ca_fingerprint(), ca.fingerprint());

        // A wrong password: refused, FAILURES_PER_ADDRESS times, then the
        // address is refused even with the right one.
        let wrong = auth::derive_key("c1", "wrong");
        for _ in 0..FAILURES_PER_ADDRESS {
            let err = enroll(&addr, "c1", &wrong, Role::Admin, "h")
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
            assert!(err.message().contains("wrong password"), "{err}");
        }
        let err = enroll(&addr, "c1", &key, Role::Client, "h")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("too many failed"), "{err}");
        task.abort();
    }

    #[tokio::test]
    async fn an_mds_without_the_password_is_found_out() {
        let ca = Arc::new(ClusterCa::generate("c1").unwrap());
        let fake = Arc::new(Enrollment::new("c1", auth::derive_key("c1", "other"), ca));
        let (addr, task) = enrolling_mds(fake).await;
        let err = enroll(
            &addr,
            "c1",
            &auth::derive_key("c1", "mine"),
            Role::Admin,
            "h",
        )
        .await
        .unwrap_err();
        // It cannot prove the password: it says "wrong password" (the node
        // learns nothing else) and issues nothing.
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        task.abort();
    }

    /// A frozen MDS (its kernel accepts, nobody answers), and one that
    /// stops answering after the TLS handshake: `auth-node` gives up within
    /// its deadlines (`Unavailable`, or `TimedOut` for the silent exchange).
    #[tokio::test]
    async fn a_silent_mds_fails_the_enrollment_in_time() {
        let key = auth::derive_key("c1", "correct horse");
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = frozen.local_addr().unwrap().to_string();
        let started = Instant::now();
        let err = enroll(&addr, "c1", &key, Role::Admin, "h")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(
            started.elapsed() < auth::CONNECT_TIMEOUT * 3,
            "{:?}",
            started.elapsed()
        );

        // TLS completes, then silence: the exchange's own deadline.
        let ca = Arc::new(ClusterCa::generate("c1").unwrap());
        let creds =
            crate::tls::Credentials::new(ca.issue_identity(Role::Mds, "mds 1").unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let channel = auth::peek_channel(&mut s).await.unwrap();
            let (tls, _) = auth::accept_tls(s, &creds, channel).await.unwrap();
            std::future::pending::<()>().await;
            drop(tls);
        });
        let started = Instant::now();
        let err = enroll(&addr, "c1", &key, Role::Admin, "h")
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::TimedOut),
            "{err}"
        );
        assert!(
            started.elapsed() < ENROLL_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        server.abort();
    }

    #[test]
    fn the_limiter_forgets_old_failures_and_stays_bounded() {
        let mut limiter = FailureLimiter::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FAILURES_PER_ADDRESS {
            assert!(limiter.allows(a, t0));
            limiter.failed(a, t0);
        }
        assert!(!limiter.allows(a, t0));
        assert!(limiter.allows("10.0.0.2".parse().unwrap(), t0));
        assert!(limiter.allows(a, t0 + FAILURE_WINDOW));
        let mut limiter = FailureLimiter::new();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), t0);
            limiter.all.clear();
        }
        assert!(limiter.per_address.len() <= MAX_TRACKED_ADDRESSES);
    }
}
