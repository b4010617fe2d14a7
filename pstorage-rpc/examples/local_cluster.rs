//! A whole pstorage cluster inside this process: 3 MDSes and 4 chunk
//! servers on 127.0.0.1 in a temporary directory, at the product's defaults
//! (256 MiB chunks, replicas 3:2). Writes a file, kills a chunk server and
//! the leading MDS while writing goes on, restarts them, reads everything
//! back and stops (removing the directory).
//!
//! Usage: `cargo run -p pstorage-rpc --example local_cluster`
//! (`PSTORAGE_LOG=info` shows the nodes' logs when a subscriber is set up;
//! this example prints its own progress only).

use std::time::{Duration, Instant};

use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_core::Result;
use pstorage_rpc::local::LocalCluster;

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let cluster = LocalCluster::builder().mds(3).cs(4).start().await?;
    println!(
        "started 3 MDS + 4 CS in {:.1?}; conf dir {} (try `pstorage --conf-dir {} -c {} stat`)",
        started.elapsed(),
        cluster.conf_root().display(),
        cluster.conf_root().display(),
        cluster.name()
    );

    let client = cluster.client()?;
    let flags = OpenFlags {
        create: true,
        ..Default::default()
    };
    let file = client.open("/example.bin", LeaseMode::Write, flags).await?;
    let piece = vec![0x5au8; 1 << 20];
    file.write_at(0, &piece).await?;
    file.flush().await?;

    cluster.kill_cs(0).await?;
    let t = Instant::now();
    file.write_at(1 << 20, &piece).await?;
    file.flush().await?;
    println!(
        "chunk server 0 killed: next write+flush took {:.1?}",
        t.elapsed()
    );
    cluster.restart_cs(0).await?;
    cluster.wait_healthy(Duration::from_secs(120)).await?;

    let leader = cluster.leader_mds().await?;
    cluster.kill_mds(leader).await?;
    let t = Instant::now();
    file.write_at(2 << 20, &piece).await?;
    file.flush().await?;
    println!(
        "leader MDS {leader} killed: next write+flush took {:.1?}",
        t.elapsed()
    );
    cluster.restart_mds(leader).await?;

    let mut back = vec![0u8; 3 << 20];
    let mut done = 0;
    while done < back.len() {
        done += file.read_at(done as u64, &mut back[done..]).await?;
    }
    assert!(back.iter().all(|b| *b == 0x5a), "the file reads back");
    file.close().await?;
    let status = cluster.wait_healthy(Duration::from_secs(120)).await?;
    println!(
        "healthy again: {} MDS, {} CS, {} chunks, health {}",
        status.mds.len(),
        status.cs.len(),
        status.chunks,
        status.health
    );
    cluster.stop().await
}
