//! The MDS's metadata at scale: the real `MdsState` with 1,000 chunk
//! servers and 1,000,000 chunks of 256 MiB at replicas 3 (1,000 files of
//! 1,000 chunks each, placed by `placement::choose` with failure domain
//! host: 20 CSes per host, 50 hosts, 10 racks). Measures the memory the
//! state takes (resident set before and after), the time per
//! `AllocateChunk` applied, and the store: the size and write time of a
//! snapshot (`MdsStore::create`) and the time to load it back.
//!
//! Run it optimized (debug builds check every invariant after each
//! command, which is quadratic here):
//! `cargo run --release -p pstorage-core --example mds_scale [CHUNKS]`

use std::time::Instant;

use pstorage_core::mds::placement::ServerView;
use pstorage_core::mds::state::{ApplyOutcome, Command, MdsState};
use pstorage_core::mds::store::MdsStore;
use pstorage_core::types::{CsId, FileAttrs, LeaseId, LeaseMode, MapVersion, OpenFlags, Perms};

#[path = "fleet/mod.rs"]
mod fleet;
use fleet::{place_new, server, status_kib};

const CHUNK: u64 = 256 << 20;
const SERVERS: u32 = 1000;
const CHUNKS_PER_FILE: u64 = 1000;

fn apply(state: &mut MdsState, cmd: Command) -> ApplyOutcome {
    match state.apply(cmd) {
        Ok(outcome) => outcome,
        Err(e) => panic!("command refused: {e}"),
    }
}

fn main() {
    let chunks: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let attrs = FileAttrs {
        chunk_size: CHUNK,
        ..FileAttrs::default()
    };
    let mut state = match MdsState::new(attrs) {
        Ok(state) => state,
        Err(e) => panic!("new state: {e}"),
    };
    let mut servers: Vec<ServerView> = (1..=SERVERS).map(CsId).map(server).collect();
    for cs in 1..=SERVERS {
        apply(&mut state, Command::AllocateCsId);
        apply(
            &mut state,
            Command::SetCsAddr {
                cs: CsId(cs),
                addr: format!("10.0.{}.{}:9500", cs / 250, cs % 250),
            },
        );
    }
    let rss_before = status_kib("VmRSS:");
    let mut applying = std::time::Duration::ZERO;
    let mut lease = LeaseId(0);
    for n in 0..chunks {
        let index = n % CHUNKS_PER_FILE;
        if index == 0 {
            let opened = apply(
                &mut state,
                Command::Open {
                    perms: Perms::FILE,
                    path: format!("/vm-{:04}.img", n / CHUNKS_PER_FILE),
                    mode: LeaseMode::Write,
                    flags: OpenFlags {
                        create: true,
                        ..OpenFlags::default()
                    },
                    now_ms: 0,
                    lease_duration_ms: u64::MAX / 4,
                },
            );
            let ApplyOutcome::Opened { lease: granted, .. } = opened else {
                panic!("open answered {opened:?}");
            };
            lease = granted.id;
        }
        let replicas = place_new(&mut servers, CHUNK);
        let cmd = Command::AllocateChunk {
            lease,
            index,
            chunk: state.next_chunk_id(),
            version: MapVersion(1),
            replicas,
            now_ms: 0,
        };
        let started = Instant::now();
        apply(&mut state, cmd);
        applying += started.elapsed();
    }
    let rss_after = status_kib("VmRSS:");
    let grown = rss_after.saturating_sub(rss_before);
    println!(
        "MdsState with {chunks} chunks x 3 replicas, {SERVERS} CSes, {} files: resident set grew by {} MiB ({} bytes per chunk); {:.2} us per AllocateChunk applied",
        chunks.div_ceil(CHUNKS_PER_FILE),
        grown / 1024,
        grown * 1024 / chunks.max(1),
        applying.as_secs_f64() * 1e6 / chunks.max(1) as f64
    );

    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("temp dir: {e}"),
    };
    let path = dir.path().join("mds.redb");
    let started = Instant::now();
    let store = match MdsStore::create(&path, &state) {
        Ok(store) => store,
        Err(e) => panic!("store: {e}"),
    };
    let wrote = started.elapsed();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let loaded = match store.load() {
        Ok(state) => state,
        Err(e) => panic!("load: {e}"),
    };
    let read = started.elapsed();
    assert_eq!(
        loaded.chunks().count() as u64,
        chunks,
        "the snapshot holds every chunk"
    );
    println!(
        "snapshot: {} MiB on disk, written in {:.2} s, loaded in {:.2} s; peak resident set {} MiB",
        bytes >> 20,
        wrote.as_secs_f64(),
        read.as_secs_f64(),
        status_kib("VmHWM:") / 1024
    );
}
