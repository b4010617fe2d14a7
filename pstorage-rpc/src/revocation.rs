//! Revoked certificates: the set a node checks every peer against.
//!
//! The MDSes keep the cluster's revocation list in their replicated state
//! (`pstorage revoke`, [`pstorage_core::mds::certs`]). Every node holds a
//! [`Revocations`] set in its [`crate::tls::Credentials`]:
//!
//! - every TLS handshake, accepted or dialed, refuses a certificate in it
//!   (the wrapped verifiers below answer `certificate_revoked`);
//! - every served connection (control and data) watches it and is closed
//!   when its peer's certificate joins it ([`Revocations::until_revoked`]),
//!   so a revoked node loses the connections it holds too;
//! - [`sync`] keeps it up to date from a [`CertificateRegistry`]: an MDS
//!   from its own state, a chunk server from the MDS group, every
//!   [`SYNC_PERIOD`] (a revocation takes effect on the MDS that committed
//!   it at once, everywhere else within that period). A chunk server keeps
//!   the list in its directory ([`RevokedFile`]) so that it refuses revoked
//!   peers from its start, before it reaches an MDS.
//!
//! Client processes (the SDK: the CLI, a mount, `nbd-serve`) sync every
//! [`CLIENT_SYNC_PERIOD`] when built inside a tokio runtime
//! ([`follow_as_client`]): they refuse a revoked server (a stolen chunk
//! server's key) when they dial it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pstorage_core::error::{Error, Result};
use pstorage_core::traits::CertificateRegistry;
use pstorage_core::types::CertSerial;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_util::sync::CancellationToken;

/// How often a node asks for revocations it has not seen.
pub const SYNC_PERIOD: Duration = Duration::from_secs(5);

/// The revoked serials a node knows, in the order of the cluster's list.
/// Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Revocations(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// The set, and how many of the list's entries it holds.
    known: parking_lot::RwLock<(HashSet<CertSerial>, u64)>,
    /// Bumped at every change (connections watch it).
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revocations({} known)", self.position())
    }
}

impl Revocations {
    /// Whether `serial` is revoked.
    pub fn is_revoked(&self, serial: CertSerial) -> bool {
        self.0.known.read().0.contains(&serial)
    }

    /// How many entries of the cluster's list this set holds (where the
    /// next sync starts).
    pub fn position(&self) -> u64 {
        self.0.known.read().1
    }

    /// Every revoked serial, in no order.
    pub fn serials(&self) -> Vec<CertSerial> {
        self.0.known.read().0.iter().copied().collect()
    }

    /// Adds the list's entries `serials`, which start at position `from`;
    /// entries before the set's position are known already (a reply that
    /// overlaps one applied meanwhile). Returns whether the set changed.
    pub fn extend(&self, from: u64, serials: &[CertSerial]) -> bool {
        let mut known = self.0.known.write();
        let (set, position) = &mut *known;
        if from > *position {
            // A gap: never apply (the next sync asks from the position).
            return false;
        }
        let skip = usize::try_from(*position - from).unwrap_or(usize::MAX);
        let mut changed = false;
        for serial in serials.iter().skip(skip) {
            changed |= set.insert(*serial);
            *position += 1;
        }
        drop(known);
        if changed {
            self.0.changed.notify_waiters();
        }
        changed
    }

    /// Resolves once `serial` is revoked (at once if it is).
    pub async fn until_revoked(&self, serial: CertSerial) {
        loop {
            let notified = self.0.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_revoked(serial) {
                return;
            }
            notified.await;
        }
    }

    /// `InvalidCertificate(Revoked)` when the certificate `der` is revoked
    /// (what the wrapped verifiers add).
    fn check(&self, der: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        match crate::pki::serial_of_der(der.as_ref()) {
            Ok(serial) if self.is_revoked(serial) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Ok(_) => Ok(()),
            Err(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
        }
    }
}

/// Runs `future` (serving a connection of `serial`'s certificate) until it
/// ends or the certificate is revoked; returns whether it was revoked.
pub async fn unless_revoked(
    revocations: &Revocations,
    serial: CertSerial,
    future: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::select! {
        () = future => false,
        () = revocations.until_revoked(serial) => true,
    }
}

/// A client-certificate verifier that also refuses revoked certificates.
#[derive(Debug)]
pub(crate) struct UnrevokedClients {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) revocations: Revocations,
}

impl ClientCertVerifier for UnrevokedClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.revocations.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server-certificate verifier that also refuses revoked certificates.
#[derive(Debug)]
pub(crate) struct UnrevokedServers {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
    pub(crate) revocations: Revocations,
}

impl ServerCertVerifier for UnrevokedServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.revocations.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Brings `revocations` up to date from `registry` once: asks from its
/// position until the list has no more. Returns whether it changed.
pub async fn sync_once(
    revocations: &Revocations,
    registry: &dyn CertificateRegistry,
) -> Result<bool> {
    let mut changed = false;
    loop {
        let from = revocations.position();
        let reply = registry.revoked_serials(from).await?;
        changed |= revocations.extend(from, &reply.serials);
        if reply.serials.is_empty() || revocations.position() >= reply.total {
            return Ok(changed);
        }
    }
}

/// Syncs `revocations` from `registry` every [`SYNC_PERIOD`] until `stop`;
/// after every change, `on_change` (a chunk server saves the list). A
/// failed sync is retried at the next period.
pub async fn sync(
    revocations: Revocations,
    registry: Arc<dyn CertificateRegistry>,
    on_change: impl Fn(&Revocations),
    stop: CancellationToken,
) {
    loop {
        match sync_once(&revocations, &*registry).await {
            Ok(true) => {
                tracing::warn!(
                    "{} certificates of the cluster are revoked: connections with them are refused",
                    revocations.position()
                );
                on_change(&revocations);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("revocation sync: {e}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SYNC_PERIOD) => {}
        }
    }
}

/// How often a client process (the SDK: the CLI, a mount, `nbd-serve`)
/// syncs: it only checks the servers it dials, which refuse revoked peers
/// themselves.
pub const CLIENT_SYNC_PERIOD: Duration = Duration::from_secs(30);

/// Syncs a client's `revocations` from `registry` every
/// [`CLIENT_SYNC_PERIOD`] while the registry (the client's MDS connection)
/// lives: the task ends once only it holds it. Needs a tokio runtime.
pub fn follow_as_client<R: CertificateRegistry + 'static>(
    revocations: Revocations,
    registry: std::sync::Weak<R>,
) {
    tokio::spawn(async move {
        loop {
            let Some(live) = registry.upgrade() else {
                return;
            };
            if let Err(e) = sync_once(&revocations, &*live).await {
                tracing::debug!("revocation sync: {e}");
            }
            drop(live);
            tokio::time::sleep(CLIENT_SYNC_PERIOD).await;
        }
    });
}

/// The revocation list a chunk server keeps in its directory (`revoked`):
/// a first line `pstorage-revoked 1` (the format version), then the first
/// N serials of the cluster's list, one per line as 32 hexadecimal digits,
/// in any order (a sync only appends, so N is where the next one starts).
/// Written whole as a private file (`write_private`).
pub struct RevokedFile(PathBuf);

/// The first line of a [`RevokedFile`].
const REVOKED_HEADER: &str = "pstorage-revoked 1";
/// Longest revocation file read (the state's bound on certificates, 33
/// bytes a line).
const MAX_REVOKED_FILE: u64 = 65_536 * 33 + 64;

impl RevokedFile {
    /// The file in directory `dir`.
    pub fn in_dir(dir: &Path) -> RevokedFile {
        RevokedFile(dir.join("revoked"))
    }

    /// The list, in order; empty when the file does not exist. `Corrupt`
    /// for a file that is not one, `Protocol` for a newer version.
    pub fn load(&self) -> Result<Vec<CertSerial>> {
        let text = match std::fs::metadata(&self.0) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::from(e).context(format!("reading {}", self.0.display()))),
            Ok(m) if m.len() > MAX_REVOKED_FILE => {
                return Err(Error::corrupt(format!(
                    "{}: {} bytes, more than a revocation list holds",
                    self.0.display(),
                    m.len()
                )))
            }
            Ok(_) => std::fs::read_to_string(&self.0)
                .map_err(|e| Error::from(e).context(format!("reading {}", self.0.display())))?,
        };
        let mut lines = text.lines();
        match lines.next() {
            Some(REVOKED_HEADER) => {}
            Some(h) if h.starts_with("pstorage-revoked ") => {
                return Err(Error::new(
                    pstorage_core::error::ErrorKind::Protocol,
                    format!(
                        "{} has format {h:?}; this build reads {REVOKED_HEADER:?}",
                        self.0.display()
                    ),
                ))
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "{} is not a revocation list",
                    self.0.display()
                )))
            }
        }
        lines
            .map(|l| {
                l.parse::<CertSerial>()
                    .map_err(|e| Error::corrupt(format!("{}: {e}", self.0.display())))
            })
            .collect()
    }

    /// Writes `serials` (in the list's order).
    pub fn save(&self, serials: &[CertSerial]) -> Result<()> {
        let mut text = String::with_capacity(serials.len() * 33 + 20);
        text.push_str(REVOKED_HEADER);
        text.push('\n');
        for s in serials {
            text.push_str(&s.to_string());
            text.push('\n');
        }
        pstorage_core::conf::write_private(&self.0, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pstorage_core::types::RevokedSerials;

    #[test]
    fn a_sync_reply_applies_from_the_position_only() {
        let r = Revocations::default();
        assert!(r.extend(0, &[CertSerial(1), CertSerial(2)]));
        // Overlapping: only the new entry counts.
        assert!(r.extend(1, &[CertSerial(2), CertSerial(3)]));
        assert_eq!(r.position(), 3);
        // A gap is never applied.
        assert!(!r.extend(5, &[CertSerial(9)]));
        assert!(!r.is_revoked(CertSerial(9)));
        assert!(r.is_revoked(CertSerial(3)));
    }

    #[tokio::test]
    async fn a_served_connection_ends_when_its_certificate_is_revoked() {
        let r = Revocations::default();
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { unless_revoked(&r, CertSerial(7), std::future::pending()).await }
        });
        tokio::task::yield_now().await;
        r.extend(0, &[CertSerial(6)]);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        r.extend(1, &[CertSerial(7)]);
        assert!(waiting.await.unwrap());
    }

    /// A registry serving a list in pages of two.
    struct Paged(Vec<CertSerial>);

    #[async_trait::async_trait]
    impl CertificateRegistry for Paged {
        async fn record_certificate(&self, _: pstorage_core::types::CertRecord) -> Result<()> {
            unreachable!()
        }
        async fn revoke_certificates(
            &self,
            _: &str,
        ) -> Result<Vec<pstorage_core::types::CertRecord>> {
            unreachable!()
        }
        async fn certificates(&self) -> Result<Vec<pstorage_core::types::CertRecord>> {
            unreachable!()
        }
        async fn revoked_serials(&self, from: u64) -> Result<RevokedSerials> {
            Ok(RevokedSerials {
                total: self.0.len() as u64,
                serials: self.0.iter().skip(from as usize).take(2).copied().collect(),
            })
        }
        async fn log_security_event(
            &self,
            _: pstorage_core::types::EventLevel,
            _: &str,
        ) -> Result<()> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn a_sync_reads_every_page() {
        let r = Revocations::default();
        let list: Vec<CertSerial> = (10..15).map(CertSerial).collect();
        assert!(sync_once(&r, &Paged(list.clone())).await.unwrap());
        assert_eq!(r.position(), 5);
        assert!(!sync_once(&r, &Paged(list)).await.unwrap());
    }

    #[tokio::test]
    async fn a_client_follows_while_its_connection_lives() {
        let r = Revocations::default();
        let registry = Arc::new(Paged((1..4).map(CertSerial).collect()));
        follow_as_client(r.clone(), Arc::downgrade(&registry));
        tokio::time::timeout(Duration::from_secs(10), async {
            while r.position() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first sync runs at once");
        assert!(r.is_revoked(CertSerial(3)));
    }

    #[test]
    fn the_revocation_file_round_trips_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = RevokedFile::in_dir(dir.path());
        assert!(file.load().unwrap().is_empty());
        let list = vec![CertSerial(u128::MAX), CertSerial(1)];
        file.save(&list).unwrap();
        assert_eq!(file.load().unwrap(), list);
        std::fs::write(dir.path().join("revoked"), "pstorage-revoked 2\n").unwrap();
        assert_eq!(
            file.load().unwrap_err().kind(),
            pstorage_core::error::ErrorKind::Protocol
        );
        std::fs::write(dir.path().join("revoked"), "garbage\n").unwrap();
        assert_eq!(
            file.load().unwrap_err().kind(),
            pstorage_core::error::ErrorKind::Corrupt
        );
    }

    /// The format of the file, pinned.
    #[test]
    fn the_golden_revocation_file_is_read() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/golden/revoked_v1");
        assert_eq!(
            RevokedFile::in_dir(&golden).load().unwrap(),
            vec![
                CertSerial(0x45d3c3a4acebf9ef7185ad049c32cded),
                CertSerial(1)
            ]
        );
    }
}
