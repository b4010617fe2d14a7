//! The certificates the cluster's CA issued, and the revoked ones: part of
//! the replicated state (store format 11 on).
//!
//! The CA's key signs (in `pstorage-rpc`); every certificate an MDS issues
//! is recorded here first ([`super::Command::RecordCertificate`]), so that
//! `pstorage certs` lists them and `pstorage revoke NAME` finds a lost
//! node's serials without its files. A revocation
//! ([`super::Command::RevokeCertificates`]) is never undone: revoked
//! serials form an append-only list that every node syncs from the
//! position it got to ([`CertTable::revoked_from`]) and checks at every
//! TLS handshake and call.
//!
//! Bounds: [`MAX_CERTS`] records; when full, a new one first evicts the
//! expired certificates that were never revoked, and is refused `NoSpace`
//! when none are.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::service::{unexpected, MdsService};
use super::state::{ApplyOutcome, Command, NewEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::CertificateRegistry;
use crate::types::{
    CertRecord, CertSerial, EventKind, EventLevel, RevokedSerials, MAX_REVOKED_PER_REPLY,
};

/// Certificates (issued or revoked) the state records at most.
pub const MAX_CERTS: usize = 65_536;
/// Longest role or name a record keeps.
pub const MAX_CERT_FIELD: usize = 256;

/// The recorded certificates and the revocation list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertTable {
    certs: BTreeMap<CertSerial, CertRecord>,
    /// Revoked serials, in the order they were revoked.
    revoked: Vec<CertSerial>,
}

impl CertTable {
    /// Whether `record` may be recorded at `now_ms`: `AlreadyExists` for a
    /// known serial, `InvalidArgument` for an over-long field, `NoSpace`
    /// when the table is full of certificates that are live or revoked.
    pub fn check_record(&self, record: &CertRecord, now_ms: u64) -> Result<()> {
        if record.role.len() > MAX_CERT_FIELD || record.name.len() > MAX_CERT_FIELD {
            return Err(Error::invalid(format!(
                "a certificate's role and name are at most {MAX_CERT_FIELD} bytes"
            )));
        }
        if self.certs.contains_key(&record.serial) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("certificate {} is already recorded", record.serial),
            ));
        }
        if self.certs.len() >= MAX_CERTS && self.evictable(now_ms).next().is_none() {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "the cluster has {MAX_CERTS} live or revoked certificates recorded; revoke \
                     none more, or make a new cluster CA"
                ),
            ));
        }
        Ok(())
    }

    /// Records `record` (checked by [`CertTable::check_record`]).
    pub fn record(&mut self, record: CertRecord, now_ms: u64) {
        if self.certs.len() >= MAX_CERTS {
            let expired: Vec<CertSerial> = self.evictable(now_ms).collect();
            for serial in expired {
                self.certs.remove(&serial);
            }
        }
        self.certs.insert(record.serial, record);
    }

    /// Expired certificates that were never revoked.
    fn evictable(&self, now_ms: u64) -> impl Iterator<Item = CertSerial> + '_ {
        self.certs
            .values()
            .filter(move |c| c.revoked_ms.is_none() && c.not_after_ms < now_ms)
            .map(|c| c.serial)
    }

    /// Whether revoking `serials` fits: a serial never recorded takes a
    /// record of its own. `NoSpace` otherwise.
    pub fn check_revoke(&self, serials: &[CertSerial]) -> Result<()> {
        let unknown = serials
            .iter()
            .filter(|s| !self.certs.contains_key(s))
            .count();
        if self.certs.len() + unknown > MAX_CERTS {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!("the cluster records at most {MAX_CERTS} certificates"),
            ));
        }
        Ok(())
    }

    /// Revokes `serials` at `now_ms`; returns the records newly revoked
    /// (one already revoked is left as it is).
    pub fn revoke(&mut self, serials: &[CertSerial], now_ms: u64) -> Vec<CertRecord> {
        let mut revoked = Vec::new();
        for serial in serials {
            let record = self.certs.entry(*serial).or_insert_with(|| CertRecord {
                serial: *serial,
                role: String::new(),
                name: String::new(),
                issued_ms: 0,
                not_after_ms: 0,
                revoked_ms: None,
            });
            if record.revoked_ms.is_none() {
                record.revoked_ms = Some(now_ms);
                self.revoked.push(*serial);
                revoked.push(record.clone());
            }
        }
        revoked
    }

    /// The record of `serial`, if any.
    pub fn get(&self, serial: CertSerial) -> Option<&CertRecord> {
        self.certs.get(&serial)
    }

    /// Every recorded certificate, by serial.
    pub fn list(&self) -> Vec<CertRecord> {
        self.certs.values().cloned().collect()
    }

    /// The serials `which` names: a serial number (revoked or not, recorded
    /// or not), or every unrevoked certificate of that node name.
    /// `NotFound` when a name has none.
    pub fn find(&self, which: &str) -> Result<Vec<CertSerial>> {
        let named: Vec<CertSerial> = self
            .certs
            .values()
            .filter(|c| c.name == which && c.revoked_ms.is_none())
            .map(|c| c.serial)
            .collect();
        if !named.is_empty() {
            return Ok(named);
        }
        // A serial in full (32 hex digits, as `certs` and `openssl x509
        // -serial` show it), so that a short name made of hex digits is
        // never taken for one.
        let digits = which.chars().filter(|c| *c != ':').count();
        if let (32, Ok(serial)) = (digits, which.parse::<CertSerial>()) {
            return Ok(vec![serial]);
        }
        Err(Error::not_found(format!(
            "no unrevoked certificate is named {which:?}, and it is not a serial number of 32 \
             hexadecimal digits (`pstorage certs` lists them)"
        )))
    }

    /// The revoked serials from position `from` on (at most
    /// [`MAX_REVOKED_PER_REPLY`]) and how many there are.
    pub fn revoked_from(&self, from: u64) -> RevokedSerials {
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(self.revoked.len());
        RevokedSerials {
            total: self.revoked.len() as u64,
            serials: self.revoked[start..]
                .iter()
                .take(MAX_REVOKED_PER_REPLY)
                .copied()
                .collect(),
        }
    }

    /// Every revoked serial is recorded as revoked, once; the table is
    /// within its bound.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let revoked_records = self
            .certs
            .values()
            .filter(|c| c.revoked_ms.is_some())
            .count();
        let listed: std::collections::BTreeSet<&CertSerial> = self.revoked.iter().collect();
        if self.certs.len() > MAX_CERTS
            || listed.len() != self.revoked.len()
            || revoked_records != self.revoked.len()
            || self
                .revoked
                .iter()
                .any(|s| self.certs.get(s).is_none_or(|c| c.revoked_ms.is_none()))
            || self.certs.iter().any(|(s, c)| *s != c.serial)
        {
            return Err("the certificate table and its revocation list disagree".into());
        }
        Ok(())
    }

    /// The parts, for the frozen-format readers.
    pub(crate) fn from_parts(
        certs: BTreeMap<CertSerial, CertRecord>,
        revoked: Vec<CertSerial>,
    ) -> CertTable {
        CertTable { certs, revoked }
    }
}

#[async_trait]
impl CertificateRegistry for MdsService {
    async fn record_certificate(&self, record: CertRecord) -> Result<()> {
        let now_ms = self.now();
        match self
            .commit(Command::RecordCertificate { record, now_ms })
            .await?
        {
            ApplyOutcome::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn revoke_certificates(&self, which: &str) -> Result<Vec<CertRecord>> {
        self.read_barrier().await?;
        let serials = self.core().state.certs().find(which)?;
        // The certificate of a member of the metadata group is its voice in
        // Raft: revoking it would cut the member off without removing it.
        let members = self.membership();
        let member_cert = {
            let core = self.core();
            serials.iter().find_map(|serial| {
                let record = core.state.certs().get(*serial)?;
                let member = members
                    .members
                    .iter()
                    .find(|m| record.role == "mds" && record.name == format!("mds {}", m.id))?;
                Some((*serial, member.id))
            })
        };
        if let Some((serial, id)) = member_cert {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "certificate {serial} is MDS {id}'s, a member of the metadata group: remove \
                     it first (`pstorage rm-mds {id}`), then revoke it"
                ),
            ));
        }
        let now_ms = self.now();
        match self
            .commit(Command::RevokeCertificates {
                serials: serials.clone(),
                now_ms,
            })
            .await?
        {
            ApplyOutcome::Done => {}
            other => return Err(unexpected(other)),
        }
        let core = self.core();
        let certs = core.state.certs();
        Ok(certs
            .list()
            .into_iter()
            .filter(|c| serials.contains(&c.serial))
            .collect())
    }

    async fn certificates(&self) -> Result<Vec<CertRecord>> {
        self.read_barrier().await?;
        Ok(self.core().state.certs().list())
    }

    async fn revoked_serials(&self, from: u64) -> Result<RevokedSerials> {
        Ok(self.core().state.certs().revoked_from(from))
    }

    async fn log_security_event(&self, level: EventLevel, message: &str) -> Result<()> {
        let now_ms = self.now();
        let events = vec![NewEvent {
            kind: EventKind::Security,
            level,
            message: message.chars().take(MAX_CERT_FIELD * 4).collect(),
        }];
        match self.commit(Command::LogEvents { now_ms, events }).await? {
            ApplyOutcome::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: u128, name: &str, not_after_ms: u64) -> CertRecord {
        CertRecord {
            serial: CertSerial(serial),
            role: "client".into(),
            name: name.into(),
            issued_ms: 1,
            not_after_ms,
            revoked_ms: None,
        }
    }

    #[test]
    fn revocations_are_listed_in_order_from_any_position() {
        let mut t = CertTable::default();
        t.record(record(1, "a", 100), 0);
        t.record(record(2, "b", 100), 0);
        assert_eq!(t.revoke(&[CertSerial(2)], 5).len(), 1);
        // Revoking again changes nothing; an unknown serial gets a record.
        assert!(t.revoke(&[CertSerial(2)], 6).is_empty());
        assert_eq!(t.revoke(&[CertSerial(9)], 7)[0].name, "");
        assert_eq!(
            t.revoked_from(0),
            RevokedSerials {
                total: 2,
                serials: vec![CertSerial(2), CertSerial(9)]
            }
        );
        assert_eq!(t.revoked_from(1).serials, vec![CertSerial(9)]);
        assert!(t.revoked_from(u64::MAX).serials.is_empty());
    }

    #[test]
    fn a_name_finds_its_unrevoked_certificates_and_a_serial_itself() {
        let mut t = CertTable::default();
        t.record(record(1, "h1", 100), 0);
        t.record(record(2, "h1", 100), 0);
        t.record(record(3, "h2", 100), 0);
        assert_eq!(t.find("h1").unwrap(), vec![CertSerial(1), CertSerial(2)]);
        t.revoke(&[CertSerial(1)], 1);
        assert_eq!(t.find("h1").unwrap(), vec![CertSerial(2)]);
        let full = format!("{:032x}", 0xffu128);
        assert_eq!(t.find(&full).unwrap(), vec![CertSerial(0xff)]);
        assert_eq!(
            t.find(&full.to_uppercase()).unwrap(),
            vec![CertSerial(0xff)]
        );
        // A short run of hex digits is a name, not a serial.
        assert_eq!(t.find("cafe").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(t.find("nobody").unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn a_full_table_evicts_expired_unrevoked_certificates_only() {
        let mut t = CertTable::default();
        for i in 0..MAX_CERTS as u128 {
            // Half expire at 10, half at 1000; the first is revoked.
            t.record(record(i, "n", if i % 2 == 0 { 10 } else { 1000 }), 0);
        }
        t.revoke(&[CertSerial(0)], 1);
        let new = record(u128::MAX, "new", 2000);
        // Before anything expired: full.
        assert_eq!(
            t.check_record(&new, 5).unwrap_err().kind(),
            ErrorKind::NoSpace
        );
        t.check_record(&new, 11).unwrap();
        t.record(new, 11);
        assert_eq!(t.list().len(), MAX_CERTS / 2 + 2);
        // The revoked one stays, expired or not.
        assert_eq!(t.revoked_from(0).serials, vec![CertSerial(0)]);
        assert_eq!(
            t.check_record(&record(u128::MAX, "x", 1), 11)
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
    }
}
