//! Tests of the journal: replay after random crash points (unsynced writes
//! dropped, or torn at 512-byte sectors), refusals, failures, the format.

use parking_lot::Mutex;
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// A device that keeps what was synced apart from what was only written,
/// and at a "crash" keeps each unsynced 512-byte sector or not at random.
#[derive(Default)]
pub(crate) struct CrashDevice {
    inner: Mutex<CrashInner>,
}

#[derive(Default)]
struct CrashInner {
    durable: Vec<u8>,
    /// Writes since the last sync, oldest first.
    pending: Vec<(u64, Vec<u8>)>,
    fail_sync: bool,
    fail_write: bool,
    /// Reads of the ring fail (the superblock still reads).
    fail_ring_reads: bool,
}

impl CrashInner {
    fn apply(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset as usize..end].copy_from_slice(data);
    }
}

impl CrashDevice {
    /// Power loss: each unsynced sector reaches the disk or not.
    pub(crate) fn crash(&self, rng: &mut StdRng) {
        let mut inner = self.inner.lock();
        let pending = std::mem::take(&mut inner.pending);
        for (offset, data) in pending {
            match rng.gen_range(0..3) {
                0 => {}
                1 => CrashInner::apply(&mut inner.durable, offset, &data),
                _ => {
                    for (i, sector) in data.chunks(512).enumerate() {
                        if rng.gen_bool(0.5) {
                            CrashInner::apply(&mut inner.durable, offset + i as u64 * 512, sector);
                        }
                    }
                }
            }
        }
    }

    fn set_fail_sync(&self, fail: bool) {
        self.inner.lock().fail_sync = fail;
    }

    fn set_fail_write(&self, fail: bool) {
        self.inner.lock().fail_write = fail;
    }

    fn corrupt(&self, offset: u64, byte: u8) {
        let mut inner = self.inner.lock();
        inner.durable[offset as usize] ^= byte;
    }
}

pub(crate) struct SharedDevice(pub Arc<CrashDevice>);

impl JournalDevice for SharedDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let inner = self.0.inner.lock();
        if inner.fail_ring_reads && offset >= RING_AT {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let mut view = inner.durable.clone();
        for (o, d) in &inner.pending {
            CrashInner::apply(&mut view, *o, d);
        }
        let end = offset as usize + buf.len();
        if view.len() < end {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&view[offset as usize..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut inner = self.0.inner.lock();
        if inner.fail_write {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        inner.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        let mut inner = self.0.inner.lock();
        if inner.fail_sync {
            // What a failed fsync does: the dirty pages are gone.
            inner.pending.clear();
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let pending = std::mem::take(&mut inner.pending);
        for (o, d) in pending {
            CrashInner::apply(&mut inner.durable, o, &d);
        }
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        let inner = self.0.inner.lock();
        let mut len = inner.durable.len() as u64;
        for (o, d) in &inner.pending {
            len = len.max(o + d.len() as u64);
        }
        Ok(len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut inner = self.0.inner.lock();
        inner.durable.resize(len as usize, 0);
        Ok(())
    }
    fn name(&self) -> String {
        "test-journal".into()
    }
}

const STORE: u64 = 0x5707e;
const RING: u64 = 64 * 1024;

/// Opens the journal and, as the store does once it applied the records,
/// trims them (their data stays readable until new records are appended).
fn open(dev: &Arc<CrashDevice>) -> (Journal, Vec<Replayed>) {
    let (journal, replayed) =
        Journal::open(Box::new(SharedDevice(dev.clone())), STORE, RING).unwrap();
    journal.advance_tail(journal.head()).unwrap();
    (journal, replayed)
}

fn block_of(seed: u64, block: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ (block << 32));
    (0..BLOCK_SIZE).map(|_| rng.gen()).collect()
}

/// One write record of `blocks` blocks with data derived from `seed`.
struct Rec {
    chunk: ChunkId,
    first: u64,
    crcs: Vec<u64>,
    data: Vec<u8>,
}

impl Rec {
    fn new(seed: u64, blocks: u64) -> Rec {
        let mut data = Vec::new();
        for b in 0..blocks {
            data.extend(block_of(seed, b));
        }
        let crcs = data.chunks(4096).map(super::super::block_entry).collect();
        Rec {
            chunk: ChunkId(seed % 7),
            first: seed % 100,
            crcs,
            data,
        }
    }
    fn record(&self) -> NewRecord<'_> {
        NewRecord {
            kind: RecordKind::Write,
            slot: 0,
            chunk: self.chunk,
            version: MapVersion(3),
            first_block: self.first,
            blocks: self.crcs.len() as u64,
            crcs: &self.crcs,
            data: &self.data,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64, u64),
    Sync,
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 1..5u64).prop_map(|(s, b)| Op::Append(s, b)),
        2 => Just(Op::Sync),
        1 => Just(Op::Trim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the crash point and whatever reached the disk, replay
    /// returns a prefix of the live records that holds every synced one,
    /// with their data intact; and the journal goes on after it.
    #[test]
    fn replay_after_a_crash_is_a_prefix_holding_every_synced_record(
        ops in proptest::collection::vec(op(), 1..80),
        crash_seed in any::<u64>(),
        reopen_twice in any::<bool>(),
    ) {
        let dev = Arc::new(CrashDevice::default());
        let (journal, replayed) = open(&dev);
        prop_assert!(replayed.is_empty());
        // Records since the last trim: (seq, rec), and how many are synced.
        let mut live: Vec<(u64, Rec)> = Vec::new();
        let mut synced = 0usize;
        for op in ops {
            match op {
                Op::Append(seed, blocks) => {
                    let rec = Rec::new(seed, blocks);
                    let appended = match journal.append(&[rec.record()]).unwrap() {
                        Some(a) => a,
                        None => {
                            // Full: trim everything (the store applies first).
                            let mark = journal.head();
                            journal.sync_all().unwrap();
                            journal.advance_tail(mark).unwrap();
                            live.clear();
                            synced = 0;
                            journal.append(&[rec.record()]).unwrap().expect("room after a trim")
                        }
                    };
                    live.push((appended[0].seq, rec));
                }
                Op::Sync => {
                    journal.sync_all().unwrap();
                    synced = live.len();
                }
                Op::Trim => {
                    let mark = journal.head();
                    journal.sync_all().unwrap();
                    journal.advance_tail(mark).unwrap();
                    live.clear();
                    synced = 0;
                }
            }
        }
        drop(journal);
        dev.crash(&mut StdRng::seed_from_u64(crash_seed));
        let (journal, replayed) = open(&dev);
        prop_assert!(replayed.len() >= synced, "{} replayed, {} synced", replayed.len(), synced);
        prop_assert!(replayed.len() <= live.len());
        for (r, (seq, rec)) in replayed.iter().zip(&live) {
            prop_assert_eq!(r.seq, *seq);
            prop_assert_eq!(r.chunk, rec.chunk);
            prop_assert_eq!(r.first_block, rec.first);
            prop_assert_eq!(&r.crcs, &rec.crcs);
            let mut data = vec![0u8; rec.data.len()];
            journal.read(&mut data, r.data_at).unwrap();
            prop_assert!(data == rec.data, "record {} data differs", seq);
        }
        // Appending after a replay continues the sequence, and a second
        // crash replays the old prefix plus what was synced since.
        let kept = replayed.len();
        let rec = Rec::new(crash_seed, 2);
        let next = journal.append(&[rec.record()]).unwrap();
        if let Some(next) = next {
            journal.sync_all().unwrap();
            if let Some(last) = replayed.last() {
                prop_assert!(next[0].seq > last.seq);
            }
            if reopen_twice {
                // The replayed records were trimmed: only the new one
                // remains, and no stale record of the last lap follows it.
                drop(journal);
                dev.crash(&mut StdRng::seed_from_u64(!crash_seed));
                let (_j, again) = open(&dev);
                prop_assert_eq!(again.len(), 1, "kept {}", kept);
                prop_assert_eq!(again[0].seq, next[0].seq);
                prop_assert_eq!(again[0].crcs.clone(), rec.crcs);
            }
        }
    }
}

#[test]
fn records_wrap_around_the_ring() {
    let dev = Arc::new(CrashDevice::default());
    let (journal, _) = open(&dev);
    let mut seqs = Vec::new();
    let mut all = Vec::new();
    // 3-block records (12.5 KiB) do not divide the 64 KiB ring.
    for seed in 0..40 {
        let rec = Rec::new(seed, 3);
        let a = match journal.append(&[rec.record()]).unwrap() {
            Some(a) => a,
            None => {
                let mark = journal.head();
                journal.sync_all().unwrap();
                journal.advance_tail(mark).unwrap();
                seqs.clear();
                journal.append(&[rec.record()]).unwrap().unwrap()
            }
        };
        seqs.push((a[0].seq, seed));
        all.push(a[0].seq);
    }
    journal.sync_all().unwrap();
    drop(journal);
    let (_, replayed) = open(&dev);
    assert!(!seqs.is_empty());
    assert_eq!(
        replayed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    // A wrap record takes a sequence number: some record follows a gap.
    assert!(all.windows(2).any(|w| w[1] == w[0] + 2));
}

#[test]
fn a_flipped_bit_ends_the_replay_at_that_record() {
    let dev = Arc::new(CrashDevice::default());
    let (journal, _) = open(&dev);
    let mut at = Vec::new();
    for seed in 0..4 {
        let rec = Rec::new(seed, 1);
        at.push(journal.append(&[rec.record()]).unwrap().unwrap()[0]);
    }
    journal.sync_all().unwrap();
    drop(journal);
    // One bit in the third record's data.
    dev.corrupt(at[2].data_at + 100, 0x10);
    let (_, replayed) = open(&dev);
    assert_eq!(replayed.len(), 2);
}

#[test]
fn a_failed_sync_fails_every_later_call() {
    let dev = Arc::new(CrashDevice::default());
    let (journal, _) = open(&dev);
    let rec = Rec::new(1, 1);
    journal.append(&[rec.record()]).unwrap().unwrap();
    dev.set_fail_sync(true);
    let err = journal.sync_all().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    // Even once the disk "recovers", a retried sync must not report the
    // lost record durable.
    dev.set_fail_sync(false);
    assert_eq!(journal.sync_all().unwrap_err().kind(), ErrorKind::Io);
    assert_eq!(
        journal.append(&[rec.record()]).unwrap_err().kind(),
        ErrorKind::Io
    );
}

#[test]
fn a_failed_write_fails_the_journal() {
    let dev = Arc::new(CrashDevice::default());
    let (journal, _) = open(&dev);
    dev.set_fail_write(true);
    let rec = Rec::new(1, 1);
    assert_eq!(
        journal.append(&[rec.record()]).unwrap_err().kind(),
        ErrorKind::Io
    );
    dev.set_fail_write(false);
    assert_eq!(
        journal.append(&[rec.record()]).unwrap_err().kind(),
        ErrorKind::Io
    );
}

#[test]
fn a_journal_of_another_store_is_refused() {
    let dev = Arc::new(CrashDevice::default());
    drop(open(&dev));
    let err = Journal::open(Box::new(SharedDevice(dev)), STORE + 1, RING)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("belongs to chunk store"), "{err}");
}

/// A new journal whose superblock slot 0 `edit` changed (its checksum
/// made valid again) and whose slot 1 is empty.
fn journal_with_slot0(edit: impl FnOnce(&mut [u8; 512])) -> SharedDevice {
    let dev = Arc::new(CrashDevice::default());
    drop(open(&dev));
    let mut sb = [0u8; 512];
    SharedDevice(dev.clone()).read_at(&mut sb, 0).unwrap();
    edit(&mut sb);
    sb[56..64].fill(0);
    let crc = crc64(&sb);
    sb[56..64].copy_from_slice(&crc.to_le_bytes());
    let shared = SharedDevice(dev);
    shared.write_at(&sb, 0).unwrap();
    shared.write_at(&[0u8; 512], 512).unwrap();
    shared.sync().unwrap();
    shared
}

/// A superblock (with a valid checksum) claiming a ring of 2^64 - 4096
/// bytes is refused as truncated: the length check overflowed (a panic in
/// debug builds; found by the chunk_journal fuzz target).
#[test]
fn a_superblock_claiming_a_ring_near_2_pow_64_is_refused() {
    let shared =
        journal_with_slot0(|sb| sb[32..40].copy_from_slice(&(u64::MAX - 4095).to_le_bytes()));
    let err = Journal::open(Box::new(shared), STORE, RING).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.message().contains("truncated"), "{err}");
}

/// A superblock (with a valid checksum) whose tail sequence number is
/// near 2^64 is refused as corrupt: numbering the records after it
/// overflowed (a panic in debug builds; found by the chunk_journal fuzz
/// target once it ran fast enough to get there).
#[test]
fn a_superblock_claiming_a_sequence_near_2_pow_64_is_refused() {
    let with_tail_seq =
        |seq: u64| journal_with_slot0(|sb| sb[48..56].copy_from_slice(&seq.to_le_bytes()));
    for seq in [u64::MAX, u64::MAX - 1, MAX_SEQ + 1] {
        let err = Journal::open(Box::new(with_tail_seq(seq)), STORE, RING)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.message().contains("sequence"), "{err}");
    }
    // The largest sequence allowed opens, and appends go on after it.
    let (journal, replayed) = Journal::open(Box::new(with_tail_seq(MAX_SEQ)), STORE, RING).unwrap();
    assert!(replayed.is_empty());
    assert!(journal.tail_seq() >= MAX_SEQ);
}

#[test]
fn a_newer_journal_format_is_refused() {
    let dev = Arc::new(CrashDevice::default());
    drop(open(&dev));
    let mut sb = [0u8; 512];
    SharedDevice(dev.clone()).read_at(&mut sb, 0).unwrap();
    sb[8..12].copy_from_slice(&(JOURNAL_FORMAT_VERSION + 1).to_le_bytes());
    sb[56..64].fill(0);
    let crc = crc64(&sb);
    sb[56..64].copy_from_slice(&crc.to_le_bytes());
    let shared = SharedDevice(dev.clone());
    shared.write_at(&sb, 0).unwrap();
    shared.sync().unwrap();
    let err = Journal::open(Box::new(shared), STORE, RING).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("upgrade"), "{err}");
}

#[test]
fn a_file_that_is_not_a_journal_is_not_formatted_over() {
    let dev = Arc::new(CrashDevice::default());
    let shared = SharedDevice(dev.clone());
    shared.write_at(&[7u8; 8192], 0).unwrap();
    shared.sync().unwrap();
    let err = Journal::open(Box::new(shared), STORE, RING).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let mut after = [0u8; 8192];
    SharedDevice(dev).read_at(&mut after, 0).unwrap();
    assert_eq!(after, [7u8; 8192]);
}

#[test]
fn a_torn_superblock_update_falls_back_to_the_other_slot() {
    let dev = Arc::new(CrashDevice::default());
    let (journal, _) = open(&dev);
    let rec = Rec::new(9, 1);
    journal.append(&[rec.record()]).unwrap().unwrap();
    journal.sync_all().unwrap();
    drop(journal);
    // A newer generation in slot 1, torn (its checksum fails): slot 0
    // stays the current one.
    let shared = SharedDevice(dev.clone());
    let mut sb = [0u8; 512];
    shared.read_at(&mut sb, 0).unwrap();
    let mut newer = sb;
    newer[16..24].copy_from_slice(&5u64.to_le_bytes());
    // Not re-checksummed: as if torn mid-sector.
    shared.write_at(&newer, 512).unwrap();
    shared.sync().unwrap();
    let (_, replayed) = open(&dev);
    assert_eq!(replayed.len(), 1, "the valid slot is used");
}

/// The superblock and the two record kinds with data or entries, as
/// written by this build.
fn golden_text() -> (Superblock, String) {
    let sb = Superblock {
        generation: 7,
        store_id: 0x0123_4567_89ab_cdef,
        ring: 256 << 20,
        tail: 8192,
        tail_seq: 42,
    };
    let mut text = String::new();
    text.push_str("# superblock slot\n");
    text.push_str(&super::super::hex_lines(&sb.encode()));
    let (head, data_crc) = golden_write_record();
    text.push_str("# write record head area (512 bytes; 4096 data bytes follow)\n");
    text.push_str(&super::super::hex_lines(&head));
    text.push_str(&format!("# data crc64 {data_crc:016x}\n"));
    let crcs = [0x1111_2222_3333_4444u64, 0x5555_6666_7777_8888];
    let rec = NewRecord {
        kind: RecordKind::InPlace,
        slot: 0,
        chunk: ChunkId(0x78),
        version: MapVersion(10),
        first_block: 64,
        blocks: 2,
        crcs: &crcs,
        data: &[],
    };
    let mut buf = Vec::new();
    encode_record(&rec, 43, &mut buf);
    assert_eq!(buf.len(), 512, "an in-place record is its head area only");
    text.push_str("# in-place write record (512 bytes, no data)\n");
    text.push_str(&super::super::hex_lines(&buf));
    // New entries, then old ones.
    let crcs = [
        0x1111_2222_3333_4444u64,
        0x5555_6666_7777_8888,
        0x9999_aaaa_bbbb_cccc,
        0,
    ];
    let rec = NewRecord {
        kind: RecordKind::Moved,
        slot: 1,
        chunk: ChunkId(0x79),
        version: MapVersion(11),
        first_block: 128,
        blocks: 2,
        crcs: &crcs,
        data: &[],
    };
    encode_record(&rec, 44, &mut buf);
    assert_eq!(buf.len(), 512, "a moved record is its head area only");
    text.push_str("# moved write record (512 bytes, no data)\n");
    text.push_str(&super::super::hex_lines(&buf));
    (sb, text)
}

/// A one-block write record at sequence 42: its head area and the CRC of
/// its data.
fn golden_write_record() -> (Vec<u8>, u64) {
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let crcs = [super::super::block_entry(&data)];
    let rec = NewRecord {
        kind: RecordKind::Write,
        slot: 0,
        chunk: ChunkId(0x77),
        version: MapVersion(9),
        first_block: 5,
        blocks: 1,
        crcs: &crcs,
        data: &data,
    };
    let mut buf = Vec::new();
    encode_record(&rec, 42, &mut buf);
    (buf[..512].to_vec(), crc64(&buf[512..]))
}

/// The bytes of section `title` of a golden file written by `hex_lines`
/// (`len` bytes, lines of zeros left out).
pub(crate) fn golden_bytes(golden: &str, title: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut lines = golden.lines().skip_while(|l| !l.starts_with(title)).skip(1);
    for line in lines.by_ref().take_while(|l| !l.starts_with('#')) {
        let (at, bytes) = line.split_once(':').unwrap();
        let at = usize::from_str_radix(at, 16).unwrap();
        for (i, b) in bytes.split_whitespace().enumerate() {
            out[at + i] = u8::from_str_radix(b, 16).unwrap();
        }
    }
    out
}

/// The journal format, byte for byte: a superblock slot, a one-block write
/// record, an in-place write record and a moved write record. A change here
/// is a format change (bump the version and keep reading this one).
#[test]
fn journal_format_3_matches_the_golden_file() {
    let (sb, text) = golden_text();
    let golden = include_str!("journal_v3.golden");
    if std::env::var_os("PSTORAGE_WRITE_GOLDEN").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/chunk/journal_v3.golden"),
            &text,
        )
        .unwrap();
    }
    assert_eq!(text, golden);
    // And it decodes.
    assert_eq!(
        Superblock::decode(&sb.encode(), "golden").unwrap(),
        Some(sb)
    );
}

/// A journal of format 2 (written by earlier builds) is read: its
/// superblock decodes, and its write and in-place records are laid out as
/// today's.
#[test]
fn a_format_2_journal_is_read() {
    let golden = include_str!("journal_v2.golden");
    let slot = golden_bytes(golden, "# superblock slot", SECTOR as usize);
    assert_eq!(le32(&slot[8..12]), 2, "the golden file is of format 2");
    let (sb, today) = golden_text();
    assert_eq!(Superblock::decode(&slot, "golden v2").unwrap(), Some(sb));
    for title in ["# write record head area", "# in-place write record"] {
        assert_eq!(
            golden_bytes(golden, title, 512),
            golden_bytes(&today, title, 512),
            "{title}"
        );
    }
}

/// A journal of format 1 (written by earlier builds) is read: its
/// superblock decodes, and its write records are laid out as today's.
#[test]
fn a_format_1_journal_is_read() {
    let golden = include_str!("journal_v1.golden");
    let slot = golden_bytes(golden, "# superblock slot", SECTOR as usize);
    assert_eq!(le32(&slot[8..12]), 1, "the golden file is of format 1");
    assert_eq!(
        Superblock::decode(&slot, "golden v1").unwrap(),
        Some(Superblock {
            generation: 7,
            store_id: 0x0123_4567_89ab_cdef,
            ring: 256 << 20,
            tail: 8192,
            tail_seq: 42,
        })
    );
    let head = golden_bytes(golden, "# write record head area", 512);
    let (today, data_crc) = golden_write_record();
    assert_eq!(head, today);
    assert!(golden.contains(&format!("# data crc64 {data_crc:016x}")));
}

/// A read error during the replay is not the end of the log (that would
/// drop the flushed records after it): the journal does not open.
#[test]
fn a_read_error_at_replay_fails_the_open() {
    let dev = Arc::new(CrashDevice::default());
    let (journal, _) = open(&dev);
    journal.append(&[Rec::new(1, 1).record()]).unwrap().unwrap();
    journal.sync_all().unwrap();
    drop(journal);
    dev.inner.lock().fail_ring_reads = true;
    let err = Journal::open(Box::new(SharedDevice(dev.clone())), STORE, RING)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    dev.inner.lock().fail_ring_reads = false;
    let (_, replayed) = open(&dev);
    assert_eq!(replayed.len(), 1);
}
