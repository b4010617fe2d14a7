//! Invariants 1 and 3 with real daemons: data written through the SDK at
//! random offsets across chunk boundaries reads back equal, and every replica
//! of every chunk holds identical bytes (read from each CS on its own).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::sync::Arc;

use pstorage_core::traits::{ChunkConnector, MetadataService};
use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_rpc::data::TcpChunkConnector;
use pstorage_tests::{pattern, ClusterOptions, TestCluster};

const CHUNK: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_writes_read_back_and_replicas_are_identical() {
    let cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 3,
        chunk_size: CHUNK,
        ..Default::default()
    });
    let client = cluster.client();
    let file_size: u64 = 24 * CHUNK + 12345;
    let total_bytes: u64 = 200 << 20;
    let flags = OpenFlags {
        create: true,
        ..Default::default()
    };
    let file = Arc::new(
        client
            .open("/data.bin", LeaseMode::Write, flags)
            .await
            .unwrap(),
    );
    let mut shadow = vec![0u8; file_size as usize];
    let mut written = 0u64;
    let mut seed = 1u64;
    // Writes of 1 B .. 1.5 MiB at random offsets, 8 in flight; the shadow
    // copy is what every read must return.
    while written < total_bytes {
        let mut batch = tokio::task::JoinSet::new();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for _ in 0..8 {
            seed += 1;
            let r = pattern(seed, 16);
            let len = 1 + u64::from_le_bytes(r[0..8].try_into().unwrap()) % (CHUNK + CHUNK / 2);
            let offset = u64::from_le_bytes(r[8..16].try_into().unwrap()) % (file_size - len);
            // Writes in one batch must not overlap, or their order is undefined.
            if ranges
                .iter()
                .any(|&(o, l)| offset < o + l && o < offset + len)
            {
                continue;
            }
            ranges.push((offset, len));
            let data = pattern(seed * 7919, len as usize);
            shadow[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            let f = file.clone();
            batch.spawn(async move { f.write_at(offset, &data).await });
            written += len;
        }
        while let Some(r) = batch.join_next().await {
            r.unwrap().unwrap();
        }
    }
    file.flush().await.unwrap();
    let high = shadow
        .iter()
        .rposition(|&b| b != 0)
        .map(|p| p + 1)
        .unwrap_or(0) as u64;
    assert!(file.size() >= high);

    // Reads through the SDK at odd offsets and lengths.
    let mut buf = vec![0u8; 3 * CHUNK as usize + 17];
    let mut offset = 0u64;
    while offset < high {
        let n = file.read_at(offset, &mut buf).await.unwrap();
        assert!(n > 0);
        assert_eq!(
            &buf[..n],
            &shadow[offset as usize..offset as usize + n],
            "mismatch at {offset}"
        );
        offset += n as u64;
    }
    file.close().await.unwrap();

    // Every replica, read straight from its chunk server, holds the same bytes.
    let mds = pstorage_rpc::node::connect_mds(&cluster.conf(), Default::default()).unwrap();
    let maps = mds.file_chunks("/data.bin").await.unwrap();
    assert_eq!(
        maps.len() as u64,
        file_size.div_ceil(CHUNK).min(high.div_ceil(CHUNK))
    );
    let connector =
        TcpChunkConnector::new(pstorage_rpc::node::node_credentials(&cluster.conf()).unwrap());
    for map in &maps {
        assert_eq!(
            map.replicas.len(),
            3,
            "chunk {} has {:?}",
            map.index,
            map.replicas
        );
        let start = map.index * CHUNK;
        let len = CHUNK.min(file_size - start);
        let expect = &shadow[start as usize..(start + len) as usize];
        for replica in &map.replicas {
            let cs = connector.chunk_service(&replica.addr).await.unwrap();
            let got = cs
                .read_verified(map.chunk, map.version, 0, len)
                .await
                .unwrap();
            assert!(
                got[..] == expect[..],
                "chunk {} differs on CS {}",
                map.index,
                replica.cs
            );
        }
    }
}
