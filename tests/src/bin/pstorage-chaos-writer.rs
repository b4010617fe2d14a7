//! The SDK writer of `scripts/chaos.sh`: writes seeded patterns at random
//! offsets of one file through the Rust SDK, flushes, reads back ranges as
//! it goes, and remembers what every byte may hold (`pstorage_tests::chaos`).
//! When `--stop-file` appears it flushes a last time and waits for
//! `--verify-file`, then reads the whole file and checks every byte.
//!
//! Every write, flush or read error is a writer error: with at most one
//! fault at a time the cluster promises none. Bytes that match none of
//! their allowed values are lost bytes. The last line on stdout:
//! `sdk-writer: writes=N flushes=N reads=N writer_errors=N verified_bytes=N lost_bytes=N uncertain_bytes=N`;
//! the exit status is 1 if writer_errors or lost_bytes is not 0.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use pstorage_core::client::ClientOptions;
use pstorage_core::conf::ClusterConf;
use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_tests::chaos::{fill_pattern, writes_matching, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "chaos suite: a verifying SDK writer")]
struct Args {
    /// Root of the cluster configurations (like `pstorage --conf-dir`).
    #[arg(long)]
    conf_dir: PathBuf,
    /// Cluster name.
    #[arg(short = 'c', long)]
    cluster: String,
    /// The file to write (created, sized to --size).
    #[arg(long)]
    path: String,
    /// File size in bytes.
    #[arg(long, default_value_t = 512 << 20)]
    size: u64,
    /// Seed of the offsets, lengths and patterns.
    #[arg(long)]
    seed: u64,
    /// Bytes written per second at most.
    #[arg(long, default_value_t = 4 << 20)]
    rate: u64,
    /// Stop writing once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// After stopping, verify the whole file once this file exists.
    #[arg(long)]
    verify_file: PathBuf,
    /// Other files whose replicas are compared too at the end (every file's
    /// chain members must hold the same bytes once the cluster is quiet).
    #[arg(long)]
    compare_replicas: Vec<String>,
}

fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

#[derive(Default)]
struct Counters {
    writes: u64,
    flushes: u64,
    reads: u64,
    errors: u64,
    lost: u64,
    /// The longest write, flush or read.
    longest: Duration,
    /// The last write id used.
    max_id: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    std::process::exit(match run(&args).await {
        Ok(ok) => i32::from(!ok),
        Err(e) => {
            eprintln!("{} sdk-writer: {e}", now());
            println!(
                "sdk-writer: writes=0 flushes=0 reads=0 writer_errors=1 verified_bytes=0 lost_bytes=0 uncertain_bytes=0"
            );
            1
        }
    });
}

async fn run(args: &Args) -> pstorage_core::Result<bool> {
    let conf = ClusterConf::new(&args.conf_dir, &args.cluster)?;
    let client = pstorage_rpc::node::connect_client(&conf, ClientOptions::default())?;
    if let Some((dir, _)) = args.path.rsplit_once('/') {
        if !dir.is_empty() {
            client.mkdir(dir, true).await?;
        }
    }
    let file = client
        .open(
            &args.path,
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
        )
        .await?;
    file.truncate(0).await?;
    file.truncate(args.size).await?;
    file.flush().await?;
    let chunk = file.chunk_size();
    let size = args.size;
    let mut model = Model::new(args.seed, size);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut c = Counters::default();
    let mut next_id = 1u64;
    let started = Instant::now();
    let mut written = 0u64;
    let mut buf = Vec::new();
    println!(
        "sdk-writer: writing {} ({} bytes, chunks of {}) seed {}",
        args.path, size, chunk, args.seed
    );
    while !args.stop_file.exists() {
        let op = rng.gen_range(0..100);
        if op < 75 {
            // Lengths: small, medium or large; a fifth of them near a chunk
            // boundary (pieces on two chunks).
            let len = match rng.gen_range(0..10) {
                0..=3 => rng.gen_range(1..=8192u64),
                4..=7 => rng.gen_range(1..=(1u64 << 20)),
                _ => rng.gen_range(1..=(4u64 << 20)),
            }
            .min(size);
            let offset = if rng.gen_range(0..5) == 0 && size > chunk {
                let boundary = chunk * rng.gen_range(1..=(size - 1) / chunk);
                boundary
                    .saturating_sub(rng.gen_range(0..=len))
                    .min(size - len)
            } else {
                rng.gen_range(0..=size - len)
            };
            let id = next_id;
            next_id += 1;
            c.max_id = id;
            buf.resize(len as usize, 0);
            fill_pattern(args.seed, id, offset, &mut buf);
            let t = Instant::now();
            match file.write_at(offset, &buf).await {
                Ok(()) => model.write_acked(offset, offset + len, id),
                Err(e) => {
                    c.errors += 1;
                    eprintln!(
                        "{} sdk-writer: write {id} of [{offset}, {}) failed after {:?}: {} ({e})",
                        now(),
                        offset + len,
                        t.elapsed(),
                        e.kind()
                    );
                    model.write_failed(offset, offset + len, id);
                }
            }
            c.writes += 1;
            written += len;
            c.longest = c.longest.max(t.elapsed());
            slow(t.elapsed(), "write", offset, len);
        } else if op < 88 {
            flush(&file, &mut model, &mut c).await;
        } else {
            let len = rng.gen_range(1..=(1u64 << 20)).min(size);
            let offset = rng.gen_range(0..=size - len);
            check_range(&file, &model, offset, len, &mut c).await;
        }
        // Pace the writes.
        let due = Duration::from_secs_f64(written as f64 / args.rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    flush(&file, &mut model, &mut c).await;
    println!(
        "sdk-writer: stopped after {:?}: writes={} flushes={} reads={} writer_errors={} lost_bytes={} longest_op_ms={}",
        started.elapsed(),
        c.writes,
        c.flushes,
        c.reads,
        c.errors,
        c.lost,
        c.longest.as_millis()
    );
    while !args.verify_file.exists() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every byte, in 4 MiB reads.
    let mut verified = 0u64;
    let mut offset = 0u64;
    while offset < size {
        let len = (4u64 << 20).min(size - offset);
        verified += check_range(&file, &model, offset, len, &mut c).await;
        offset += len;
    }
    if let Err(e) = file.close().await {
        c.errors += 1;
        eprintln!("{} sdk-writer: close failed: {e}", now());
    }
    // The replicas of every chunk, compared block by block.
    let connector =
        pstorage_rpc::data::TcpChunkConnector::new(pstorage_rpc::node::node_credentials(&conf)?);
    let mut replica_diff = 0u64;
    let mut compared = 0u64;
    for path in std::iter::once(&args.path).chain(&args.compare_replicas) {
        match compare_replicas(&client, &connector, path).await {
            Ok((n, diff)) => {
                compared += n;
                replica_diff += diff;
            }
            Err(e) => {
                c.errors += 1;
                eprintln!(
                    "{} sdk-writer: comparing the replicas of {path}: {e}",
                    now()
                );
            }
        }
    }
    println!(
        "sdk-writer: writes={} flushes={} reads={} writer_errors={} verified_bytes={verified} lost_bytes={} uncertain_bytes={} replica_bytes_compared={compared} replica_diff_bytes={replica_diff}",
        c.writes,
        c.flushes,
        c.reads,
        c.errors,
        c.lost,
        model.uncertain_bytes()
    );
    Ok(c.errors == 0 && c.lost == 0 && replica_diff == 0)
}

/// Compares every chain member of every chunk of `path` with the chain's
/// head: the CRC-table entries first, then the bytes of each block whose
/// entries differ. Returns (bytes compared, bytes that differ).
async fn compare_replicas(
    client: &pstorage_core::client::Client,
    connector: &pstorage_rpc::data::TcpChunkConnector,
    path: &str,
) -> pstorage_core::Result<(u64, u64)> {
    use pstorage_core::traits::ChunkConnector;
    use pstorage_core::types::{BLOCK_SIZE, MAX_BLOCK_CRCS};
    let chunk_size = client.stat(path).await?.attrs.chunk_size;
    let (mut compared, mut diff) = (0u64, 0u64);
    for map in client.file_chunks(path).await? {
        let mut services = Vec::new();
        for r in &map.replicas {
            services.push((r.cs, connector.chunk_service(&r.addr).await?));
        }
        let Some(((head_cs, head), rest)) = services.split_first() else {
            continue;
        };
        let page = MAX_BLOCK_CRCS * BLOCK_SIZE;
        let mut offset = 0u64;
        while offset < chunk_size {
            let len = page.min(chunk_size - offset);
            let want = head.block_crcs(map.chunk, map.version, offset, len).await?;
            for (cs, other) in rest {
                let got = other
                    .block_crcs(map.chunk, map.version, offset, len)
                    .await?;
                compared += len;
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    if a == b {
                        continue;
                    }
                    let at = offset + i as u64 * BLOCK_SIZE;
                    let x = head
                        .read_verified(map.chunk, map.version, at, BLOCK_SIZE)
                        .await?;
                    let y = other
                        .read_verified(map.chunk, map.version, at, BLOCK_SIZE)
                        .await?;
                    if x != y {
                        let n = x.iter().zip(y.iter()).filter(|(p, q)| p != q).count() as u64;
                        diff += n;
                        eprintln!(
                            "{} sdk-writer: {path}: chunk {:?} (index {}) version {:?}: block at {at} differs between CS {head_cs:?} and CS {cs:?} ({n} bytes)",
                            now(),
                            map.chunk,
                            map.index,
                            map.version
                        );
                    }
                }
            }
            offset += len;
        }
    }
    Ok((compared, diff))
}

fn slow(took: Duration, what: &str, offset: u64, len: u64) {
    if took > Duration::from_secs(5) {
        eprintln!(
            "{} sdk-writer: slow {what} of [{offset}, {}): {took:?}",
            now(),
            offset + len
        );
    }
}

async fn flush(file: &pstorage_core::client::File, model: &mut Model, c: &mut Counters) {
    let t = Instant::now();
    match file.flush().await {
        Ok(()) => model.flush_ok(),
        Err(e) => {
            c.errors += 1;
            eprintln!(
                "{} sdk-writer: flush failed after {:?}: {} ({e})",
                now(),
                t.elapsed(),
                e.kind()
            );
            model.flush_failed();
        }
    }
    c.flushes += 1;
    c.longest = c.longest.max(t.elapsed());
    slow(t.elapsed(), "flush", 0, 0);
}

/// Reads `[offset, offset+len)` and checks it; returns the bytes that
/// matched.
async fn check_range(
    file: &pstorage_core::client::File,
    model: &Model,
    offset: u64,
    len: u64,
    c: &mut Counters,
) -> u64 {
    let mut data = vec![0u8; len as usize];
    let mut got = 0usize;
    let t = Instant::now();
    c.reads += 1;
    while got < data.len() {
        match file.read_at(offset + got as u64, &mut data[got..]).await {
            Ok(0) => {
                c.errors += 1;
                eprintln!(
                    "{} sdk-writer: short read at {} (file size {})",
                    now(),
                    offset + got as u64,
                    model.size()
                );
                return 0;
            }
            Ok(n) => got += n,
            Err(e) => {
                c.errors += 1;
                eprintln!(
                    "{} sdk-writer: read of [{offset}, {}) failed after {:?}: {} ({e})",
                    now(),
                    offset + len,
                    t.elapsed(),
                    e.kind()
                );
                return 0;
            }
        }
    }
    c.longest = c.longest.max(t.elapsed());
    slow(t.elapsed(), "read", offset, len);
    let r = model.check(offset, &data);
    if r.lost_bytes > 0 {
        c.lost += r.lost_bytes;
        let at = r.first_lost.unwrap_or(offset);
        let pieces = model.pieces(at, at + 1);
        // Whose bytes are there instead: the 16 bytes from `at`.
        let end = (at + 16).min(offset + len);
        let found = &data[(at - offset) as usize..(end - offset) as usize];
        eprintln!(
            "{} sdk-writer: read of [{offset}, {}): {} bytes differ, the first at {at}: expected the bytes of one of writes {:?}, found those of writes {:?} ({} bytes from there: {found:02x?})",
            now(),
            offset + len,
            r.lost_bytes,
            pieces.first().map(|p| p.ids.clone()).unwrap_or_default(),
            writes_matching(model.seed(), c.max_id, at, found),
            found.len()
        );
    }
    r.ok_bytes
}
