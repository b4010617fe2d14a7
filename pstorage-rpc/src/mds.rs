//! The `Mds` interface: the metadata service over the network.
//!
//! `MdsServer` serves `MetadataService + CsRegistry` (and, on a replicated
//! MDS, `MdsGroup` and the Raft messages of [`crate::raft`]) to remote peers
//! (it runs on an [`RpcServerThread`](crate::actor::RpcServerThread));
//! [`MdsClient`] implements the same traits by calling a remote MDS.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pstorage_core::mds::raft::{MdsId, MdsRaft};
use pstorage_core::membership::MemberDirectory;
use pstorage_core::traits::{CertificateRegistry, CsRegistry, MdsGroup, MetadataService};
use pstorage_core::types::{
    AttrUpdate, BadBlocks, BlockRepair, ChunkId, ChunkMap, ClusterStatus, ConfigEntry, CsId,
    CsPlacementUpdate, CsRegistration, CsStats, DirEntry, Event, FailureReason, HeartbeatReply,
    LeaseId, LeaseMode, MapVersion, MdsMembership, OpTag, OpenFlags, OpenReply, RegisterReply,
    SpaceInfo, Stat, MAX_REPORTED_BLOCKS,
};
use pstorage_core::types::{CertRecord, EventLevel, RevokedSerials};
use pstorage_core::types::{ChunkMapPage, DirPage};
use pstorage_core::types::{
    HeldLock, LockRequest, NewNode, Perms, RenameFlags, StatChange, XattrSet,
};
use pstorage_core::{Error, Result};

use crate::actor::{ClientActor, ClientOptions, Dialer, FixedEndpoints, MDS_CALL_TIMEOUT};
use crate::generated::pstorage_capnp::{mds, BlockRepairOutcome};
use crate::wire::{
    decode_request, failure_reason_from_wire, failure_reason_to_wire, lease_mode_from_wire,
    lease_mode_to_wire, list_len, read_list, read_op, read_perms, read_text, read_xattr_value,
    write_list, write_op, write_xattr_value, xattr_set_from_wire, xattr_set_to_wire, DataReply,
    NamesReply, RegisterReplyPage, RegistrationToken, TextReply, WireReply, WireStruct,
};

// ---------------------------------------------------------------------------
// Server

/// Serves one connection's `Mds` calls from the local implementations.
///
/// Every trait error travels back as the method's `err` result with its kind;
/// parameters that do not decode are answered with a `Protocol` error.
struct MdsServer {
    metadata: Arc<dyn MetadataService>,
    registry: Arc<dyn CsRegistry>,
    /// Serves `allocateMdsId`, `addMds`, `removeMds` when present.
    group: Option<Arc<dyn MdsGroup>>,
    /// Receives `raftAppend`, `raftVote`, `raftSnapshot` when present.
    raft: Option<MdsRaft>,
    /// What arrived of the snapshot the Raft node is receiving.
    snapshot_intake: Arc<crate::raft::SnapshotIntake>,
    /// Issues certificates (`issueCertificate`, `joinSecrets`) when present.
    enrollment: Option<Arc<crate::enroll::Enrollment>>,
    /// The certificate table, when present.
    certs: Option<Arc<dyn CertificateRegistry>>,
    /// Who is at the other end (its certificate).
    peer: crate::pki::Peer,
    /// Registrations in parts, this connection's among them.
    registration_intake: Arc<crate::registration::RegistrationIntake>,
    /// This connection, in `registration_intake`.
    connection: crate::registration::ConnectionId,
}

impl Drop for MdsServer {
    fn drop(&mut self) {
        // The connection closed: what it left of registrations goes.
        self.registration_intake.forget(self.connection);
    }
}

/// What an `Mds` connection serves.
#[derive(Clone)]
pub(crate) struct MdsServices {
    pub(crate) metadata: Arc<dyn MetadataService>,
    pub(crate) registry: Arc<dyn CsRegistry>,
    pub(crate) group: Option<Arc<dyn MdsGroup>>,
    pub(crate) raft: Option<MdsRaft>,
    pub(crate) snapshot_intake: Arc<crate::raft::SnapshotIntake>,
    pub(crate) registration_intake: Arc<crate::registration::RegistrationIntake>,
    pub(crate) enrollment: Option<Arc<crate::enroll::Enrollment>>,
    pub(crate) certs: Option<Arc<dyn CertificateRegistry>>,
}

/// The bootstrap capability of an `Mds` connection from `peer`: every call
/// is checked against its role ([`crate::roles`]).
pub(crate) fn bootstrap(
    services: MdsServices,
    peer: crate::pki::Peer,
) -> capnp::capability::Client {
    let MdsServices {
        metadata,
        registry,
        group,
        raft,
        snapshot_intake,
        registration_intake,
        enrollment,
        certs,
    } = services;
    let connection = registration_intake.connection();
    let server = MdsServer {
        metadata,
        registry,
        group,
        raft,
        snapshot_intake,
        enrollment,
        certs,
        peer: peer.clone(),
        registration_intake,
        connection,
    };
    let dispatch =
        <mds::Client as capnp::capability::FromServer<MdsServer>>::from_server(Rc::new(server));
    crate::roles::Gate::new(dispatch, peer, crate::roles::mds_allows, "Mds").into_client()
}

impl MdsServer {
    fn enrollment(&self, method: &str) -> Result<&Arc<crate::enroll::Enrollment>> {
        self.enrollment
            .as_ref()
            .ok_or_else(|| Error::unavailable(format!("{method}: this MDS issues no certificates")))
    }

    fn certs(&self, method: &str) -> Result<&Arc<dyn CertificateRegistry>> {
        self.certs.as_ref().ok_or_else(|| {
            Error::unavailable(format!("{method}: this MDS keeps no certificate table"))
        })
    }

    fn group(&self, method: &str) -> Result<&Arc<dyn MdsGroup>> {
        self.group.as_ref().ok_or_else(|| {
            Error::unavailable(format!(
                "{method}: this MDS does not manage an MDS group (it runs without Raft); \
                 upgrade it or send the request to a replicated MDS"
            ))
        })
    }
}

impl mds::Server for MdsServer {
    async fn open(
        self: Rc<Self>,
        params: mds::OpenParams,
        mut results: mds::OpenResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("open");
        let outcome = async {
            let (path, mode, flags, op, perms) = decode_request("open", || {
                let p = params.get()?;
                Ok((
                    read_text(p.get_path())?,
                    lease_mode_from_wire(p.get_mode()?),
                    OpenFlags::read(p.get_flags()?)?,
                    read_op(p.has_op(), || p.get_op())?,
                    read_perms(p.has_perms(), || p.get_perms(), Perms::FILE)?,
                ))
            })?;
            self.metadata.open_with(&path, mode, flags, perms, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn renew(
        self: Rc<Self>,
        params: mds::RenewParams,
        mut results: mds::RenewResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("renew");
        let outcome = async {
            let lease = decode_request("renew", || Ok(params.get()?.get_lease()))?;
            self.metadata.renew(LeaseId(lease)).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn close(
        self: Rc<Self>,
        params: mds::CloseParams,
        mut results: mds::CloseResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("close");
        let outcome = async {
            let lease = decode_request("close", || Ok(params.get()?.get_lease()))?;
            self.metadata.close(LeaseId(lease)).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn stat(
        self: Rc<Self>,
        params: mds::StatParams,
        mut results: mds::StatResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("stat");
        let outcome = async {
            let path = decode_request("stat", || read_text(params.get()?.get_path()))?;
            self.metadata.stat(&path).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn mkdir(
        self: Rc<Self>,
        params: mds::MkdirParams,
        mut results: mds::MkdirResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("mkdir");
        let outcome = async {
            let (path, parents, op, perms) = decode_request("mkdir", || {
                let p = params.get()?;
                let op = read_op(p.has_op(), || p.get_op())?;
                let perms = read_perms(p.has_perms(), || p.get_perms(), Perms::DIR)?;
                Ok((read_text(p.get_path())?, p.get_parents(), op, perms))
            })?;
            self.metadata.mkdir_with(&path, parents, perms, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn readdir(
        self: Rc<Self>,
        params: mds::ReaddirParams,
        mut results: mds::ReaddirResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("readdir");
        let outcome = async {
            let (path, after) = decode_request("readdir", || {
                let p = params.get()?;
                let after = if p.has_after() {
                    Some(read_text(p.get_after())?)
                } else {
                    None
                };
                Ok((read_text(p.get_path())?, after))
            })?;
            self.metadata.readdir_page(&path, after.as_deref()).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn unlink(
        self: Rc<Self>,
        params: mds::UnlinkParams,
        mut results: mds::UnlinkResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("unlink");
        let outcome = async {
            let (path, op) = decode_request("unlink", || {
                let p = params.get()?;
                let op = read_op(p.has_op(), || p.get_op())?;
                Ok((read_text(p.get_path())?, op))
            })?;
            self.metadata.unlink(&path, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn rename(
        self: Rc<Self>,
        params: mds::RenameParams,
        mut results: mds::RenameResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("rename");
        let outcome = async {
            let (from, to, op, flags) = decode_request("rename", || {
                let p = params.get()?;
                let op = read_op(p.has_op(), || p.get_op())?;
                let flags = RenameFlags {
                    no_replace: p.get_no_replace(),
                    exchange: p.get_exchange(),
                };
                Ok((read_text(p.get_from())?, read_text(p.get_to())?, op, flags))
            })?;
            self.metadata.rename_with(&from, &to, flags, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn make_node(
        self: Rc<Self>,
        params: mds::MakeNodeParams,
        mut results: mds::MakeNodeResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("make_node");
        let outcome = async {
            let (path, node, op) = decode_request("makeNode", || {
                let p = params.get()?;
                Ok((
                    read_text(p.get_path())?,
                    NewNode::read(p.get_node()?)?,
                    read_op(p.has_op(), || p.get_op())?,
                ))
            })?;
            self.metadata.make_node(&path, node, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn link(
        self: Rc<Self>,
        params: mds::LinkParams,
        mut results: mds::LinkResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("link");
        let outcome = async {
            let (from, to, op) = decode_request("link", || {
                let p = params.get()?;
                let op = read_op(p.has_op(), || p.get_op())?;
                Ok((read_text(p.get_from())?, read_text(p.get_to())?, op))
            })?;
            self.metadata.link(&from, &to, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn upgrade_lease(
        self: Rc<Self>,
        params: mds::UpgradeLeaseParams,
        mut results: mds::UpgradeLeaseResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("upgrade_lease");
        let outcome = async {
            let lease = decode_request("upgradeLease", || Ok(params.get()?.get_lease()))?;
            self.metadata.upgrade_lease(LeaseId(lease)).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_lock(
        self: Rc<Self>,
        params: mds::SetLockParams,
        mut results: mds::SetLockResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("set_lock");
        let outcome = async {
            let (lease, req) = decode_request("setLock", || {
                let p = params.get()?;
                Ok((LeaseId(p.get_lease()), LockRequest::read(p.get_req()?)?))
            })?;
            self.metadata.set_lock(lease, req).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn test_lock(
        self: Rc<Self>,
        params: mds::TestLockParams,
        mut results: mds::TestLockResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("test_lock");
        let outcome = async {
            let (lease, req) = decode_request("testLock", || {
                let p = params.get()?;
                Ok((LeaseId(p.get_lease()), LockRequest::read(p.get_req()?)?))
            })?;
            self.metadata.test_lock(lease, req).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn issue_certificate(
        self: Rc<Self>,
        params: mds::IssueCertificateParams,
        mut results: mds::IssueCertificateResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("issue_certificate");
        let outcome = async {
            let (csr, role, name) = decode_request("issueCertificate", || {
                let p = params.get()?;
                Ok((
                    p.get_csr()?.to_vec(),
                    read_text(p.get_role())?,
                    read_text(p.get_name())?,
                ))
            })?;
            let role = crate::pki::Role::parse(&role)?;
            let cert = self
                .enrollment("issueCertificate")?
                .issue(&csr, role, &name)
                .await?;
            tracing::info!("issued a certificate for {name} ({role}) to {}", self.peer);
            Ok(TextReply(cert))
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn join_secrets(
        self: Rc<Self>,
        _params: mds::JoinSecretsParams,
        mut results: mds::JoinSecretsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("join_secrets");
        let outcome = self
            .enrollment("joinSecrets")
            .map(|e| crate::wire::JoinSecretsReply {
                ca_cert: e.ca().cert_pem().to_string(),
                ca_key: e.ca().key_pem(),
                cluster_key: e.key().to_hex(),
            });
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn renew_certificate(
        self: Rc<Self>,
        params: mds::RenewCertificateParams,
        mut results: mds::RenewCertificateResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("renew_certificate");
        let outcome = async {
            let csr = decode_request("renewCertificate", || Ok(params.get()?.get_csr()?.to_vec()))?;
            // The caller's own role and name: a renewal widens nothing.
            let cert = self
                .enrollment("renewCertificate")?
                .issue(&csr, self.peer.role, &self.peer.name)
                .await?;
            tracing::info!("renewed the certificate of {}", self.peer);
            Ok(TextReply(cert))
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn register_cs_part(
        self: Rc<Self>,
        params: mds::RegisterCsPartParams,
        mut results: mds::RegisterCsPartResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("register_cs_part");
        let outcome = (|| {
            let (token, chunks, unclean) = decode_request("registerCsPart", || {
                let p = params.get()?;
                let (chunks, unclean) = (p.get_chunks()?, p.get_unclean()?);
                // Checked before decoding: a part is at most a page.
                crate::registration::check_page(
                    "registerCsPart",
                    chunks.len() as usize,
                    unclean.len() as usize,
                )
                .map_err(|e| capnp::Error::failed(e.to_string()))?;
                Ok((
                    RegistrationToken(p.get_token()),
                    read_list(chunks)?,
                    unclean.iter().map(ChunkId).collect(),
                ))
            })?;
            self.registration_intake
                .add_part(self.connection, token, chunks, unclean)
        })();
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn register_cs_reply(
        self: Rc<Self>,
        params: mds::RegisterCsReplyParams,
        mut results: mds::RegisterCsReplyResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("register_cs_reply");
        let outcome =
            decode_request("registerCsReply", || Ok(params.get()?.get_token())).and_then(|token| {
                self.registration_intake
                    .next_page(self.connection, RegistrationToken(token))
            });
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn record_certificate(
        self: Rc<Self>,
        params: mds::RecordCertificateParams,
        mut results: mds::RecordCertificateResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("record_certificate");
        let outcome = async {
            let record = decode_request("recordCertificate", || {
                CertRecord::read(params.get()?.get_record()?)
            })?;
            self.certs("recordCertificate")?
                .record_certificate(record)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn revoke_certificates(
        self: Rc<Self>,
        params: mds::RevokeCertificatesParams,
        mut results: mds::RevokeCertificatesResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("revoke_certificates");
        let outcome = async {
            let which = decode_request("revokeCertificates", || {
                read_text(params.get()?.get_which())
            })?;
            let revoked = self
                .certs("revokeCertificates")?
                .revoke_certificates(&which)
                .await?;
            tracing::warn!(
                "{} revoked {} certificates ({which})",
                self.peer,
                revoked.len()
            );
            Ok(revoked)
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn certificates(
        self: Rc<Self>,
        _params: mds::CertificatesParams,
        mut results: mds::CertificatesResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("certificates");
        let outcome = async { self.certs("certificates")?.certificates().await }.await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn revoked_serials(
        self: Rc<Self>,
        params: mds::RevokedSerialsParams,
        mut results: mds::RevokedSerialsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("revoked_serials");
        let outcome = async {
            let from = decode_request("revokedSerials", || Ok(params.get()?.get_from()))?;
            self.certs("revokedSerials")?.revoked_serials(from).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn log_security_event(
        self: Rc<Self>,
        params: mds::LogSecurityEventParams,
        mut results: mds::LogSecurityEventResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("log_security_event");
        let outcome = async {
            let (level, message) = decode_request("logSecurityEvent", || {
                let p = params.get()?;
                Ok((
                    crate::wire::event_level_from_wire(p.get_level()?),
                    read_text(p.get_message())?,
                ))
            })?;
            self.certs("logSecurityEvent")?
                .log_security_event(level, &message)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn readlink(
        self: Rc<Self>,
        params: mds::ReadlinkParams,
        mut results: mds::ReadlinkResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("readlink");
        let outcome = async {
            let path = decode_request("readlink", || read_text(params.get()?.get_path()))?;
            self.metadata.readlink(&path).await.map(TextReply)
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_stat(
        self: Rc<Self>,
        params: mds::SetStatParams,
        mut results: mds::SetStatResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("set_stat");
        let outcome = async {
            let (path, change, op) = decode_request("setStat", || {
                let p = params.get()?;
                Ok((
                    read_text(p.get_path())?,
                    StatChange::read(p.get_change()?)?,
                    read_op(p.has_op(), || p.get_op())?,
                ))
            })?;
            self.metadata.set_stat(&path, change, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn get_xattr(
        self: Rc<Self>,
        params: mds::GetXattrParams,
        mut results: mds::GetXattrResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("get_xattr");
        let outcome = async {
            let (path, name) = decode_request("getXattr", || {
                let p = params.get()?;
                Ok((read_text(p.get_path())?, read_text(p.get_name())?))
            })?;
            self.metadata.get_xattr(&path, &name).await.map(DataReply)
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn list_xattrs(
        self: Rc<Self>,
        params: mds::ListXattrsParams,
        mut results: mds::ListXattrsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("list_xattrs");
        let outcome = async {
            let path = decode_request("listXattrs", || read_text(params.get()?.get_path()))?;
            self.metadata.list_xattrs(&path).await.map(NamesReply)
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_xattr(
        self: Rc<Self>,
        params: mds::SetXattrParams,
        mut results: mds::SetXattrResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("set_xattr");
        let outcome = async {
            let (path, name, value, how, op) = decode_request("setXattr", || {
                let p = params.get()?;
                Ok((
                    read_text(p.get_path())?,
                    read_text(p.get_name())?,
                    read_xattr_value(p.get_value()?)?,
                    xattr_set_from_wire(p.get_how()?),
                    read_op(p.has_op(), || p.get_op())?,
                ))
            })?;
            self.metadata.set_xattr(&path, &name, value, how, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_attr(
        self: Rc<Self>,
        params: mds::SetAttrParams,
        mut results: mds::SetAttrResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("set_attr");
        let outcome = async {
            let (path, update, recursive, op) = decode_request("setAttr", || {
                let p = params.get()?;
                Ok((
                    read_text(p.get_path())?,
                    AttrUpdate::read(p.get_update()?)?,
                    p.get_recursive(),
                    read_op(p.has_op(), || p.get_op())?,
                ))
            })?;
            self.metadata.set_attr(&path, update, recursive, op).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn chunk_map(
        self: Rc<Self>,
        params: mds::ChunkMapParams,
        mut results: mds::ChunkMapResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("chunk_map");
        let outcome = async {
            let (lease, index, allocate) = decode_request("chunkMap", || {
                let p = params.get()?;
                Ok((p.get_lease(), p.get_index(), p.get_allocate()))
            })?;
            self.metadata
                .chunk_map(LeaseId(lease), index, allocate)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn report_failure(
        self: Rc<Self>,
        params: mds::ReportFailureParams,
        mut results: mds::ReportFailureResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("report_failure");
        let outcome = async {
            let (lease, chunk, version, cs, reason) = decode_request("reportFailure", || {
                let p = params.get()?;
                Ok((
                    p.get_lease(),
                    p.get_chunk(),
                    p.get_version(),
                    p.get_cs(),
                    failure_reason_from_wire(p.get_reason()?),
                ))
            })?;
            self.metadata
                .report_failure(
                    LeaseId(lease),
                    ChunkId(chunk),
                    MapVersion(version),
                    CsId(cs),
                    reason,
                )
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn commit_size(
        self: Rc<Self>,
        params: mds::CommitSizeParams,
        mut results: mds::CommitSizeResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("commit_size");
        let outcome = async {
            let (lease, size) = decode_request("commitSize", || {
                let p = params.get()?;
                Ok((p.get_lease(), p.get_size()))
            })?;
            self.metadata.commit_size(LeaseId(lease), size).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn truncate(
        self: Rc<Self>,
        params: mds::TruncateParams,
        mut results: mds::TruncateResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("truncate");
        let outcome = async {
            let (lease, size) = decode_request("truncate", || {
                let p = params.get()?;
                Ok((p.get_lease(), p.get_size()))
            })?;
            self.metadata.truncate(LeaseId(lease), size).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn file_chunks(
        self: Rc<Self>,
        params: mds::FileChunksParams,
        mut results: mds::FileChunksResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("file_chunks");
        let outcome = async {
            let (path, from) = decode_request("fileChunks", || {
                let p = params.get()?;
                Ok((read_text(p.get_path())?, p.get_from()))
            })?;
            self.metadata.file_chunks_page(&path, from).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn cluster_status(
        self: Rc<Self>,
        _params: mds::ClusterStatusParams,
        mut results: mds::ClusterStatusResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("cluster_status");
        let outcome = self.metadata.cluster_status().await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn get_config(
        self: Rc<Self>,
        _params: mds::GetConfigParams,
        mut results: mds::GetConfigResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("get_config");
        let outcome = self.metadata.get_config().await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_config(
        self: Rc<Self>,
        params: mds::SetConfigParams,
        mut results: mds::SetConfigResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("set_config");
        let outcome = async {
            let (key, value) = decode_request("setConfig", || {
                let p = params.get()?;
                Ok((read_text(p.get_key())?, p.get_value()))
            })?;
            self.metadata.set_config(&key, value).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn event_log(
        self: Rc<Self>,
        params: mds::EventLogParams,
        mut results: mds::EventLogResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("event_log");
        let outcome = async {
            let after = decode_request("eventLog", || Ok(params.get()?.get_after_seq()))?;
            self.metadata.event_log(after).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn remove_cs(
        self: Rc<Self>,
        params: mds::RemoveCsParams,
        mut results: mds::RemoveCsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("remove_cs");
        let outcome = async {
            let (cs, force) = decode_request("removeCs", || {
                let p = params.get()?;
                Ok((p.get_cs(), p.get_force()))
            })?;
            self.metadata.remove_cs(CsId(cs), force).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_cs(
        self: Rc<Self>,
        params: mds::SetCsParams,
        mut results: mds::SetCsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("set_cs");
        let outcome = async {
            let (cs, update) = decode_request("setCs", || {
                let p = params.get()?;
                Ok((p.get_cs(), CsPlacementUpdate::read(p.get_update()?)?))
            })?;
            self.metadata.set_cs(CsId(cs), update).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn allocate_cs_id(
        self: Rc<Self>,
        _params: mds::AllocateCsIdParams,
        mut results: mds::AllocateCsIdResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("allocate_cs_id");
        let outcome = self.registry.allocate_cs_id().await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn register_cs(
        self: Rc<Self>,
        params: mds::RegisterCsParams,
        mut results: mds::RegisterCsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("register_cs");
        let outcome = async {
            let (last, token) = decode_request("registerCs", || {
                let p = params.get()?;
                Ok((
                    CsRegistration::read(p.get_registration()?)?,
                    RegistrationToken(p.get_token()),
                ))
            })?;
            let intake = &self.registration_intake;
            let registration = intake.finish(self.connection, token, last)?;
            let reply = self.registry.register_cs(registration).await?;
            intake.first_page(self.connection, token, reply)
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn heartbeat(
        self: Rc<Self>,
        params: mds::HeartbeatParams,
        mut results: mds::HeartbeatResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("heartbeat");
        let outcome = async {
            let (cs, space) = decode_request("heartbeat", || {
                let p = params.get()?;
                Ok((p.get_cs(), SpaceInfo::read(p.get_space()?)?))
            })?;
            self.registry
                .heartbeat(CsId(cs), space, CsStats::default())
                .await
                .map(|_| ())
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn cs_heartbeat(
        self: Rc<Self>,
        params: mds::CsHeartbeatParams,
        mut results: mds::CsHeartbeatResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("cs_heartbeat");
        let outcome = async {
            let (cs, space, stats) = decode_request("csHeartbeat", || {
                let p = params.get()?;
                Ok((
                    p.get_cs(),
                    SpaceInfo::read(p.get_space()?)?,
                    CsStats::read(p.get_stats()?)?,
                ))
            })?;
            self.registry.heartbeat(CsId(cs), space, stats).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn report_bad_replica(
        self: Rc<Self>,
        params: mds::ReportBadReplicaParams,
        mut results: mds::ReportBadReplicaResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("report_bad_replica");
        let outcome = async {
            let (cs, chunk, reason) = decode_request("reportBadReplica", || {
                let p = params.get()?;
                Ok((
                    p.get_cs(),
                    p.get_chunk(),
                    failure_reason_from_wire(p.get_reason()?),
                ))
            })?;
            self.registry
                .report_bad_replica(CsId(cs), ChunkId(chunk), reason)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn report_bad_blocks(
        self: Rc<Self>,
        params: mds::ReportBadBlocksParams,
        mut results: mds::ReportBadBlocksResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("report_bad_blocks");
        let outcome = async {
            let (cs, chunk, report) = decode_request("reportBadBlocks", || {
                let p = params.get()?;
                let list = p.get_blocks()?;
                if list.len() as usize > MAX_REPORTED_BLOCKS {
                    return Err(capnp::Error::failed(format!(
                        "it names {} blocks; at most {MAX_REPORTED_BLOCKS}",
                        list.len()
                    )));
                }
                let outcome = match p.get_outcome()? {
                    BlockRepairOutcome::Found => BlockRepair::Found,
                    BlockRepairOutcome::Repaired => BlockRepair::Repaired {
                        from: CsId(p.get_from()),
                    },
                    BlockRepairOutcome::Unrepairable => BlockRepair::Unrepairable,
                };
                Ok((
                    p.get_cs(),
                    p.get_chunk(),
                    BadBlocks {
                        version: MapVersion(p.get_version()),
                        blocks: list.iter().collect(),
                        outcome,
                    },
                ))
            })?;
            self.registry
                .report_bad_blocks(CsId(cs), ChunkId(chunk), report)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn raft_append(
        self: Rc<Self>,
        params: mds::RaftAppendParams,
        mut results: mds::RaftAppendResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("raft_append");
        let outcome = async {
            let data = decode_request("raftAppend", || Ok(params.get()?.get_data()?.to_vec()))?;
            crate::raft::check_sender(self.raft.as_ref(), &self.peer)?;
            crate::raft::serve_append(self.raft.as_ref(), &data).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn raft_vote(
        self: Rc<Self>,
        params: mds::RaftVoteParams,
        mut results: mds::RaftVoteResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("raft_vote");
        let outcome = async {
            let data = decode_request("raftVote", || Ok(params.get()?.get_data()?.to_vec()))?;
            crate::raft::check_sender(self.raft.as_ref(), &self.peer)?;
            crate::raft::serve_vote(self.raft.as_ref(), &data).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn raft_snapshot(
        self: Rc<Self>,
        params: mds::RaftSnapshotParams,
        mut results: mds::RaftSnapshotResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("raft_snapshot");
        let outcome = async {
            let data = decode_request("raftSnapshot", || Ok(params.get()?.get_data()?.to_vec()))?;
            crate::raft::check_sender(self.raft.as_ref(), &self.peer)?;
            crate::raft::serve_snapshot(self.raft.as_ref(), &self.snapshot_intake, &data).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn allocate_mds_id(
        self: Rc<Self>,
        _params: mds::AllocateMdsIdParams,
        mut results: mds::AllocateMdsIdResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("allocate_mds_id");
        let outcome = async { self.group("allocateMdsId")?.allocate_mds_id().await }.await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn add_mds(
        self: Rc<Self>,
        params: mds::AddMdsParams,
        mut results: mds::AddMdsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("add_mds");
        let outcome = async {
            let (id, addr) = decode_request("addMds", || {
                let p = params.get()?;
                Ok((MdsId(p.get_id()), read_text(p.get_addr())?))
            })?;
            self.group("addMds")?.add_mds(id, &addr).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn remove_mds(
        self: Rc<Self>,
        params: mds::RemoveMdsParams,
        mut results: mds::RemoveMdsResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("remove_mds");
        let outcome = async {
            let id = decode_request("removeMds", || Ok(MdsId(params.get()?.get_id())))?;
            self.group("removeMds")?.remove_mds(id).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn mds_members(
        self: Rc<Self>,
        _params: mds::MdsMembersParams,
        mut results: mds::MdsMembersResults,
    ) -> capnp::Result<()> {
        let _timer = crate::call_metrics::SERVED_MDS.start("mds_members");
        let outcome = async { self.group("mdsMembers")?.members().await }.await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Client

/// The metadata service of a remote MDS: `MetadataService + CsRegistry +
/// MdsGroup` over one Cap'n Proto connection owned by a dedicated thread.
///
/// `Send + Sync` and cheap to clone (clones share the connection). The
/// connection is made at the first call and remade at the first call after
/// it broke, trying the known MDS addresses in order and retrying for
/// `ClientOptions::connect_timeout` before failing with `Unavailable`. A call
/// in flight when the connection breaks fails with `Unavailable` and is not
/// resent: it may or may not have taken effect. A call that gets no answer
/// within `ClientOptions::call_timeout` fails `TimedOut` and closes the
/// connection (a frozen MDS accepts connections and never answers), so the
/// next call dials again, trying the other MDSes first. Every other error is
/// the MDS's own, with its kind and message.
///
/// A client made with [`MdsClient::following`] follows the MDS group: it
/// dials the addresses of a [`MemberDirectory`] (members learned from the
/// group first, the leader first) and, unless told otherwise, keeps the
/// directory current in the background: after each new connection or
/// failure and every `DirectoryOptions::refresh_period` while calls are
/// made, it asks the MDS it reaches for the members.
#[derive(Clone)]
pub struct MdsClient {
    actor: ClientActor<mds::Client>,
    /// The directory it dials from, when it follows the group.
    members: Option<Arc<MemberDirectory>>,
    /// Refresh `members` in the background after calls.
    auto_refresh: bool,
    /// Deadline of `csHeartbeat` and `mdsMembers`, if not the call timeout.
    heartbeat_timeout: Option<Duration>,
}

/// Deadline of the calls that change the group (`addMds` waits until the
/// new MDS caught up, from a snapshot if need be; `removeMds` for the
/// membership change to commit).
pub const GROUP_CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

impl MdsClient {
    /// Whether its connection runs on a thread of its own (not hosted:
    /// see [`crate::actor::run_hosted`]).
    pub fn runs_on_own_thread(&self) -> bool {
        self.actor.runs_on_own_thread()
    }

    /// A client of the MDS at one of `addrs` (`host:port` each, tried in
    /// this order), reached through `dialer`. It does not learn other
    /// members. Does not connect yet. Errors: `InvalidArgument` if `addrs`
    /// is empty; `Internal` if the thread cannot start.
    pub fn new(addrs: Vec<String>, dialer: Dialer, options: ClientOptions) -> Result<MdsClient> {
        Ok(MdsClient {
            actor: ClientActor::spawn_following(
                "MDS",
                Arc::new(FixedEndpoints(addrs)),
                dialer,
                options,
            )?,
            members: None,
            auto_refresh: false,
            heartbeat_timeout: None,
        })
    }

    /// A client that follows the MDS group through `members` (see the type
    /// documentation). With `auto_refresh` it refreshes the directory in the
    /// background after calls (it needs a tokio runtime then, which every
    /// async caller has); without, the caller does (a chunk server's
    /// session). Errors: `InvalidArgument` if the directory knows no
    /// address; `Internal` if the thread cannot start.
    pub fn following(
        members: Arc<MemberDirectory>,
        dialer: Dialer,
        options: ClientOptions,
        auto_refresh: bool,
    ) -> Result<MdsClient> {
        Ok(MdsClient {
            actor: ClientActor::spawn_following("MDS", members.clone(), dialer, options)?,
            members: Some(members),
            auto_refresh,
            heartbeat_timeout: None,
        })
    }

    /// A handle on the same connection whose calls wait at most `timeout`
    /// (`None`: as long as the connection lives).
    pub fn with_call_timeout(&self, timeout: Option<Duration>) -> MdsClient {
        MdsClient {
            actor: self.actor.with_call_timeout(timeout),
            ..self.clone()
        }
    }

    /// A handle on the same connection whose heartbeats and `members`
    /// calls (quick liveness questions) wait at most `timeout`, whatever
    /// the call timeout of the other calls. A chunk server uses it to give
    /// up on a frozen MDS well before its self-fence.
    pub fn with_heartbeat_timeout(&self, timeout: Duration) -> MdsClient {
        MdsClient {
            heartbeat_timeout: Some(timeout),
            ..self.clone()
        }
    }

    /// The actor handle for quick liveness calls.
    fn quick(&self) -> ClientActor<mds::Client> {
        match self.heartbeat_timeout {
            Some(t) => self.actor.with_call_timeout(Some(t)),
            None => self.actor.clone(),
        }
    }

    /// The directory this client follows the group with, if any.
    pub fn members_directory(&self) -> Option<&Arc<MemberDirectory>> {
        self.members.as_ref()
    }

    /// Whether a connection is established right now (diagnostics).
    pub fn is_connected(&self) -> bool {
        self.actor.is_connected()
    }

    /// A certificate of the cluster CA for the key of `csr` (DER), with
    /// `role` and `name` (PEM). Admins and MDSes only (`PermissionDenied`).
    pub async fn issue_certificate(
        &self,
        csr: Vec<u8>,
        role: crate::pki::Role,
        name: &str,
    ) -> Result<String> {
        let name = name.to_owned();
        self.call("issueCertificate", move |mds| async move {
            let mut request = mds.issue_certificate_request();
            let mut p = request.get();
            p.set_csr(&csr);
            p.set_role(role.as_str());
            p.set_name(name.as_str());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?).map(|r| r.map(|t: TextReply| t.0))
        })
        .await
    }

    /// A new certificate for the key of `csr` (DER) with this node's own
    /// role and name (PEM): renewal. Every role.
    pub async fn renew_certificate(&self, csr: Vec<u8>) -> Result<String> {
        self.call("renewCertificate", move |mds| async move {
            let mut request = mds.renew_certificate_request();
            request.get().set_csr(&csr);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?).map(|r| r.map(|t: TextReply| t.0))
        })
        .await
    }

    /// What a new MDS needs beside its certificate: the CA's certificate
    /// and key, and the cluster key. Admins and MDSes only.
    pub async fn join_secrets(&self) -> Result<crate::wire::JoinSecretsReply> {
        self.call("joinSecrets", move |mds| async move {
            let response = mds.join_secrets_request().send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    /// Runs a call, then refreshes the member directory in the background
    /// if that is due.
    async fn call<T, F, Fut>(&self, method: &'static str, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(mds::Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = capnp::Result<Result<T>>> + 'static,
    {
        let outcome = {
            let _timer = crate::call_metrics::CLIENT_MDS.start(method);
            self.actor.call(method, call).await
        };
        self.refresh_if_due();
        outcome
    }

    fn refresh_if_due(&self) {
        let Some(members) = self.members.as_ref().filter(|_| self.auto_refresh) else {
            return;
        };
        if !members.refresh_due() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, members) = (self.clone(), members.clone());
        let timeout = self.quick().call_timeout().unwrap_or(MDS_CALL_TIMEOUT);
        runtime.spawn(async move {
            if let Err(e) = members.refresh(&client, timeout).await {
                tracing::debug!("asking the MDS group for its members: {e}");
            }
        });
    }
}

#[async_trait]
impl MetadataService for MdsClient {
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<OpenReply> {
        let path = path.to_owned();
        self.call("open", move |mds| async move {
            let mut request = mds.open_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            p.set_mode(lease_mode_to_wire(mode));
            flags.write(p.reborrow().init_flags());
            perms.write(p.reborrow().init_perms());
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn renew(&self, lease: LeaseId) -> Result<()> {
        self.call("renew", move |mds| async move {
            let mut request = mds.renew_request();
            request.get().set_lease(lease.0);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn close(&self, lease: LeaseId) -> Result<()> {
        self.call("close", move |mds| async move {
            let mut request = mds.close_request();
            request.get().set_lease(lease.0);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn stat(&self, path: &str) -> Result<Stat> {
        let path = path.to_owned();
        self.call("stat", move |mds| async move {
            let mut request = mds.stat_request();
            request.get().set_path(path.as_str());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<Stat> {
        let path = path.to_owned();
        self.call("mkdir", move |mds| async move {
            let mut request = mds.mkdir_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            p.set_parents(parents);
            perms.write(p.reborrow().init_perms());
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut entries: Vec<DirEntry> = Vec::new();
        loop {
            let after = entries.last().map(|e| e.name.clone());
            let page = self.readdir_page(path, after.as_deref()).await?;
            // Each page must move on: names grow within and across pages.
            let mut previous = after.as_deref();
            for e in &page.entries {
                if previous.is_some_and(|p| e.name.as_str() <= p) {
                    return Err(Error::protocol(format!(
                        "readdir {path}: the MDS answered a page out of order ({:?} after {:?})",
                        e.name, previous
                    )));
                }
                previous = Some(e.name.as_str());
            }
            let empty = page.entries.is_empty();
            entries.extend(page.entries);
            if !page.more {
                return Ok(entries);
            }
            if empty {
                return Err(Error::protocol(format!(
                    "readdir {path}: the MDS answered an empty page that claims more entries \
                     follow"
                )));
            }
        }
    }

    async fn readdir_page(&self, path: &str, after: Option<&str>) -> Result<DirPage> {
        let (path, after) = (path.to_owned(), after.map(str::to_owned));
        self.call("readdir", move |mds| async move {
            let mut request = mds.readdir_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            if let Some(after) = after {
                p.set_after(after.as_str());
            }
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn unlink(&self, path: &str, op: Option<OpTag>) -> Result<()> {
        let path = path.to_owned();
        self.call("unlink", move |mds| async move {
            let mut request = mds.unlink_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        op: Option<OpTag>,
    ) -> Result<()> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.call("rename", move |mds| async move {
            let mut request = mds.rename_request();
            let mut p = request.get();
            p.set_from(from.as_str());
            p.set_to(to.as_str());
            p.set_no_replace(flags.no_replace);
            p.set_exchange(flags.exchange);
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn make_node(&self, path: &str, node: NewNode, op: Option<OpTag>) -> Result<Stat> {
        let path = path.to_owned();
        self.call("makeNode", move |mds| async move {
            let mut request = mds.make_node_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            node.write(p.reborrow().init_node());
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn link(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<Stat> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.call("link", move |mds| async move {
            let mut request = mds.link_request();
            let mut p = request.get();
            p.set_from(from.as_str());
            p.set_to(to.as_str());
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn upgrade_lease(&self, lease: LeaseId) -> Result<OpenReply> {
        self.call("upgradeLease", move |mds| async move {
            let mut request = mds.upgrade_lease_request();
            request.get().set_lease(lease.0);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn set_lock(&self, lease: LeaseId, req: LockRequest) -> Result<()> {
        self.call("setLock", move |mds| async move {
            let mut request = mds.set_lock_request();
            let mut p = request.get();
            p.set_lease(lease.0);
            req.write(p.reborrow().init_req());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn test_lock(&self, lease: LeaseId, req: LockRequest) -> Result<Option<HeldLock>> {
        self.call("testLock", move |mds| async move {
            let mut request = mds.test_lock_request();
            let mut p = request.get();
            p.set_lease(lease.0);
            req.write(p.reborrow().init_req());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        let path = path.to_owned();
        self.call("readlink", move |mds| async move {
            let mut request = mds.readlink_request();
            request.get().set_path(path.as_str());
            let response = request.send().promise.await?;
            let reply: capnp::Result<Result<TextReply>> =
                WireReply::read_result(response.get()?.get_result()?);
            reply.map(|r| r.map(|t| t.0))
        })
        .await
    }

    async fn set_stat(&self, path: &str, change: StatChange, op: Option<OpTag>) -> Result<Stat> {
        let path = path.to_owned();
        self.call("setStat", move |mds| async move {
            let mut request = mds.set_stat_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            change.write(p.reborrow().init_change());
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        let (path, name) = (path.to_owned(), name.to_owned());
        self.call("getXattr", move |mds| async move {
            let mut request = mds.get_xattr_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            p.set_name(name.as_str());
            let response = request.send().promise.await?;
            let reply: capnp::Result<Result<DataReply>> =
                WireReply::read_result(response.get()?.get_result()?);
            reply.map(|r| r.map(|d| d.0))
        })
        .await
    }

    async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        let path = path.to_owned();
        self.call("listXattrs", move |mds| async move {
            let mut request = mds.list_xattrs_request();
            request.get().set_path(path.as_str());
            let response = request.send().promise.await?;
            let reply: capnp::Result<Result<NamesReply>> =
                WireReply::read_result(response.get()?.get_result()?);
            reply.map(|r| r.map(|n| n.0))
        })
        .await
    }

    async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<Vec<u8>>,
        how: XattrSet,
        op: Option<OpTag>,
    ) -> Result<()> {
        let (path, name) = (path.to_owned(), name.to_owned());
        self.call("setXattr", move |mds| async move {
            let mut request = mds.set_xattr_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            p.set_name(name.as_str());
            write_xattr_value(value.as_deref(), p.reborrow().init_value());
            p.set_how(xattr_set_to_wire(how));
            write_op(op, || p.reborrow().init_op());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        op: Option<OpTag>,
    ) -> Result<()> {
        let path = path.to_owned();
        self.call("setAttr", move |mds| async move {
            let mut request = mds.set_attr_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            p.set_recursive(recursive);
            write_op(op, || p.reborrow().init_op());
            update.write(p.init_update());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>> {
        self.call("chunkMap", move |mds| async move {
            let mut request = mds.chunk_map_request();
            let mut p = request.get();
            p.set_lease(lease.0);
            p.set_index(index);
            p.set_allocate(allocate);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap> {
        self.call("reportFailure", move |mds| async move {
            let mut request = mds.report_failure_request();
            let mut p = request.get();
            p.set_lease(lease.0);
            p.set_chunk(chunk.0);
            p.set_version(version.0);
            p.set_cs(cs.0);
            p.set_reason(failure_reason_to_wire(reason));
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.call("commitSize", move |mds| async move {
            let mut request = mds.commit_size_request();
            let mut p = request.get();
            p.set_lease(lease.0);
            p.set_size(size);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.call("truncate", move |mds| async move {
            let mut request = mds.truncate_request();
            let mut p = request.get();
            p.set_lease(lease.0);
            p.set_size(size);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        let mut maps: Vec<ChunkMap> = Vec::new();
        loop {
            let from = match maps.last() {
                None => 0,
                Some(last) => last.index.checked_add(1).ok_or_else(|| {
                    Error::protocol(format!("fileChunks {path}: a chunk at the last index"))
                })?,
            };
            let page = self.file_chunks_page(path, from).await?;
            // Each page must move on: indexes grow from `from`.
            let mut next = from;
            for m in &page.maps {
                if m.index < next {
                    return Err(Error::protocol(format!(
                        "fileChunks {path}: the MDS answered a page out of order (index {} \
                         where {next} or later was due)",
                        m.index
                    )));
                }
                next = m.index.saturating_add(1);
            }
            let empty = page.maps.is_empty();
            maps.extend(page.maps);
            if !page.more {
                return Ok(maps);
            }
            if empty {
                return Err(Error::protocol(format!(
                    "fileChunks {path}: the MDS answered an empty page that claims more chunks \
                     follow"
                )));
            }
        }
    }

    async fn file_chunks_page(&self, path: &str, from: u64) -> Result<ChunkMapPage> {
        let path = path.to_owned();
        self.call("fileChunks", move |mds| async move {
            let mut request = mds.file_chunks_request();
            let mut p = request.get();
            p.set_path(path.as_str());
            p.set_from(from);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.call("clusterStatus", move |mds| async move {
            let response = mds.cluster_status_request().send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        self.call("getConfig", move |mds| async move {
            let response = mds.get_config_request().send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn set_config(&self, key: &str, value: u64) -> Result<()> {
        let key = key.to_owned();
        self.call("setConfig", move |mds| async move {
            let mut request = mds.set_config_request();
            let mut p = request.get();
            p.set_key(key.as_str());
            p.set_value(value);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn event_log(&self, after_seq: u64) -> Result<Vec<Event>> {
        self.call("eventLog", move |mds| async move {
            let mut request = mds.event_log_request();
            request.get().set_after_seq(after_seq);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn remove_cs(&self, cs: CsId, force: bool) -> Result<()> {
        self.call("removeCs", move |mds| async move {
            let mut request = mds.remove_cs_request();
            let mut p = request.get();
            p.set_cs(cs.0);
            p.set_force(force);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn set_cs(&self, cs: CsId, update: CsPlacementUpdate) -> Result<()> {
        self.call("setCs", move |mds| async move {
            let mut request = mds.set_cs_request();
            let mut p = request.get();
            p.set_cs(cs.0);
            update.write(p.init_update());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }
}

#[async_trait]
impl CsRegistry for MdsClient {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        self.call("allocateCsId", move |mds| async move {
            let response = mds.allocate_cs_id_request().send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply> {
        // More than a page of replicas goes in parts first (all on this
        // connection: the token is its own), `crate::registration`.
        let (parts, last) = crate::registration::split(registration);
        let mut token = RegistrationToken(0);
        for (chunks, unclean) in parts {
            token = self
                .call("registerCsPart", move |mds| async move {
                    let mut request = mds.register_cs_part_request();
                    let mut p = request.get();
                    p.set_token(token.0);
                    write_list(p.reborrow().init_chunks(list_len(chunks.len())), &chunks);
                    let mut ids = p.init_unclean(list_len(unclean.len()));
                    for (i, chunk) in unclean.iter().enumerate() {
                        ids.set(i as u32, chunk.0);
                    }
                    let response = request.send().promise.await?;
                    WireReply::read_result(response.get()?.get_result()?)
                })
                .await?;
        }
        let mut page: RegisterReplyPage = self
            .call("registerCs", move |mds| async move {
                let mut request = mds.register_cs_request();
                let mut p = request.get();
                last.write(p.reborrow().init_registration());
                p.set_token(token.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await?;
        let mut reply = std::mem::take(&mut page.reply);
        while page.more {
            page = self
                .call("registerCsReply", move |mds| async move {
                    let mut request = mds.register_cs_reply_request();
                    request.get().set_token(token.0);
                    let response = request.send().promise.await?;
                    WireReply::read_result(response.get()?.get_result()?)
                })
                .await?;
            reply.delete.append(&mut page.reply.delete);
            reply.stale.append(&mut page.reply.stale);
        }
        Ok(reply)
    }

    async fn heartbeat(
        &self,
        cs: CsId,
        space: SpaceInfo,
        stats: CsStats,
    ) -> Result<HeartbeatReply> {
        let outcome = self
            .quick()
            .call("csHeartbeat", move |mds| async move {
                let mut request = mds.cs_heartbeat_request();
                let mut p = request.get();
                p.set_cs(cs.0);
                space.write(p.reborrow().init_space());
                stats.write(p.init_stats());
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await;
        self.refresh_if_due();
        outcome
    }

    async fn report_bad_replica(
        &self,
        cs: CsId,
        chunk: ChunkId,
        reason: FailureReason,
    ) -> Result<()> {
        self.call("reportBadReplica", move |mds| async move {
            let mut request = mds.report_bad_replica_request();
            let mut p = request.get();
            p.set_cs(cs.0);
            p.set_chunk(chunk.0);
            p.set_reason(failure_reason_to_wire(reason));
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn report_bad_blocks(
        &self,
        cs: CsId,
        chunk: ChunkId,
        report: BadBlocks,
    ) -> Result<ChunkMap> {
        self.call("reportBadBlocks", move |mds| {
            let report = report.clone();
            async move {
                let mut request = mds.report_bad_blocks_request();
                let mut p = request.get();
                p.set_cs(cs.0);
                p.set_chunk(chunk.0);
                p.set_version(report.version.0);
                let (outcome, from) = match report.outcome {
                    BlockRepair::Found => (BlockRepairOutcome::Found, 0),
                    BlockRepair::Repaired { from } => (BlockRepairOutcome::Repaired, from.0),
                    BlockRepair::Unrepairable => (BlockRepairOutcome::Unrepairable, 0),
                };
                p.set_outcome(outcome);
                p.set_from(from);
                let mut list = p.init_blocks(report.blocks.len() as u32);
                for (i, b) in report.blocks.iter().enumerate() {
                    list.set(i as u32, *b);
                }
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            }
        })
        .await
    }
}

#[async_trait]
impl CertificateRegistry for MdsClient {
    async fn record_certificate(&self, record: CertRecord) -> Result<()> {
        self.call("recordCertificate", move |mds| async move {
            let mut request = mds.record_certificate_request();
            record.write(request.get().init_record());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn revoke_certificates(&self, which: &str) -> Result<Vec<CertRecord>> {
        let which = which.to_owned();
        self.call("revokeCertificates", move |mds| async move {
            let mut request = mds.revoke_certificates_request();
            request.get().set_which(which.as_str());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn certificates(&self) -> Result<Vec<CertRecord>> {
        self.call("certificates", move |mds| async move {
            let response = mds.certificates_request().send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn revoked_serials(&self, from: u64) -> Result<RevokedSerials> {
        self.call("revokedSerials", move |mds| async move {
            let mut request = mds.revoked_serials_request();
            request.get().set_from(from);
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn log_security_event(&self, level: EventLevel, message: &str) -> Result<()> {
        let message = message.to_owned();
        self.call("logSecurityEvent", move |mds| async move {
            let mut request = mds.log_security_event_request();
            let mut p = request.get();
            p.set_level(crate::wire::event_level_to_wire(level));
            p.set_message(message.as_str());
            let response = request.send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }
}

#[async_trait]
impl MdsGroup for MdsClient {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        self.call("allocateMdsId", move |mds| async move {
            let response = mds.allocate_mds_id_request().send().promise.await?;
            WireReply::read_result(response.get()?.get_result()?)
        })
        .await
    }

    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()> {
        let addr = addr.to_owned();
        self.with_call_timeout(Some(GROUP_CHANGE_TIMEOUT))
            .call("addMds", move |mds| async move {
                let mut request = mds.add_mds_request();
                let mut p = request.get();
                p.set_id(id.0);
                p.set_addr(addr.as_str());
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn remove_mds(&self, id: MdsId) -> Result<()> {
        self.with_call_timeout(Some(GROUP_CHANGE_TIMEOUT))
            .call("removeMds", move |mds| async move {
                let mut request = mds.remove_mds_request();
                request.get().set_id(id.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn members(&self) -> Result<MdsMembership> {
        // Not through `call`: a refresh must not start another.
        self.quick()
            .call("mdsMembers", move |mds| async move {
                let response = mds.mds_members_request().send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }
}
