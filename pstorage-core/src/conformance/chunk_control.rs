//! The [`ChunkControl`] suite: what the MDS may rely on when it creates,
//! versions, deletes, copies and probes replicas, run through a
//! [`ChunkTransport`].

use crate::types::CsId;
use crate::types::MapVersion;
use bytes::Bytes;

use super::{case, kind, ChunkTransport, ChunkWorld};
use crate::error::ErrorKind;
use crate::traits::{ChunkControl, ChunkService, WritePayload, WriteRequest};
use crate::types::{ChunkId, ChunkReplicaInfo, BLOCK_SIZE, DEFAULT_CHUNK_SIZE};

const SUITE: &str = "ChunkControl";
const CHUNK: ChunkId = ChunkId(0xc0de);
const BS: usize = BLOCK_SIZE as usize;

/// Runs every case of the suite through `transport`.
pub async fn run(transport: &dyn ChunkTransport) {
    case(
        SUITE,
        "create is idempotent and listed",
        ChunkWorld::new(),
        |w| create(w, transport),
    )
    .await;
    case(
        SUITE,
        "set_version moves forward only",
        ChunkWorld::new(),
        |w| set_version(w, transport),
    )
    .await;
    case(
        SUITE,
        "lend_for_repair moves the version as set_version does",
        ChunkWorld::new(),
        |w| lend_for_repair(w, transport),
    )
    .await;
    case(
        SUITE,
        "zero_tail zeroes from an offset at the replica's version",
        ChunkWorld::new(),
        |w| zero_tail(w, transport),
    )
    .await;
    case(SUITE, "delete is idempotent", ChunkWorld::new(), |w| {
        delete(w, transport)
    })
    .await;
    case(
        SUITE,
        "a copy moves only what differs",
        ChunkWorld::new(),
        |w| replicate(w, transport),
    )
    .await;
    case(
        SUITE,
        "a copy refuses what it must",
        ChunkWorld::new(),
        |w| replicate_refusals(w, transport),
    )
    .await;
    case(
        SUITE,
        "ping answers while serving, only then",
        ChunkWorld::new(),
        |w| ping(w, transport),
    )
    .await;
}

fn listed(chunk: ChunkId, version: u64) -> Vec<ChunkReplicaInfo> {
    vec![ChunkReplicaInfo {
        chunk,
        version: MapVersion(version),
    }]
}

async fn create(w: ChunkWorld, t: &dyn ChunkTransport) {
    let ctl = t.control(&w, CsId(1)).await;
    assert!(ctl.list_chunks().await.unwrap().is_empty());
    ctl.create_chunk(CHUNK, MapVersion(3), DEFAULT_CHUNK_SIZE)
        .await
        .expect("creating a replica");
    ctl.create_chunk(CHUNK, MapVersion(3), DEFAULT_CHUNK_SIZE)
        .await
        .expect("creating it again at the same version");
    assert_eq!(ctl.list_chunks().await.unwrap(), listed(CHUNK, 3));
    // A new replica is empty and serves at its version.
    let back = w
        .server(CsId(1))
        .read_verified(CHUNK, MapVersion(3), 0, BLOCK_SIZE)
        .await
        .unwrap();
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(
        kind(
            "a chunk size that is no multiple of the block",
            ctl.create_chunk(CHUNK + 1, MapVersion(1), DEFAULT_CHUNK_SIZE + 1)
                .await
        ),
        ErrorKind::InvalidArgument
    );
}

async fn set_version(w: ChunkWorld, t: &dyn ChunkTransport) {
    let ctl = t.control(&w, CsId(1)).await;
    ctl.create_chunk(CHUNK, MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    ctl.set_version(CHUNK, MapVersion(3))
        .await
        .expect("moving forward");
    assert_eq!(ctl.list_chunks().await.unwrap(), listed(CHUNK, 3));
    ctl.set_version(CHUNK, MapVersion(3))
        .await
        .expect("setting the same version again");
    assert_eq!(
        kind("moving back", ctl.set_version(CHUNK, MapVersion(2)).await),
        ErrorKind::Stale
    );
    assert_eq!(
        ctl.list_chunks().await.unwrap(),
        listed(CHUNK, 3),
        "unchanged"
    );
    assert_eq!(
        kind(
            "a replica not held",
            ctl.set_version(CHUNK + 1, MapVersion(9)).await
        ),
        ErrorKind::NotFound
    );
    // The data path follows the new version.
    w.server(CsId(1))
        .read_verified(CHUNK, MapVersion(3), 0, BLOCK_SIZE)
        .await
        .expect("reads at the new version");
}

async fn lend_for_repair(w: ChunkWorld, t: &dyn ChunkTransport) {
    let ctl = t.control(&w, CsId(1)).await;
    ctl.create_chunk(CHUNK, MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    ctl.lend_for_repair(CHUNK, MapVersion(4))
        .await
        .expect("lending at a newer version");
    assert_eq!(ctl.list_chunks().await.unwrap(), listed(CHUNK, 4));
    assert_eq!(
        kind(
            "lending at an older version",
            ctl.lend_for_repair(CHUNK, MapVersion(2)).await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "a replica not held",
            ctl.lend_for_repair(CHUNK + 1, MapVersion(9)).await
        ),
        ErrorKind::NotFound
    );
    w.server(CsId(1))
        .read_verified(CHUNK, MapVersion(4), 0, BLOCK_SIZE)
        .await
        .expect("reads at the version lent");
}

async fn zero_tail(w: ChunkWorld, t: &dyn ChunkTransport) {
    let data = source_with_data(&w, 7).await;
    let ctl = t.control(&w, CsId(2)).await;
    let read = || async {
        w.server(CsId(2))
            .read_verified(CHUNK, MapVersion(7), 3 * BLOCK_SIZE, BLOCK_SIZE)
            .await
            .unwrap()
    };
    assert_eq!(
        kind(
            "at another version",
            ctl.zero_tail(CHUNK, MapVersion(6), 0).await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "beyond the chunk",
            ctl.zero_tail(CHUNK, MapVersion(7), DEFAULT_CHUNK_SIZE + 1)
                .await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            "a replica not held",
            ctl.zero_tail(CHUNK + 1, MapVersion(7), 0).await
        ),
        ErrorKind::NotFound
    );
    assert_eq!(read().await, data, "refusals change nothing");
    ctl.zero_tail(CHUNK, MapVersion(7), DEFAULT_CHUNK_SIZE)
        .await
        .expect("an empty tail");
    ctl.zero_tail(CHUNK, MapVersion(7), 3 * BLOCK_SIZE + 100)
        .await
        .expect("zeroing from the middle of a block");
    let back = read().await;
    assert_eq!(back[..100], data[..100], "before the offset: kept");
    assert!(back[100..].iter().all(|&b| b == 0), "from it: zeros");
    ctl.zero_tail(CHUNK, MapVersion(7), 0)
        .await
        .expect("zeroing the whole replica");
    assert!(read().await.iter().all(|&b| b == 0));
    assert_eq!(ctl.list_chunks().await.unwrap(), listed(CHUNK, 7));
}

async fn delete(w: ChunkWorld, t: &dyn ChunkTransport) {
    let ctl = t.control(&w, CsId(1)).await;
    ctl.create_chunk(CHUNK, MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    ctl.create_chunk(CHUNK + 1, MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    ctl.delete_chunk(CHUNK).await.expect("deleting a replica");
    assert_eq!(ctl.list_chunks().await.unwrap(), listed(CHUNK + 1, 1));
    ctl.delete_chunk(CHUNK).await.expect("deleting it again");
    ctl.delete_chunk(ChunkId(0x404))
        .await
        .expect("deleting one never held");
    assert_eq!(
        kind(
            "reading a deleted replica",
            w.server(CsId(1))
                .read_verified(CHUNK, MapVersion(1), 0, BLOCK_SIZE)
                .await
        ),
        ErrorKind::NotFound
    );
}

/// Server 2 holds the chunk at `version` with one written block.
async fn source_with_data(w: &ChunkWorld, version: u64) -> Bytes {
    let data: Bytes = (0..BS)
        .map(|i| (i % 253) as u8 ^ 0x5a)
        .collect::<Vec<u8>>()
        .into();
    let src = w.server(CsId(2));
    src.create_chunk(CHUNK, MapVersion(version), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    src.write(WriteRequest::new(
        CHUNK,
        MapVersion(version),
        3 * BLOCK_SIZE,
        WritePayload::Data(data.clone()),
        vec![],
    ))
    .await
    .unwrap();
    data
}

async fn replicate(w: ChunkWorld, t: &dyn ChunkTransport) {
    let data = source_with_data(&w, 7).await;
    let ctl = t.control(&w, CsId(1)).await;
    assert_eq!(
        ctl.copy_progress(CHUNK).await.unwrap(),
        None,
        "no copy runs yet"
    );
    let stats = ctl
        .replicate_chunk(
            CHUNK,
            MapVersion(7),
            DEFAULT_CHUNK_SIZE,
            w.replica(CsId(2)),
            0,
        )
        .await
        .expect("a copy from a current source");
    assert_eq!(stats.bytes_compared, DEFAULT_CHUNK_SIZE, "{stats:?}");
    assert_eq!(
        stats.bytes_copied, BLOCK_SIZE,
        "only the written block moves: {stats:?}"
    );
    assert_eq!(ctl.list_chunks().await.unwrap(), listed(CHUNK, 7));
    let back = w
        .server(CsId(1))
        .read_verified(CHUNK, MapVersion(7), 3 * BLOCK_SIZE, BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(back, data, "the copy holds the source's bytes");
    assert_eq!(
        ctl.copy_progress(CHUNK).await.unwrap(),
        None,
        "the copy is over"
    );

    // Again, onto the replica now held: nothing differs, nothing moves.
    let again = ctl
        .replicate_chunk(
            CHUNK,
            MapVersion(7),
            DEFAULT_CHUNK_SIZE,
            w.replica(CsId(2)),
            0,
        )
        .await
        .expect("a copy onto an identical replica");
    assert_eq!(again.bytes_copied, 0, "{again:?}");
    assert!(again.reused_base, "{again:?}");
}

async fn replicate_refusals(w: ChunkWorld, t: &dyn ChunkTransport) {
    source_with_data(&w, 5).await;
    let ctl = t.control(&w, CsId(1)).await;
    assert_eq!(
        kind(
            "a copy from itself",
            ctl.replicate_chunk(
                CHUNK,
                MapVersion(5),
                DEFAULT_CHUNK_SIZE,
                w.replica(CsId(1)),
                0
            )
            .await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            "a copy of a bad chunk size",
            ctl.replicate_chunk(
                CHUNK,
                MapVersion(5),
                DEFAULT_CHUNK_SIZE + 1,
                w.replica(CsId(2)),
                0
            )
            .await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            "a copy from a source at another version",
            ctl.replicate_chunk(
                CHUNK,
                MapVersion(6),
                DEFAULT_CHUNK_SIZE,
                w.replica(CsId(2)),
                0
            )
            .await
        ),
        ErrorKind::Stale
    );
    // A replica held here that is newer than the copy's version.
    ctl.create_chunk(CHUNK, MapVersion(9), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    assert_eq!(
        kind(
            "a copy older than the replica held",
            ctl.replicate_chunk(
                CHUNK,
                MapVersion(5),
                DEFAULT_CHUNK_SIZE,
                w.replica(CsId(2)),
                0
            )
            .await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        ctl.list_chunks().await.unwrap(),
        listed(CHUNK, 9),
        "unchanged"
    );
    // An unreachable source fails the copy, and names nothing as held.
    ctl.delete_chunk(CHUNK).await.unwrap();
    w.net.set_reachable(&ChunkWorld::addr(CsId(2)), false);
    let e = kind(
        "a copy from an unreachable source",
        ctl.replicate_chunk(
            CHUNK,
            MapVersion(5),
            DEFAULT_CHUNK_SIZE,
            w.replica(CsId(2)),
            0,
        )
        .await,
    );
    assert_eq!(e, ErrorKind::Unavailable);
    assert!(
        ctl.list_chunks().await.unwrap().is_empty(),
        "a failed copy is not listed"
    );
}

async fn ping(w: ChunkWorld, t: &dyn ChunkTransport) {
    let ctl = t.control(&w, CsId(1)).await;
    ctl.ping().await.expect("a serving server answers");
    w.server(CsId(1)).set_serving(false);
    assert_eq!(
        kind("a ping while not serving", ctl.ping().await),
        ErrorKind::Unavailable
    );
    w.server(CsId(1)).set_serving(true);
    ctl.ping().await.expect("serving again");
}
