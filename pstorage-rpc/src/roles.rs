//! Who may call what: every call on a control connection is checked
//! against the role of the caller's certificate ([`crate::pki::Role`])
//! before it reaches a service.
//!
//! | interface | admin | client | cs | mds |
//! |---|---|---|---|---|
//! | `Mds`: files, directories, leases, locks, status, config reads, event log, members | yes | yes | status, config, members | yes |
//! | `Mds`: chunk server duties (register, heartbeats, bad replica/block reports) | no | no | yes | yes |
//! | `Mds`: administration (CS and MDS ids, membership, `setConfig`, `removeCs`, `setCs`, issuing, listing and revoking certificates) | yes | no | no | yes |
//! | `Mds`: the revocation list (`revokedSerials`), renewing one's own certificate (`renewCertificate`) | yes | yes | yes | yes |
//! | `Mds`: recording certificates, logging security events (MDS to leader) | no | no | no | yes |
//! | `Mds`: Raft (`raftAppend`, `raftVote`, `raftSnapshot`) | no | no | no | yes |
//! | `ChunkControl` (create, delete, replicate chunks...) | yes | no | no | yes |
//!
//! A follower MDS forwards calls to the leader with its own certificate,
//! so MDSes may call everything; the follower checked its caller first.
//! A refused call fails with a Cap'n Proto exception whose description
//! starts with [`DENIED`]; the client side turns it into
//! `PermissionDenied`. The gate also bounds the calls a connection may
//! have in flight ([`MAX_CALLS_IN_FLIGHT`]).

use capnp::capability::{DispatchCallResult, Params, Promise, Results, Server};

use crate::pki::{Peer, Role};

/// The start of the description of a refused call's exception.
pub const DENIED: &str = "pstorage: permission denied: ";

/// Calls one control connection may have in flight on a server; one more
/// is answered `Overloaded` at once (the client sees `Unavailable` and
/// retries), so a peer cannot make a server hold an unbounded number of
/// calls. A process multiplexes all its calls to a server over one
/// connection: a busy mount has tens in flight.
pub const MAX_CALLS_IN_FLIGHT: usize = 1024;

/// `Mds` methods by ordinal (pstorage.capnp).
mod mds_method {
    pub const CLUSTER_STATUS: u16 = 14;
    pub const ALLOCATE_CS_ID: u16 = 15;
    pub const REGISTER_CS: u16 = 16;
    pub const HEARTBEAT: u16 = 17;
    pub const REPORT_BAD_REPLICA: u16 = 18;
    pub const CS_HEARTBEAT: u16 = 19;
    pub const GET_CONFIG: u16 = 20;
    pub const SET_CONFIG: u16 = 21;
    pub const EVENT_LOG: u16 = 22;
    pub const REMOVE_CS: u16 = 23;
    pub const RAFT_APPEND: u16 = 24;
    pub const RAFT_SNAPSHOT: u16 = 26;
    pub const ALLOCATE_MDS_ID: u16 = 27;
    pub const REMOVE_MDS: u16 = 29;
    pub const MDS_MEMBERS: u16 = 30;
    pub const SET_CS: u16 = 31;
    pub const REPORT_BAD_BLOCKS: u16 = 32;
    pub const MAKE_NODE: u16 = 33;
    pub const TEST_LOCK: u16 = 42;
    pub const ISSUE_CERTIFICATE: u16 = 43;
    pub const JOIN_SECRETS: u16 = 44;
    pub const RECORD_CERTIFICATE: u16 = 45;
    pub const REVOKE_CERTIFICATES: u16 = 46;
    pub const CERTIFICATES: u16 = 47;
    pub const REVOKED_SERIALS: u16 = 48;
    pub const LOG_SECURITY_EVENT: u16 = 49;
    pub const RENEW_CERTIFICATE: u16 = 50;
    pub const REGISTER_CS_PART: u16 = 51;
    pub const REGISTER_CS_REPLY: u16 = 52;
}

/// Whether `role` may call `Mds` method `method`.
pub fn mds_allows(role: Role, method: u16) -> bool {
    use mds_method::*;
    let files = (0..=CLUSTER_STATUS).contains(&method)
        || (MAKE_NODE..=TEST_LOCK).contains(&method)
        || matches!(method, GET_CONFIG | EVENT_LOG | MDS_MEMBERS);
    let cs_duties = matches!(
        method,
        REGISTER_CS
            | REGISTER_CS_PART
            | REGISTER_CS_REPLY
            | HEARTBEAT
            | REPORT_BAD_REPLICA
            | CS_HEARTBEAT
            | REPORT_BAD_BLOCKS
    );
    let admin = matches!(
        method,
        ALLOCATE_CS_ID
            | SET_CONFIG
            | REMOVE_CS
            | SET_CS
            | ISSUE_CERTIFICATE
            | JOIN_SECRETS
            | REVOKE_CERTIFICATES
            | CERTIFICATES
    ) || (ALLOCATE_MDS_ID..=REMOVE_MDS).contains(&method);
    let everyone = matches!(method, REVOKED_SERIALS | RENEW_CERTIFICATE);
    // Raft, and what an MDS asks of the leader on its own behalf.
    let mds_only = (RAFT_APPEND..=RAFT_SNAPSHOT).contains(&method)
        || matches!(method, RECORD_CERTIFICATE | LOG_SECURITY_EVENT);
    let allowed = everyone
        || match role {
            Role::Mds => true,
            Role::Admin => files || admin,
            Role::Client => files,
            Role::Cs => cs_duties || matches!(method, CLUSTER_STATUS | GET_CONFIG | MDS_MEMBERS),
        };
    allowed && !(mds_only && role != Role::Mds)
}

/// Whether `role` may call `ChunkControl` method `method` (any: only MDSes
/// and admins drive chunk servers).
pub fn control_allows(role: Role, _method: u16) -> bool {
    matches!(role, Role::Mds | Role::Admin)
}

/// What a gated connection serves: `inner`, to a caller `peer` whose
/// calls `allows` admits.
pub(crate) struct Gate<S> {
    inner: S,
    peer: Peer,
    allows: fn(Role, u16) -> bool,
    interface: &'static str,
    /// Calls of this connection in flight.
    in_flight: std::rc::Rc<std::cell::Cell<usize>>,
}

impl<S: Server + Clone + 'static> Gate<S> {
    pub(crate) fn new(
        inner: S,
        peer: Peer,
        allows: fn(Role, u16) -> bool,
        interface: &'static str,
    ) -> Gate<S> {
        Gate {
            inner,
            peer,
            allows,
            interface,
            in_flight: Default::default(),
        }
    }

    /// The capability clients call.
    pub(crate) fn into_client(self) -> capnp::capability::Client {
        capnp_rpc::new_client::<GateClient, Gate<S>>(self).0
    }
}

/// The capability of a [`Gate`] (capnp-rpc makes local capabilities for
/// client types only).
pub(crate) struct GateClient(capnp::capability::Client);

impl capnp::capability::FromClientHook for GateClient {
    fn new(hook: Box<dyn capnp::private::capability::ClientHook>) -> Self {
        GateClient(capnp::capability::Client::new(hook))
    }
    fn into_client_hook(self) -> Box<dyn capnp::private::capability::ClientHook> {
        self.0.hook
    }
    fn as_client_hook(&self) -> &dyn capnp::private::capability::ClientHook {
        &*self.0.hook
    }
}

impl<S: Server + Clone + 'static> capnp::capability::FromServer<Gate<S>> for GateClient {
    type Dispatch = GateDispatch<S>;
    fn from_server(s: std::rc::Rc<Gate<S>>) -> GateDispatch<S> {
        GateDispatch(s)
    }
}

/// The dispatcher of a [`Gate`]: checks, then hands the call on.
pub(crate) struct GateDispatch<S>(std::rc::Rc<Gate<S>>);

impl<S> Clone for GateDispatch<S> {
    fn clone(&self) -> Self {
        GateDispatch(self.0.clone())
    }
}

impl<S> std::ops::Deref for GateDispatch<S> {
    type Target = Gate<S>;
    fn deref(&self) -> &Gate<S> {
        &self.0
    }
}

impl<S: Server + Clone> Server for GateDispatch<S> {
    fn dispatch_call(
        self,
        interface_id: u64,
        method_id: u16,
        params: Params<capnp::any_pointer::Owned>,
        results: Results<capnp::any_pointer::Owned>,
    ) -> DispatchCallResult {
        let gate = &self.0;
        if (gate.allows)(gate.peer.role, method_id) {
            if gate.in_flight.get() >= MAX_CALLS_IN_FLIGHT {
                return DispatchCallResult::new(
                    Promise::err(capnp::Error::overloaded(format!(
                        "{} has {MAX_CALLS_IN_FLIGHT} calls in flight on this connection",
                        gate.peer
                    ))),
                    false,
                );
            }
            let counted = InFlight::enter(&gate.in_flight);
            let DispatchCallResult {
                promise,
                is_streaming,
            } = gate
                .inner
                .clone()
                .dispatch_call(interface_id, method_id, params, results);
            return DispatchCallResult::new(
                Promise::from_future(async move {
                    let _counted = counted;
                    promise.await
                }),
                is_streaming,
            );
        }
        tracing::warn!(
            "refused {} method {method_id} to {}",
            gate.interface,
            gate.peer
        );
        DispatchCallResult::new(
            Promise::err(capnp::Error::failed(format!(
                "{DENIED}{} may not call {} method {method_id} (a certificate of role {} cannot)",
                gate.peer, gate.interface, gate.peer.role
            ))),
            false,
        )
    }

    fn as_ptr(&self) -> usize {
        std::rc::Rc::as_ptr(&self.0) as usize
    }
}

/// One call in flight, counted until dropped (answered or cancelled).
struct InFlight(std::rc::Rc<std::cell::Cell<usize>>);

impl InFlight {
    fn enter(count: &std::rc::Rc<std::cell::Cell<usize>>) -> InFlight {
        count.set(count.get() + 1);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mds_method::*;

    #[test]
    fn the_table_of_the_module_documentation() {
        // Clients: files, not duties, administration or Raft.
        for m in [
            0,
            1,
            2,
            8,
            9,
            13,
            CLUSTER_STATUS,
            GET_CONFIG,
            EVENT_LOG,
            MDS_MEMBERS,
            33,
            40,
            41,
            42,
        ] {
            assert!(mds_allows(Role::Client, m), "client {m}");
            assert!(mds_allows(Role::Admin, m), "admin {m}");
        }
        for m in [
            ALLOCATE_CS_ID,
            REGISTER_CS,
            HEARTBEAT,
            CS_HEARTBEAT,
            REPORT_BAD_BLOCKS,
            SET_CONFIG,
            REMOVE_CS,
            24,
            25,
            26,
            ALLOCATE_MDS_ID,
            28,
            REMOVE_MDS,
            SET_CS,
            ISSUE_CERTIFICATE,
            JOIN_SECRETS,
        ] {
            assert!(!mds_allows(Role::Client, m), "client {m}");
        }
        for m in [24, 25, 26] {
            assert!(!mds_allows(Role::Admin, m));
            assert!(!mds_allows(Role::Cs, m));
            assert!(mds_allows(Role::Mds, m));
        }
        for m in [
            SET_CONFIG,
            REMOVE_CS,
            28,
            ISSUE_CERTIFICATE,
            JOIN_SECRETS,
            REVOKE_CERTIFICATES,
            CERTIFICATES,
        ] {
            assert!(mds_allows(Role::Admin, m));
            assert!(!mds_allows(Role::Cs, m));
            assert!(!mds_allows(Role::Client, m));
        }
        // Everyone syncs the revocation list and renews their own
        // certificate; only MDSes record certificates and log events.
        for role in [Role::Admin, Role::Client, Role::Cs, Role::Mds] {
            assert!(mds_allows(role, REVOKED_SERIALS));
            assert!(mds_allows(role, RENEW_CERTIFICATE));
            assert_eq!(mds_allows(role, RECORD_CERTIFICATE), role == Role::Mds);
            assert_eq!(mds_allows(role, LOG_SECURITY_EVENT), role == Role::Mds);
        }
        for m in [
            REGISTER_CS,
            REGISTER_CS_PART,
            REGISTER_CS_REPLY,
            HEARTBEAT,
            REPORT_BAD_REPLICA,
            CS_HEARTBEAT,
            REPORT_BAD_BLOCKS,
        ] {
            assert!(mds_allows(Role::Cs, m));
            assert!(mds_allows(Role::Mds, m));
            assert!(!mds_allows(Role::Admin, m));
            assert!(!mds_allows(Role::Client, m));
        }
        // Chunk servers cannot open files.
        assert!(!mds_allows(Role::Cs, 0));
        assert!(!mds_allows(Role::Cs, 6));
        // Every method of a later version than this table is refused to
        // everyone but MDSes.
        for role in [Role::Admin, Role::Client, Role::Cs] {
            assert!(!mds_allows(role, 53));
            assert!(!control_allows(role, 0) || role == Role::Admin);
        }
        assert!(control_allows(Role::Mds, 2));
        assert!(!control_allows(Role::Client, 2));
        assert!(!control_allows(Role::Cs, 4));
    }
}
