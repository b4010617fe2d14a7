//! Placement at scale: 1,000 chunk servers (20 per host, 50 hosts in 10
//! racks), 1,000,000 chunks of 256 MiB at replicas 3, failure domain
//! host. Measures the time per allocation (`placement::choose`), per
//! rebalancing pass (`placement::plan_rebalance` after 50 empty servers
//! join), and shows how the re-replication of a lost host spreads over the
//! surviving hosts.
//!
//! Run: `cargo run -p pstorage-core --example placement_bench [CHUNKS]`
//! (the dev profile is optimized).

use std::collections::BTreeMap;
use std::time::Instant;

use pstorage_core::mds::placement::{choose, plan_rebalance, ChunkView, Request, ServerView};
use pstorage_core::types::{ChunkId, CsId, FailureDomain};

#[path = "fleet/mod.rs"]
mod fleet;
use fleet::{place_new, server, status_kib};

const CHUNK: u64 = 256 << 20;

fn main() {
    let chunks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut servers: Vec<ServerView> = (1..=1000).map(CsId).map(server).collect();
    let mut chains: Vec<Vec<CsId>> = Vec::with_capacity(chunks);
    let started = Instant::now();
    for _ in 0..chunks {
        let chosen = place_new(&mut servers, CHUNK);
        chains.push(chosen);
    }
    let per_alloc = started.elapsed().as_secs_f64() / chunks as f64;
    let held: Vec<u64> = servers.iter().map(|s| s.held_bytes / CHUNK).collect();
    println!(
        "allocation: {chunks} chunks x 3 replicas on 1000 CSes / 50 hosts / 10 racks: {:.1} us per allocation; replicas per CS min {} max {}",
        per_alloc * 1e6,
        held.iter().min().expect("at least one server"),
        held.iter().max().expect("at least one server")
    );

    // Lose host 0 (CSes 1-20): one new replica per chunk that had one there.
    let lost: Vec<CsId> = (1..=20).map(CsId).collect();
    let mut survivors = servers.clone();
    for s in survivors.iter_mut().filter(|s| lost.contains(&s.id)) {
        s.eligible = false;
        s.active = false;
    }
    let mut per_host: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut copies = 0u64;
    for chain in &chains {
        if !chain.iter().any(|c| lost.contains(c)) {
            continue;
        }
        let members: Vec<CsId> = chain
            .iter()
            .copied()
            .filter(|c| !lost.contains(c))
            .collect();
        let to = choose(
            &survivors,
            &Request {
                tier: 0,
                domain: FailureDomain::Host,
                members: &members,
                exclude: &[],
                count: 1,
                chunk_bytes: CHUNK,
            },
        );
        for t in to {
            let s = &mut survivors[t.0 as usize - 1];
            s.held_bytes += CHUNK;
            *per_host.entry(s.host.clone()).or_default() += 1;
            copies += 1;
        }
    }
    let counts: Vec<u64> = per_host.values().copied().collect();
    println!(
        "losing host0 (20 CSes): {copies} copies in {:.2} s of planning, spread over {} surviving hosts: min {} max {} copies per host",
        started.elapsed().as_secs_f64(),
        per_host.len(),
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0)
    );

    // Grow by 50 empty CSes (new hosts) and time rebalancing passes.
    for id in 1001..=1050 {
        let mut s = server(CsId(id));
        s.host = format!("new{}", (id - 1001) / 10);
        servers.push(s);
    }
    let views: Vec<ChunkView> = chains
        .iter()
        .enumerate()
        .map(|(i, m)| ChunkView {
            chunk: ChunkId(i as u64 + 1),
            members: m,
            tier: 0,
            domain: FailureDomain::Host,
            bytes: CHUNK,
            busy: false,
        })
        .collect();
    for limit in [1usize, 64, 1024] {
        let started = Instant::now();
        let plan = plan_rebalance(&servers, &views, 10, limit);
        println!(
            "rebalancing pass over {chunks} chunks with 50 new empty CSes, up to {limit} moves: {:.3} s, {} moves planned, ~{} pending, spread {}.{}%",
            started.elapsed().as_secs_f64(),
            plan.moves.len(),
            plan.pending,
            plan.spread_permille / 10,
            plan.spread_permille % 10
        );
    }
    println!(
        "bench process peak RSS (chains, views, servers; not the MDS): {} MiB",
        status_kib("VmHWM:") / 1024
    );
}
