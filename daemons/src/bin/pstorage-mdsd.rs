//! `pstorage-mdsd -r DIR [--metrics ADDR:PORT]`: runs a metadata server created by `pstorage make-mds`
//! in the foreground. SIGTERM or SIGINT stops it cleanly.
use clap::Parser;

#[derive(Parser)]
#[command(name = "pstorage-mdsd", version, about = "pstorage metadata server")]
struct Args {
    /// MDS data directory (from `pstorage make-mds -r DIR`).
    #[arg(short = 'r')]
    dir: std::path::PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
}

/// mimalloc, not glibc's malloc: a chunk server's 4 KiB writes allocate
/// buffers of 4-64 KiB (frames, TLS records) that glibc serves from its
/// slow paths (docs/design.md, "Known limits").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread runs the MDS: its Raft core, its services and every RPC
/// connection ([`pstorage_rpc::actor::run_hosted`]); log syncs and other
/// blocking work go to tokio's blocking pool.
fn main() {
    pstorage_daemons::cli::init_logging();
    let args = Args::parse();
    let options = pstorage_rpc::node::RunOptions {
        metrics: args.metrics,
    };
    let outcome = pstorage_rpc::actor::run_hosted(async move {
        let stop = pstorage_daemons::cli::termination();
        pstorage_rpc::node::run_mds_with(&args.dir, options, stop).await
    });
    if let Err(e) = outcome.and_then(|served| served) {
        eprintln!("pstorage-mdsd: {e}");
        std::process::exit(1);
    }
}
