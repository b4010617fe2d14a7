use clap::Parser;

/// mimalloc, not glibc's malloc: a chunk server's 4 KiB writes allocate
/// buffers of 4-64 KiB (frames, TLS records) that glibc serves from its
/// slow paths (docs/design.md, "Known limits").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pstorage_daemons::cli::init_logging();
    let cli = pstorage_daemons::cli::Cli::parse();
    // A server that chose its threads gets that runtime (nbd-serve serves
    // on one by default); every other command the multi-thread default.
    let runtime = match cli.runtime_threads() {
        Some(threads) => pstorage_rpc::node::runtime(threads, "pstorage"),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                pstorage_core::error::Error::internal(format!("cannot build a runtime: {e}"))
            }),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pstorage: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(pstorage_daemons::cli::run(cli));
    std::process::exit(code);
}
