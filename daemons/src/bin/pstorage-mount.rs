//! `pstorage-mount -c NAME [--conf-dir DIR] MOUNTPOINT [-o OPTS] [-f]`:
//! mounts a pstorage cluster with FUSE. Daemonizes once the mount is ready
//! unless `-f`; `fusermount3 -u MOUNTPOINT`, `umount`, SIGTERM or SIGINT
//! unmount it. The logic is `pstorage_daemons::mount`.
use clap::Parser;

/// mimalloc, not glibc's malloc: a chunk server's 4 KiB writes allocate
/// buffers of 4-64 KiB (frames, TLS records) that glibc serves from its
/// slow paths (docs/design.md, "Known limits").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pstorage_daemons::cli::init_logging();
    let args = pstorage_daemons::mount::MountArgs::parse();
    if let Err(e) = pstorage_daemons::mount::run(args) {
        eprintln!("pstorage-mount: {e}");
        std::process::exit(1);
    }
}
