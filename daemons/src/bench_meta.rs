//! `pstorage -c CLUSTER bench --metadata`: namespace operations per second
//! through the native SDK, with N clients (each its own connection and
//! session, as N processes would have), next to the same operations on the
//! local file system in the same run (N threads).
//!
//! Each client works in a directory of its own and runs the passes one
//! after another, all clients at once: create (an open that creates the
//! file, then its close: what `touch` costs), stat, rename (within its
//! directory), unlink. A pass ends when every client has done its files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::conf::ClusterConf;
use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_core::{Error, Result};

/// The passes, in the order they run.
pub const META_PASSES: [&str; 4] = ["create", "stat", "rename", "unlink"];

/// One measured pass.
#[derive(Debug, Clone)]
pub struct MetaResult {
    pub target: &'static str,
    pub pass: &'static str,
    pub ops: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl MetaResult {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the metadata passes with `clients` clients of `files` files each,
/// on the cluster and (unless `local_dir` is `None`) in a fresh directory
/// under `local_dir`, and prints a table.
pub async fn run(
    conf: &ClusterConf,
    clients: usize,
    files: usize,
    local_dir: Option<PathBuf>,
) -> Result<Vec<MetaResult>> {
    if clients == 0 || files == 0 {
        return Err(Error::invalid(
            "bench --metadata needs --clients >= 1 and --files >= 1",
        ));
    }
    let mut results = Vec::new();
    if let Some(dir) = local_dir {
        let root = dir.join(format!("pstorage-bench-meta-{}", std::process::id()));
        let local = tokio::task::spawn_blocking({
            let root = root.clone();
            move || local_passes(&root, clients, files)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
        let _ = std::fs::remove_dir_all(&root);
        results.extend(local?);
    }
    let mut sdk = Vec::with_capacity(clients);
    for _ in 0..clients {
        sdk.push(Arc::new(pstorage_rpc::node::connect_client(
            conf,
            ClientOptions::default(),
        )?));
    }
    let root = format!("/.bench/meta-{}", std::process::id());
    sdk[0].mkdir(&root, true).await?;
    let cluster = cluster_passes(&sdk, &root, files).await;
    // Whatever a failed pass left behind.
    for (i, client) in sdk.iter().enumerate() {
        let dir = format!("{root}/c{i}");
        if let Ok(entries) = client.readdir(&dir).await {
            for e in entries {
                let _ = client.unlink(&format!("{dir}/{}", e.name)).await;
            }
        }
        let _ = client.unlink(&dir).await;
    }
    let _ = sdk[0].unlink(&root).await;
    results.extend(cluster?);
    print_table(&results);
    Ok(results)
}

fn print_table(results: &[MetaResult]) {
    println!(
        "{:<8} {:<8} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "target", "pass", "ops", "ops/s", "p50 us", "p99 us", "vs local"
    );
    for r in results {
        let local = results
            .iter()
            .find(|l| l.target == "local" && l.pass == r.pass);
        let ratio = match local {
            Some(l) if r.target != "local" && l.ops_per_s() > 0.0 => {
                format!("{:.3}x", r.ops_per_s() / l.ops_per_s())
            }
            _ => "-".to_string(),
        };
        println!(
            "{:<8} {:<8} {:>9} {:>10.0} {:>9} {:>9} {:>9}",
            r.target,
            r.pass,
            r.ops,
            r.ops_per_s(),
            r.p50_us,
            r.p99_us,
            ratio
        );
    }
}

fn result(
    target: &'static str,
    pass: &'static str,
    started: Instant,
    mut lat_us: Vec<u64>,
) -> MetaResult {
    let elapsed = started.elapsed();
    lat_us.sort_unstable();
    let at = |q: f64| {
        lat_us
            .get(((lat_us.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    MetaResult {
        target,
        pass,
        ops: lat_us.len() as u64,
        elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

async fn cluster_passes(
    clients: &[Arc<Client>],
    root: &str,
    files: usize,
) -> Result<Vec<MetaResult>> {
    for (i, client) in clients.iter().enumerate() {
        client.mkdir(&format!("{root}/c{i}"), false).await?;
    }
    let mut out = Vec::new();
    for pass in META_PASSES {
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for (i, client) in clients.iter().enumerate() {
            let client = client.clone();
            let dir = format!("{root}/c{i}");
            workers.spawn(async move {
                let mut lat = Vec::with_capacity(files);
                for j in 0..files {
                    let (name, renamed) = (format!("{dir}/f{j}"), format!("{dir}/g{j}"));
                    let t = Instant::now();
                    match pass {
                        "create" => {
                            let flags = OpenFlags {
                                create: true,
                                exclusive: true,
                                ..Default::default()
                            };
                            let file = client.open(&name, LeaseMode::Write, flags).await?;
                            file.close().await?;
                        }
                        "stat" => {
                            client.stat(&name).await?;
                        }
                        "rename" => client.rename(&name, &renamed).await?,
                        _ => client.unlink(&renamed).await?,
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
        out.push(result("cluster", pass, started, lat));
    }
    Ok(out)
}

/// The same passes on the local file system, a thread per client.
fn local_passes(root: &Path, clients: usize, files: usize) -> Result<Vec<MetaResult>> {
    let io = |e: std::io::Error, path: &Path| Error::from(e).context(path.display());
    for i in 0..clients {
        let dir = root.join(format!("c{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| io(e, &dir))?;
    }
    let mut out = Vec::new();
    for pass in META_PASSES {
        let started = Instant::now();
        let lat: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|i| {
                    let dir = root.join(format!("c{i}"));
                    s.spawn(move || -> Result<Vec<u64>> {
                        let mut lat = Vec::with_capacity(files);
                        for j in 0..files {
                            let name = dir.join(format!("f{j}"));
                            let renamed = dir.join(format!("g{j}"));
                            let t = Instant::now();
                            match pass {
                                "create" => {
                                    std::fs::OpenOptions::new()
                                        .write(true)
                                        .create_new(true)
                                        .open(&name)
                                        .map_err(|e| io(e, &name))?;
                                }
                                "stat" => {
                                    std::fs::metadata(&name).map_err(|e| io(e, &name))?;
                                }
                                "rename" => {
                                    std::fs::rename(&name, &renamed).map_err(|e| io(e, &name))?
                                }
                                _ => std::fs::remove_file(&renamed).map_err(|e| io(e, &renamed))?,
                            }
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for h in handles {
                lat.extend(
                    h.join()
                        .map_err(|_| Error::internal("a local bench thread panicked"))??,
                );
            }
            Ok::<_, Error>(lat)
        })?;
        out.push(result("local", pass, started, lat));
    }
    Ok(out)
}
