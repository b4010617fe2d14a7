//! TLS 1.3 on every connection (rustls, the ring provider): both ends show
//! a certificate of the cluster CA ([`crate::pki`]) and check the other's.
//!
//! - A server (MDS, chunk server) asks every client for a certificate and
//!   verifies it against the cluster CA; a connection without one gets only
//!   the enrollment channel ([`crate::enroll`]). The peer's role, read from
//!   its certificate, goes with the connection to the services, which check
//!   it on every call.
//! - A client verifies the server's certificate against the cluster CA for
//!   the name [`CLUSTER_SERVER_NAME`] and refuses a server whose role is not
//!   a server's (an admin's or a client's certificate cannot pose as an MDS).
//! - TLS 1.3 only; no resumption tickets are needed (connections are long
//!   lived).

use std::sync::{Arc, OnceLock};

use pstorage_core::error::{Error, ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::pki::{
    certs_of_pem, key_of_pem, DataPath, NodeIdentity, Peer, Role, CLUSTER_SERVER_NAME,
};
use crate::revocation::{Revocations, UnrevokedClients, UnrevokedServers};

/// The crypto provider of every configuration (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    // ring: classic X25519/P-256 key exchange (its post-quantum hybrid is
    // aws-lc-rs's, a heavier build).
    #[allow(deprecated)]
    let make = || Arc::new(rustls::crypto::ring::default_provider());
    PROVIDER.get_or_init(make).clone()
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::invalid(format!("{what}: {e}"))
}

/// The server and client configurations of one node identity.
#[derive(Clone)]
pub struct TlsConfigs {
    /// For accepting: our certificate; a client certificate of the CA is
    /// verified when shown (required on every channel but enrollment).
    pub server: Arc<ServerConfig>,
    /// For dialing: our certificate; the server's verified.
    pub client: Arc<ClientConfig>,
}

impl TlsConfigs {
    /// Builds both configurations; both refuse a peer certificate in
    /// `revocations`. `InvalidArgument` when the certificate is not the
    /// CA's, or the key is not the certificate's.
    pub fn new(identity: &NodeIdentity, revocations: &Revocations) -> Result<TlsConfigs> {
        let chain = certs_of_pem(&identity.cert_pem, "the node certificate")?;
        let roots = ca_roots(identity)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| Error::invalid(format!("the cluster CA certificate: {e}")))?;
        // Our own certificate must be one of the CA's: a node given another
        // cluster's certificate learns it here, not at every connection.
        server_verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name(), &[], UnixTime::now())
            .map_err(|e| {
                Error::invalid(format!(
                    "the node certificate is not valid for the cluster CA: {e}"
                ))
            })?;
        let mut server = server_config(identity, roots, true, revocations)?;
        server.send_tls13_tickets = 0;
        server.alpn_protocols = crate::auth::Channel::ALL
            .iter()
            .map(|c| c.alpn().to_vec())
            .collect();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error("TLS 1.3"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnrevokedServers {
                inner: server_verifier,
                revocations: revocations.clone(),
            }))
            .with_client_auth_cert(chain, key_of_pem(&identity.key_pem, "the node key")?)
            .map_err(tls_error("the node certificate and key"))?;
        Ok(TlsConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The cluster CA of `identity` as a root store.
pub fn ca_roots(identity: &NodeIdentity) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certs_of_pem(&identity.ca_pem, "the cluster CA certificate")? {
        roots
            .add(cert)
            .map_err(tls_error("the cluster CA certificate"))?;
    }
    Ok(Arc::new(roots))
}

/// A TLS 1.3 server configuration showing `identity`'s certificate and
/// verifying client certificates against `roots`: required, or (with
/// `optional_client`) verified when shown.
fn server_config(
    identity: &NodeIdentity,
    roots: Arc<RootCertStore>,
    optional_client: bool,
    revocations: &Revocations,
) -> Result<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = if optional_client {
        verifier.allow_unauthenticated()
    } else {
        verifier
    };
    let verifier = verifier
        .build()
        .map_err(|e| Error::invalid(format!("the cluster CA certificate: {e}")))?;
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS 1.3"))?
        .with_client_cert_verifier(Arc::new(UnrevokedClients {
            inner: verifier,
            revocations: revocations.clone(),
        }))
        .with_single_cert(
            certs_of_pem(&identity.cert_pem, "the node certificate")?,
            key_of_pem(&identity.key_pem, "the node key")?,
        )
        .map_err(tls_error("the node certificate and key"))
}

/// The name every client asks for.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(CLUSTER_SERVER_NAME).expect("a valid DNS name")
}

/// What a node proves itself with, and checks its peers against: its
/// identity and the TLS configurations made from it. Cheap to clone.
#[derive(Clone)]
pub struct Credentials(Arc<CredentialsInner>);

struct CredentialsInner {
    identity: NodeIdentity,
    revocations: Revocations,
    /// How the data channel travels (the cluster CA says).
    data_path: DataPath,
    configs: TlsConfigs,
    /// The client configuration of each channel (its ALPN name), in the
    /// order of [`crate::auth::Channel::ALL`].
    channels: [Arc<ClientConfig>; 3],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.0.identity.peer)
    }
}

impl Credentials {
    /// Credentials of `identity`. Errors as [`TlsConfigs::new`].
    pub fn new(identity: NodeIdentity) -> Result<Credentials> {
        let revocations = Revocations::default();
        let configs = TlsConfigs::new(&identity, &revocations)?;
        let data_path = DataPath::of_ca_pem(&identity.ca_pem)?;
        let channels = crate::auth::Channel::ALL.map(|channel| {
            let mut config = (*configs.client).clone();
            config.alpn_protocols = vec![channel.alpn().to_vec()];
            Arc::new(config)
        });
        Ok(Credentials(Arc::new(CredentialsInner {
            identity,
            revocations,
            data_path,
            configs,
            channels,
        })))
    }

    /// The identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.0.identity
    }

    /// The revoked certificates this node refuses (shared by every
    /// configuration made from these credentials).
    pub fn revocations(&self) -> &Revocations {
        &self.0.revocations
    }

    /// How the cluster's data channel travels.
    pub fn data_path(&self) -> DataPath {
        self.0.data_path
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.0.identity.peer.role
    }

    /// The configuration for accepting connections.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.0.configs.server.clone()
    }

    /// The configuration for dialing `channel`.
    pub fn client_config(&self, channel: crate::auth::Channel) -> Arc<ClientConfig> {
        self.0.channels[channel as usize].clone()
    }
}

/// Credentials with `role` from one CA shared by the whole process: for
/// tests, benches and fuzzing, whose servers and clients must trust each
/// other without a cluster.
#[doc(hidden)]
pub fn test_credentials(role: Role) -> Credentials {
    static ISSUED: OnceLock<parking_lot::Mutex<Vec<(Role, Credentials)>>> = OnceLock::new();
    let issued = ISSUED.get_or_init(Default::default);
    let mut issued = issued.lock();
    if let Some((_, c)) = issued.iter().find(|(r, _)| *r == role) {
        return c.clone();
    }
    let credentials = test_credentials_named(role, &format!("test {role}"));
    issued.push((role, credentials.clone()));
    credentials
}

/// New credentials with `role` and `name` from the process's test CA (see
/// [`test_credentials`]): an MDS of a test group is `mds N`.
#[doc(hidden)]
pub fn test_credentials_named(role: Role, name: &str) -> Credentials {
    let ca = TEST_CA.get_or_init(|| crate::pki::ClusterCa::generate("test").expect("a test CA"));
    Credentials::new(ca.issue_identity(role, name).expect("a test identity"))
        .expect("test credentials")
}

static TEST_CA: OnceLock<crate::pki::ClusterCa> = OnceLock::new();

/// The configuration of an NBD export's TLS (`nbd-serve --tls`,
/// `NBD_OPT_STARTTLS`): this node's certificate, and a client certificate
/// of the cluster CA required of every client (qemu's `tls-creds-x509`
/// directory, libnbd's `tls-certificates`: `ca-cert.pem` the cluster CA,
/// `client-cert.pem`/`client-key.pem` a node's certificate and key). TLS
/// 1.3 only, no ALPN.
pub fn nbd_server_config(credentials: &Credentials) -> Result<Arc<ServerConfig>> {
    let identity = credentials.identity();
    let mut config = server_config(
        identity,
        ca_roots(identity)?,
        false,
        credentials.revocations(),
    )?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The peer of a finished handshake: its certificate's role and name, or
/// `None` when it showed none. `PermissionDenied` when the certificate
/// names no role.
pub fn peer_of(certs: Option<&[CertificateDer<'static>]>) -> Result<Option<Peer>> {
    match certs.and_then(|c| c.first()) {
        Some(cert) => Peer::of_certificate(cert.as_ref()).map(Some),
        None => Ok(None),
    }
}

/// Turns a TLS handshake failure into a pstorage error: a certificate the
/// other side refused (or we refused) is `PermissionDenied` with a hint.
pub fn handshake_error(e: std::io::Error, addr: &str) -> Error {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let refused_cert = tls.is_some_and(|tls| {
        matches!(
            tls,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate
                        | rustls::AlertDescription::UnknownCA
                        | rustls::AlertDescription::CertificateRevoked
                        | rustls::AlertDescription::CertificateExpired
                        | rustls::AlertDescription::CertificateRequired
                        | rustls::AlertDescription::AccessDenied
                        // A certificate whose issuer has the CA's name
                        // but another key (a cluster of the same name).
                        | rustls::AlertDescription::DecryptError
                )
        )
    });
    let revoked = tls.is_some_and(|tls| {
        matches!(
            tls,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        )
    });
    if revoked {
        Error::with_source(
            ErrorKind::PermissionDenied,
            format!(
                "TLS with {addr}: a certificate was revoked ({e}): the cluster refuses it \
                 (`pstorage revoke`); a node whose own certificate was revoked needs a new one \
                 (`pstorage -c CLUSTER auth-node`)"
            ),
            e,
        )
    } else if refused_cert {
        Error::with_source(
            ErrorKind::PermissionDenied,
            format!(
                "TLS with {addr}: a certificate was refused ({e}): the two nodes are not of one \
                 cluster CA, or a certificate was revoked or expired; run `pstorage -c CLUSTER \
                 auth-node` on the node with the wrong certificate"
            ),
            e,
        )
    } else {
        let kind = match ErrorKind::of_io(&e) {
            ErrorKind::Io => ErrorKind::Protocol,
            other => other,
        };
        Error::with_source(kind, format!("TLS with {addr}: {e}"), e)
    }
}

/// The read half of a TLS stream whose peer's TCP close without a TLS
/// `close_notify` (a killed process, a reset) reads as the end of the
/// stream, as it did before TLS: the protocols above (Cap'n Proto, the
/// data frames) carry their own lengths and find a message cut short
/// themselves, and a closed connection stays `Unavailable` to callers.
pub struct CloseAsEof<R>(pub R);

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CloseAsEof<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// A client configuration that accepts any server certificate (its
/// signature over the handshake is still checked): for enrollment only,
/// where the node has no CA yet and the password exchange, bound to this
/// TLS session, authenticates the server ([`crate::enroll`]).
pub fn enrollment_client_config() -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS 1.3"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate))
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::auth::Channel::Enroll.alpn().to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyServerCertificate;

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn handshake(
        server: &Credentials,
        client: &Credentials,
    ) -> (Result<Option<Peer>>, Result<()>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
        let connector =
            tokio_rustls::TlsConnector::from(client.client_config(crate::auth::Channel::Data));
        let (s, c) = tokio::join!(
            async {
                let mut tls = acceptor
                    .accept(a)
                    .await
                    .map_err(|e| handshake_error(e, "client"))?;
                let peer = peer_of(tls.get_ref().1.peer_certificates())?;
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte)
                    .await
                    .map_err(|e| handshake_error(e, "client"))?;
                Ok(peer)
            },
            async {
                let mut tls = connector
                    .connect(server_name(), b)
                    .await
                    .map_err(|e| handshake_error(e, "server"))?;
                tls.write_all(b"x").await?;
                tls.flush().await?;
                Ok(())
            }
        );
        (s, c)
    }

    #[tokio::test]
    async fn nodes_of_one_ca_connect_and_see_each_others_role() {
        let ca = ClusterCa::generate("c").unwrap();
        let mds = Credentials::new(ca.issue_identity(Role::Mds, "mds 1").unwrap()).unwrap();
        let client = Credentials::new(ca.issue_identity(Role::Client, "h1").unwrap()).unwrap();
        let (server, dialer) = handshake(&mds, &client).await;
        dialer.unwrap();
        assert_eq!(
            server.unwrap(),
            Some(Peer {
                role: Role::Client,
                name: "h1".into(),
                serial: client.identity().peer.serial,
            })
        );
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused_both_ways() {
        let ca = ClusterCa::generate("c").unwrap();
        let mds = Credentials::new(ca.issue_identity(Role::Mds, "mds 1").unwrap()).unwrap();
        let client = Credentials::new(ca.issue_identity(Role::Client, "h1").unwrap()).unwrap();
        let other = Credentials::new(ca.issue_identity(Role::Client, "h2").unwrap()).unwrap();
        mds.revocations()
            .extend(0, &[client.identity().peer.serial]);
        // The server refuses the revoked client, and says why.
        let (server, _) = handshake(&mds, &client).await;
        let err = server.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.message().contains("revoked"), "{err}");
        // Another client of the CA still connects.
        let (server, dialer) = handshake(&mds, &other).await;
        dialer.unwrap();
        assert_eq!(server.unwrap().unwrap().name, "h2");
        // A client refuses a revoked server.
        other.revocations().extend(0, &[mds.identity().peer.serial]);
        let (_, dialer) = handshake(&mds, &other).await;
        let err = dialer.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.message().contains("revoked"), "{err}");
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused_both_ways() {
        let ca = ClusterCa::generate("c").unwrap();
        let other = ClusterCa::generate("c").unwrap();
        let mds = Credentials::new(ca.issue_identity(Role::Mds, "mds 1").unwrap()).unwrap();
        let stranger = Credentials::new(other.issue_identity(Role::Admin, "x").unwrap()).unwrap();
        // A client of another CA: the server refuses its certificate.
        let (server, _) = handshake(&mds, &stranger).await;
        assert_eq!(server.unwrap_err().kind(), ErrorKind::PermissionDenied);
        // A server of another CA: the client refuses it.
        let fake = Credentials::new(other.issue_identity(Role::Mds, "mds 9").unwrap()).unwrap();
        let client = Credentials::new(ca.issue_identity(Role::Client, "h").unwrap()).unwrap();
        let (_, dialer) = handshake(&fake, &client).await;
        assert_eq!(dialer.unwrap_err().kind(), ErrorKind::PermissionDenied);
    }
}
