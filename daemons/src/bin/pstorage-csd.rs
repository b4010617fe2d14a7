//! `pstorage-csd -r DIR [--metrics ADDR:PORT] [--threads N]`: runs a chunk server created by
//! `pstorage make-cs` in the foreground. SIGTERM or SIGINT stops it cleanly.
use clap::Parser;

#[derive(Parser)]
#[command(name = "pstorage-csd", version, about = "pstorage chunk server")]
struct Args {
    /// CS data directory (from `pstorage make-cs -r DIR`).
    #[arg(short = 'r')]
    dir: std::path::PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Threads serving requests (1..64). The default, 1, measured best on
    /// a 2-core host; more may pay where one CS's disk outruns a core.
    #[arg(long, default_value_t = pstorage_rpc::node::CS_DEFAULT_THREADS)]
    threads: usize,
}

/// mimalloc, not glibc's malloc: a chunk server's 4 KiB writes allocate
/// buffers of 4-64 KiB (frames, TLS records) that glibc serves from its
/// slow paths (docs/design.md, "Known limits").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pstorage_daemons::cli::init_logging();
    let args = Args::parse();
    if !(1..=64).contains(&args.threads) {
        eprintln!("pstorage-csd: --threads must be within 1..64");
        std::process::exit(2);
    }
    let result = pstorage_rpc::node::runtime(args.threads, "pstorage-csd").and_then(|rt| {
        rt.block_on(async {
            let stop = pstorage_daemons::cli::termination();
            let options = pstorage_rpc::node::RunOptions {
                metrics: args.metrics,
            };
            pstorage_rpc::node::run_cs_with(&args.dir, options, stop).await
        })
    });
    if let Err(e) = result {
        eprintln!("pstorage-csd: {e}");
        std::process::exit(1);
    }
}
