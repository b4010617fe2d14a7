use clap::Parser;

#[tokio::main]
async fn main() {
    pstorage_daemons::cli::init_logging();
    let cli = pstorage_daemons::cli::Cli::parse();
    std::process::exit(pstorage_daemons::cli::run(cli).await);
}
