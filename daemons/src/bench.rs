//! `pstorage -c CLUSTER bench`: measures the cluster through the native SDK
//! next to the local disk in the same run (like `rados bench`, plus the
//! ratio): sequential 1 MiB writes and reads, random 4 KiB writes and reads
//! at a queue depth, with each replication factor asked for; with
//! `--metadata`, namespace operations per second ([`crate::bench_meta`]).

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions, File};
use pstorage_core::conf::ClusterConf;
use pstorage_core::types::{AttrUpdate, LeaseMode, OpenFlags, Replicas};
use pstorage_core::{Error, Result};

const SEQ_BLOCK: usize = 1 << 20;
const RAND_BLOCK: usize = 4096;

/// Options of `pstorage bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Bytes written and read by the sequential passes (and the random range).
    #[arg(long, default_value_t = 1 << 30)]
    pub size: u64,
    /// Duration of each random pass, in seconds.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Queue depth (requests in flight) of every pass.
    #[arg(long, default_value_t = 16)]
    pub depth: usize,
    /// Replication factors to measure, comma separated.
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    pub replicas: Vec<u8>,
    /// Directory on the local disk for the comparison file.
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
    /// Skip the local disk comparison.
    #[arg(long)]
    pub no_local: bool,
    /// Measure namespace operations instead (create, stat, rename, unlink
    /// per second), with --clients clients of --files files each.
    #[arg(long)]
    pub metadata: bool,
    /// With --metadata: concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// With --metadata: files each client creates, stats, renames, unlinks.
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
}

/// One measured pass.
#[derive(Debug, Clone)]
pub struct PassResult {
    pub target: String,
    pub pattern: &'static str,
    pub bytes: u64,
    pub ops: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl PassResult {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64()
    }
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

const PATTERNS: [&str; 4] = [
    "seq-write-1M",
    "seq-read-1M",
    "rand-write-4K",
    "rand-read-4K",
];

/// Runs the benchmark and prints a table.
pub async fn run(conf: &ClusterConf, args: &BenchArgs) -> Result<()> {
    if args.metadata {
        let local =
            (!args.no_local).then(|| args.local_dir.clone().unwrap_or_else(std::env::temp_dir));
        crate::bench_meta::run(conf, args.clients, args.files, local).await?;
        return Ok(());
    }
    if args.size < SEQ_BLOCK as u64 || args.depth == 0 || args.seconds == 0 {
        return Err(Error::invalid(
            "bench needs --size >= 1 MiB, --depth >= 1, --seconds >= 1",
        ));
    }
    let size = args.size / SEQ_BLOCK as u64 * SEQ_BLOCK as u64;
    let client = pstorage_rpc::node::connect_client(conf, ClientOptions::default())?;
    let mut results = Vec::new();
    if !args.no_local {
        let dir = args.local_dir.clone().unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("pstorage-bench-{}.dat", std::process::id()));
        let local = bench_local(&path, size, args).await;
        let _ = std::fs::remove_file(&path);
        results.extend(local?);
    }
    client.mkdir("/.bench", true).await?;
    for &r in &args.replicas {
        let replicas = Replicas {
            norm: r,
            min: (r / 2 + 1).min(r),
        }
        .validate()?;
        let path = format!("/.bench/replicas-{r}-{}", std::process::id());
        let res = bench_cluster(&client, &path, replicas, size, args).await;
        let _ = client.unlink(&path).await;
        results.extend(res?);
    }
    print_table(&results);
    Ok(())
}

fn print_table(results: &[PassResult]) {
    println!(
        "{:<14} {:<14} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "target", "pattern", "MiB/s", "IOPS", "p50 us", "p99 us", "vs local"
    );
    for r in results {
        let local = results
            .iter()
            .find(|l| l.target == "local" && l.pattern == r.pattern);
        let ratio = match local {
            Some(l) if r.target != "local" && l.iops() > 0.0 => {
                format!("{:.2}x", r.iops() / l.iops())
            }
            _ => "-".to_string(),
        };
        println!(
            "{:<14} {:<14} {:>10.1} {:>10.0} {:>10} {:>10} {:>9}",
            r.target,
            r.pattern,
            r.mib_s(),
            r.iops(),
            r.p50_us,
            r.p99_us,
            ratio
        );
    }
}

fn percentiles(mut lat_us: Vec<u64>) -> (u64, u64) {
    if lat_us.is_empty() {
        return (0, 0);
    }
    lat_us.sort_unstable();
    let at = |q: f64| lat_us[((lat_us.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

/// Random 4 KiB-aligned offset below `size`.
fn random_offset(size: u64) -> u64 {
    rand::random::<u64>() % (size / RAND_BLOCK as u64) * RAND_BLOCK as u64
}

async fn bench_cluster(
    client: &Client,
    path: &str,
    replicas: Replicas,
    size: u64,
    args: &BenchArgs,
) -> Result<Vec<PassResult>> {
    let flags = OpenFlags {
        create: true,
        truncate: true,
        ..Default::default()
    };
    let file = Arc::new(client.open(path, LeaseMode::Write, flags).await?);
    client
        .set_attr(
            path,
            AttrUpdate {
                replicas: Some(replicas),
                chunk_size: None,
                ..Default::default()
            },
            false,
        )
        .await?;
    let target = format!("replicas={}", replicas.norm);
    let mut out = Vec::new();
    for pattern in PATTERNS {
        let (random, write) = (pattern.starts_with("rand"), pattern.contains("write"));
        let depth = args.depth;
        let block = if random { RAND_BLOCK } else { SEQ_BLOCK };
        let next = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..depth {
            let (file, next) = (file.clone(), next.clone());
            workers.spawn(async move {
                let mut buf = vec![0xa5u8; block];
                let mut lat = Vec::new();
                loop {
                    let offset = if random {
                        if Instant::now() >= deadline {
                            break;
                        }
                        random_offset(size)
                    } else {
                        let o = next.fetch_add(block as u64, Ordering::Relaxed);
                        if o >= size {
                            break;
                        }
                        o
                    };
                    let t = Instant::now();
                    if write {
                        file.write_at(offset, &buf).await?;
                    } else {
                        file.read_at(offset, &mut buf).await?;
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                }
                Ok::<_, Error>(lat)
            });
        }
        let mut lat = Vec::new();
        while let Some(r) = workers.join_next().await {
            lat.extend(r.map_err(|e| Error::internal(e.to_string()))??);
        }
        if write {
            file.flush().await?;
        }
        let elapsed = started.elapsed();
        let ops = lat.len() as u64;
        let (p50_us, p99_us) = percentiles(lat);
        out.push(PassResult {
            target: target.clone(),
            pattern,
            bytes: ops * block as u64,
            ops,
            elapsed,
            p50_us,
            p99_us,
        });
    }
    close(file).await?;
    Ok(out)
}

async fn close(file: Arc<File>) -> Result<()> {
    file.close().await
}

/// A 4 KiB-aligned heap buffer for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is uniquely owned plain memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("layout");
        // SAFETY: allocated above with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// The same passes on a local file with O_DIRECT, queue depth as threads.
async fn bench_local(
    path: &std::path::Path,
    size: u64,
    args: &BenchArgs,
) -> Result<Vec<PassResult>> {
    let path = path.to_path_buf();
    let (seconds, depth) = (args.seconds, args.depth);
    tokio::task::spawn_blocking(move || bench_local_blocking(&path, size, seconds, depth))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
}

fn bench_local_blocking(
    path: &std::path::Path,
    size: u64,
    seconds: u64,
    depth: usize,
) -> Result<Vec<PassResult>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| Error::from(e).context(path.display()))?;
    let mut out = Vec::new();
    for pattern in PATTERNS {
        let (random, write) = (pattern.starts_with("rand"), pattern.contains("write"));

        let block = if random { RAND_BLOCK } else { SEQ_BLOCK };
        let next = AtomicU64::new(0);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let lat: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..depth)
                .map(|_| {
                    let (file, next) = (&file, &next);
                    s.spawn(move || -> Result<Vec<u64>> {
                        let mut buf = AlignedBuf::new(block);
                        buf.as_mut().fill(0xa5);
                        let mut lat = Vec::new();
                        loop {
                            let offset = if random {
                                if Instant::now() >= deadline {
                                    break;
                                }
                                random_offset(size)
                            } else {
                                let o = next.fetch_add(block as u64, Ordering::Relaxed);
                                if o >= size {
                                    break;
                                }
                                o
                            };
                            let t = Instant::now();
                            if write {
                                file.write_all_at(buf.as_mut(), offset)?;
                            } else {
                                file.read_exact_at(buf.as_mut(), offset)?;
                            }
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(
                    h.join()
                        .map_err(|_| Error::internal("bench thread panicked"))??,
                );
            }
            Ok::<_, Error>(all)
        })?;
        if write {
            file.sync_all()?;
        }
        let elapsed = started.elapsed();
        let ops = lat.len() as u64;
        let (p50_us, p99_us) = percentiles(lat);
        out.push(PassResult {
            target: "local".to_string(),
            pattern,
            bytes: ops * block as u64,
            ops,
            elapsed,
            p50_us,
            p99_us,
        });
    }
    Ok(out)
}
