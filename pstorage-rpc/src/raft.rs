//! Raft messages between MDSes over the `Mds` interface.
//!
//! The three openraft RPCs travel as `raftAppend`, `raftVote` and
//! `raftSnapshot` on the same authenticated control channel clients use:
//! the payload is a format version byte ([`RAFT_WIRE_VERSION`]) followed by
//! the postcard encoding of the openraft request; the reply is the version
//! byte followed by the postcard encoding of the receiving node's
//! `Result<response, error>`. A message that does not decode, or one sent to
//! a server without a Raft node, is answered with a pstorage `Protocol` /
//! `Unavailable` error instead, and the connection keeps serving.
//!
//! [`TcpRaftNetwork`] is the sending side: openraft's
//! `RaftNetworkFactory`, one connection (a `ClientActor` thread) per target
//! MDS, kept for every client openraft asks for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use pstorage_core::mds::raft::{MdsId, MdsNode, MdsRaft, MdsRaftConfig};
use pstorage_core::mds::STORE_FORMAT_VERSION;
use pstorage_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::actor::{ClientActor, ClientOptions, Dialer};
use crate::generated::pstorage_capnp::mds;
use crate::wire::WireReply;

/// The format version of Raft payloads: the first byte of every request and
/// reply. A payload of another version is refused (`Protocol`, naming both
/// versions), so that mixed MDS versions fail with a clear error rather than
/// misreading each other. Bumped whenever the encoded messages change shape:
/// a new MDS store format (log entries carry the live `Command`, and every
/// change of it is a new store format: tied by [`RAFT_WIRE_STORE_FORMAT`],
/// checked at compile time) or another openraft (the tripwire test
/// `raft_wire_tripwire` holds the encoded bytes of every message).
///
/// History: 1 until store format 6 (not tied to it: Commands changed
/// without a bump); 2 carries store format 6; 3 store format 7; 4 store
/// format 8 (several commands to an entry); 5 store format 9 (POSIX
/// attributes); 6 store format 10 (byte-range locks, lease upgrades); 7
/// store format 11 (certificates).
pub const RAFT_WIRE_VERSION: u8 = 7;

/// The MDS store format ([`STORE_FORMAT_VERSION`]) whose commands the log
/// entries of [`RAFT_WIRE_VERSION`] carry. A build whose store format is
/// another does not compile: bump [`RAFT_WIRE_VERSION`] and set this to the
/// new store format.
pub const RAFT_WIRE_STORE_FORMAT: u8 = 11;

const _: () = assert!(
    RAFT_WIRE_STORE_FORMAT == STORE_FORMAT_VERSION,
    "the MDS store format changed, and with it the Command that Raft log entries carry \
     between MDSes: bump RAFT_WIRE_VERSION and set RAFT_WIRE_STORE_FORMAT to the new \
     STORE_FORMAT_VERSION (pstorage-rpc/src/raft.rs; docs/formats.md, Raft messages)"
);

/// The snapshot chunk size to configure in openraft
/// (`Config::snapshot_max_chunk_size`): each `raftSnapshot` message carries
/// one chunk, far below the 16 MiB traversal limit of MDS peers
/// (`wire::MDS_REQUEST_LIMIT_WORDS`) and small enough to send within
/// `install_snapshot_timeout` on a slow link.
pub const RAFT_SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

/// Most bytes of one `raftAppend` payload: openraft sends fewer entries
/// (`PayloadTooLarge`) when more would not fit. openraft gives an append
/// its heartbeat interval to be answered (150 ms), and a message that
/// cannot be sent in that time is abandoned and sent again, so this is what
/// a 1 Gbit/s link carries in a fraction of it. An entry holds at most
/// `group_commit::MAX_ENTRY_BYTES` (1 MiB) of commands or a single command
/// of at most `MAX_COMMAND_BYTES` (8 MiB), which goes alone: every append
/// fits the limit MDS peers are read with (`wire::MDS_REQUEST_LIMIT_WORDS`,
/// 16 MiB).
pub const MAX_APPEND_BYTES: usize = 4 << 20;

/// Appends split so far because their entries exceeded
/// [`MAX_APPEND_BYTES`] (this process; tests and diagnostics).
pub static APPENDS_SPLIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many of `entries` entries to send when they encode to `bytes`:
/// `None` when they fit [`MAX_APPEND_BYTES`] (or are one entry, which
/// always goes), else a count that fits if the entries are of about even
/// size, at least 1 and fewer than `entries`.
pub fn fewer_entries(entries: usize, bytes: usize) -> Option<u64> {
    if bytes <= MAX_APPEND_BYTES || entries <= 1 {
        return None;
    }
    let fit = (entries as u128 * MAX_APPEND_BYTES as u128 / bytes as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

/// Encodes a Raft message or reply: version byte, then postcard.
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![RAFT_WIRE_VERSION])
        .map_err(|e| Error::internal(format!("cannot encode a Raft {what}: {e}")).caused_by(e))
}

/// Decodes what [`encode`] produced. Errors (`Protocol`): empty payload,
/// another format version, bytes that do not decode as `T`.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        None => Err(Error::protocol(format!(
            "empty Raft {what}: expected a format version byte and a postcard payload"
        ))),
        Some((&RAFT_WIRE_VERSION, payload)) => postcard::from_bytes(payload).map_err(|e| {
            Error::protocol(format!(
                "malformed Raft {what} ({} bytes): {e}; the peer MDS may run another \
                 pstorage version",
                bytes.len()
            ))
            .caused_by(e)
        }),
        Some((version, _)) => Err(Error::protocol(format!(
            "Raft {what} in format version {version}, this MDS speaks version \
             {RAFT_WIRE_VERSION}: upgrade every MDS of the cluster to the same pstorage version"
        ))),
    }
}

/// `RaftError` without an API error is only ever `Fatal`; this keeps the
/// serializable part (`Infallible` has no serde impls).
fn fatal_only(e: RaftError<MdsId>) -> Fatal<MdsId> {
    match e {
        RaftError::APIError(never) => match never {},
        RaftError::Fatal(fatal) => fatal,
    }
}

/// What an `append_entries` / `vote` reply carries.
type PlainReply<T> = std::result::Result<T, Fatal<MdsId>>;
/// What an `install_snapshot` reply carries.
type SnapshotReply =
    std::result::Result<InstallSnapshotResponse<MdsId>, RaftError<MdsId, InstallSnapshotError>>;

fn no_raft(method: &str) -> Error {
    Error::unavailable(format!(
        "{method}: this MDS runs no Raft node (it is not a member of an MDS group, or still \
         starting): check its bs.list entry and that it started with its Raft store"
    ))
}

/// Serves a `raftAppend` payload on `raft`.
pub(crate) async fn serve_append(raft: Option<&MdsRaft>, data: &[u8]) -> Result<Vec<u8>> {
    let request: AppendEntriesRequest<MdsRaftConfig> = decode("append-entries request", data)?;
    let raft = raft.ok_or_else(|| no_raft("raftAppend"))?;
    let reply: PlainReply<AppendEntriesResponse<MdsId>> =
        raft.append_entries(request).await.map_err(fatal_only);
    encode("append-entries reply", &reply)
}

/// Serves a `raftVote` payload on `raft`.
pub(crate) async fn serve_vote(raft: Option<&MdsRaft>, data: &[u8]) -> Result<Vec<u8>> {
    let request: VoteRequest<MdsId> = decode("vote request", data)?;
    let raft = raft.ok_or_else(|| no_raft("raftVote"))?;
    let reply: PlainReply<VoteResponse<MdsId>> = raft.vote(request).await.map_err(fatal_only);
    encode("vote reply", &reply)
}

/// The largest snapshot an MDS receives (it is held in memory while it
/// arrives): far above any state that fits an MDS's memory.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;

/// What arrived of the snapshot a Raft node is receiving: one per node
/// (its RPC server), so several MDSes in one process (a `LocalCluster`,
/// tests) never mix their transfers.
#[derive(Debug, Default)]
pub(crate) struct SnapshotIntake {
    /// The snapshot being received and how many of its bytes arrived.
    receiving: parking_lot::Mutex<Option<(String, u64)>>,
}

impl SnapshotIntake {
    /// Admits a chunk only where it continues (or repeats part of) what
    /// arrived: openraft writes a chunk at its offset into an in-memory
    /// buffer, so a chunk far beyond the end would make the MDS allocate
    /// that much and abort. A chunk at offset 0 starts a snapshot.
    pub(crate) fn admit(&self, id: &str, offset: u64, len: u64) -> Result<()> {
        let mut receiving = self.receiving.lock();
        let end = offset.saturating_add(len);
        if end > MAX_SNAPSHOT_BYTES {
            return Err(Error::invalid(format!(
                "snapshot {id}: a chunk ending at byte {end} exceeds the largest snapshot \
                 ({MAX_SNAPSHOT_BYTES} bytes)"
            )));
        }
        match receiving.as_mut() {
            _ if offset == 0 => *receiving = Some((id.to_string(), end)),
            Some((current, received)) if current == id && offset <= *received => {
                *received = (*received).max(end);
            }
            Some((current, received)) if current == id => {
                return Err(Error::invalid(format!(
                    "snapshot {id}: a chunk at byte {offset} leaves a gap after the {received} \
                     bytes received"
                )));
            }
            _ => {
                return Err(Error::invalid(format!(
                    "snapshot {id}: a chunk at byte {offset} of a snapshot whose start never \
                     arrived"
                )));
            }
        }
        Ok(())
    }
}

/// Serves a `raftSnapshot` payload (one chunk) on `raft`.
pub(crate) async fn serve_snapshot(
    raft: Option<&MdsRaft>,
    intake: &SnapshotIntake,
    data: &[u8],
) -> Result<Vec<u8>> {
    let request: InstallSnapshotRequest<MdsRaftConfig> = decode("install-snapshot request", data)?;
    let raft = raft.ok_or_else(|| no_raft("raftSnapshot"))?;
    intake.admit(
        &request.meta.snapshot_id,
        request.offset,
        request.data.len() as u64,
    )?;
    let reply: SnapshotReply = raft.install_snapshot(request).await;
    encode("install-snapshot reply", &reply)
}

// ---------------------------------------------------------------------------
// Client

/// How [`TcpRaftNetwork`] connects to the other MDSes.
#[derive(Debug, Clone)]
pub struct RaftNetworkOptions {
    /// How long one message keeps trying to connect to a target that is
    /// down before failing `Unreachable` (openraft then backs off).
    pub connect_timeout: Duration,
    /// The longest a message waits for its reply; openraft's own per-RPC
    /// deadline (`RPCOption::hard_ttl`) applies when it is shorter.
    pub call_timeout: Duration,
    /// The pause openraft takes before resending to an unreachable target.
    pub unreachable_backoff: Duration,
}

impl Default for RaftNetworkOptions {
    fn default() -> Self {
        RaftNetworkOptions {
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(10),
            unreachable_backoff: Duration::from_millis(200),
        }
    }
}

/// openraft's network of an MDS: one Cap'n Proto connection per target MDS
/// (at the address the Raft membership records for it), through `dialer`
/// (the MDS uses `node::control_dialer(key)`, the authenticated control
/// channel).
///
/// The connection (its thread, a `ClientActor`, which dials again after a
/// call breaks) is kept and shared by every `new_client` for that target:
/// openraft asks for a new client for every read barrier round
/// (`ensure_linearizable` heartbeats each follower), and a thread, a TCP
/// connection and a TLS handshake per follower per round made a read with
/// 3 MDSes take ~5 ms.
#[derive(Clone)]
pub struct TcpRaftNetwork {
    dialer: Dialer,
    options: RaftNetworkOptions,
    /// Target -> its address and connection.
    clients: Arc<Mutex<HashMap<MdsId, KeptConnection>>>,
}

/// A member's address and the connection to it.
type KeptConnection = (String, ClientActor<mds::Client>);

/// At most this many targets' connections are kept (members removed from
/// the group leave theirs behind until then).
const MAX_KEPT_CONNECTIONS: usize = 16;

impl TcpRaftNetwork {
    /// A network dialing through `dialer` with `options`.
    pub fn new(dialer: Dialer, options: RaftNetworkOptions) -> TcpRaftNetwork {
        TcpRaftNetwork {
            dialer,
            options,
            clients: Arc::default(),
        }
    }

    /// The kept connection to `target` at `addr`, or a new one (kept).
    fn client_for(&self, target: MdsId, addr: &str) -> Result<ClientActor<mds::Client>> {
        let mut clients = self.clients.lock();
        if let Some((kept_addr, actor)) = clients.get(&target) {
            if kept_addr == addr {
                return Ok(actor.clone());
            }
        }
        let actor = ClientActor::spawn(
            "MDS",
            vec![addr.to_string()],
            self.dialer.clone(),
            ClientOptions {
                connect_timeout: self.options.connect_timeout,
                call_timeout: Some(self.options.call_timeout),
            },
        )?;
        if clients.len() >= MAX_KEPT_CONNECTIONS && !clients.contains_key(&target) {
            clients.clear();
        }
        clients.insert(target, (addr.to_string(), actor.clone()));
        Ok(actor)
    }
}

impl RaftNetworkFactory<MdsRaftConfig> for TcpRaftNetwork {
    type Network = TcpRaftConnection;

    async fn new_client(&mut self, target: MdsId, node: &MdsNode) -> TcpRaftConnection {
        let actor = self.client_for(target, &node.addr);
        if let Err(e) = &actor {
            tracing::error!("cannot open the Raft connection to MDS {target} at {node}: {e}");
        }
        TcpRaftConnection {
            target,
            node: node.clone(),
            actor,
            options: self.options.clone(),
        }
    }
}

/// The connection to one target MDS (openraft's `RaftNetwork`).
pub struct TcpRaftConnection {
    target: MdsId,
    node: MdsNode,
    /// `Err` if the connection thread could not start: every message then
    /// fails `Unreachable`.
    actor: Result<ClientActor<mds::Client>>,
    options: RaftNetworkOptions,
}

/// A transport-level failure as openraft wants it.
fn transport_error<E: std::error::Error>(error: Error) -> RPCError<MdsId, MdsNode, E> {
    match error.kind() {
        // The reply did not come in time: openraft may resend at once.
        ErrorKind::TimedOut => RPCError::Network(NetworkError::new(&error)),
        // Not reachable, connection broken, a peer that speaks another
        // version or runs no Raft node: back off before trying again.
        _ => RPCError::Unreachable(Unreachable::new(&error)),
    }
}

impl TcpRaftConnection {
    /// Sends one encoded message with `method` and returns the encoded
    /// reply, or the transport failure.
    async fn send<F, Fut>(
        &self,
        method: &'static str,
        option: &RPCOption,
        data: Vec<u8>,
        make: F,
    ) -> Result<Vec<u8>>
    where
        F: FnOnce(mds::Client, Vec<u8>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = capnp::Result<Result<Vec<u8>>>> + 'static,
    {
        let actor = self.actor.as_ref().map_err(Clone::clone)?;
        let limit = option.hard_ttl().min(self.options.call_timeout);
        let call = actor.call(method, move |client| make(client, data));
        match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome.map_err(|e| e.context(format!("MDS {}", self.target))),
            Err(_) => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "MDS {} at {} did not answer {method} within {} ms",
                    self.target,
                    self.node,
                    limit.as_millis()
                ),
            )),
        }
    }

    fn remote<E: std::error::Error>(&self, error: E) -> RPCError<MdsId, MdsNode, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            error,
        ))
    }
}

impl RaftNetwork<MdsRaftConfig> for TcpRaftConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MdsRaftConfig>,
        option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<MdsId>, RPCError<MdsId, MdsNode, RaftError<MdsId>>>
    {
        let data = encode("append-entries request", &rpc).map_err(transport_error)?;
        if let Some(entries) = fewer_entries(rpc.entries.len(), data.len()) {
            // openraft sends the first `entries` now and the rest after.
            APPENDS_SPLIT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries),
            ));
        }
        let reply = self
            .send("raftAppend", &option, data, |mds, data| async move {
                let mut request = mds.raft_append_request();
                request.get().set_data(&data);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
            .map_err(transport_error)?;
        let reply: PlainReply<AppendEntriesResponse<MdsId>> =
            decode("append-entries reply", &reply).map_err(transport_error)?;
        reply.map_err(|fatal| self.remote(RaftError::Fatal(fatal)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MdsRaftConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        InstallSnapshotResponse<MdsId>,
        RPCError<MdsId, MdsNode, RaftError<MdsId, InstallSnapshotError>>,
    > {
        let data = encode("install-snapshot request", &rpc).map_err(transport_error)?;
        let reply = self
            .send("raftSnapshot", &option, data, |mds, data| async move {
                let mut request = mds.raft_snapshot_request();
                request.get().set_data(&data);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
            .map_err(transport_error)?;
        let reply: SnapshotReply =
            decode("install-snapshot reply", &reply).map_err(transport_error)?;
        reply.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MdsId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<MdsId>, RPCError<MdsId, MdsNode, RaftError<MdsId>>> {
        let data = encode("vote request", &rpc).map_err(transport_error)?;
        let reply = self
            .send("raftVote", &option, data, |mds, data| async move {
                let mut request = mds.raft_vote_request();
                request.get().set_data(&data);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
            .map_err(transport_error)?;
        let reply: PlainReply<VoteResponse<MdsId>> =
            decode("vote reply", &reply).map_err(transport_error)?;
        reply.map_err(|fatal| self.remote(RaftError::Fatal(fatal)))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.options.unreachable_backoff))
    }
}

/// Raft messages are taken only from the current members of the metadata
/// group, named by their certificates (`mds N`, role `mds`: the role gate
/// checked that). A node that is not part of a group yet (being added: its
/// store is empty) takes them from any MDS, the leader that adds it
/// included. `PermissionDenied` otherwise: an MDS removed from the group,
/// or any other `mds` certificate, cannot vote or append.
pub(crate) fn check_sender(raft: Option<&MdsRaft>, peer: &crate::pki::Peer) -> Result<()> {
    let Some(raft) = raft else {
        // Answered `Unavailable` by the serve function.
        return Ok(());
    };
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if membership.nodes().next().is_none() {
        return Ok(());
    }
    let id = peer
        .name
        .strip_prefix("mds ")
        .and_then(|n| n.parse::<u64>().ok())
        .map(MdsId);
    match id {
        Some(id) if membership.get_node(&id).is_some() => Ok(()),
        _ => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("{peer} is not a member of the metadata group: its Raft messages are refused"),
        )),
    }
}
