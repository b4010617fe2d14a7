//! Micro-benchmark of the data protocol: 4 KiB writes over loopback to a
//! chunk service that does nothing, at several queue depths, over one
//! authenticated connection (client and server in this process).
//!
//! Usage: `cargo run -p pstorage-rpc --example data_bench -- [SECONDS] [DEPTH...]`
//! (defaults: 3 seconds, depths 1 16 32). Prints ops/s and mean latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pstorage_core::error::Result;
use pstorage_core::traits::{CheckedBytes, ChunkService, ReplicaError, WritePayload, WriteRequest};
use pstorage_core::types::{ChunkId, MapVersion};
use pstorage_rpc::auth::{self, Channel};
use pstorage_rpc::data::{serve_data_connection, DataClient};
use pstorage_rpc::pki::Role;
use pstorage_rpc::tls::test_credentials;
use tokio::net::TcpListener;

/// Accepts everything, stores nothing.
struct NoopService;

#[async_trait]
impl ChunkService for NoopService {
    async fn write(&self, _request: WriteRequest) -> Result<(), ReplicaError> {
        Ok(())
    }

    async fn read(
        &self,
        _chunk: ChunkId,
        _version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        Ok(CheckedBytes::new(
            offset,
            Bytes::from(vec![0; len as usize]),
        ))
    }

    async fn flush(&self, _chunk: ChunkId, _version: MapVersion) -> Result<()> {
        Ok(())
    }

    /// Nothing is ever stored: every block reads as zeros (entry 0).
    async fn block_crcs(
        &self,
        _chunk: ChunkId,
        _version: MapVersion,
        _offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        Ok(vec![0; (len / 4096) as usize])
    }
}

const IO_SIZE: usize = 4096;

/// CPU time used by this process so far (user + system), from
/// `/proc/self/stat`; `None` where that does not exist. Measured alongside
/// throughput because CPU per operation is stable on a busy machine where
/// ops/s is not.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

async fn run(client: Arc<DataClient>, depth: usize, duration: Duration) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0xa5u8; IO_SIZE]);
    let started = Instant::now();
    let workers: Vec<_> = (0..depth)
        .map(|w| {
            let (client, stop, done, payload) =
                (client.clone(), stop.clone(), done.clone(), payload.clone());
            tokio::spawn(async move {
                let mut offset = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    client
                        .write(WriteRequest::new(
                            ChunkId(w as u64),
                            MapVersion(1),
                            offset,
                            WritePayload::Data(payload.clone()),
                            Vec::new(),
                        ))
                        .await
                        .expect("write");
                    offset = (offset + IO_SIZE as u64) % (64 << 20);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(3.0, |s| s.parse().expect("SECONDS"));
    let mut depths: Vec<usize> = args.map(|s| s.parse().expect("DEPTH")).collect();
    if depths.is_empty() {
        depths = vec![1, 16, 32];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        // TLS as between nodes of a cluster (a test CA).
        let key = test_credentials(Role::Client);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server_key = test_credentials(Role::Cs);
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let channel = auth::peek_channel(&mut stream).await.expect("preface");
            let (tls, peer) = auth::accept_tls(stream, &server_key, channel)
                .await
                .expect("handshake");
            serve_data_connection(tls, peer, Arc::new(NoopService)).await;
        });
        let stream = auth::connect(&addr, &key, Channel::Data)
            .await
            .expect("connect");
        let client = Arc::new(DataClient::new(stream));
        // Warm up the connection and the allocator.
        run(client.clone(), 16, Duration::from_millis(300)).await;
        println!("4 KiB writes to a no-op chunk service over loopback, one connection");
        for depth in depths {
            let cpu_before = process_cpu();
            let (ops, elapsed) = run(client.clone(), depth, Duration::from_secs_f64(seconds)).await;
            let cpu = match (cpu_before, process_cpu()) {
                (Some(a), Some(b)) => format!(
                    "{:5.1} us CPU/op (client + server)",
                    (b - a).as_secs_f64() * 1e6 / ops as f64
                ),
                _ => String::new(),
            };
            let ops_per_s = ops as f64 / elapsed.as_secs_f64();
            println!(
                "queue depth {depth:3}: {ops_per_s:9.0} ops/s  {:7.1} MiB/s  mean latency {:7.1} us  {cpu}",
                ops_per_s * IO_SIZE as f64 / (1 << 20) as f64,
                depth as f64 * 1e6 / ops_per_s
            );
        }
    });
}
