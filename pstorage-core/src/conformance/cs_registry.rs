//! The [`CsRegistry`] suite: what a chunk server may rely on when it
//! registers, heartbeats and reports its own replicas, run through an
//! [`MdsTransport`] (the chain changes are observed through the
//! transport's [`MetadataService`] too).

use super::{case, kind, ChunkWorld, MdsTransport, MdsWorld};
use crate::error::ErrorKind;
use crate::traits::{ChunkControl, CsRegistry, MetadataService};
use crate::types::CsId;
use crate::types::{
    BadBlocks, BlockRepair, ChunkReplicaInfo, CsRegistration, CsStats, EventKind, FailureReason,
    LeaseMode, OpenFlags, SpaceInfo, MAX_REPORTED_BLOCKS,
};
use crate::types::{ChunkId, MapVersion};

const SUITE: &str = "CsRegistry";
const SPACE: SpaceInfo = SpaceInfo {
    total_bytes: 1 << 40,
    free_bytes: 1 << 39,
};

/// Runs every case of the suite through `transport`.
pub async fn run(transport: &dyn MdsTransport) {
    case(SUITE, "ids are allocated once", MdsWorld::new(), |w| {
        ids(w, transport)
    })
    .await;
    case(
        SUITE,
        "a registered server heartbeats",
        MdsWorld::new(),
        |w| register_and_heartbeat(w, transport),
    )
    .await;
    case(SUITE, "unknown servers are refused", MdsWorld::new(), |w| {
        unknown(w, transport)
    })
    .await;
    case(
        SUITE,
        "a heartbeat before registration is Stale",
        MdsWorld::new(),
        |w| unregistered(w, transport),
    )
    .await;
    case(
        SUITE,
        "replicas of unknown chunks are to be deleted",
        MdsWorld::new(),
        |w| unknown_chunks(w, transport),
    )
    .await;
    case(
        SUITE,
        "a registration of more replicas than a page is answered whole",
        MdsWorld::new(),
        |w| many_replicas(w, transport),
    )
    .await;
    case(
        SUITE,
        "a replica reported bad leaves its chain",
        MdsWorld::new(),
        |w| bad_replica(w, transport),
    )
    .await;
    case(
        SUITE,
        "bad blocks are repaired in place: the replica stays",
        MdsWorld::new(),
        |w| bad_blocks(w, transport),
    )
    .await;
    case(
        SUITE,
        "a replica missing at registration leaves its chain",
        MdsWorld::new(),
        |w| lost_replica(w, transport),
    )
    .await;
}

fn registration(id: u32, chunks: Vec<ChunkReplicaInfo>) -> CsRegistration {
    CsRegistration {
        id: CsId(id),
        addr: ChunkWorld::addr(CsId(id)),
        space: SPACE,
        chunks,
        unclean: vec![],
    }
}

async fn ids(w: MdsWorld, t: &dyn MdsTransport) {
    let reg = t.registry(&w.mds).await;
    let a = reg.allocate_cs_id().await.unwrap();
    let b = reg.allocate_cs_id().await.unwrap();
    let c = w.mds.allocate_cs_id().await.unwrap();
    assert!(a != b && b != c && a != c, "ids {a}, {b}, {c} are distinct");
}

async fn register_and_heartbeat(w: MdsWorld, t: &dyn MdsTransport) {
    let reg = t.registry(&w.mds).await;
    let id = reg.allocate_cs_id().await.unwrap();
    let reply = reg
        .register_cs(registration(id.0, vec![]))
        .await
        .expect("registering an allocated server");
    assert!(reply.delete.is_empty(), "{reply:?}");
    assert!(reply.heartbeat_interval_ms > 0, "{reply:?}");
    let hb = reg
        .heartbeat(id, SPACE, CsStats::default())
        .await
        .expect("a heartbeat after registration");
    // The transport carries every field of the MDS's answer.
    let direct = w
        .mds
        .heartbeat(id, SPACE, CsStats::default())
        .await
        .unwrap();
    assert_eq!(hb, direct);
    // Registering again (a reconnect) is fine.
    reg.register_cs(registration(id.0, vec![])).await.unwrap();
    reg.heartbeat(id, SPACE, CsStats::default()).await.unwrap();
}

async fn unknown(w: MdsWorld, t: &dyn MdsTransport) {
    let reg = t.registry(&w.mds).await;
    let never = 4242;
    assert_eq!(
        kind(
            "registering an id never allocated",
            reg.register_cs(registration(never, vec![])).await
        ),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(
            "a heartbeat of an id never allocated",
            reg.heartbeat(CsId(never), SPACE, CsStats::default()).await
        ),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(
            "a bad-replica report of an id never allocated",
            reg.report_bad_replica(CsId(never), ChunkId(1), FailureReason::Corrupt)
                .await
        ),
        ErrorKind::NotFound
    );
    assert!(
        w.mds.cluster_status().await.unwrap().cs.is_empty(),
        "nothing registered"
    );
}

async fn unregistered(w: MdsWorld, t: &dyn MdsTransport) {
    let reg = t.registry(&w.mds).await;
    let id = reg.allocate_cs_id().await.unwrap();
    assert_eq!(
        kind(
            "a heartbeat before registering",
            reg.heartbeat(id, SPACE, CsStats::default()).await
        ),
        ErrorKind::Stale
    );
}

async fn unknown_chunks(w: MdsWorld, t: &dyn MdsTransport) {
    let reg = t.registry(&w.mds).await;
    let id = reg.allocate_cs_id().await.unwrap();
    let reply = reg
        .register_cs(registration(
            id.0,
            vec![ChunkReplicaInfo {
                chunk: ChunkId(0xdead),
                version: MapVersion(3),
            }],
        ))
        .await
        .unwrap();
    assert_eq!(reply.delete, vec![ChunkId(0xdead)]);
}

/// A chunk server with more replicas than one page (`REPLICA_PAGE`), none
/// known to the MDS, some unclean: the MDS sees every one (its reply names
/// each to be deleted, also more than a page), and a registration past
/// `MAX_REPLICAS_PER_CS` is refused, changing nothing.
async fn many_replicas(w: MdsWorld, t: &dyn MdsTransport) {
    use crate::types::REPLICA_PAGE;
    let reg = t.registry(&w.mds).await;
    let id = reg.allocate_cs_id().await.unwrap();
    let n = 2 * REPLICA_PAGE as u64 + 3;
    let chunks: Vec<ChunkReplicaInfo> = (1..=n)
        .map(|c| ChunkReplicaInfo {
            chunk: ChunkId(c << 8),
            version: MapVersion(c % 5 + 1),
        })
        .collect();
    let mut whole = registration(id.0, chunks.clone());
    whole.unclean = chunks
        .iter()
        .map(|c| c.chunk)
        .step_by(2)
        .take(REPLICA_PAGE + 1)
        .collect();
    let reply = reg.register_cs(whole).await.unwrap();
    let expected: Vec<ChunkId> = chunks.iter().map(|c| c.chunk).collect();
    assert_eq!(reply.delete.len(), expected.len());
    assert_eq!(reply.delete, expected, "every replica is named, in order");
    assert!(reply.stale.is_empty());
    assert!(reply.heartbeat_interval_ms > 0);
    reg.heartbeat(id, SPACE, CsStats::default()).await.unwrap();
}

/// Registers the world's three chunk servers (ids 1-3) and allocates chunk
/// 0 of `/f` on them; returns the file's metadata handle and lease.
async fn file_on_three(
    w: &MdsWorld,
    t: &dyn MdsTransport,
) -> (std::sync::Arc<dyn MetadataService>, crate::types::LeaseId) {
    let reg = t.registry(&w.mds).await;
    for expected in 1..=3 {
        let id = reg.allocate_cs_id().await.unwrap();
        assert_eq!(id, CsId(expected), "a fresh MDS allocates ids from 1");
        reg.register_cs(registration(id.0, vec![])).await.unwrap();
    }
    let md = t.metadata(&w.mds).await;
    let open = md
        .open(
            "/f",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let map = md
        .chunk_map(open.lease.id, 0, true)
        .await
        .unwrap()
        .expect("an allocated chunk");
    assert_eq!(map.replicas.len(), 3, "{map:?}");
    (md, open.lease.id)
}

async fn bad_replica(w: MdsWorld, t: &dyn MdsTransport) {
    let (md, _lease) = file_on_three(&w, t).await;
    let before = md.file_chunks("/f").await.unwrap().remove(0);
    let bad = before.replicas[0].cs;
    let reg = t.registry(&w.mds).await;
    reg.report_bad_replica(bad, before.chunk, FailureReason::Corrupt)
        .await
        .expect("a chain member reports its replica bad");
    let after = md.file_chunks("/f").await.unwrap().remove(0);
    assert!(after.replicas.iter().all(|r| r.cs != bad), "{after:?}");
    assert!(after.version > before.version, "{before:?} -> {after:?}");
    // A chunk the MDS does not know, or whose chain does not name the
    // server, is not an error.
    reg.report_bad_replica(bad, ChunkId(0xbeef), FailureReason::Corrupt)
        .await
        .expect("a report about an unknown chunk");
    reg.report_bad_replica(bad, before.chunk, FailureReason::Corrupt)
        .await
        .expect("a report by a server no longer in the chain");
}

async fn bad_blocks(w: MdsWorld, t: &dyn MdsTransport) {
    let (md, _lease) = file_on_three(&w, t).await;
    let before = md.file_chunks("/f").await.unwrap().remove(0);
    let members: Vec<_> = before.replicas.iter().map(|r| r.cs).collect();
    let bad = members[1];
    let reg = t.registry(&w.mds).await;
    let report = |outcome, blocks: Vec<u64>| BadBlocks {
        version: before.version,
        blocks,
        outcome,
    };
    let sources = reg
        .report_bad_blocks(bad, before.chunk, report(BlockRepair::Found, vec![3, 4, 9]))
        .await
        .expect("a chain member reports bad blocks");
    assert_eq!(sources.chunk, before.chunk);
    assert_eq!(sources.version, before.version);
    // The other members, in chain order (all can serve here).
    let named: Vec<_> = sources.replicas.iter().map(|r| r.cs).collect();
    assert_eq!(named, [members[0], members[2]], "{sources:?}");
    reg.report_bad_blocks(
        bad,
        before.chunk,
        report(BlockRepair::Repaired { from: members[0] }, vec![3, 4, 9]),
    )
    .await
    .expect("the outcome");
    reg.report_bad_blocks(
        bad,
        before.chunk,
        report(BlockRepair::Unrepairable, vec![7]),
    )
    .await
    .expect("the outcome");
    // The chain did not change.
    let after = md.file_chunks("/f").await.unwrap().remove(0);
    assert_eq!(after, before);
    // Each report is in the event log.
    let log: Vec<String> = md
        .event_log(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::Corruption)
        .map(|e| e.message)
        .collect();
    let id = format!("{:#x}", before.chunk);
    assert!(
        log.iter()
            .any(|l| l.contains(&id) && l.contains("found 3 block(s)") && l.contains("3-4, 9")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains(&id)
            && l.contains(&format!("from the replica on chunk server {}", members[0]))),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(&id) && l.contains("no other replica has a good copy")),
        "{log:?}"
    );
    // Refused: another version, an unknown chunk, no blocks, too many.
    let stale = BadBlocks {
        version: before.version + 1,
        ..report(BlockRepair::Found, vec![1])
    };
    assert_eq!(
        kind(
            "another version",
            reg.report_bad_blocks(bad, before.chunk, stale).await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "an unknown chunk",
            reg.report_bad_blocks(bad, ChunkId(0xbeef), report(BlockRepair::Found, vec![1]))
                .await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "no blocks",
            reg.report_bad_blocks(bad, before.chunk, report(BlockRepair::Found, vec![]))
                .await
        ),
        ErrorKind::InvalidArgument
    );
    let many: Vec<u64> = (0..MAX_REPORTED_BLOCKS as u64 + 1).collect();
    assert!(matches!(
        kind(
            "too many blocks",
            reg.report_bad_blocks(bad, before.chunk, report(BlockRepair::Found, many))
                .await
        ),
        ErrorKind::InvalidArgument | ErrorKind::Protocol
    ));
    // A server that is not in the chain is told so.
    reg.report_bad_replica(bad, before.chunk, FailureReason::Corrupt)
        .await
        .unwrap();
    let dropped = md.file_chunks("/f").await.unwrap().remove(0);
    assert_eq!(
        kind(
            "a server out of the chain",
            reg.report_bad_blocks(
                bad,
                before.chunk,
                BadBlocks {
                    version: dropped.version,
                    ..report(BlockRepair::Found, vec![1])
                }
            )
            .await
        ),
        ErrorKind::Stale
    );
}

async fn lost_replica(w: MdsWorld, t: &dyn MdsTransport) {
    let (md, _lease) = file_on_three(&w, t).await;
    let before = md.file_chunks("/f").await.unwrap().remove(0);
    let lost = before.replicas[2].cs;
    // The server restarts without the replica (its disk lost it).
    w.chunks
        .server(lost)
        .delete_chunk(before.chunk)
        .await
        .unwrap();
    let held = w.chunks.server(lost).list_chunks().await.unwrap();
    let reg = t.registry(&w.mds).await;
    let reply = reg.register_cs(registration(lost.0, held)).await.unwrap();
    assert!(reply.delete.is_empty(), "{reply:?}");
    let after = md.file_chunks("/f").await.unwrap().remove(0);
    assert!(after.replicas.iter().all(|r| r.cs != lost), "{after:?}");
    assert!(after.version > before.version, "{before:?} -> {after:?}");
}
