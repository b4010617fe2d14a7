//! The [`ChunkService`] suite: the data path's contract (version checks,
//! chain writes naming the replica that failed, reads of unwritten ranges,
//! zeroing, CRC entries, limits), run through a [`ChunkTransport`].

use crate::types::CsId;
use bytes::Bytes;

use super::{case, kind, ChunkTransport, ChunkWorld};
use crate::chunk::{crc64, encode_block_crc};
use crate::error::ErrorKind;
use crate::traits::{ChunkControl, ChunkService, ReplicaError, WritePayload, WriteRequest};
use crate::types::{
    ChunkId, MapVersion, Replica, BLOCK_SIZE, DEFAULT_CHUNK_SIZE, MAX_BLOCK_CRCS, MAX_IO_SIZE,
};

const SUITE: &str = "ChunkService";
const CHUNK: ChunkId = ChunkId(0x5eed);
const BS: usize = BLOCK_SIZE as usize;

/// Runs every case of the suite through `transport`.
pub async fn run(transport: &dyn ChunkTransport) {
    case(
        SUITE,
        "a write reads back, unwritten bytes read as zeros",
        ChunkWorld::new(),
        |w| write_reads_back(w, transport),
    )
    .await;
    case(
        SUITE,
        "a chain write reaches every replica",
        ChunkWorld::new(),
        |w| chain_write(w, transport),
    )
    .await;
    case(
        SUITE,
        "another version is Stale and changes nothing",
        ChunkWorld::new(),
        |w| wrong_version(w, transport),
    )
    .await;
    case(
        SUITE,
        "a chain failure names the replica that failed",
        ChunkWorld::new(),
        |w| chain_failure(w, transport),
    )
    .await;
    case(SUITE, "zeros clear a range", ChunkWorld::new(), |w| {
        zeros(w, transport)
    })
    .await;
    case(
        SUITE,
        "CRC entries match the bytes; misaligned ranges are refused",
        ChunkWorld::new(),
        |w| block_crcs(w, transport),
    )
    .await;
    case(
        SUITE,
        "a server that does not serve refuses I/O",
        ChunkWorld::new(),
        |w| not_serving(w, transport),
    )
    .await;
    case(
        SUITE,
        "oversized requests are refused",
        ChunkWorld::new(),
        |w| oversized(w, transport),
    )
    .await;
    case(
        SUITE,
        "bytes changed in flight fail the end-to-end check",
        ChunkWorld::new(),
        |w| end_to_end(w, transport),
    )
    .await;
    case(
        SUITE,
        "a chunk not held is NotFound",
        ChunkWorld::new(),
        |w| not_held(w, transport),
    )
    .await;
}

/// A recognisable pattern of `len` bytes.
fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8).wrapping_mul(31))
        .collect::<Vec<u8>>()
        .into()
}

async fn create_on(w: &ChunkWorld, ids: &[u32], version: MapVersion) {
    for &id in ids {
        w.server(CsId(id))
            .create_chunk(CHUNK, version, DEFAULT_CHUNK_SIZE)
            .await
            .expect("creating a replica in process");
    }
}

fn write(
    version: MapVersion,
    offset: u64,
    payload: WritePayload,
    chain: Vec<Replica>,
) -> WriteRequest {
    WriteRequest::new(CHUNK, version, offset, payload, chain)
}

fn replica_error(what: &str, r: std::result::Result<(), ReplicaError>) -> ReplicaError {
    r.err()
        .unwrap_or_else(|| panic!("{what}: expected an error, got Ok"))
}

async fn write_reads_back(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1], MapVersion(1)).await;
    let svc = t.service(&w, CsId(1)).await;
    let data = pattern(1, 3 * BS);
    svc.write(write(
        MapVersion(1),
        2 * BLOCK_SIZE,
        WritePayload::Data(data.clone()),
        vec![],
    ))
    .await
    .expect("a write at the replica's version");
    let back = svc
        .read_verified(CHUNK, MapVersion(1), 2 * BLOCK_SIZE, 3 * BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(back, data, "the bytes written read back");
    let head = svc
        .read_verified(CHUNK, MapVersion(1), 0, BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(
        &head[..],
        &[0u8; BS][..],
        "an unwritten block reads as zeros"
    );
    // A read across written and unwritten bytes, not block-aligned.
    let mixed = svc
        .read_verified(CHUNK, MapVersion(1), BLOCK_SIZE + 100, BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(mixed.len(), BS);
    assert!(mixed[..BS - 100].iter().all(|&b| b == 0));
    assert_eq!(&mixed[BS - 100..], &data[..100]);
    // Far beyond anything written, still inside the chunk.
    let tail = svc
        .read_verified(
            CHUNK,
            MapVersion(1),
            DEFAULT_CHUNK_SIZE - BLOCK_SIZE,
            BLOCK_SIZE,
        )
        .await
        .unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    svc.flush(CHUNK, MapVersion(1))
        .await
        .expect("a flush at the replica's version");
    assert_eq!(
        svc.read_verified(CHUNK, MapVersion(1), 2 * BLOCK_SIZE, 3 * BLOCK_SIZE)
            .await
            .unwrap(),
        data
    );
}

async fn chain_write(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1, 2, 3], MapVersion(4)).await;
    let svc = t.service(&w, CsId(1)).await;
    let data = pattern(2, 5 * BS + 17);
    svc.write(write(
        MapVersion(4),
        7,
        WritePayload::Data(data.clone()),
        vec![w.replica(CsId(2)), w.replica(CsId(3))],
    ))
    .await
    .expect("a chain write with every replica up");
    for id in 1..=3 {
        let back = w
            .server(CsId(id))
            .read_verified(CHUNK, MapVersion(4), 7, data.len() as u64)
            .await
            .unwrap();
        assert_eq!(back, data, "replica {id} holds the chain write");
    }
}

async fn wrong_version(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1], MapVersion(5)).await;
    let svc = t.service(&w, CsId(1)).await;
    let e = replica_error(
        "a write at an older version",
        svc.write(write(
            MapVersion(4),
            0,
            WritePayload::Data(pattern(3, BS)),
            vec![],
        ))
        .await,
    );
    assert_eq!(e.error.kind(), ErrorKind::Stale, "{e}");
    assert_eq!(
        e.failed_replica(CsId(1)),
        CsId(1),
        "the receiver itself refused: {e:?}"
    );
    assert_eq!(
        kind(
            "a read at a newer version",
            svc.read_verified(CHUNK, MapVersion(6), 0, BLOCK_SIZE).await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "a flush at an older version",
            svc.flush(CHUNK, MapVersion(4)).await
        ),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "CRC entries at an older version",
            svc.block_crcs(CHUNK, MapVersion(4), 0, BLOCK_SIZE).await
        ),
        ErrorKind::Stale
    );
    let back = w
        .server(CsId(1))
        .read_verified(CHUNK, MapVersion(5), 0, BLOCK_SIZE)
        .await
        .unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "the refused write left nothing"
    );
}

async fn chain_failure(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1, 2, 3], MapVersion(2)).await;
    let svc = t.service(&w, CsId(1)).await;
    w.net.set_reachable(&ChunkWorld::addr(CsId(3)), false);
    let e = replica_error(
        "a chain write whose last replica is unreachable",
        svc.write(write(
            MapVersion(2),
            0,
            WritePayload::Data(pattern(4, BS)),
            vec![w.replica(CsId(2)), w.replica(CsId(3))],
        ))
        .await,
    );
    assert_eq!(
        e.failed_replica(CsId(1)),
        CsId(3),
        "the failure names replica 3: {e:?}"
    );
    assert_eq!(e.error.kind(), ErrorKind::Unavailable, "{e}");
    w.net.set_reachable(&ChunkWorld::addr(CsId(3)), true);

    // The second replica at another version: it refuses, and is named.
    w.server(CsId(2))
        .set_version(CHUNK, MapVersion(3))
        .await
        .unwrap();
    let e = replica_error(
        "a chain write whose second replica is at another version",
        svc.write(write(
            MapVersion(2),
            0,
            WritePayload::Data(pattern(5, BS)),
            vec![w.replica(CsId(2)), w.replica(CsId(3))],
        ))
        .await,
    );
    assert_eq!(
        e.failed_replica(CsId(1)),
        CsId(2),
        "the failure names replica 2: {e:?}"
    );
    assert_eq!(e.error.kind(), ErrorKind::Stale, "{e}");
}

async fn zeros(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1, 2], MapVersion(1)).await;
    let svc = t.service(&w, CsId(1)).await;
    let data = pattern(6, 2 * BS);
    svc.write(write(
        MapVersion(1),
        0,
        WritePayload::Data(data.clone()),
        vec![w.replica(CsId(2))],
    ))
    .await
    .unwrap();
    svc.write(write(
        MapVersion(1),
        0,
        WritePayload::Zeros(BLOCK_SIZE),
        vec![w.replica(CsId(2))],
    ))
    .await
    .expect("zeroing a block down the chain");
    for id in [1, 2] {
        let back = w
            .server(CsId(id))
            .read_verified(CHUNK, MapVersion(1), 0, 2 * BLOCK_SIZE)
            .await
            .unwrap();
        assert!(
            back[..BS].iter().all(|&b| b == 0),
            "replica {id}: block 0 zeroed"
        );
        assert_eq!(&back[BS..], &data[BS..], "replica {id}: block 1 kept");
    }
    let crcs = svc
        .block_crcs(CHUNK, MapVersion(1), 0, 2 * BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(crcs[0], 0, "a zeroed block's entry is 0");
    assert_eq!(crcs[1], encode_block_crc(crc64(&data[BS..])));
}

async fn block_crcs(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1], MapVersion(1)).await;
    let svc = t.service(&w, CsId(1)).await;
    let data = pattern(7, BS);
    svc.write(write(
        MapVersion(1),
        BLOCK_SIZE,
        WritePayload::Data(data.clone()),
        vec![],
    ))
    .await
    .unwrap();
    let crcs = svc
        .block_crcs(CHUNK, MapVersion(1), 0, 3 * BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(crcs, vec![0, encode_block_crc(crc64(&data)), 0]);
    // The largest page allowed, at the chunk's end.
    let last = svc
        .block_crcs(
            CHUNK,
            MapVersion(1),
            DEFAULT_CHUNK_SIZE - MAX_BLOCK_CRCS * BLOCK_SIZE,
            MAX_BLOCK_CRCS * BLOCK_SIZE,
        )
        .await
        .unwrap();
    assert_eq!(last.len() as u64, MAX_BLOCK_CRCS);
    assert_eq!(
        kind(
            "a misaligned offset",
            svc.block_crcs(CHUNK, MapVersion(1), 100, BLOCK_SIZE).await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            "a misaligned length",
            svc.block_crcs(CHUNK, MapVersion(1), 0, 100).await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            "more entries than a page",
            svc.block_crcs(CHUNK, MapVersion(1), 0, (MAX_BLOCK_CRCS + 1) * BLOCK_SIZE)
                .await
        ),
        ErrorKind::InvalidArgument
    );
}

async fn not_serving(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1], MapVersion(1)).await;
    let svc = t.service(&w, CsId(1)).await;
    w.server(CsId(1)).set_serving(false);
    let e = replica_error(
        "a write to a server that does not serve",
        svc.write(write(
            MapVersion(1),
            0,
            WritePayload::Data(pattern(8, BS)),
            vec![],
        ))
        .await,
    );
    assert_eq!(e.error.kind(), ErrorKind::Unavailable, "{e}");
    assert_eq!(
        kind(
            "a read",
            svc.read_verified(CHUNK, MapVersion(1), 0, BLOCK_SIZE).await
        ),
        ErrorKind::Unavailable
    );
    assert_eq!(
        kind("a flush", svc.flush(CHUNK, MapVersion(1)).await),
        ErrorKind::Unavailable
    );
    w.server(CsId(1)).set_serving(true);
    svc.read_verified(CHUNK, MapVersion(1), 0, BLOCK_SIZE)
        .await
        .expect("serving again, it reads");
}

async fn oversized(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1], MapVersion(1)).await;
    let svc = t.service(&w, CsId(1)).await;
    let big = Bytes::from(vec![1u8; MAX_IO_SIZE as usize + BS]);
    let e = replica_error(
        "a write over the size limit",
        svc.write(write(MapVersion(1), 0, WritePayload::Data(big), vec![]))
            .await,
    );
    assert_eq!(e.error.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        kind(
            "a read over the size limit",
            svc.read_verified(CHUNK, MapVersion(1), 0, MAX_IO_SIZE + 1)
                .await
        ),
        ErrorKind::InvalidArgument
    );
    // The limit itself is fine, and the server still serves.
    let max = pattern(9, MAX_IO_SIZE as usize);
    svc.write(write(
        MapVersion(1),
        0,
        WritePayload::Data(max.clone()),
        vec![],
    ))
    .await
    .expect("a write of exactly the limit");
    assert_eq!(
        svc.read_verified(CHUNK, MapVersion(1), 0, MAX_IO_SIZE)
            .await
            .unwrap(),
        max
    );
}

async fn not_held(w: ChunkWorld, t: &dyn ChunkTransport) {
    let svc = t.service(&w, CsId(1)).await;
    assert_eq!(
        kind(
            "a read of a chunk not held",
            svc.read_verified(CHUNK, MapVersion(1), 0, BLOCK_SIZE).await
        ),
        ErrorKind::NotFound
    );
    let e = replica_error(
        "a write to a chunk not held",
        svc.write(write(
            MapVersion(1),
            0,
            WritePayload::Data(pattern(10, BS)),
            vec![],
        ))
        .await,
    );
    assert_eq!(e.error.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        w.server(CsId(1)).list_chunks().await.unwrap().is_empty(),
        "nothing created"
    );
}

/// The piece CRCs cross the transport as sent: a write whose bytes do not
/// match them is refused `Checksum` (by the receiver or down the chain)
/// and stores nothing; a read carries the server's CRCs, so bytes damaged
/// after the server's check fail the reader's.
async fn end_to_end(w: ChunkWorld, t: &dyn ChunkTransport) {
    create_on(&w, &[1, 2], MapVersion(1)).await;
    let svc = t.service(&w, CsId(1)).await;
    let good = pattern(7, 2 * BS + 100);
    let mut changed = write(
        MapVersion(1),
        50,
        WritePayload::Data(good.clone()),
        vec![w.replica(CsId(2))],
    );
    let mut bytes = good.to_vec();
    bytes[BS] ^= 0x80;
    changed.payload = WritePayload::Data(bytes.into());
    let refused = replica_error("a changed write", svc.write(changed).await);
    assert_eq!(
        refused.error.kind(),
        ErrorKind::Checksum,
        "{}",
        refused.error
    );
    assert_eq!(refused.failed_cs, None, "the receiver refused it itself");
    // Damaged between the head and the next member: refused there.
    w.net.damage_writes(&ChunkWorld::addr(CsId(2)), 1);
    let refused = replica_error(
        "a write damaged down the chain",
        svc.write(write(
            MapVersion(1),
            50,
            WritePayload::Data(good.clone()),
            vec![w.replica(CsId(2))],
        ))
        .await,
    );
    assert_eq!(
        refused.error.kind(),
        ErrorKind::Checksum,
        "{}",
        refused.error
    );
    assert_eq!(refused.failed_cs, Some(CsId(2)));
    // Nothing of the refused write reached replica 2.
    let on_2 = w
        .server(CsId(2))
        .read_verified(CHUNK, MapVersion(1), 0, 3 * BLOCK_SIZE)
        .await
        .unwrap();
    assert!(on_2.iter().all(|&b| b == 0), "a refused write was stored");
    // Sent again intact, it lands on both.
    svc.write(write(
        MapVersion(1),
        50,
        WritePayload::Data(good.clone()),
        vec![w.replica(CsId(2))],
    ))
    .await
    .expect("the intact write");
    for id in [1, 2] {
        let back = w
            .server(CsId(id))
            .read_verified(CHUNK, MapVersion(1), 50, good.len() as u64)
            .await
            .unwrap();
        assert_eq!(back, good, "server {id}");
    }
    // Reads: the CRCs are the server's, checked by the reader.
    let read = svc
        .read(CHUNK, MapVersion(1), 50, good.len() as u64)
        .await
        .unwrap();
    assert_eq!(read.crcs, crate::checksums::piece_crcs(50, &good));
    w.stores[0].misread(1);
    assert_eq!(
        kind(
            "a block damaged after its check",
            svc.read_verified(CHUNK, MapVersion(1), 0, 2 * BLOCK_SIZE)
                .await
        ),
        ErrorKind::Checksum
    );
    assert_eq!(
        svc.read_verified(CHUNK, MapVersion(1), 50, good.len() as u64)
            .await
            .unwrap(),
        good
    );
}
