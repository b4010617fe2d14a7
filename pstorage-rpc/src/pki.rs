//! The cluster's public-key infrastructure: one certificate authority per
//! cluster, and a certificate per node naming its role.
//!
//! `make-mds -I` creates the cluster CA (ECDSA P-256, self-signed, 100
//! years) and keeps its private key beside every MDS's store (`ca.key`):
//! MDSes issue the certificates. Every certificate of the cluster
//!
//! - is signed by the CA (no intermediates);
//! - carries the subject alternative name [`CLUSTER_SERVER_NAME`], which
//!   every pstorage client checks instead of a host name (addresses
//!   change; the CA is the cluster's, so a certificate from it is a node of
//!   this cluster), and the node's name as a second DNS name when it is a
//!   host name (for NBD clients that check the host they dial);
//! - names the node's [`Role`] as the subject's organizational unit and
//!   its name (`mds 1`, `cs 3`, a host name) as the common name;
//! - is valid for [`NODE_CERT_DAYS`] days from the day before it was
//!   issued (a day of clock skew), and has a random 128-bit serial number.
//!
//! A node's identity is three PEM files in one directory: `ca.crt`, and
//! `STEM.crt` with `STEM.key` (`node` in a cluster's configuration
//! directory, `mds` or `cs` in a daemon's directory); keys are private
//! files (mode 0600), refused when others may read them.

use std::fmt;
use std::path::Path;

use pstorage_core::conf::write_private;
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::private_files::check_secret_file;
use pstorage_core::types::{CertRecord, CertSerial};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The DNS name every certificate of a cluster carries and every client
/// asks for (TLS server name indication and verification).
pub const CLUSTER_SERVER_NAME: &str = "pstorage-node";
/// Validity of a node certificate, in days.
pub const NODE_CERT_DAYS: i64 = 3650;
/// Validity of the cluster CA, in days.
pub const CA_DAYS: i64 = 36500;
/// Longest node name a certificate may carry.
pub const MAX_NODE_NAME: usize = 128;
/// Largest certificate signing request an MDS reads.
pub const MAX_CSR_LEN: usize = 16 << 10;
/// Largest PEM file (certificate, key) a node reads.
pub const MAX_PEM_LEN: usize = 64 << 10;

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA's private key (MDS directories only).
pub const CA_KEY_FILE: &str = "ca.key";

/// What a certificate lets its holder do (checked on every call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything a client may, plus the cluster's administration:
    /// membership, configuration, chunk servers, certificates.
    Admin,
    /// Files and directories, the cluster's status and event log.
    Client,
    /// A chunk server: registration, heartbeats, reports, its peers' data.
    Cs,
    /// A metadata server: everything, Raft included.
    Mds,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Client, Role::Cs, Role::Mds];

    /// The name in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Cs => "cs",
            Role::Mds => "mds",
        }
    }

    /// Parses a role name. `InvalidArgument` for anything else.
    pub fn parse(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!("unknown role {s:?}: one of admin, client, cs, mds"))
            })
    }

    /// Whether a peer with this role may serve a cluster's connections
    /// (MDSes and chunk servers do; clients and admins never do).
    pub fn is_server(self) -> bool {
        matches!(self, Role::Mds | Role::Cs)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is at the other end of a connection, read from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its role.
    pub role: Role,
    /// Its name (`mds 1`, `cs 3`, a host name).
    pub name: String,
    /// Its certificate's serial number (what revocation names).
    pub serial: CertSerial,
}

impl Peer {
    /// Reads the role and name of a certificate of the cluster (one the
    /// TLS layer has verified). `PermissionDenied` when it names no role.
    pub fn of_certificate(der: &[u8]) -> Result<Peer> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
            Error::new(
                ErrorKind::PermissionDenied,
                format!("the peer's certificate cannot be parsed: {e}"),
            )
        })?;
        let subject = cert.subject();
        let role = subject
            .iter_organizational_unit()
            .next()
            .and_then(|ou| ou.as_str().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::PermissionDenied,
                    "the peer's certificate names no role",
                )
            })
            .and_then(|ou| {
                Role::parse(ou).map_err(|_| {
                    Error::new(
                        ErrorKind::PermissionDenied,
                        format!("the peer's certificate names an unknown role {ou:?}"),
                    )
                })
            })?;
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_string();
        let serial = serial_of(&cert);
        Ok(Peer { role, name, serial })
    }
}

/// The serial number of a parsed certificate. A cluster CA's serials are
/// 128 bits; a longer one (a certificate made elsewhere, e.g. by `openssl
/// x509`, which no pstorage node accepts) is named by the first 16 bytes
/// of its SHA-256, so that such a certificate still loads and is refused
/// by the CA check, with the error that names the problem.
fn serial_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> CertSerial {
    let raw = cert.tbs_certificate.raw_serial();
    CertSerial::from_be_bytes(raw).unwrap_or_else(|| {
        let digest = Sha256::digest(raw);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        CertSerial(u128::from_be_bytes(first))
    })
}

/// The serial number of a certificate (DER) (named by its hash for one
/// longer than 128 bits). `InvalidArgument` when it cannot be parsed.
pub fn serial_of_der(der: &[u8]) -> Result<CertSerial> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| Error::invalid(format!("the certificate cannot be parsed: {e}")))?;
    Ok(serial_of(&cert))
}

/// When a certificate (DER) expires, in ms since the epoch.
/// `InvalidArgument` when it cannot be parsed.
pub fn not_after_ms_of_der(der: &[u8]) -> Result<u64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| Error::invalid(format!("the certificate cannot be parsed: {e}")))?;
    Ok(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0) * 1000)
}

/// The record of a certificate (PEM) the MDSes keep (`pstorage certs`):
/// its serial, role, name and expiry, issued at `now_ms`.
/// `InvalidArgument` for a certificate that cannot be read.
pub fn record_of(cert_pem: &str, now_ms: u64) -> Result<CertRecord> {
    let der = first_cert(cert_pem, "certificate")?;
    let peer = Peer::of_certificate(der.as_ref()).map_err(|e| Error::invalid(e.to_string()))?;
    Ok(CertRecord {
        serial: peer.serial,
        role: peer.role.as_str().to_string(),
        name: peer.name,
        issued_ms: now_ms,
        not_after_ms: not_after_ms_of_der(der.as_ref())?,
        revoked_ms: None,
    })
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// The cluster's certificate authority: its certificate and private key.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
    /// The CA as rcgen's issuer (parameters re-read from its certificate).
    issuer: rcgen::Certificate,
}

/// How the data channel (the framed protocol of `crate::data`) travels,
/// a choice made once per cluster at its creation (`make-mds -I
/// --data-encryption`) and carried by the CA certificate, which every node
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPath {
    /// Inside TLS, like every other channel (the default).
    #[default]
    Encrypted,
    /// TLS for the handshake (both certificates checked, the role read,
    /// revocation checked), then the raw TCP connection: for a trusted
    /// storage network, where encryption costs more than it protects.
    Clear,
}

/// The organizational unit of a CA whose cluster's data path is clear.
const CLEAR_DATA_PATH_OU: &str = "pstorage data path in clear";

impl DataPath {
    /// The data path a CA certificate (PEM) carries. `InvalidArgument`
    /// when it cannot be read.
    pub fn of_ca_pem(ca_pem: &str) -> Result<DataPath> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = first_cert(ca_pem, "the cluster CA certificate")?;
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| Error::invalid(format!("the cluster CA certificate: {e}")))?;
        let clear = cert
            .subject()
            .iter_organizational_unit()
            .any(|ou| ou.as_str() == Ok(CLEAR_DATA_PATH_OU));
        Ok(if clear {
            DataPath::Clear
        } else {
            DataPath::Encrypted
        })
    }
}

impl ClusterCa {
    /// Creates the CA of cluster `cluster`, whose data path is encrypted.
    pub fn generate(cluster: &str) -> Result<ClusterCa> {
        ClusterCa::generate_with(cluster, DataPath::Encrypted)
    }

    /// Creates the CA of cluster `cluster` with the data path `data_path`
    /// (carried in the CA's name).
    pub fn generate_with(cluster: &str, data_path: DataPath) -> Result<ClusterCa> {
        let key = KeyPair::generate().map_err(pki_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "pstorage cluster {cluster} CA {:08x}",
                rand::random::<u32>()
            ),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, format!("pstorage {cluster}"));
        if data_path == DataPath::Clear {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, CLEAR_DATA_PATH_OU);
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let (not_before, not_after) = validity(CA_DAYS);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key)
            .map_err(pki_error("signing the CA certificate"))?;
        ClusterCa::from_parts(cert.pem(), key)
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Result<ClusterCa> {
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(pki_error("reading the CA certificate"))?;
        // rcgen signs with an issuer certificate object; one re-made from
        // the CA's own parameters and key carries its name and key id.
        let issuer = params
            .self_signed(&key)
            .map_err(pki_error("reading the CA certificate"))?;
        Ok(ClusterCa {
            cert_pem,
            key,
            issuer,
        })
    }

    /// Reads `ca.crt` and `ca.key` from `dir` (an MDS directory).
    pub fn load(dir: &Path) -> Result<ClusterCa> {
        let cert_pem = read_pem(&dir.join(CA_CERT_FILE), "the cluster CA certificate")?;
        let key_pem = read_secret_pem(&dir.join(CA_KEY_FILE), "the cluster CA key")?;
        ClusterCa::from_pem(&cert_pem, &key_pem)
    }

    /// The CA of these PEM texts (certificate, private key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa> {
        let key = KeyPair::from_pem(key_pem).map_err(pki_error("reading the CA key"))?;
        ClusterCa::from_parts(cert_pem.to_string(), key)
    }

    /// Writes `ca.crt` and `ca.key` into `dir` (private files).
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_private(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes())?;
        write_private(&dir.join(CA_KEY_FILE), self.key.serialize_pem().as_bytes())
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM): handed to a new MDS only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The SHA-256 fingerprint of the CA certificate, as `openssl x509
    /// -fingerprint -sha256` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint_of_pem(&self.cert_pem).unwrap_or_default()
    }

    /// Signs a certificate for the key of `csr` (DER), with `role` and
    /// `name`; only the request's public key is used (its signature is
    /// checked). Returns the certificate (PEM). `InvalidArgument` for a
    /// request that cannot be read or a bad name.
    pub fn issue(&self, csr_der: &[u8], role: Role, name: &str) -> Result<String> {
        if csr_der.len() > MAX_CSR_LEN {
            return Err(Error::invalid(format!(
                "certificate request of {} bytes: at most {MAX_CSR_LEN}",
                csr_der.len()
            )));
        }
        check_node_name(name)?;
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))
        .map_err(|e| Error::invalid(format!("the certificate request cannot be read: {e}")))?;
        let params = node_params(role, name)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(pki_error("signing a node certificate"))?;
        Ok(cert.pem())
    }

    /// Makes a whole identity here (key pair and certificate): for the
    /// MDS that creates the cluster, its first admin, and in-process
    /// clusters.
    pub fn issue_identity(&self, role: Role, name: &str) -> Result<NodeIdentity> {
        let request = CertRequest::generate()?;
        let cert_pem = self.issue(&request.csr_der, role, name)?;
        NodeIdentity::from_pem(self.cert_pem.clone(), cert_pem, request.key_pem)
    }
}

/// A key pair made on this node and the request to certify it.
pub struct CertRequest {
    /// The private key (PEM); never leaves the node.
    pub key_pem: String,
    /// The certificate signing request (DER) sent to an MDS.
    pub csr_der: Vec<u8>,
}

impl CertRequest {
    /// A new ECDSA P-256 key and its request.
    pub fn generate() -> Result<CertRequest> {
        let key = KeyPair::generate().map_err(pki_error("generating a key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(pki_error("making a certificate request"))?;
        Ok(CertRequest {
            key_pem: key.serialize_pem(),
            csr_der: csr.der().to_vec(),
        })
    }
}

/// A node's credentials: the cluster CA, its certificate and its key.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// This node's certificate (PEM).
    pub cert_pem: String,
    /// This node's private key (PEM).
    pub key_pem: String,
    /// The role and name its certificate gives.
    pub peer: Peer,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// An identity of these PEM texts; checks that the certificate is
    /// signed by the CA and the key is its key.
    pub fn from_pem(ca_pem: String, cert_pem: String, key_pem: String) -> Result<NodeIdentity> {
        let cert = first_cert(&cert_pem, "the node certificate")?;
        let peer = Peer::of_certificate(&cert)
            .map_err(|e| Error::invalid(format!("the node certificate: {}", e.message())))?;
        let identity = NodeIdentity {
            ca_pem,
            cert_pem,
            key_pem,
            peer,
        };
        // Building the TLS configuration checks the chain and the key.
        crate::tls::TlsConfigs::new(&identity, &Default::default())?;
        Ok(identity)
    }

    /// Reads `ca.crt`, `STEM.crt` and `STEM.key` from `dir`.
    /// `PermissionDenied` when the certificate is missing (the node is not
    /// authenticated; `hint` says how to get one) or the key is readable by
    /// others, `InvalidArgument` when they do not make an identity.
    pub fn load(dir: &Path, stem: &str, hint: &str) -> Result<NodeIdentity> {
        let cert_path = dir.join(format!("{stem}.crt"));
        if !cert_path.exists() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("no certificate at {}: {hint}", cert_path.display()),
            ));
        }
        let ca_pem = read_pem(&dir.join(CA_CERT_FILE), "the cluster CA certificate")?;
        let cert_pem = read_pem(&cert_path, "the node certificate")?;
        let key_pem = read_secret_pem(&dir.join(format!("{stem}.key")), "the node key")?;
        NodeIdentity::from_pem(ca_pem, cert_pem, key_pem)
            .map_err(|e| e.context(format!("the credentials in {}", dir.display())))
    }

    /// Writes `ca.crt`, `STEM.crt` and `STEM.key` into `dir` (private
    /// files; `dir` is created 0700).
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        pstorage_core::private_files::create_private_dir_all(dir)?;
        write_private(&dir.join(CA_CERT_FILE), self.ca_pem.as_bytes())?;
        write_private(&dir.join(format!("{stem}.key")), self.key_pem.as_bytes())?;
        write_private(&dir.join(format!("{stem}.crt")), self.cert_pem.as_bytes())
    }

    /// Whether `STEM.crt` exists in `dir`.
    pub fn exists(dir: &Path, stem: &str) -> bool {
        dir.join(format!("{stem}.crt")).exists()
    }

    /// The CA certificate's SHA-256 fingerprint.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint_of_pem(&self.ca_pem).unwrap_or_default()
    }
}

/// Checks a node name: 1 to [`MAX_NODE_NAME`] printable ASCII characters.
pub fn check_node_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NODE_NAME
        || !name.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(Error::invalid(format!(
            "node name {name:?}: 1 to {MAX_NODE_NAME} printable ASCII characters"
        )));
    }
    Ok(())
}

/// Whether `name` is a DNS host name (labels of letters, digits and
/// hyphens), which a certificate may then carry as a second DNS name.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn node_params(role: Role, name: &str) -> Result<CertificateParams> {
    // The cluster's name for every node, and the node's host name when it
    // is one (an NBD client that checks the host it dials: libnbd).
    let mut names = vec![CLUSTER_SERVER_NAME.to_string()];
    if is_dns_name(name) && name != CLUSTER_SERVER_NAME {
        names.push(name.to_string());
    }
    let mut params =
        CertificateParams::new(names).map_err(pki_error("making certificate parameters"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    // Key encipherment too: qemu's TLS credentials refuse a certificate
    // whose (critical) key usage lacks it, whatever its key type.
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let (not_before, not_after) = validity(NODE_CERT_DAYS);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never starting with a zero byte (DER's minimal form).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(days),
    )
}

fn pki_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::internal(format!("{what}: {e}"))
}

fn read_pem(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::from(e).context(format!("reading {what} {}", path.display())))?;
    if meta.len() > MAX_PEM_LEN as u64 {
        return Err(Error::invalid(format!(
            "{what} {} is {} bytes: at most {MAX_PEM_LEN}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Error::from(e).context(format!("reading {what} {}", path.display())))
}

fn read_secret_pem(path: &Path, what: &str) -> Result<String> {
    check_secret_file(path, what)?;
    read_pem(path, what)
}

/// The certificates of a PEM text, in order.
pub fn certs_of_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("{what}: not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!("{what}: no certificate in it")));
    }
    Ok(certs)
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    Ok(certs_of_pem(pem, what)?.remove(0))
}

/// The private key of a PEM text.
pub fn key_of_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::invalid(format!("{what}: not a PEM private key: {e}")))
}

/// `AA:BB:...`, the SHA-256 of the first certificate of `pem`.
pub fn fingerprint_of_pem(pem: &str) -> Result<String> {
    let der = first_cert(pem, "certificate")?;
    Ok(Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/golden/credentials_v1")
    }

    /// Credentials written by the first build with TLS still load, with
    /// their role (git does not keep the keys' 0600 mode: they are copied
    /// into private files first).
    /// A certificate made elsewhere with a 160-bit serial (openssl's
    /// default) still reads: its serial is named by its hash.
    #[test]
    fn a_serial_longer_than_128_bits_still_reads() {
        let key = KeyPair::generate().unwrap();
        let mut params = node_params(Role::Client, "h").unwrap();
        params.serial_number = Some(SerialNumber::from_slice(&[0x7f; 20]));
        let cert = params.self_signed(&key).unwrap();
        let peer = Peer::of_certificate(cert.der()).unwrap();
        assert_eq!(peer.role, Role::Client);
        assert_eq!(serial_of_der(cert.der()).unwrap(), peer.serial);
    }

    #[test]
    fn the_golden_credentials_load() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "ca.key", "node.crt", "node.key"] {
            let bytes = std::fs::read(golden().join(name)).unwrap();
            write_private(&dir.path().join(name), &bytes).unwrap();
        }
        let ca = ClusterCa::load(dir.path()).unwrap();
        let id = NodeIdentity::load(dir.path(), "node", "golden").unwrap();
        assert_eq!(
            id.peer,
            Peer {
                role: Role::Client,
                name: "golden-host".into(),
                serial: "45d3c3a4acebf9ef7185ad049c32cded".parse().unwrap(),
            }
        );
        assert_eq!(id.ca_fingerprint(), ca.fingerprint());
        // The golden CA still issues certificates that load beside it.
        ca.issue_identity(Role::Cs, "cs 9").unwrap();
    }

    /// Rewrites the golden credentials: run by hand (`--ignored`) only
    /// when their format changes on purpose.
    #[test]
    #[ignore = "writes src/golden/credentials_v1"]
    fn write_the_golden_credentials() {
        // The CA is valid for 100 years, the node certificate for 10 (from
        // December 2026): rewrite them before then.
        let ca = ClusterCa::generate("golden").unwrap();
        let dir = golden();
        std::fs::create_dir_all(&dir).unwrap();
        ca.save(&dir).unwrap();
        ca.issue_identity(Role::Client, "golden-host")
            .unwrap()
            .save(&dir, "node")
            .unwrap();
    }

    #[test]
    fn issued_certificates_name_their_role_and_chain_to_the_ca() {
        let ca = ClusterCa::generate("c1").unwrap();
        for role in Role::ALL {
            let id = ca.issue_identity(role, &format!("node {role}")).unwrap();
            assert_eq!(id.peer.role, role);
            assert_eq!(id.peer.name, format!("node {role}"));
            assert_eq!(id.ca_fingerprint(), ca.fingerprint());
        }
        assert_eq!(ca.fingerprint().len(), 32 * 3 - 1);
    }

    #[test]
    fn the_ca_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c1").unwrap();
        ca.save(dir.path()).unwrap();
        let again = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        // Certificates it issues after the reload chain to the same CA.
        let id = again.issue_identity(Role::Client, "h1").unwrap();
        id.save(dir.path(), "node").unwrap();
        let loaded = NodeIdentity::load(dir.path(), "node", "auth-node").unwrap();
        assert_eq!(loaded.peer.role, Role::Client);
        assert_eq!(loaded.ca_fingerprint(), ca.fingerprint());
    }

    #[test]
    fn a_certificate_of_another_ca_or_a_wrong_key_is_refused() {
        let ca = ClusterCa::generate("c1").unwrap();
        let other = ClusterCa::generate("c1").unwrap();
        let id = other.issue_identity(Role::Admin, "x").unwrap();
        let err =
            NodeIdentity::from_pem(ca.cert_pem().to_string(), id.cert_pem, id.key_pem).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let a = ca.issue_identity(Role::Admin, "a").unwrap();
        let b = ca.issue_identity(Role::Admin, "b").unwrap();
        let err = NodeIdentity::from_pem(a.ca_pem, a.cert_pem, b.key_pem).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }

    #[test]
    fn host_names_are_dns_names_and_others_are_not() {
        assert!(is_dns_name("vm"));
        assert!(is_dns_name("node-7.rack2.example"));
        for not in ["mds 1", "", "-a", "a-", "a..b", "a_b", &"x".repeat(64)] {
            assert!(!is_dns_name(not), "{not:?}");
        }
    }

    #[test]
    fn bad_requests_and_names_are_refused() {
        let ca = ClusterCa::generate("c1").unwrap();
        let req = CertRequest::generate().unwrap();
        for name in ["", "a\nb", &"x".repeat(MAX_NODE_NAME + 1)] {
            assert_eq!(
                ca.issue(&req.csr_der, Role::Client, name)
                    .unwrap_err()
                    .kind(),
                ErrorKind::InvalidArgument
            );
        }
        assert_eq!(
            ca.issue(b"not a csr", Role::Client, "n")
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        let mut tampered = req.csr_der.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 0xff;
        assert!(ca.issue(&tampered, Role::Client, "n").is_err());
        assert_eq!(
            Role::parse("root").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c1").unwrap();
        ca.issue_identity(Role::Client, "h")
            .unwrap()
            .save(dir.path(), "node")
            .unwrap();
        let key = dir.path().join("node.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeIdentity::load(dir.path(), "node", "auth-node").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let missing =
            NodeIdentity::load(&dir.path().join("none"), "node", "run auth-node").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::PermissionDenied);
        assert!(missing.to_string().contains("run auth-node"), "{missing}");
    }
}
