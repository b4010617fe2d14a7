//! Placement: which chunk servers get a chunk's replicas, and which
//! replicas rebalancing moves. Pure functions: a view of the servers (and
//! chunks) in, a choice out; no I/O, no clock, no randomness, so the
//! property tests below can run them over many generated clusters and the
//! MDS can call them under its state mutex.
//!
//! Rules, in order of precedence:
//!
//! 1. A chunk lives only on servers of its file's tier.
//! 2. Failure domains: no two replicas of a chunk share a domain (the
//!    server itself for `disk`, its host, its rack `ROOM.ROW.RACK`, its row
//!    `ROOM.ROW` or its room) while the tier has enough domains; with fewer
//!    domains than replicas they are filled as evenly as possible (each new
//!    replica goes to a domain holding the fewest replicas of the chunk).
//!    A server made before locations existed (empty host) is a host of its
//!    own.
//! 3. Among what the domains allow, the emptiest server first: fullness is
//!    the bytes of chunks a server holds over its capacity (ties: most free
//!    space, then lower id), counting each replica chosen so far.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::types::{ChunkId, CsId, FailureDomain};

/// Capacity assumed for a server that reports none (fakes, a server that
/// has not reported its space yet): fullness then orders by bytes held.
const UNKNOWN_CAPACITY_BYTES: u64 = 1 << 50;

/// One chunk server as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// The chunk server's id.
    pub id: CsId,
    /// `ROOM.ROW.RACK`.
    pub location: String,
    /// Empty: unknown (a host of its own).
    pub host: String,
    /// Its storage tier.
    pub tier: u8,
    /// Bytes of chunks it holds (plus those placed on it since).
    pub held_bytes: u64,
    /// Bytes it may fill; 0 = unknown.
    pub capacity_bytes: u64,
    /// Free bytes it reports, minus what was placed since (the tie-breaker
    /// between servers equally full).
    pub free_bytes: u64,
    /// May take new replicas now (active, registered, not being released,
    /// above the fill margin).
    pub eligible: bool,
    /// Counts for balance and may be a source of moves (active, not being
    /// released); a server that is not is left alone by rebalancing.
    pub active: bool,
}

/// The failure domain a server is in, for one kind of domain (borrowed
/// from the server's view: comparing two costs no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainKey<'a> {
    level: FailureDomain,
    /// The host, or the location (or its `ROOM.ROW` / `ROOM` prefix).
    name: &'a str,
    /// The server itself (`disk`, or a host of its own).
    cs: CsId,
}

impl ServerView {
    /// The failure domain of kind `domain` this server is in.
    pub fn domain_key(&self, domain: FailureDomain) -> DomainKey<'_> {
        let prefix = |dots: usize| -> &str {
            match self.location.match_indices('.').nth(dots) {
                Some((at, _)) => &self.location[..at],
                None => &self.location,
            }
        };
        let (name, cs) = match domain {
            FailureDomain::Disk => ("", self.id),
            FailureDomain::Host if self.host.is_empty() => ("", self.id),
            FailureDomain::Host => (self.host.as_str(), CsId(0)),
            FailureDomain::Rack => (self.location.as_str(), CsId(0)),
            FailureDomain::Row => (prefix(1), CsId(0)),
            FailureDomain::Room => (prefix(0), CsId(0)),
        };
        let level = if cs != CsId(0) {
            FailureDomain::Disk
        } else {
            domain
        };
        DomainKey { level, name, cs }
    }

    fn capacity(&self) -> u64 {
        if self.capacity_bytes == 0 {
            UNKNOWN_CAPACITY_BYTES
        } else {
            self.capacity_bytes
        }
    }

    /// Fullness with `extra` more bytes, as a fraction scaled to 1e9 (a
    /// total order that does not need floats).
    fn fullness_with(&self, extra: u64) -> u64 {
        let held = self.held_bytes.saturating_add(extra) as u128;
        (held * 1_000_000_000 / self.capacity() as u128).min(u64::MAX as u128) as u64
    }

    /// Fullness in parts per billion of capacity.
    pub fn fullness_ppb(&self) -> u64 {
        self.fullness_with(0)
    }
}

/// What one placement decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The tier of the chunk's file.
    pub tier: u8,
    /// The failure domain the chunk's replicas must be spread over.
    pub domain: FailureDomain,
    /// Members the chunk keeps (their domains count as used).
    pub members: &'a [CsId],
    /// Servers that must not be chosen (besides `members`).
    pub exclude: &'a [CsId],
    /// Replicas wanted.
    pub count: usize,
    /// The chunk's size (added to a server's fullness once chosen).
    pub chunk_bytes: u64,
}

/// Picks up to `req.count` distinct eligible servers of the tier, spread
/// over failure domains (see the module doc), emptiest first. Fewer when
/// the tier has fewer eligible servers. O(servers x count).
pub fn choose(servers: &[ServerView], req: &Request) -> Vec<CsId> {
    // Domains in use and how many replicas each holds (a handful).
    fn note<'a>(used: &mut Vec<(DomainKey<'a>, usize)>, key: DomainKey<'a>) {
        match used.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => used.push((key, 1)),
        }
    }
    let mut used: Vec<(DomainKey, usize)> = Vec::new();
    for m in req.members {
        if let Some(s) = servers.iter().find(|s| s.id == *m) {
            note(&mut used, s.domain_key(req.domain));
        }
    }
    let mut chosen: Vec<CsId> = Vec::with_capacity(req.count);
    while chosen.len() < req.count {
        let best = servers
            .iter()
            .filter(|s| s.eligible && s.tier == req.tier)
            .filter(|s| {
                !req.members.contains(&s.id)
                    && !req.exclude.contains(&s.id)
                    && !chosen.contains(&s.id)
            })
            .min_by_key(|s| {
                let key = s.domain_key(req.domain);
                (
                    used.iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, n)| *n)
                        .unwrap_or(0),
                    s.fullness_with(req.chunk_bytes),
                    std::cmp::Reverse(s.free_bytes),
                    s.id,
                )
            });
        let Some(s) = best else { break };
        note(&mut used, s.domain_key(req.domain));
        chosen.push(s.id);
    }
    chosen
}

/// The distinct failure domains of `domain` among the servers of `tier`
/// that hold or may get replicas (active or eligible).
pub fn domains_in_tier(servers: &[ServerView], tier: u8, domain: FailureDomain) -> usize {
    servers
        .iter()
        .filter(|s| s.tier == tier && (s.active || s.eligible))
        .map(|s| s.domain_key(domain))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Whether the chain `members` breaks its failure domain rule: two members
/// share a domain although the tier has a domain none of them uses.
pub fn violates_domain(
    servers: &[ServerView],
    members: &[CsId],
    tier: u8,
    domain: FailureDomain,
) -> bool {
    let by_id: HashMap<CsId, &ServerView> = servers.iter().map(|s| (s.id, s)).collect();
    violates_domain_in(&by_id, servers, members, tier, domain)
}

fn violates_domain_in(
    by_id: &HashMap<CsId, &ServerView>,
    servers: &[ServerView],
    members: &[CsId],
    tier: u8,
    domain: FailureDomain,
) -> bool {
    let keys: Vec<DomainKey> = members
        .iter()
        .filter_map(|m| by_id.get(m))
        .map(|s| s.domain_key(domain))
        .collect();
    let distinct: BTreeSet<&DomainKey> = keys.iter().collect();
    if distinct.len() == keys.len() {
        return false;
    }
    // A free domain with an eligible server is needed to do better.
    servers.iter().any(|s| {
        s.eligible
            && s.tier == tier
            && !members.contains(&s.id)
            && !distinct.contains(&s.domain_key(domain))
    })
}

/// The chain head of a new chunk: chunks take turns, so the client
/// traffic (which enters at the head) spreads over the replicas' servers.
/// Rotates `chain` so that element `(chunk - 1) % len` comes first (chunk
/// ids start at 1: the first chunk keeps the emptiest-first order).
pub fn rotate_head(chunk: ChunkId, chain: &mut [CsId]) {
    if !chain.is_empty() {
        let k = (chunk.0.wrapping_sub(1) % chain.len() as u64) as usize;
        chain.rotate_left(k);
    }
}

/// One chunk as rebalancing sees it.
#[derive(Debug, Clone, Copy)]
pub struct ChunkView<'a> {
    /// The chunk.
    pub chunk: ChunkId,
    /// Its replica chain's chunk servers.
    pub members: &'a [CsId],
    /// The tier of the chunk's file.
    pub tier: u8,
    /// The failure domain of the chunk's file.
    pub domain: FailureDomain,
    /// The chunk's size in bytes.
    pub bytes: u64,
    /// Being copied, planned, or otherwise not to be touched now.
    pub busy: bool,
}

/// A replica move: copy `chunk` to `to`, then drop it from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The chunk to move.
    pub chunk: ChunkId,
    /// The chunk server it leaves.
    pub from: CsId,
    /// The chunk server it is copied to.
    pub to: CsId,
    /// To fix a failure domain violation (else: to balance fullness).
    pub fixes_domain: bool,
}

/// What one rebalancing pass decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebalancePlan {
    /// At most `limit` moves, domain fixes first.
    pub moves: Vec<Move>,
    /// Moves still wanted after these (an estimate: domain violations left
    /// plus the balancing moves the pass stopped short of).
    pub pending: u64,
    /// Fullest minus emptiest active server of any tier, per mille of
    /// capacity, before the moves.
    pub spread_permille: u64,
}

/// The band of a tier: `band_percent` of the mean fullness, never tighter
/// than one chunk of `chunk_bytes` on the smallest server. In ppb.
fn band_ppb(tier_servers: &[&ServerView], band_percent: u64, chunk_bytes: u64) -> u64 {
    let n = tier_servers.len().max(1) as u128;
    let mean: u128 = tier_servers
        .iter()
        .map(|s| s.fullness_ppb() as u128)
        .sum::<u128>()
        / n;
    let relative = (mean * band_percent as u128 / 100) as u64;
    let one_chunk = tier_servers
        .iter()
        .map(|s| (chunk_bytes as u128 * 1_000_000_000 / s.capacity() as u128) as u64)
        .max()
        .unwrap_or(0);
    relative.max(one_chunk)
}

/// Plans up to `limit` replica moves: first chunks that violate their
/// failure domain (to a server of a free domain), then, per tier, from the
/// fullest active server (the next fullest when the domain rule pins every
/// chunk of that one) to the emptiest eligible one while their fullness
/// differs by more than the band (`band_percent` of the tier's mean, never
/// tighter than one chunk) and the move does not make the target fuller
/// than the source was. A move keeps the chunk's domain rule (it never
/// puts two replicas in one domain that were not before). Chunks marked
/// busy are left alone. O(replicas + moves x servers).
pub fn plan_rebalance(
    servers: &[ServerView],
    chunks: &[ChunkView],
    band_percent: u64,
    limit: usize,
) -> RebalancePlan {
    let mut plan = RebalancePlan::default();
    let mut view: Vec<ServerView> = servers.to_vec();
    let index: HashMap<CsId, usize> = view.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let tiers: BTreeSet<u8> = view.iter().filter(|s| s.active).map(|s| s.tier).collect();
    for &tier in &tiers {
        let fullness: Vec<u64> = view
            .iter()
            .filter(|s| s.active && s.tier == tier)
            .map(|s| s.fullness_ppb())
            .collect();
        let spread = fullness.iter().max().unwrap_or(&0) - fullness.iter().min().unwrap_or(&0);
        plan.spread_permille = plan.spread_permille.max(spread / 1_000_000);
    }
    let mut touched: BTreeSet<ChunkId> = BTreeSet::new();
    // 1. Failure domain violations.
    {
        let by_id: HashMap<CsId, &ServerView> = servers.iter().map(|s| (s.id, s)).collect();
        for c in chunks.iter().filter(|c| !c.busy) {
            if !violates_domain_in(&by_id, servers, c.members, c.tier, c.domain) {
                continue;
            }
            if plan.moves.len() >= limit {
                plan.pending += 1;
                continue;
            }
            // The victim: in a shared domain, the fullest of those.
            let mut seen: HashMap<DomainKey, usize> = HashMap::new();
            for m in c.members {
                if let Some(s) = by_id.get(m) {
                    *seen.entry(s.domain_key(c.domain)).or_default() += 1;
                }
            }
            let Some(from) = c
                .members
                .iter()
                .filter_map(|m| by_id.get(m))
                .filter(|s| seen[&s.domain_key(c.domain)] > 1)
                .max_by_key(|s| (s.fullness_ppb(), s.id))
                .map(|s| s.id)
            else {
                continue;
            };
            let keep: Vec<CsId> = c.members.iter().copied().filter(|&m| m != from).collect();
            let to = choose(
                &view,
                &Request {
                    tier: c.tier,
                    domain: c.domain,
                    members: &keep,
                    exclude: &[from],
                    count: 1,
                    chunk_bytes: c.bytes,
                },
            );
            let Some(&to) = to.first() else { continue };
            let to_key = view[index[&to]].domain_key(c.domain);
            if keep
                .iter()
                .filter_map(|m| by_id.get(m))
                .any(|s| s.domain_key(c.domain) == to_key)
            {
                continue;
            }
            view[index[&from]].held_bytes = view[index[&from]].held_bytes.saturating_sub(c.bytes);
            view[index[&to]].held_bytes = view[index[&to]].held_bytes.saturating_add(c.bytes);
            touched.insert(c.chunk);
            plan.moves.push(Move {
                chunk: c.chunk,
                from,
                to,
                fixes_domain: true,
            });
        }
    }
    // 2. Balance, per tier.
    let mut on_server: BTreeMap<CsId, Vec<usize>> = BTreeMap::new();
    for (i, c) in chunks.iter().enumerate() {
        if c.busy || touched.contains(&c.chunk) {
            continue;
        }
        for m in c.members {
            on_server.entry(*m).or_default().push(i);
        }
    }
    for &tier in &tiers {
        let chunk_bytes = chunks
            .iter()
            .filter(|c| c.tier == tier)
            .map(|c| c.bytes)
            .max()
            .unwrap_or(0);
        // Sources with no chunk that may move this pass (the domain rule
        // can pin every chunk of the fullest server): the next fullest is
        // tried instead of ending the pass.
        let mut stuck: BTreeSet<CsId> = BTreeSet::new();
        loop {
            let members: Vec<&ServerView> =
                view.iter().filter(|s| s.active && s.tier == tier).collect();
            let band = band_ppb(&members, band_percent, chunk_bytes);
            let Some(src) = members
                .iter()
                .filter(|s| !stuck.contains(&s.id))
                .max_by_key(|s| (s.fullness_ppb(), std::cmp::Reverse(s.id)))
                .map(|s| s.id)
            else {
                break;
            };
            let mut targets: Vec<&ServerView> = members
                .iter()
                .copied()
                .filter(|s| s.eligible && s.id != src)
                .collect();
            targets.sort_by_key(|s| (s.fullness_ppb(), s.id));
            let src_full = view[index[&src]].fullness_ppb();
            if targets
                .first()
                .is_none_or(|t| src_full.saturating_sub(t.fullness_ppb()) <= band)
            {
                break;
            }
            if plan.moves.len() >= limit {
                // How many more moves the spread needs, roughly.
                let t = targets[0];
                let gap = src_full - t.fullness_ppb();
                let per_move = (chunk_bytes as u128 * 1_000_000_000
                    / view[index[&src]].capacity() as u128)
                    .max(1) as u64;
                plan.pending += (gap / per_move / 2).max(1);
                break;
            }
            // A chunk on the source that can go to one of the emptier targets.
            let mut found = None;
            'search: for t in targets
                .iter()
                .take_while(|t| src_full.saturating_sub(t.fullness_ppb()) > band)
            {
                let Some(list) = on_server.get(&src) else {
                    break;
                };
                for &ci in list {
                    let c = &chunks[ci];
                    if touched.contains(&c.chunk) || c.tier != tier || c.members.contains(&t.id) {
                        continue;
                    }
                    if t.fullness_with(c.bytes) > src_full {
                        continue;
                    }
                    // Keep the domain rule: the target's domain holds no
                    // other member, or the source shared its own.
                    let t_key = t.domain_key(c.domain);
                    let src_key = view[index[&src]].domain_key(c.domain);
                    let clash = c
                        .members
                        .iter()
                        .filter(|&&m| m != src)
                        .filter_map(|m| index.get(m))
                        .any(|&i| view[i].domain_key(c.domain) == t_key);
                    let src_shared = c
                        .members
                        .iter()
                        .filter(|&&m| m != src)
                        .filter_map(|m| index.get(m))
                        .any(|&i| view[i].domain_key(c.domain) == src_key);
                    if clash && !src_shared {
                        continue;
                    }
                    found = Some((ci, t.id));
                    break 'search;
                }
            }
            let Some((ci, to)) = found else {
                stuck.insert(src);
                continue;
            };
            let c = &chunks[ci];
            view[index[&src]].held_bytes = view[index[&src]].held_bytes.saturating_sub(c.bytes);
            view[index[&to]].held_bytes = view[index[&to]].held_bytes.saturating_add(c.bytes);
            touched.insert(c.chunk);
            plan.moves.push(Move {
                chunk: c.chunk,
                from: src,
                to,
                fixes_domain: false,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;
    const CHUNK: u64 = 256 << 20;

    /// Tier-0 chunks of one chunk's worth each, failure domain host, idle,
    /// with these chains (chunk id = position).
    fn host_views(chains: &[Vec<CsId>]) -> Vec<ChunkView<'_>> {
        chains
            .iter()
            .enumerate()
            .map(|(i, m)| ChunkView {
                chunk: ChunkId(i as u64),
                members: m,
                tier: 0,
                domain: FailureDomain::Host,
                bytes: CHUNK,
                busy: false,
            })
            .collect()
    }

    fn server(id: CsId, host: &str, rack: &str, tier: u8) -> ServerView {
        ServerView {
            id,
            location: format!("0.0.{rack}"),
            host: host.to_string(),
            tier,
            held_bytes: 0,
            capacity_bytes: 100 * GIB,
            free_bytes: 100 * GIB,
            eligible: true,
            active: true,
        }
    }

    fn req(members: &[CsId], count: usize) -> Request<'_> {
        Request {
            tier: 0,
            domain: FailureDomain::Host,
            members,
            exclude: &[],
            count,
            chunk_bytes: CHUNK,
        }
    }

    #[test]
    fn replicas_go_to_distinct_hosts_emptiest_first() {
        let mut servers = vec![
            server(CsId(1), "a", "1", 0),
            server(CsId(2), "a", "1", 0),
            server(CsId(3), "b", "1", 0),
            server(CsId(4), "b", "1", 0),
            server(CsId(5), "c", "2", 0),
            server(CsId(6), "c", "2", 0),
        ];
        servers[0].held_bytes = 10 * GIB;
        let chosen = choose(&servers, &req(&[], 3));
        assert_eq!(chosen, vec![CsId(2), CsId(3), CsId(5)]);
        let hosts: BTreeSet<_> = chosen
            .iter()
            .map(|id| servers[id.0 as usize - 1].host.clone())
            .collect();
        assert_eq!(hosts.len(), 3);
        // Re-replication after losing host c: no second copy on a or b.
        let again = choose(&servers, &req(&[CsId(2), CsId(3)], 1));
        assert_eq!(again, vec![CsId(5)]);
    }

    #[test]
    fn fewer_domains_than_replicas_fill_evenly() {
        let servers = vec![
            server(CsId(1), "a", "1", 0),
            server(CsId(2), "a", "1", 0),
            server(CsId(3), "b", "1", 0),
            server(CsId(4), "b", "1", 0),
        ];
        let chosen = choose(&servers, &req(&[], 4));
        let on_a = chosen.iter().filter(|&&c| c <= CsId(2)).count();
        assert_eq!((chosen.len(), on_a), (4, 2));
        assert_eq!(domains_in_tier(&servers, 0, FailureDomain::Host), 2);
        // Two on a and one on b is as even as 3 replicas on 2 hosts get:
        // no violation.
        assert!(!violates_domain(
            &servers,
            &[CsId(1), CsId(2), CsId(3)],
            0,
            FailureDomain::Host
        ));
    }

    #[test]
    fn tiers_are_kept_apart() {
        let servers = vec![
            server(CsId(1), "a", "1", 0),
            server(CsId(2), "b", "1", 1),
            server(CsId(3), "c", "1", 1),
        ];
        let mut r = req(&[], 3);
        r.tier = 1;
        assert_eq!(choose(&servers, &r), vec![CsId(2), CsId(3)]);
    }

    #[test]
    fn rack_domain_uses_the_location() {
        let servers = vec![
            server(CsId(1), "a", "1", 0),
            server(CsId(2), "b", "1", 0),
            server(CsId(3), "c", "2", 0),
        ];
        let mut r = req(&[], 2);
        r.domain = FailureDomain::Rack;
        let chosen = choose(&servers, &r);
        assert!(chosen.contains(&CsId(3)), "{chosen:?}");
        assert!(violates_domain(
            &servers,
            &[CsId(1), CsId(2)],
            0,
            FailureDomain::Rack
        ));
        assert!(!violates_domain(
            &servers,
            &[CsId(1), CsId(2)],
            0,
            FailureDomain::Host
        ));
    }

    #[test]
    fn the_head_rotates() {
        let heads: BTreeSet<CsId> = (1..=3u64)
            .map(|chunk| {
                let mut chain = vec![CsId(7), CsId(8), CsId(9)];
                rotate_head(ChunkId(chunk), &mut chain);
                chain[0]
            })
            .collect();
        assert_eq!(heads.len(), 3);
    }

    #[test]
    fn rebalancing_moves_to_new_servers_until_within_one_chunk() {
        // Three full servers with 8 chunks each (3 replicas), three empty.
        let mut servers: Vec<ServerView> = (1..=6)
            .map(|id| server(CsId(id), &format!("h{id}"), "1", 0))
            .collect();
        let chains: Vec<Vec<CsId>> = (0..8).map(|_| vec![CsId(1), CsId(2), CsId(3)]).collect();
        for s in servers.iter_mut().take(3) {
            s.held_bytes = 8 * CHUNK;
        }
        let mut chains = chains;
        for _ in 0..20 {
            let views = host_views(&chains);
            let plan = plan_rebalance(&servers, &views, 10, 4);
            if plan.moves.is_empty() {
                break;
            }
            for mv in plan.moves {
                let chain = &mut chains[mv.chunk.0 as usize];
                let at = chain.iter().position(|&m| m == mv.from).unwrap();
                chain[at] = mv.to;
                servers[mv.from.0 as usize - 1].held_bytes -= CHUNK;
                servers[mv.to.0 as usize - 1].held_bytes += CHUNK;
            }
        }
        let counts: Vec<u64> = servers.iter().map(|s| s.held_bytes / CHUNK).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        assert_eq!(counts.iter().sum::<u64>(), 24);
    }

    #[test]
    fn a_domain_violation_is_moved() {
        let servers = vec![
            server(CsId(1), "a", "1", 0),
            server(CsId(2), "a", "1", 0),
            server(CsId(3), "b", "1", 0),
            server(CsId(4), "c", "1", 0),
        ];
        let members = [CsId(1), CsId(2), CsId(3)];
        let plan = plan_rebalance(
            &servers,
            &[ChunkView {
                chunk: ChunkId(1),
                members: &members,
                tier: 0,
                domain: FailureDomain::Host,
                bytes: CHUNK,
                busy: false,
            }],
            10,
            4,
        );
        assert_eq!(plan.moves.len(), 1);
        let mv = plan.moves[0];
        assert!(mv.fixes_domain && (mv.from == CsId(1) || mv.from == CsId(2)) && mv.to == CsId(4));
    }

    /// The fullest server's chunks are all pinned by the domain rule (its
    /// host holds no other member, the emptiest server shares a host with
    /// every chain): the pass moves from the next fullest instead of
    /// stopping (it used to end the pass with [2, 1, 3, 0] chunks).
    #[test]
    fn a_pinned_fullest_server_does_not_stop_the_pass() {
        let mut servers = vec![
            server(CsId(1), "h0", "r", 0),
            server(CsId(2), "h0", "r", 0),
            server(CsId(3), "new", "r", 0),
            server(CsId(4), "h0", "r", 0),
        ];
        let chains: Vec<Vec<CsId>> = vec![
            vec![CsId(1), CsId(3)],
            vec![CsId(1), CsId(3)],
            vec![CsId(2), CsId(3)],
        ];
        for chain in &chains {
            for &m in chain {
                servers[m.0 as usize - 1].held_bytes += CHUNK;
            }
        }
        let views = host_views(&chains);
        let plan = plan_rebalance(&servers, &views, 10, 8);
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        let mv = plan.moves[0];
        assert_eq!((mv.from, mv.to), (CsId(1), CsId(4)), "{plan:?}");
    }

    /// A generated cluster: servers on hosts in racks, two tiers.
    fn cluster() -> impl Strategy<Value = Vec<ServerView>> {
        prop::collection::vec((0u8..6, 0u8..3, 0u8..2, 0u64..40, any::<bool>()), 1..40).prop_map(
            |specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (host, rack, tier, held, eligible))| ServerView {
                        id: CsId(i as u32) + 1,
                        location: format!("0.{}.{rack}", rack % 2),
                        host: format!("h{host}"),
                        tier,
                        held_bytes: held * CHUNK,
                        capacity_bytes: 64 * CHUNK,
                        free_bytes: (64 - held) * CHUNK,
                        eligible,
                        active: true,
                    })
                    .collect()
            },
        )
    }

    fn domain() -> impl Strategy<Value = FailureDomain> {
        prop::sample::select(FailureDomain::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the cluster: distinct eligible servers of the tier, as
        /// many as exist up to the count, spread over domains as evenly as
        /// possible (domain counts differ by at most one), and no domain
        /// reused while a free one had an eligible server.
        #[test]
        fn choices_obey_tier_domains_and_evenness(
            servers in cluster(),
            domain in domain(),
            tier in 0u8..2,
            count in 1usize..6,
        ) {
            let r = Request { tier, domain, members: &[], exclude: &[], count, chunk_bytes: CHUNK };
            let chosen = choose(&servers, &r);
            let eligible: Vec<&ServerView> =
                servers.iter().filter(|s| s.eligible && s.tier == tier).collect();
            prop_assert_eq!(chosen.len(), count.min(eligible.len()));
            let distinct: BTreeSet<CsId> = chosen.iter().copied().collect();
            prop_assert_eq!(distinct.len(), chosen.len());
            let mut per_domain: BTreeMap<DomainKey, usize> = BTreeMap::new();
            for id in &chosen {
                let s = servers.iter().find(|s| s.id == *id).unwrap();
                prop_assert!(s.eligible && s.tier == tier);
                *per_domain.entry(s.domain_key(domain)).or_default() += 1;
            }
            let domains: BTreeSet<DomainKey> = eligible.iter().map(|s| s.domain_key(domain)).collect();
            if chosen.len() <= domains.len() {
                prop_assert!(per_domain.values().all(|&n| n == 1), "{:?}", per_domain);
            } else {
                // Every domain used, counts within one of each other
                // (when the domain has servers enough).
                prop_assert_eq!(per_domain.len(), domains.len());
            }
            prop_assert!(!violates_domain(&servers, &chosen, tier, domain));
        }

        /// No churn: chunks placed by `choose` on a cluster of 1-4 hosts
        /// (one host: every test machine, where all servers share this
        /// machine's name), then rebalancing passes applied one after the
        /// other: the passes stop (an empty plan) within a bound, and then
        /// the servers of the tier are within the band of each other.
        #[test]
        fn rebalancing_converges_and_stops(
            hosts in 1u8..5,
            per_host in 1u8..4,
            new in 0u8..4,
            chunks in 0usize..80,
            norm in 1usize..4,
            limit in 1usize..6,
        ) {
            let mut servers: Vec<ServerView> = (0..hosts * per_host)
                .map(|i| server(CsId(i as u32) + 1, &format!("h{}", i / per_host), "r", 0))
                .collect();
            let mut chains: Vec<Vec<CsId>> = Vec::new();
            for _ in 0..chunks {
                let chosen = choose(&servers, &req(&[], norm));
                for id in &chosen {
                    servers[id.0 as usize - 1].held_bytes += CHUNK;
                }
                chains.push(chosen);
            }
            // Empty servers join (on a host of their own or on host 0).
            for k in 0..new {
                let id = CsId(servers.len() as u32) + 1;
                let host = if hosts == 1 || k % 2 == 1 { "h0".to_string() } else { format!("new{k}") };
                servers.push(server(id, &host, "r", 0));
            }
            let mut passes = 0;
            loop {
                let views = host_views(&chains);
                let plan = plan_rebalance(&servers, &views, 10, limit);
                drop(views);
                if plan.moves.is_empty() {
                    break;
                }
                passes += 1;
                prop_assert!(passes <= 2 * chunks * norm / limit + 10, "rebalancing does not stop: {:?}", plan);
                for mv in &plan.moves {
                    let chain = &mut chains[mv.chunk.0 as usize];
                    let at = chain.iter().position(|&m| m == mv.from).unwrap();
                    chain[at] = mv.to;
                    servers[mv.from.0 as usize - 1].held_bytes -= CHUNK;
                    servers[mv.to.0 as usize - 1].held_bytes += CHUNK;
                }
            }
            // On one host (the domain rule pins nothing) the servers end
            // within the band (10% of the mean, never less than one chunk).
            if hosts == 1 {
                let held: Vec<u64> = servers.iter().map(|s| s.held_bytes / CHUNK).collect();
                let (lo, hi) = (held.iter().min().unwrap(), held.iter().max().unwrap());
                let mean = held.iter().sum::<u64>() as f64 / held.len() as f64;
                prop_assert!((hi - lo) as f64 <= (mean * 0.1).max(1.0) + 1e-9, "held {:?}", held);
            }
            // Every chain still has distinct members and, where enough
            // hosts exist, distinct hosts.
            for chain in &chains {
                let set: BTreeSet<CsId> = chain.iter().copied().collect();
                prop_assert_eq!(set.len(), chain.len());
                prop_assert!(!violates_domain(&servers, chain, 0, FailureDomain::Host), "{:?}", chain);
            }
        }

        /// Rebalancing moves go from an active server to an eligible one of
        /// the chunk's tier outside its chain, never touch a busy chunk,
        /// never move one chunk twice in a pass, never make a chain break
        /// its domain rule when it kept it, and stop within the limit.
        #[test]
        fn rebalancing_moves_are_sound(
            servers in cluster(),
            chains in prop::collection::vec((prop::collection::btree_set(1u32..40, 1..4), any::<bool>(), domain()), 0..60),
            limit in 0usize..10,
        ) {
            let chains: Vec<(Vec<CsId>, bool, FailureDomain, u8)> = chains
                .into_iter()
                .filter_map(|(set, busy, domain)| {
                    let members: Vec<CsId> = set.into_iter().map(CsId).filter(|&m| (m.0 as usize) <= servers.len()).collect();
                    let tier = servers.iter().find(|s| Some(&s.id) == members.first())?.tier;
                    let members: Vec<CsId> = members.into_iter().filter(|&m| servers[m.0 as usize - 1].tier == tier).collect();
                    Some((members, busy, domain, tier))
                })
                .collect();
            let views: Vec<ChunkView> = chains
                .iter()
                .enumerate()
                .map(|(i, (m, busy, domain, tier))| ChunkView {
                    chunk: ChunkId(i as u64), members: m, tier: *tier, domain: *domain, bytes: CHUNK, busy: *busy,
                })
                .collect();
            let plan = plan_rebalance(&servers, &views, 10, limit);
            prop_assert!(plan.moves.len() <= limit);
            let mut seen = BTreeSet::new();
            for mv in &plan.moves {
                prop_assert!(seen.insert(mv.chunk));
                let c = &views[mv.chunk.0 as usize];
                prop_assert!(!c.busy);
                prop_assert!(c.members.contains(&mv.from));
                prop_assert!(!c.members.contains(&mv.to));
                let to = &servers[mv.to.0 as usize - 1];
                prop_assert!(to.eligible && to.tier == c.tier);
                let before = violates_domain(&servers, c.members, c.tier, c.domain);
                let after: Vec<CsId> = c.members.iter().map(|&m| if m == mv.from { mv.to } else { m }).collect();
                let keys: BTreeSet<DomainKey> = after.iter().map(|&m| servers[m.0 as usize - 1].domain_key(c.domain)).collect();
                let keys_before: BTreeSet<DomainKey> = c.members.iter().map(|&m| servers[m.0 as usize - 1].domain_key(c.domain)).collect();
                if !before {
                    prop_assert!(keys.len() >= keys_before.len(), "a move broke the domain rule");
                }
                if mv.fixes_domain {
                    prop_assert!(keys.len() > keys_before.len());
                }
            }
        }
    }
}
