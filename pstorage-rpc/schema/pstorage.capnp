# The control RPC of pstorage (DESIGN.md section 2): the metadata service
# (`Mds`, used by clients and chunk servers) and the control interface of a
# chunk server (`ChunkControl`, used by the MDS).
#
# Each interface method mirrors one method of a trait in
# pstorage-core/src/traits.rs; each struct mirrors a type in
# pstorage-core/src/types.rs. The Rust mapping lives in
# pstorage-rpc/src/wire.rs, one reader and one writer function per type.
#
# Errors are application-level, never Cap'n Proto exceptions: every method
# returns a `result` union holding either the value or an `Error` whose `kind`
# is `ErrorKind::code()`, so a client sees exactly the kind and message the
# server produced. A Cap'n Proto exception therefore always means a transport
# or protocol failure (connection lost, malformed message), never a refusal.
#
# Evolution: only ever append fields, enumerants, union members and methods,
# with the next free ordinal; never renumber or change a type. Enumerants a
# peer does not know decode as a protocol error.
#
# Regenerate the Rust code with pstorage-rpc/regen-capnp.sh after editing.

@0x93b9f824ea174b72;

# ---------------------------------------------------------------------------
# Errors

# A pstorage error (pstorage_core::Error).
struct Error {
  kind @0 :UInt16;     # ErrorKind::code(); unknown codes decode as Internal.
  message @1 :Text;    # Names the object and the fix.
}

# The result of a method that returns nothing.
struct VoidResult {
  union {
    ok @0 :Void;
    err @1 :Error;
  }
}

# ---------------------------------------------------------------------------
# Namespace and attributes

# `replicas=norm:min`; 1 <= min <= norm <= 15.
struct Replicas {
  norm @0 :UInt8;
  min @1 :UInt8;
}

# Per-file / per-directory attributes.
struct FileAttrs {
  replicas @0 :Replicas;
  chunkSize @1 :UInt64;  # Bytes; a multiple of the 4 KiB block size.
  tier @2 :UInt8;        # Storage tier, 0-3.
  failureDomain @3 :FailureDomain;
}

# What two replicas of a chunk must not share (default host).
enum FailureDomain {
  host @0;
  disk @1;
  rack @2;
  row @3;
  room @4;
}

# Names one namespace mutation of a client, the same on every attempt, so
# the MDS executes it at most once (absent: every attempt executes).
struct OpTag {
  session @0 :UInt64;
  seq @1 :UInt64;
  doneBelow @2 :UInt64;
}

# A change of attributes; each field is either left alone or set.
struct AttrUpdate {
  replicas :union {
    unchanged @0 :Void;
    set @1 :Replicas;
  }
  chunkSize :union {
    unchanged @2 :Void;
    set @3 :UInt64;
  }
  tier :union {
    unchanged @4 :Void;
    set @5 :UInt8;
  }
  failureDomain :union {
    unchanged @6 :Void;
    set @7 :FailureDomain;
  }
}

# A change of a chunk server's placement (make-cs, set-cs); each field is
# either left alone or set.
struct CsPlacementUpdate {
  location :union {
    unchanged @0 :Void;
    set @1 :Text;  # ROOM.ROW.RACK
  }
  host :union {
    unchanged @2 :Void;
    set @3 :Text;
  }
  tier :union {
    unchanged @4 :Void;
    set @5 :UInt8;
  }
  capacityBytes :union {
    unchanged @6 :Void;
    set @7 :UInt64;  # 0 = the file system's size.
  }
}

enum InodeKind {
  file @0;
  dir @1;
  symlink @2;
  fifo @3;
  socket @4;
  charDevice @5;
  blockDevice @6;
}

# Seconds and nanoseconds since the Unix epoch (pstorage_core::types::Timestamp).
struct Timestamp {
  sec @0 :Int64;
  nsec @1 :UInt32;
}

# Permission bits (07777) and owners of a node (pstorage_core::types::Perms).
struct Perms {
  mode @0 :UInt32;
  uid @1 :UInt32;
  gid @2 :UInt32;
}

# A node to create that is not a directory (pstorage_core::types::NewNode).
struct NewNode {
  perms @0 :Perms;
  union {
    file @1 :Void;
    symlink @2 :Text;         # the target
    fifo @3 :Void;
    socket @4 :Void;
    charDevice @5 :UInt64;    # rdev
    blockDevice @6 :UInt64;   # rdev
  }
}

# How utimensat sets one time.
struct TimeChange {
  union {
    unchanged @0 :Void;
    now @1 :Void;
    at @2 :Timestamp;
  }
}

# chmod, chown, utimensat (pstorage_core::types::StatChange); each field is
# either left alone or set.
struct StatChange {
  mode :union {
    unchanged @0 :Void;
    set @1 :UInt32;
  }
  uid :union {
    unchanged @2 :Void;
    set @3 :UInt32;
  }
  gid :union {
    unchanged @4 :Void;
    set @5 :UInt32;
  }
  atime @6 :TimeChange;
  mtime @7 :TimeChange;
}

# setxattr's flags.
enum XattrSet {
  any @0;
  create @1;
  replace @2;
}

# An extended attribute's new value, or its removal.
struct XattrValue {
  union {
    remove @0 :Void;
    set @1 :Data;
  }
}

struct TextResult {
  union {
    ok @0 :Text;
    err @1 :Error;
  }
}

struct JoinSecrets {
  caCert @0 :Text;
  caKey @1 :Text;
  clusterKey @2 :Text;
}

struct JoinSecretsResult {
  union {
    ok @0 :JoinSecrets;
    err @1 :Error;
  }
}

# A certificate of the cluster CA as the MDSes record it.
struct CertRecord {
  serial @0 :Data;        # 16 bytes, big endian
  role @1 :Text;
  name @2 :Text;
  issuedMs @3 :UInt64;
  notAfterMs @4 :UInt64;
  revoked @5 :Bool;
  revokedMs @6 :UInt64;
}

struct CertRecordsResult {
  union {
    ok @0 :List(CertRecord);
    err @1 :Error;
  }
}

struct RevokedSerials {
  total @0 :UInt64;
  serials @1 :List(Data); # 16 bytes each
}

struct RevokedSerialsResult {
  union {
    ok @0 :RevokedSerials;
    err @1 :Error;
  }
}

struct DataResult {
  union {
    ok @0 :Data;
    err @1 :Error;
  }
}

struct TextListResult {
  union {
    ok @0 :List(Text);
    err @1 :Error;
  }
}

# Attributes of a file or directory (pstorage_core::types::Stat).
struct Stat {
  ino @0 :UInt64;
  kind @1 :InodeKind;
  size @2 :UInt64;       # Bytes; 0 for directories.
  mtimeMs @3 :UInt64;    # Milliseconds since the Unix epoch (mtime, for older readers).
  ctimeMs @4 :UInt64;    # Milliseconds since the Unix epoch (ctime, for older readers).
  attrs @5 :FileAttrs;
  mode @6 :UInt32;       # Permission bits (07777); the kind is `kind`.
  uid @7 :UInt32;
  gid @8 :UInt32;
  nlink @9 :UInt32;
  rdev @10 :UInt64;
  atime @11 :Timestamp;
  mtime @12 :Timestamp;
  ctime @13 :Timestamp;
}

struct StatResult {
  union {
    ok @0 :Stat;
    err @1 :Error;
  }
}

# One directory entry.
struct DirEntry {
  name @0 :Text;
  stat @1 :Stat;
}

# One page of a directory listing (at most 1024 entries, sorted by name).
struct DirPage {
  entries @0 :List(DirEntry);
  more @1 :Bool;  # Entries follow the last: ask again after its name.
}

struct DirPageResult {
  union {
    ok @0 :DirPage;
    err @1 :Error;
  }
}

# ---------------------------------------------------------------------------
# Leases

enum LeaseMode {
  read @0;   # Shared.
  write @1;  # Exclusive.
}

# How `open` treats a missing or existing file.
struct OpenFlags {
  create @0 :Bool;
  exclusive @1 :Bool;
  truncate @2 :Bool;
}

# A granted lease.
struct Lease {
  id @0 :UInt64;
  ino @1 :UInt64;
  mode @2 :LeaseMode;
  durationMs @3 :UInt64;
}

# What `open` returns: the lease and the file's state at that moment.
struct OpenReply {
  lease @0 :Lease;
  stat @1 :Stat;
  # Data-path deadlines (cluster parameters io.replica_tout, io.flush_tout),
  # ms; 0 (an older MDS) means the client's default.
  replicaTimeoutMs @2 :UInt64;
  flushTimeoutMs @3 :UInt64;
  # An open that may create (flags.create): the parent directory's
  # attributes after it, so that a client that caches them need not ask
  # again. Unset otherwise, and from an older MDS.
  parentStat @4 :Stat;
}

# A byte-range lock request (pstorage_core::types::LockRequest).
struct LockRequest {
  owner @0 :UInt64;   # The client's lock owner, within its lease.
  kind @1 :LockKind;
  start @2 :UInt64;   # First byte.
  end @3 :UInt64;     # Last byte (inclusive); 2^63-1: to the end of the file.
  pid @4 :UInt32;     # The asking process as its client sees it (0: unknown).
}

enum LockKind {
  unlock @0;
  shared @1;
  exclusive @2;
}

# A lock in the way (pstorage_core::types::HeldLock).
struct HeldLock {
  kind @0 :LockKind;  # shared or exclusive
  start @1 :UInt64;
  end @2 :UInt64;
  pid @3 :UInt32;
}

struct TestLockResult {
  union {
    free @0 :Void;    # The lock could be set now.
    held @1 :HeldLock;
    err @2 :Error;
  }
}

struct OpenResult {
  union {
    ok @0 :OpenReply;
    err @1 :Error;
  }
}

# ---------------------------------------------------------------------------
# Chunk maps

# One replica in a chunk's chain.
struct Replica {
  cs @0 :UInt32;
  addr @1 :Text;  # The chunk server's data address, host:port.
}

# Where a chunk lives: id, map version and the chain (head first).
struct ChunkMap {
  chunk @0 :UInt64;
  index @1 :UInt64;
  version @2 :UInt64;
  replicas @3 :List(Replica);
}

struct ChunkMapResult {
  union {
    ok @0 :ChunkMap;
    err @1 :Error;
  }
}

# The result of `chunkMap`: the map, or `absent` when the chunk does not
# exist (reads as zeros).
struct OptionalChunkMapResult {
  union {
    ok @0 :ChunkMap;
    absent @1 :Void;
    err @2 :Error;
  }
}

# One page of a file's chunk maps (at most 256, by index).
struct ChunkMapPage {
  maps @0 :List(ChunkMap);
  more @1 :Bool;  # Chunks follow the last: ask again from its index + 1.
}

struct ChunkMapPageResult {
  union {
    ok @0 :ChunkMapPage;
    err @1 :Error;
  }
}

# Why a client reports a replica.
enum FailureReason {
  unreachable @0;
  corrupt @1;
  noSpace @2;
  versionMismatch @3;
  ioError @4;
  timedOut @5;
}

# ---------------------------------------------------------------------------
# Cluster status

enum CsStatus {
  active @0;
  inactive @1;
  offline @2;
  dropped @3;
}

# Disk space of a chunk server, in bytes.
struct SpaceInfo {
  totalBytes @0 :UInt64;
  freeBytes @1 :UInt64;
}

# I/O rates of a chunk server.
struct IoRates {
  readOpsPerS @0 :UInt64;
  writeOpsPerS @1 :UInt64;
  readBytesPerS @2 :UInt64;
  writeBytesPerS @3 :UInt64;
}

# A chunk server as listed by `stat`.
struct CsInfo {
  id @0 :UInt32;
  addr @1 :Text;
  status @2 :CsStatus;
  space @3 :SpaceInfo;
  chunks @4 :UInt64;
  lastSeenMsAgo @5 :UInt64;  # 2^64-1 if never seen.
  releasing @6 :Bool;        # Being removed gracefully (rm-cs).
  full @7 :Bool;             # Below the fill margin, or answered ENOSPC.
  io @8 :IoRates;
  location @9 :Text;         # ROOM.ROW.RACK
  host @10 :Text;
  tier @11 :UInt8;
  capacityBytes @12 :UInt64;
  heldBytes @13 :UInt64;     # Bytes of the chunks it holds.
  journalBytes @14 :UInt64;      # Its write journal's size.
  journalUsedBytes @15 :UInt64;  # Journal bytes not yet applied and trimmed.
}

# Space of one storage tier (pstorage_core::types::TierSpace).
struct TierSpace {
  tier @0 :UInt8;
  servers @1 :UInt64;
  capacityBytes @2 :UInt64;
  heldBytes @3 :UInt64;
  freeBytes @4 :UInt64;
}

# Rebalancing progress (pstorage_core::types::RebalanceStatus).
struct RebalanceStatus {
  state @0 :RebalanceState;
  inFlight @1 :UInt64;
  done @2 :UInt64;
  pending @3 :UInt64;
  spreadPermille @4 :UInt64;
}

enum RebalanceState {
  balanced @0;
  moving @1;
  paused @2;
  off @3;
}

# Chunks by replication state (pstorage_core::types::ChunkCounts).
struct ChunkCounts {
  healthy @0 :UInt64;
  degraded @1 :UInt64;
  urgent @2 :UInt64;
  blocked @3 :UInt64;
  replicating @4 :UInt64;
}

# Re-replication progress (pstorage_core::types::ReplicationStatus).
struct ReplicationStatus {
  pendingChunks @0 :UInt64;
  inFlight @1 :UInt64;
  doneChunks @2 :UInt64;
  doneBytes @3 :UInt64;
  failedChunks @4 :UInt64;
  rateBytesPerS @5 :UInt64;
  copiedBytes @6 :UInt64;
  remainingBytes @7 :UInt64;
  etaS @8 :UInt64;        # seconds; UInt64 max = unknown
}

# An MDS as listed by `stat`.
struct MdsInfo {
  id @0 :UInt64;
  addr @1 :Text;
  role @2 :Text;          # leader, follower, learner, candidate, unreachable
  term @3 :UInt64;        # Raft term
  commitIndex @4 :UInt64;
  appliedIndex @5 :UInt64;
  lag @6 :UInt64;         # log entries behind the leader
}

# What `pstorage stat` shows.
struct ClusterStatus {
  clusterName @0 :Text;
  health @1 :Text;  # healthy, degraded or failure.
  mds @2 :List(MdsInfo);
  cs @3 :List(CsInfo);
  files @4 :UInt64;
  dirs @5 :UInt64;
  chunks @6 :UInt64;
  # Superseded by chunkCounts: chunks below replicas_norm / replicas_min.
  chunksDegraded @7 :UInt64;
  chunksUrgent @8 :UInt64;
  logicalBytes @9 :UInt64;
  chunkCounts @10 :ChunkCounts;
  replication @11 :ReplicationStatus;
  tiers @12 :List(TierSpace);
  rebalance @13 :RebalanceStatus;
  warnings @14 :List(Text);
}

# One cluster parameter (get-config).
struct ConfigEntry {
  key @0 :Text;
  value @1 :UInt64;
  default @2 :UInt64;
  unit @3 :Text;
  description @4 :Text;
}

struct ConfigEntriesResult {
  union {
    ok @0 :List(ConfigEntry);
    err @1 :Error;
  }
}

enum EventKind {
  csState @0;
  replication @1;
  corruption @2;
  diskFull @3;
  lease @4;
  config @5;
  mds @6;        # elections, MDS added or removed
  security @7;   # certificates issued or revoked, refused enrollments
}

enum EventLevel {
  info @0;
  warning @1;
  error @2;
}

# One entry of the MDS's global event log.
struct Event {
  seq @0 :UInt64;
  timeMs @1 :UInt64;  # Milliseconds since the Unix epoch.
  kind @2 :EventKind;
  level @3 :EventLevel;
  message @4 :Text;
}

struct EventsResult {
  union {
    ok @0 :List(Event);
    err @1 :Error;
  }
}

struct ClusterStatusResult {
  union {
    ok @0 :ClusterStatus;
    err @1 :Error;
  }
}

# ---------------------------------------------------------------------------
# Chunk server registry

# A replica a chunk server holds, with its version.
struct ChunkReplicaInfo {
  chunk @0 :UInt64;
  version @1 :UInt64;
}

# One page of a chunk server's replicas (at most 65,536, by chunk id).
struct ReplicaPage {
  replicas @0 :List(ChunkReplicaInfo);
  more @1 :Bool;  # Replicas follow the last: ask again from its id + 1.
}

struct ReplicaPageResult {
  union {
    ok @0 :ReplicaPage;
    err @1 :Error;
  }
}

# What a chunk server tells the MDS when it (re)connects.
struct CsRegistration {
  id @0 :UInt32;
  addr @1 :Text;
  space @2 :SpaceInfo;
  chunks @3 :List(ChunkReplicaInfo);
  # Chunks of `chunks` written but not flushed at an unclean stop of the
  # server (consistent, but maybe lacking acknowledged unflushed writes).
  unclean @4 :List(UInt64);
}

# What the MDS answers a registering chunk server.
struct RegisterReply {
  delete @0 :List(UInt64);  # Chunk ids to delete before serving I/O.
  heartbeatIntervalMs @1 :UInt64;
  # Chunk ids kept (a copy's base) but in no chain: not served at their
  # present version.
  stale @2 :List(UInt64);
  # The reply is paged (at most 65,536 ids of `delete` and `stale`
  # together): more follow, from registerCsReply.
  more @3 :Bool;
}

struct RegisterResult {
  union {
    ok @0 :RegisterReply;
    err @1 :Error;
  }
}

# I/O counters of a chunk server since it started (cumulative).
struct CsStats {
  readOps @0 :UInt64;
  writeOps @1 :UInt64;
  readBytes @2 :UInt64;
  writeBytes @3 :UInt64;
  journalBytes @4 :UInt64;
  journalUsedBytes @5 :UInt64;
}

# What the MDS answers a heartbeat: cluster parameters for the chunk server.
struct HeartbeatReply {
  scrubPeriodMs @0 :UInt64;       # 0 disables scrubbing.
  scrubRateBytesPerS @1 :UInt64;  # 0 means unlimited.
  replicaTimeoutMs @2 :UInt64;    # io.replica_tout; 0 means the default.
  flushTimeoutMs @3 :UInt64;      # io.flush_tout; 0 means the default.
  fenceMs @4 :UInt64;             # cs.fence_tout; 0 keeps the CS's own.
  heartbeatTimeoutMs @5 :UInt64;  # cs.hb_tout; 0 keeps the CS's own.
}

struct HeartbeatResult {
  union {
    ok @0 :HeartbeatReply;
    err @1 :Error;
  }
}

# The token of a registration sent in parts (registerCsPart).
struct TokenResult {
  union {
    ok @0 :UInt64;
    err @1 :Error;
  }
}

struct CsIdResult {
  union {
    ok @0 :UInt32;
    err @1 :Error;
  }
}

# ---------------------------------------------------------------------------
# MDS group (Raft)

struct MdsIdResult {
  union {
    ok @0 :UInt64;
    err @1 :Error;
  }
}

# One member of the MDS group (`mdsMembers`).
struct MdsMember {
  id @0 :UInt64;
  addr @1 :Text;     # host:port
  voter @2 :Bool;    # false: a learner still catching up
}

# The MDS group as the answering MDS knows it (from its own Raft state: a
# follower's answer may lag the leader's). `configIndex` orders member
# lists, `term` orders leaders (higher is newer).
struct MdsMembership {
  members @0 :List(MdsMember);
  hasLeader @1 :Bool;
  leader @2 :UInt64;       # meaningful when hasLeader
  term @3 :UInt64;
  configIndex @4 :UInt64;  # log index of the membership configuration
}

struct MdsMembershipResult {
  union {
    ok @0 :MdsMembership;
    err @1 :Error;
  }
}

# The answer to a Raft message: `ok` holds the encoded openraft reply (see
# `raftAppend`); `err` means the message was not handed to Raft at all (it
# did not decode, or this server runs no Raft node).
struct RaftResult {
  union {
    ok @0 :Data;
    err @1 :Error;
  }
}

# ---------------------------------------------------------------------------
# Interfaces

# The metadata service: the methods of `MetadataService` (clients) followed
# by those of `CsRegistry` (chunk servers). See traits.rs for the contracts.
interface Mds {
  # MetadataService
  # `perms`: of a file it creates (absent: 0644, root's).
  open @0 (path :Text, mode :LeaseMode, flags :OpenFlags, op :OpTag, perms :Perms) -> (result :OpenResult);
  renew @1 (lease :UInt64) -> (result :VoidResult);
  close @2 (lease :UInt64) -> (result :VoidResult);
  stat @3 (path :Text) -> (result :StatResult);
  # `perms` absent: 0755, root's.
  mkdir @4 (path :Text, parents :Bool, op :OpTag, perms :Perms) -> (result :StatResult);
  # One page, after the name `after` (from the first when it is not set).
  readdir @5 (path :Text, after :Text) -> (result :DirPageResult);
  unlink @6 (path :Text, op :OpTag) -> (result :VoidResult);
  rename @7 (from :Text, to :Text, op :OpTag, noReplace :Bool, exchange :Bool) -> (result :VoidResult);
  setAttr @8 (path :Text, update :AttrUpdate, recursive :Bool, op :OpTag) -> (result :VoidResult);
  chunkMap @9 (lease :UInt64, index :UInt64, allocate :Bool) -> (result :OptionalChunkMapResult);
  reportFailure @10 (lease :UInt64, chunk :UInt64, version :UInt64, cs :UInt32,
                     reason :FailureReason) -> (result :ChunkMapResult);
  commitSize @11 (lease :UInt64, size :UInt64) -> (result :VoidResult);
  truncate @12 (lease :UInt64, size :UInt64) -> (result :VoidResult);
  # One page, of chunks at index `from` or later.
  fileChunks @13 (path :Text, from :UInt64) -> (result :ChunkMapPageResult);
  clusterStatus @14 () -> (result :ClusterStatusResult);

  # CsRegistry
  allocateCsId @15 () -> (result :CsIdResult);
  # A registration of more than 65,536 replicas sends them in parts first
  # (registerCsPart, under a `token` the server chose), then the last part
  # here with that token (0: no parts); a paged reply continues with
  # registerCsReply.
  registerCs @16 (registration :CsRegistration, token :UInt64) -> (result :RegisterResult);
  # Superseded by csHeartbeat; still served for chunk servers that use it.
  heartbeat @17 (cs :UInt32, space :SpaceInfo) -> (result :VoidResult);
  reportBadReplica @18 (cs :UInt32, chunk :UInt64, reason :FailureReason) -> (result :VoidResult);
  csHeartbeat @19 (cs :UInt32, space :SpaceInfo, stats :CsStats) -> (result :HeartbeatResult);

  # MetadataService: administration
  getConfig @20 () -> (result :ConfigEntriesResult);
  setConfig @21 (key :Text, value :UInt64) -> (result :VoidResult);
  eventLog @22 (afterSeq :UInt64) -> (result :EventsResult);
  removeCs @23 (cs :UInt32, force :Bool) -> (result :VoidResult);

  # Raft between MDSes (pstorage-rpc/src/raft.rs). `data` is a format
  # version byte followed by the postcard encoding of the openraft request
  # (AppendEntriesRequest, VoteRequest, InstallSnapshotRequest of
  # MdsRaftConfig); `ok` is the version byte followed by the postcard
  # encoding of Result<response, RaftError> from the receiving node.
  raftAppend @24 (data :Data) -> (result :RaftResult);
  raftVote @25 (data :Data) -> (result :RaftResult);
  raftSnapshot @26 (data :Data) -> (result :RaftResult);

  # MdsGroup (membership of the Raft group); see traits.rs.
  allocateMdsId @27 () -> (result :MdsIdResult);
  addMds @28 (id :UInt64, addr :Text) -> (result :VoidResult);
  removeMds @29 (id :UInt64) -> (result :VoidResult);
  # Answered by every MDS itself, never forwarded (clients and chunk
  # servers follow the group with it).
  mdsMembers @30 () -> (result :MdsMembershipResult);

  # Changes a chunk server's location, host, tier or capacity (make-cs,
  # set-cs); the server need not be running.
  setCs @31 (cs :UInt32, update :CsPlacementUpdate) -> (result :VoidResult);

  # CsRegistry: blocks of a replica that fail their CRC check (found), and
  # how their repair went; `from` is the source of a repaired report. The
  # answer to `found` is the chunk's map with the members to repair from.
  reportBadBlocks @32 (cs :UInt32, chunk :UInt64, version :UInt64, blocks :List(UInt64),
                       outcome :BlockRepairOutcome, from :UInt32) -> (result :ChunkMapResult);

  # MetadataService: the POSIX namespace (symbolic and hard links, special
  # files, chmod/chown/utimensat, extended attributes).
  makeNode @33 (path :Text, node :NewNode, op :OpTag) -> (result :StatResult);
  link @34 (from :Text, to :Text, op :OpTag) -> (result :StatResult);
  readlink @35 (path :Text) -> (result :TextResult);
  setStat @36 (path :Text, change :StatChange, op :OpTag) -> (result :StatResult);
  getXattr @37 (path :Text, name :Text) -> (result :DataResult);
  listXattrs @38 (path :Text) -> (result :TextListResult);
  setXattr @39 (path :Text, name :Text, value :XattrValue, how :XattrSet, op :OpTag) -> (result :VoidResult);

  # MetadataService: byte-range locks held across clients, and the in-place
  # upgrade of a read lease (which keeps its locks).
  upgradeLease @40 (lease :UInt64) -> (result :OpenResult);
  setLock @41 (lease :UInt64, req :LockRequest) -> (result :VoidResult);
  testLock @42 (lease :UInt64, req :LockRequest) -> (result :TestLockResult);

  # Certificates (pstorage-rpc/src/pki.rs). A certificate of the cluster CA
  # for the key of `csr` (a DER certificate signing request), naming `role`
  # and `name` (PEM); admins and MDSes only (`make-cs`, `make-mds`).
  issueCertificate @43 (csr :Data, role :Text, name :Text) -> (result :TextResult);
  # What a new MDS needs beside its certificate: the CA's certificate and
  # key, and the cluster key that checks enrollments; admins and MDSes only.
  joinSecrets @44 () -> (result :JoinSecretsResult);

  # The certificate table (CertificateRegistry). Recording and logging are
  # MDSes' (the MDS that signs forwards to the leader); listing and revoking
  # admins'; the revocation list every node's.
  recordCertificate @45 (record :CertRecord) -> (result :VoidResult);
  revokeCertificates @46 (which :Text) -> (result :CertRecordsResult);
  certificates @47 () -> (result :CertRecordsResult);
  revokedSerials @48 (from :UInt64) -> (result :RevokedSerialsResult);
  logSecurityEvent @49 (level :EventLevel, message :Text) -> (result :VoidResult);
  # A new certificate for the caller's key of `csr` with the caller's own
  # role and name (renewal before expiry); every role.
  renewCertificate @50 (csr :Data) -> (result :TextResult);

  # A part of a chunk server's registration (at most 65,536 replicas and
  # as many unclean ids): the server keeps it under `token` (0 asks for a
  # new one, answered) until registerCs with that token, or the connection
  # closes.
  registerCsPart @51 (token :UInt64, chunks :List(ChunkReplicaInfo), unclean :List(UInt64))
      -> (result :TokenResult);
  # The next page of a registration's reply (registerCs answered `more`).
  registerCsReply @52 (token :UInt64) -> (result :RegisterResult);
}

enum BlockRepairOutcome {
  found @0;
  repaired @1;
  unrepairable @2;
}

# What one `replicateChunk` did (pstorage_core::types::CopyStats).
struct CopyStats {
  bytesCopied @0 :UInt64;    # Read from the source and written (differing blocks).
  bytesCompared @1 :UInt64;  # Of the chunk, compared by CRC-table entries.
  reusedBase @2 :Bool;       # Started from a stale replica or a partial copy.
}

# A copy in progress on a chunk server (pstorage_core::types::CopyProgress).
struct CopyProgress {
  chunk @0 :UInt64;
  version @1 :UInt64;
  bytesDone @2 :UInt64;
  bytesTotal @3 :UInt64;     # 0 until the CRC tables are compared.
}

# The result of `copyProgress`: the copy, or `absent` when none runs.
struct OptionalCopyProgressResult {
  union {
    ok @0 :CopyProgress;
    absent @1 :Void;
    err @2 :Error;
  }
}

# Control operations the MDS performs on a chunk server (trait ChunkControl).
interface ChunkControl {
  createChunk @0 (chunk :UInt64, version :UInt64, chunkSize :UInt64) -> (result :VoidResult);
  setVersion @1 (chunk :UInt64, version :UInt64) -> (result :VoidResult);
  deleteChunk @2 (chunk :UInt64) -> (result :VoidResult);
  # One page, of chunks `from` or later.
  listChunks @3 (from :UInt64) -> (result :ReplicaPageResult);
  # `stats` is set when `result` is ok (a peer that predates it leaves it zero).
  replicateChunk @4 (chunk :UInt64, version :UInt64, chunkSize :UInt64, source :Replica,
                     rateBytesPerS :UInt64) -> (result :VoidResult, stats :CopyStats);
  # Answers at once while the chunk server serves (Unavailable while not);
  # the MDS's reachability probe before dropping a reported replica.
  ping @5 () -> (result :VoidResult);
  copyProgress @6 (chunk :UInt64) -> (result :OptionalCopyProgressResult);
  # setVersion for a replica lent as a block repair's source (its reads are
  # served at that version while a copy into it is unfinished).
  lendForRepair @7 (chunk :UInt64, version :UInt64) -> (result :VoidResult);
  # Zeroes the replica from `offset` to its end if at `version`, flushed
  # (the fence discards a lost writer's data beyond the committed size).
  zeroTail @8 (chunk :UInt64, version :UInt64, offset :UInt64) -> (result :VoidResult);
}
