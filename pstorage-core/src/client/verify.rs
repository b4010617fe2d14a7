//! `pstorage verify PATH` ([`Client::verify`]): every replica of every chunk
//! of a file compared block by block, and optionally repaired from a good
//! copy.
//!
//! The file is opened with a read lease (a write lease with `repair`), so
//! no writer changes it meanwhile. For each chunk, each replica's CRC table
//! is fetched and the tables compared: replicas whose entries for a block
//! differ hold different bytes there. Then every written block of every
//! replica is read (the chunk server checks each block against its CRC), so
//! a block that no longer matches its entry is found too. A repair writes
//! each damaged range again through the whole chain, with the bytes of the
//! first replica in chain order that reads it (the head has every write
//! acknowledged), then flushes, and checks the chunk again.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{Client, File};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::ChunkService;
use crate::types::{ChunkId, ChunkMap, CsId, LeaseMode, OpenFlags, BLOCK_SIZE, MAX_BLOCK_CRCS};

/// Bytes per read while checking replicas.
const VERIFY_READ: u64 = 1 << 20;
/// Attempts per chunk when its map changes under the check (`Stale`).
const STALE_ATTEMPTS: usize = 5;

/// What [`Client::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks and replicas checked.
    pub chunks: u64,
    /// Replicas checked.
    pub replicas: u64,
    /// Bytes read from replicas.
    pub bytes_read: u64,
    /// Problems found (with `repair`: those left after it).
    pub problems: Vec<VerifyProblem>,
    /// Problems a repair fixed.
    pub repaired: Vec<VerifyProblem>,
}

/// A range of a chunk whose replicas disagree, or that a replica cannot
/// serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The chunk.
    pub chunk: ChunkId,
    /// The chunk's index in the file.
    pub index: u64,
    /// The range, in bytes of the file.
    pub offset: u64,
    /// The range's length in bytes.
    pub len: u64,
    /// What is wrong with the range.
    pub kind: ProblemKind,
}

/// What is wrong with a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The replicas hold different bytes: the groups of chunk servers
    /// that agree, in chain order of their first member.
    Differ {
        /// The chunk servers that agree, one group per content.
        groups: Vec<Vec<CsId>>,
    },
    /// A replica could not be read there (a block failed its CRC check,
    /// an I/O error, or the server did not answer).
    Unreadable {
        /// The chunk server of the replica.
        cs: CsId,
        /// What the read failed with.
        error: String,
    },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chunk {:#x} (index {}), file bytes {}..{}: ",
            self.chunk,
            self.index,
            self.offset,
            self.offset + self.len
        )?;
        match &self.kind {
            ProblemKind::Differ { groups } => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|g| {
                        let ids: Vec<String> = g.iter().map(|c| c.to_string()).collect();
                        format!("CS {}", ids.join(","))
                    })
                    .collect();
                write!(f, "replicas differ: {}", groups.join(" | "))
            }
            ProblemKind::Unreadable { cs, error } => write!(f, "CS {cs} cannot read it: {error}"),
        }
    }
}

/// One replica's view of a chunk.
struct ReplicaView {
    cs: CsId,
    service: Option<Arc<dyn ChunkService>>,
    /// Its CRC table, when it could be fetched.
    entries: Option<Vec<u64>>,
}

impl Client {
    /// Compares every replica of every chunk of `path` block by block (see
    /// the module docs); with `repair`, rewrites each damaged range from a
    /// good copy. Errors: the open's (`NotFound`, `Busy` while another
    /// client holds a conflicting lease, ...); problems found are in the
    /// report, not errors.
    pub async fn verify(&self, path: &str, repair: bool) -> Result<VerifyReport> {
        let mode = if repair {
            LeaseMode::Write
        } else {
            LeaseMode::Read
        };
        let file = self.open(path, mode, OpenFlags::default()).await?;
        let result = self.verify_open(&file, repair).await;
        let closed = file.close().await;
        let report = result?;
        closed?;
        Ok(report)
    }

    async fn verify_open(&self, file: &File, repair: bool) -> Result<VerifyReport> {
        let chunk_size = file.chunk_size();
        let mut report = VerifyReport::default();
        let maps = self.file_chunks(file.path()).await?;
        for map in maps {
            report.chunks += 1;
            report.replicas += map.replicas.len() as u64;
            let problems = self
                .verify_chunk_fresh(file, map.index, chunk_size, &mut report)
                .await?;
            if problems.is_empty() {
                continue;
            }
            if !repair {
                report.problems.extend(problems);
                continue;
            }
            self.repair_chunk(file, map.index, chunk_size, &problems)
                .await?;
            file.flush().await?;
            let left = self
                .verify_chunk_fresh(file, map.index, chunk_size, &mut report)
                .await?;
            report.repaired.extend(
                problems
                    .into_iter()
                    .filter(|p| !left.iter().any(|l| overlaps(l, p))),
            );
            report.problems.extend(left);
        }
        Ok(report)
    }

    /// Checks chunk `index` with a fresh map, again while the map changes
    /// under the check.
    async fn verify_chunk_fresh(
        &self,
        file: &File,
        index: u64,
        chunk_size: u64,
        report: &mut VerifyReport,
    ) -> Result<Vec<VerifyProblem>> {
        let mut last = None;
        for _ in 0..STALE_ATTEMPTS {
            let maps = self.file_chunks(file.path()).await?;
            let Some(map) = maps.into_iter().find(|m| m.index == index) else {
                return Ok(Vec::new());
            };
            match self.verify_chunk(&map, chunk_size, report).await {
                Ok(problems) => return Ok(problems),
                Err(e) if e.kind() == ErrorKind::Stale => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt").context(format_args!(
            "chunk {index} of {} kept changing while it was verified",
            file.path()
        )))
    }

    /// Compares the replicas of one chunk. `Stale` when the map moved on.
    async fn verify_chunk(
        &self,
        map: &ChunkMap,
        chunk_size: u64,
        report: &mut VerifyReport,
    ) -> Result<Vec<VerifyProblem>> {
        let base = map.index * chunk_size;
        let blocks = chunk_size / BLOCK_SIZE;
        let mut problems = Vec::new();
        let mut views = Vec::new();
        for replica in &map.replicas {
            let mut view = ReplicaView {
                cs: replica.cs,
                service: None,
                entries: None,
            };
            let fetched = async {
                let service = self.shared.chunks.chunk_service(&replica.addr).await?;
                let mut entries = Vec::with_capacity(blocks as usize);
                let mut first = 0;
                while first < blocks {
                    let n = (blocks - first).min(MAX_BLOCK_CRCS);
                    entries.extend(
                        service
                            .block_crcs(map.chunk, map.version, first * BLOCK_SIZE, n * BLOCK_SIZE)
                            .await?,
                    );
                    first += n;
                }
                Ok::<_, Error>((service, entries))
            }
            .await;
            match fetched {
                Ok((service, entries)) => {
                    view.service = Some(service);
                    view.entries = Some(entries);
                }
                Err(e) if e.kind() == ErrorKind::Stale => return Err(e),
                Err(e) => problems.push(VerifyProblem {
                    chunk: map.chunk,
                    index: map.index,
                    offset: base,
                    len: chunk_size,
                    kind: ProblemKind::Unreadable {
                        cs: replica.cs,
                        error: e.to_string(),
                    },
                }),
            }
            views.push(view);
        }

        // Blocks whose entries differ, in runs with the same grouping.
        let readable: Vec<&ReplicaView> = views.iter().filter(|v| v.entries.is_some()).collect();
        let mut run: Option<(u64, Vec<Vec<CsId>>)> = None;
        let mut flush_run = |run: &mut Option<(u64, Vec<Vec<CsId>>)>, end: u64| {
            if let Some((start, groups)) = run.take() {
                problems.push(VerifyProblem {
                    chunk: map.chunk,
                    index: map.index,
                    offset: base + start * BLOCK_SIZE,
                    len: (end - start) * BLOCK_SIZE,
                    kind: ProblemKind::Differ { groups },
                });
            }
        };
        for block in 0..blocks {
            let mut groups: BTreeMap<u64, Vec<CsId>> = BTreeMap::new();
            let mut order = Vec::new();
            for v in &readable {
                let entry = v.entries.as_ref().expect("readable")[block as usize];
                if !groups.contains_key(&entry) {
                    order.push(entry);
                }
                groups.entry(entry).or_default().push(v.cs);
            }
            let grouping: Option<Vec<Vec<CsId>>> =
                (groups.len() > 1).then(|| order.iter().map(|e| groups[e].clone()).collect());
            match (&run, grouping) {
                (Some((_, g)), Some(new)) if *g == new => {}
                (_, Some(new)) => {
                    flush_run(&mut run, block);
                    run = Some((block, new));
                }
                (_, None) => flush_run(&mut run, block),
            }
        }
        flush_run(&mut run, blocks);

        // Every written block of every replica read back (the server checks
        // each against its CRC).
        for v in &readable {
            let service = v.service.as_ref().expect("readable");
            let entries = v.entries.as_ref().expect("readable");
            let mut block = 0;
            while block < blocks {
                if entries[block as usize] == 0 {
                    block += 1;
                    continue;
                }
                let mut end = block + 1;
                while end < blocks
                    && entries[end as usize] != 0
                    && (end - block) * BLOCK_SIZE < VERIFY_READ
                {
                    end += 1;
                }
                let got = service
                    .read_verified(
                        map.chunk,
                        map.version,
                        block * BLOCK_SIZE,
                        (end - block) * BLOCK_SIZE,
                    )
                    .await;
                match got {
                    Ok(data) => {
                        report.bytes_read += data.len() as u64;
                        if data.len() as u64 != (end - block) * BLOCK_SIZE {
                            problems.push(unreadable(
                                map,
                                base,
                                block,
                                end,
                                v.cs,
                                format!("a short read: {} bytes", data.len()),
                            ));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Stale => return Err(e),
                    Err(_) => {
                        // Narrow it down to the blocks that fail.
                        let mut bad: Option<(u64, String)> = None;
                        for b in block..end {
                            let one = service
                                .read(map.chunk, map.version, b * BLOCK_SIZE, BLOCK_SIZE)
                                .await;
                            match one {
                                Ok(_) => {
                                    if let Some((from, error)) = bad.take() {
                                        problems.push(unreadable(map, base, from, b, v.cs, error));
                                    }
                                }
                                Err(e) if e.kind() == ErrorKind::Stale => return Err(e),
                                Err(e) => {
                                    if bad.is_none() {
                                        bad = Some((b, e.to_string()));
                                    }
                                }
                            }
                        }
                        if let Some((from, error)) = bad {
                            problems.push(unreadable(map, base, from, end, v.cs, error));
                        }
                    }
                }
                block = end;
            }
        }
        Ok(problems)
    }

    /// Rewrites each problem range of chunk `index` through its chain, with
    /// the bytes of the first replica in chain order that reads it.
    async fn repair_chunk(
        &self,
        file: &File,
        index: u64,
        chunk_size: u64,
        problems: &[VerifyProblem],
    ) -> Result<()> {
        let maps = self.file_chunks(file.path()).await?;
        let Some(map) = maps.into_iter().find(|m| m.index == index) else {
            return Ok(());
        };
        let base = index * chunk_size;
        for p in problems {
            let mut at = p.offset;
            while at < p.offset + p.len {
                let len = (p.offset + p.len - at).min(VERIFY_READ);
                let Some(data) = self.read_good_copy(&map, at - base, len).await else {
                    // No replica reads it: nothing to repair from.
                    at += len;
                    continue;
                };
                file.write_at_bytes(at, data).await?;
                at += len;
            }
        }
        Ok(())
    }

    /// The bytes at `[offset, offset + len)` of the chunk from the first
    /// replica in chain order that reads them.
    async fn read_good_copy(&self, map: &ChunkMap, offset: u64, len: u64) -> Option<Bytes> {
        for replica in &map.replicas {
            let Ok(service) = self.shared.chunks.chunk_service(&replica.addr).await else {
                continue;
            };
            if let Ok(data) = service
                .read_verified(map.chunk, map.version, offset, len)
                .await
            {
                if data.len() as u64 == len {
                    return Some(data);
                }
            }
        }
        None
    }
}

fn unreadable(
    map: &ChunkMap,
    base: u64,
    from: u64,
    to: u64,
    cs: CsId,
    error: String,
) -> VerifyProblem {
    VerifyProblem {
        chunk: map.chunk,
        index: map.index,
        offset: base + from * BLOCK_SIZE,
        len: (to - from) * BLOCK_SIZE,
        kind: ProblemKind::Unreadable { cs, error },
    }
}

fn overlaps(a: &VerifyProblem, b: &VerifyProblem) -> bool {
    a.offset < b.offset + b.len && b.offset < a.offset + a.len
}
