//! The simulated fleet both scale examples place chunks on: chunk servers
//! 20 per host, 5 hosts per rack, 5 racks per row, each of 100 TiB, and a
//! reader of this process's memory figures.

use pstorage_core::mds::placement::ServerView;
use pstorage_core::types::CsId;

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
