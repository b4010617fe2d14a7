//! Acknowledged writes not yet flushed, kept by the writer until a flush
//! makes them durable, so that a flush can replay them.
//!
//! A write is acknowledged once every replica of its chain applied it, but
//! it is durable only after the next flush. If every replica holding it
//! loses it before that flush (a power cut of the whole cluster; or of a
//! lone replica), the chunk comes back at a newer map version (the MDS
//! moves the version on whenever a member leaves, rejoins or is resynced),
//! and a flush at that version would succeed without the write: the file
//! would silently miss an acknowledged write that the writer was then told
//! is durable. Like an NFS client that resends its unstable writes when the
//! server's write verifier changed, the writer keeps every acknowledged
//! write with the map version it was acknowledged at, and a flush that
//! finds the chunk at another version first writes them again, in order,
//! at the current one (the writer holds the file's only write lease, so
//! these are still the latest contents). The records a successful flush
//! covered are then dropped; a cap on the bytes kept
//! ([`ClientOptions::max_unflushed_bytes`]) makes a writer flush before it
//! holds more.
//!
//! [`ClientOptions::max_unflushed_bytes`]: super::ClientOptions::max_unflushed_bytes

use std::collections::BTreeMap;

use crate::traits::WritePayload;
use crate::types::MapVersion;

/// One acknowledged write inside one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Offset inside the chunk.
    pub(crate) offset: u64,
    pub(crate) payload: WritePayload,
    /// The chunk's map version when every replica had applied it.
    pub(crate) version: MapVersion,
    /// The flush generation it belongs to (see [`Unflushed::start_flush`]).
    generation: u64,
}

/// The unflushed writes of one file, per chunk index, in the order they
/// were acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    chunks: BTreeMap<u64, Vec<Record>>,
    /// Data bytes held (zeroing records hold none).
    bytes: u64,
    generation: u64,
}

fn data_len(payload: &WritePayload) -> u64 {
    match payload {
        WritePayload::Data(d) => d.len() as u64,
        WritePayload::Zeros(_) => 0,
    }
}

impl Unflushed {
    /// Keeps a write of chunk `index` acknowledged at `version`.
    pub(crate) fn record(
        &mut self,
        index: u64,
        offset: u64,
        payload: WritePayload,
        version: MapVersion,
    ) {
        self.bytes += data_len(&payload);
        self.chunks.entry(index).or_default().push(Record {
            offset,
            payload,
            version,
            generation: self.generation,
        });
    }

    /// Data bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A flush starts: it covers every record kept so far (the returned
    /// generation and older); writes acknowledged from now on belong to
    /// the next flush.
    pub(crate) fn start_flush(&mut self) -> u64 {
        let covered = self.generation;
        self.generation += 1;
        covered
    }

    /// Whether a record of chunk `index` was acknowledged at a version other
    /// than `version` (a flush at `version` may not cover it).
    pub(crate) fn needs_replay(&self, index: u64, version: MapVersion) -> bool {
        self.chunks
            .get(&index)
            .is_some_and(|records| records.iter().any(|r| r.version != version))
    }

    /// The records of chunk `index`, oldest first.
    pub(crate) fn records(&self, index: u64) -> Vec<Record> {
        self.chunks.get(&index).cloned().unwrap_or_default()
    }

    /// Record `position` of chunk `index` was written again, at `version`.
    pub(crate) fn replayed(&mut self, index: u64, position: usize, version: MapVersion) {
        if let Some(r) = self
            .chunks
            .get_mut(&index)
            .and_then(|records| records.get_mut(position))
        {
            r.version = version;
        }
    }

    /// A flush covering generation `covered` made chunk `index` durable.
    pub(crate) fn flushed(&mut self, index: u64, covered: u64) {
        let Some(records) = self.chunks.get_mut(&index) else {
            return;
        };
        let mut freed = 0;
        records.retain(|r| {
            let keep = r.generation > covered;
            if !keep {
                freed += data_len(&r.payload);
            }
            keep
        });
        self.bytes -= freed;
        if records.is_empty() {
            self.chunks.remove(&index);
        }
    }

    /// Forgets chunk `index` and every later one (truncated away, or gone).
    pub(crate) fn forget_from(&mut self, index: u64) {
        let gone = self.chunks.split_off(&index);
        self.bytes -= gone
            .values()
            .flatten()
            .map(|r| data_len(&r.payload))
            .sum::<u64>();
    }

    /// Forgets chunk `index` only.
    pub(crate) fn forget(&mut self, index: u64) {
        if let Some(records) = self.chunks.remove(&index) {
            self.bytes -= records.iter().map(|r| data_len(&r.payload)).sum::<u64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn data(n: usize) -> WritePayload {
        WritePayload::Data(Bytes::from(vec![7u8; n]))
    }

    #[test]
    fn records_are_kept_until_a_flush_that_covers_them() {
        let mut u = Unflushed::default();
        u.record(0, 0, data(10), MapVersion(1));
        u.record(0, 10, WritePayload::Zeros(5), MapVersion(1));
        u.record(1, 0, data(4), MapVersion(2));
        assert_eq!(u.bytes(), 14);
        let covered = u.start_flush();
        // A write acknowledged while the flush runs is not covered by it.
        u.record(0, 20, data(3), MapVersion(1));
        assert!(!u.needs_replay(0, MapVersion(1)));
        assert!(
            u.needs_replay(0, MapVersion(2)),
            "acknowledged at 1, the chunk is at 2"
        );
        u.flushed(0, covered);
        assert_eq!(u.records(0).len(), 1, "{:?}", u.records(0));
        assert_eq!(u.records(0)[0].offset, 20);
        assert_eq!(u.bytes(), 7);
        u.flushed(1, covered);
        assert_eq!(u.bytes(), 3);
        let covered = u.start_flush();
        u.flushed(0, covered);
        assert_eq!(u.bytes(), 0);
        assert!(u.records(0).is_empty());
    }

    #[test]
    fn a_replayed_record_takes_the_version_it_was_written_at() {
        let mut u = Unflushed::default();
        u.record(3, 0, data(1), MapVersion(4));
        u.record(3, 1, data(1), MapVersion(5));
        assert!(u.needs_replay(3, MapVersion(5)));
        u.replayed(3, 0, MapVersion(5));
        assert!(!u.needs_replay(3, MapVersion(5)));
    }

    #[test]
    fn truncation_forgets_the_chunks_it_removes() {
        let mut u = Unflushed::default();
        for index in 0..4 {
            u.record(index, 0, data(2), MapVersion(1));
        }
        u.forget_from(2);
        assert_eq!(u.bytes(), 4);
        assert!(u.records(2).is_empty() && u.records(3).is_empty());
        u.forget(0);
        assert_eq!(u.bytes(), 2);
        assert_eq!(u.records(1).len(), 1);
    }
}
