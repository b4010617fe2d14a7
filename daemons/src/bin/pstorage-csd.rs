//! `pstorage-csd -r DIR`: runs a chunk server created by `pstorage make-cs`
//! in the foreground. SIGTERM or SIGINT stops it cleanly.
use clap::Parser;

#[derive(Parser)]
#[command(name = "pstorage-csd", version, about = "pstorage chunk server")]
struct Args {
    /// CS data directory (from `pstorage make-cs -r DIR`).
    #[arg(short = 'r')]
    dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() {
    pstorage_daemons::cli::init_logging();
    let args = Args::parse();
    let stop = pstorage_daemons::cli::termination();
    if let Err(e) = pstorage_rpc::node::run_cs(&args.dir, stop).await {
        eprintln!("pstorage-csd: {e}");
        std::process::exit(1);
    }
}
