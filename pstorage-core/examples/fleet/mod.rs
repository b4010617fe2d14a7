//! The simulated fleet both scale examples place chunks on: chunk servers
//! 20 per host, 5 hosts per rack, 5 racks per row, each of 100 TiB, and a
//! reader of this process's memory figures.

use pstorage_core::mds::placement::{choose, Request, ServerView};
use pstorage_core::types::{CsId, FailureDomain};

/// Bytes each simulated chunk server may hold.
pub const CAPACITY: u64 = 100 << 40;

/// Chunk server `id` (from 1): host `(id - 1) / 20`, rack `host / 5`.
pub fn server(id: CsId) -> ServerView {
    let host = (id.0 - 1) / 20;
    let rack = host / 5;
    ServerView {
        id,
        location: format!("0.{}.{rack}", rack / 5),
        host: format!("host{host}"),
        tier: 0,
        held_bytes: 0,
        capacity_bytes: CAPACITY,
        free_bytes: CAPACITY,
        eligible: true,
        active: true,
    }
}

/// Places a new chunk of `chunk_bytes` at replicas 3, failure domain host
/// (`placement::choose`), and counts it on the chosen servers.
pub fn place_new(servers: &mut [ServerView], chunk_bytes: u64) -> Vec<CsId> {
    let chosen = choose(
        servers,
        &Request {
            tier: 0,
            domain: FailureDomain::Host,
            members: &[],
            exclude: &[],
            count: 3,
            chunk_bytes,
        },
    );
    for id in &chosen {
        let s = &mut servers[id.0 as usize - 1];
        s.held_bytes += chunk_bytes;
        s.free_bytes -= chunk_bytes;
    }
    chosen
}

/// A `/proc/self/status` figure in KiB (`VmRSS:`, `VmHWM:`); 0 if absent.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
