//! The model of the chaos suite's SDK writer (`pstorage-chaos-writer`,
//! run by `scripts/chaos.sh`): what every byte of the file it writes may
//! hold, given which writes and flushes succeeded or failed.
//!
//! Every write has an id (> 0) and writes the bytes [`pattern_byte`]`(seed,
//! id, offset)`, so the content of any byte is a function of the id of the
//! write that last covered it; id 0 stands for never written (zeros).
//!
//! What the writer may expect, byte by byte:
//! - covered last by a write that was acknowledged: exactly that write's
//!   bytes (a write is acknowledged once every replica applied it, and a
//!   later successful flush makes it durable; the writer's final flush must
//!   succeed, or the run fails anyway);
//! - covered by a write that failed: either what it held before or the new
//!   bytes (a write that errors may have reached some replicas and not
//!   others, so each byte is old or new; nothing else is allowed);
//! - after a failed flush: the writes acknowledged since the last good flush
//!   may not be durable, so their bytes may also hold what they replaced.
//!
//! Bytes that match none of their candidates are lost bytes.

use std::collections::BTreeMap;

/// splitmix64: a fast, well-mixed 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The 8 bytes of write `id` of run `seed` at the 8-byte-aligned word
/// containing `offset`.
fn pattern_word(seed: u64, id: u64, offset: u64) -> [u8; 8] {
    if id == 0 {
        return [0; 8];
    }
    mix(mix(seed ^ id.wrapping_mul(0xd6e8_feb8_6659_fd93)) ^ (offset >> 3)).to_le_bytes()
}

/// The byte that write `id` of run `seed` puts at `offset` (0 for id 0).
pub fn pattern_byte(seed: u64, id: u64, offset: u64) -> u8 {
    pattern_word(seed, id, offset)[(offset & 7) as usize]
}

/// Fills `buf` with what write `id` puts at `offset..offset+buf.len()`.
pub fn fill_pattern(seed: u64, id: u64, offset: u64, buf: &mut [u8]) {
    if id == 0 {
        buf.fill(0);
        return;
    }
    let mut i = 0usize;
    while i < buf.len() {
        let off = offset + i as u64;
        let word = pattern_word(seed, id, off);
        let start = (off & 7) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
    }
}

/// The ids in `0..=max_id` whose write would put `data` at `offset` (for
/// diagnosing a lost byte: whose bytes were found instead). `data` should
/// span at least 8 bytes to make a match meaningful.
pub fn writes_matching(seed: u64, max_id: u64, offset: u64, data: &[u8]) -> Vec<u64> {
    let mut expect = vec![0u8; data.len()];
    (0..=max_id)
        .filter(|&id| {
            fill_pattern(seed, id, offset, &mut expect);
            expect == data
        })
        .collect()
}

/// A range `[start, end)` whose bytes may each hold the value of any of
/// `ids` (one id: certain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    pub end: u64,
    pub ids: Vec<u64>,
}

/// What a check of read data found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckResult {
    /// Bytes that matched one of their candidates.
    pub ok_bytes: u64,
    /// Bytes that matched none.
    pub lost_bytes: u64,
    /// The first lost byte's offset.
    pub first_lost: Option<u64>,
}

/// The candidates of every byte of a file of fixed size.
#[derive(Debug, Clone)]
pub struct Model {
    seed: u64,
    size: u64,
    /// start -> (end, candidate ids); the ranges tile `[0, size)`.
    segs: BTreeMap<u64, (u64, Vec<u64>)>,
    /// Writes acknowledged since the last good flush: (start, end, what
    /// the range held before).
    unflushed: Vec<Vec<Piece>>,
}

impl Model {
    /// A file of `size` zero bytes, written with patterns of `seed`.
    pub fn new(seed: u64, size: u64) -> Model {
        let mut segs = BTreeMap::new();
        if size > 0 {
            segs.insert(0, (size, vec![0]));
        }
        Model {
            seed,
            size,
            segs,
            unflushed: Vec::new(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Splits the segment containing `at` so that a segment starts there.
    fn split(&mut self, at: u64) {
        if at >= self.size {
            return;
        }
        let (&start, (end, ids)) = self
            .segs
            .range(..=at)
            .next_back()
            .expect("segments tile the file");
        if start == at {
            return;
        }
        let (end, ids) = (*end, ids.clone());
        self.segs.insert(start, (at, ids.clone()));
        self.segs.insert(at, (end, ids));
    }

    /// The pieces covering `[start, end)`, cut to it.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Piece> {
        let end = end.min(self.size);
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let first = self
            .segs
            .range(..=start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(0);
        for (&s, (e, ids)) in self.segs.range(first..end) {
            let (s, e) = (s.max(start), (*e).min(end));
            if s < e {
                out.push(Piece {
                    start: s,
                    end: e,
                    ids: ids.clone(),
                });
            }
        }
        out
    }

    /// Replaces the candidates of every byte of `[start, end)` by `f` of them.
    fn update(&mut self, start: u64, end: u64, f: impl Fn(&[u64]) -> Vec<u64>) {
        let end = end.min(self.size);
        if start >= end {
            return;
        }
        self.split(start);
        self.split(end);
        let keys: Vec<u64> = self.segs.range(start..end).map(|(s, _)| *s).collect();
        for k in keys {
            let seg = self.segs.get_mut(&k).expect("key");
            seg.1 = f(&seg.1);
        }
        self.coalesce(start, end);
    }

    /// Merges neighbouring segments with equal candidates around `[start, end]`.
    fn coalesce(&mut self, start: u64, end: u64) {
        let first = self
            .segs
            .range(..start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let keys: Vec<u64> = self.segs.range(first..=end).map(|(s, _)| *s).collect();
        let mut prev: Option<u64> = None;
        for k in keys {
            if let Some(p) = prev {
                let same = self.segs[&p].1 == self.segs[&k].1 && self.segs[&p].0 == k;
                if same {
                    let (e, _) = self.segs.remove(&k).expect("key");
                    self.segs.get_mut(&p).expect("prev").0 = e;
                    continue;
                }
            }
            prev = Some(k);
        }
    }

    /// Write `id` of `[start, end)` was acknowledged.
    pub fn write_acked(&mut self, start: u64, end: u64, id: u64) {
        let before = self.pieces(start, end);
        self.unflushed.push(before);
        self.update(start, end, |_| vec![id]);
    }

    /// Write `id` of `[start, end)` failed: each byte is old or new.
    pub fn write_failed(&mut self, start: u64, end: u64, id: u64) {
        self.update(start, end, |ids| union(ids, &[id]));
    }

    /// A flush succeeded: every acknowledged write is durable.
    pub fn flush_ok(&mut self) {
        self.unflushed.clear();
    }

    /// A flush failed: the writes acknowledged since the last good flush
    /// may not be durable, so what they replaced is possible again.
    pub fn flush_failed(&mut self) {
        let journal = std::mem::take(&mut self.unflushed);
        for before in journal {
            for p in before {
                self.update(p.start, p.end, |ids| union(ids, &p.ids));
            }
        }
    }

    /// Bytes whose content is not certain (a failed write or flush).
    pub fn uncertain_bytes(&self) -> u64 {
        self.segs
            .iter()
            .filter(|(_, (_, ids))| ids.len() > 1)
            .map(|(s, (e, _))| e - s)
            .sum()
    }

    /// Checks `data`, read at `offset`, against the candidates.
    pub fn check(&self, offset: u64, data: &[u8]) -> CheckResult {
        let mut r = CheckResult::default();
        let mut expect = Vec::new();
        for p in self.pieces(offset, offset + data.len() as u64) {
            let got = &data[(p.start - offset) as usize..(p.end - offset) as usize];
            if let [id] = p.ids[..] {
                expect.resize(got.len(), 0);
                fill_pattern(self.seed, id, p.start, &mut expect);
                if expect == got {
                    r.ok_bytes += got.len() as u64;
                    continue;
                }
            }
            for (i, b) in got.iter().enumerate() {
                let off = p.start + i as u64;
                if p.ids
                    .iter()
                    .any(|&id| pattern_byte(self.seed, id, off) == *b)
                {
                    r.ok_bytes += 1;
                } else {
                    r.lost_bytes += 1;
                    r.first_lost.get_or_insert(off);
                }
            }
        }
        r
    }
}

fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut v = a.to_vec();
    for id in b {
        if !v.contains(id) {
            v.push(*id);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(m: &Model, start: u64, len: usize, id: u64) -> Vec<u8> {
        let mut v = vec![0; len];
        fill_pattern(m.seed(), id, start, &mut v);
        v
    }

    #[test]
    fn fill_matches_byte_by_byte() {
        let mut buf = vec![0; 37];
        fill_pattern(5, 9, 13, &mut buf);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, pattern_byte(5, 9, 13 + i as u64));
        }
        assert_ne!(buf, vec![0; 37]);
        let mut other = vec![0; 37];
        fill_pattern(5, 10, 13, &mut other);
        assert_ne!(buf, other, "two writes have different bytes");
    }

    #[test]
    fn the_write_whose_bytes_were_found_is_named() {
        let mut data = vec![0u8; 16];
        fill_pattern(7, 42, 1000, &mut data);
        assert_eq!(writes_matching(7, 100, 1000, &data), vec![42]);
        assert_eq!(writes_matching(7, 100, 1000, &[0u8; 16]), vec![0]);
        assert!(writes_matching(7, 100, 1001, &data).is_empty());
    }

    #[test]
    fn acknowledged_writes_are_exact() {
        let mut m = Model::new(1, 1000);
        m.write_acked(100, 300, 1);
        m.write_acked(200, 400, 2);
        m.flush_ok();
        let mut file = vec![0u8; 1000];
        fill_pattern(1, 1, 100, &mut file[100..300]);
        fill_pattern(1, 2, 200, &mut file[200..400]);
        let r = m.check(0, &file);
        assert_eq!(
            r,
            CheckResult {
                ok_bytes: 1000,
                lost_bytes: 0,
                first_lost: None
            }
        );
        // The older write's bytes where the newer one landed: lost.
        fill_pattern(1, 1, 250, &mut file[250..260]);
        let r = m.check(0, &file);
        assert!(r.lost_bytes > 0 && r.lost_bytes <= 10, "{r:?}");
        assert!(r.first_lost.unwrap() >= 250);
        // Zeros where an acknowledged write landed: lost.
        let r = m.check(150, &[0u8; 16]);
        assert!(r.lost_bytes >= 14, "{r:?}");
        assert_eq!(m.uncertain_bytes(), 0);
    }

    #[test]
    fn a_failed_write_allows_old_or_new_bytes_only() {
        let mut m = Model::new(2, 100);
        m.write_acked(0, 100, 1);
        m.flush_ok();
        m.write_failed(40, 60, 2);
        assert_eq!(m.uncertain_bytes(), 20);
        let mut data = content(&m, 0, 100, 1);
        // new bytes in half of the failed range
        fill_pattern(2, 2, 40, &mut data[40..50]);
        assert_eq!(m.check(0, &data).lost_bytes, 0);
        // but not outside it
        fill_pattern(2, 2, 60, &mut data[60..70]);
        assert!(m.check(0, &data).lost_bytes > 0);
        // and never zeros
        let r = m.check(40, &[0u8; 20]);
        assert!(r.lost_bytes >= 18, "{r:?}");
        // an acknowledged write over it makes it certain again
        m.write_acked(30, 70, 3);
        assert_eq!(m.uncertain_bytes(), 0);
        assert_eq!(m.check(30, &content(&m, 30, 40, 3)).lost_bytes, 0);
    }

    #[test]
    fn a_failed_flush_makes_unflushed_writes_uncertain() {
        let mut m = Model::new(3, 64);
        m.write_acked(0, 32, 1);
        m.flush_ok();
        m.write_acked(16, 48, 2);
        m.flush_failed();
        assert_eq!(m.uncertain_bytes(), 32);
        // [16,32): 1 or 2; [32,48): 0 or 2
        assert_eq!(m.check(16, &content(&m, 16, 16, 1)).lost_bytes, 0);
        assert_eq!(m.check(16, &content(&m, 16, 16, 2)).lost_bytes, 0);
        assert_eq!(m.check(32, &[0u8; 16]).lost_bytes, 0);
        assert!(m.check(0, &content(&m, 0, 16, 2)).lost_bytes > 0);
    }

    #[test]
    fn segments_coalesce_and_tile_the_file() {
        let mut m = Model::new(4, 1 << 20);
        for i in 0..100u64 {
            m.write_acked(i * 1000, i * 1000 + 1500, i + 1);
        }
        m.write_acked(0, 1 << 20, 999);
        assert_eq!(m.segs.len(), 1);
        assert_eq!(m.pieces(10, 20)[0].ids, vec![999]);
        m.write_acked((1 << 20) - 10, 1 << 21, 1000);
        let tiles = m.pieces(0, 1 << 20);
        assert_eq!(tiles.len(), 2);
        assert_eq!(tiles[1].end, 1 << 20);
    }
}
