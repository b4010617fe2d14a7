//! The segment files of the Raft log: what is read back after a restart,
//! a power loss (torn writes), truncates and purges, and damage.

use super::*;
use crate::chunk::{CrashDisk, RealDisk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn body(index: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
}

fn entries(from: u64, to: u64, len: usize) -> Vec<(u64, Vec<u8>)> {
    (from..=to).map(|i| (i, body(i, len))).collect()
}

fn dir() -> PathBuf {
    PathBuf::from("/mds/mds.redb.log")
}

/// Every entry the log holds, read one by one and all at once (the two
/// must agree).
fn all(log: &LogFiles) -> Vec<(u64, Vec<u8>)> {
    let whole = log.read(0, u64::MAX).unwrap();
    if let (Some(first), Some(last)) = (whole.first(), whole.last()) {
        assert_eq!(log.last_index(), Some(last.0));
        for (i, e) in whole.iter().enumerate() {
            assert_eq!(e.0, first.0 + i as u64);
            assert_eq!(log.read(e.0, e.0).unwrap(), vec![e.clone()]);
        }
    } else {
        assert_eq!(log.last_index(), None);
    }
    whole
}

#[test]
fn entries_and_the_committed_id_survive_a_restart_on_a_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mds.redb.log");
    let disk: Arc<dyn Disk> = Arc::new(RealDisk);
    let log = LogFiles::create(Arc::clone(&disk), &dir).unwrap();
    assert!(all(&log).is_empty());
    log.append(&entries(1, 10, 300)).unwrap();
    log.want_committed(Some(7), b"seven".to_vec());
    log.append(&entries(11, 12, 10)).unwrap();
    // An older id wanted after a newer one is not written over it.
    log.want_committed(Some(3), b"three".to_vec());
    log.want_committed(Some(12), b"twelve".to_vec());
    drop(log);
    // The segment is preallocated: appends change no size.
    let seg = dir.join(segment_name(1));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), SEGMENT_BYTES);

    let log = LogFiles::open(Arc::clone(&disk), &dir).unwrap();
    let mut expected = entries(1, 10, 300);
    expected.extend(entries(11, 12, 10));
    assert_eq!(all(&log), expected);
    assert_eq!(log.committed(), Some(b"twelve".to_vec()));
    assert_eq!(log.read(4, 6).unwrap(), entries(4, 6, 300));
    // Entries must follow the last one.
    let err = log.append(&entries(14, 14, 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    let err = log.append(&[(13, vec![1]), (15, vec![2])]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert_eq!(all(&log), expected);
}

#[test]
fn segments_rotate_and_purges_remove_whole_ones() {
    let disk = CrashDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let log = LogFiles::create(Arc::clone(&shared), &dir()).unwrap();
    // 1 MiB entries: 15 to a segment.
    let big = 1 << 20;
    for i in 1..=40 {
        log.append(&entries(i, i, big)).unwrap();
    }
    let mut names = shared.list(&dir()).unwrap();
    names.sort();
    assert_eq!(
        names,
        vec![segment_name(1), segment_name(16), segment_name(31)]
    );
    log.purge(20).unwrap();
    // The segment of 16..=30 still holds entries after 20.
    let mut names = shared.list(&dir()).unwrap();
    names.sort();
    assert_eq!(names, vec![segment_name(16), segment_name(31)]);
    assert_eq!(all(&log).first().unwrap().0, 21);
    drop(log);
    let log = LogFiles::open(Arc::clone(&shared), &dir()).unwrap();
    log.purge(20).unwrap();
    assert_eq!(all(&log), entries(21, 40, big));

    // A purge past the end (a snapshot installed): the next entry may
    // start anywhere.
    log.purge(50).unwrap();
    assert!(all(&log).is_empty());
    assert!(shared.list(&dir()).unwrap().is_empty());
    log.append(&entries(51, 52, 5)).unwrap();
    drop(log);
    let log = LogFiles::open(shared, &dir()).unwrap();
    assert_eq!(all(&log), entries(51, 52, 5));
}

/// A truncate removes for good: after new, shorter entries are written
/// over the removed ones, none of those comes back at the next start.
#[test]
fn a_truncate_never_brings_removed_entries_back() {
    let disk = CrashDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let log = LogFiles::create(Arc::clone(&shared), &dir()).unwrap();
    log.append(&entries(1, 20, 100)).unwrap();
    log.truncate(11).unwrap();
    assert_eq!(all(&log), entries(1, 10, 100));
    log.append(&entries(11, 12, 7)).unwrap();
    drop(log);
    let log = LogFiles::open(Arc::clone(&shared), &dir()).unwrap();
    let mut expected = entries(1, 10, 100);
    expected.extend(entries(11, 12, 7));
    assert_eq!(all(&log), expected);

    // Down to nothing, then again from 1.
    log.truncate(1).unwrap();
    assert!(all(&log).is_empty());
    log.append(&entries(1, 1, 3)).unwrap();
    drop(log);
    let log = LogFiles::open(shared, &dir()).unwrap();
    assert_eq!(all(&log), entries(1, 1, 3));
}

/// A model of what the log must hold: everything an operation that
/// returned made durable.
fn check(log: &LogFiles, model: &[(u64, Vec<u8>)], maybe: &[(u64, Vec<u8>)], seed: u64) {
    let got = all(log);
    let show = |es: &[(u64, Vec<u8>)]| -> Vec<(u64, usize, u8)> {
        es.iter()
            .map(|e| (e.0, e.1.len(), e.1.first().copied().unwrap_or(0)))
            .collect()
    };
    // Exactly the model, or the model then a prefix of the batch that was
    // being appended when the power went.
    let ok = got.len() >= model.len()
        && got[..model.len()] == *model
        && got.len() - model.len() <= maybe.len()
        && got[model.len()..] == maybe[..got.len() - model.len()];
    assert!(
        ok,
        "seed {seed}: got {:?}, model {:?}, maybe {:?}",
        show(&got),
        show(model),
        show(maybe)
    );
}

/// Random appends, truncates and purges, power losses (unsynced pages
/// kept, lost or torn sector by sector) in the middle of an append whose
/// sync failed, then restarts: the log always holds every entry an append
/// returned, in order, with at most a prefix of the unfinished one after,
/// and never an entry a truncate removed.
#[test]
fn power_losses_keep_every_synced_entry_and_nothing_stale() {
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk = CrashDisk::new();
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let mut log = LogFiles::create(Arc::clone(&shared), &dir()).unwrap();
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut purged = 0u64;
        for _ in 0..40 {
            let next = model.last().map_or(purged + 1, |e| e.0 + 1);
            match rng.gen_range(0..10) {
                0..=5 => {
                    let n = rng.gen_range(1..8);
                    let len = rng.gen_range(0..3000);
                    let batch: Vec<_> =
                        (next..next + n).map(|i| (i, body(i ^ seed, len))).collect();
                    log.append(&batch).unwrap();
                    model.extend(batch);
                }
                6 if !model.is_empty() => {
                    let from = rng.gen_range(model[0].0..=next - 1);
                    log.truncate(from).unwrap();
                    model.retain(|e| e.0 < from);
                }
                7 if !model.is_empty() => {
                    let upto = rng.gen_range(model[0].0..=next - 1);
                    log.purge(upto).unwrap();
                    purged = purged.max(upto);
                    model.retain(|e| e.0 > upto);
                }
                _ => {
                    // An append cut by the power: its sync fails, then
                    // the power goes.
                    let n = rng.gen_range(1..8);
                    let len = rng.gen_range(1..9000);
                    let batch: Vec<_> = (next..next + n)
                        .map(|i| (i, body(i ^ seed ^ 0xff, len)))
                        .collect();
                    disk.fail_syncs(Some(".seg"));
                    assert!(log.append(&batch).is_err());
                    disk.fail_syncs(None);
                    drop(log);
                    disk.power_loss(&mut rng);
                    log = LogFiles::open(Arc::clone(&shared), &dir()).unwrap();
                    if purged > 0 {
                        log.purge(purged).unwrap();
                    }
                    check(&log, &model, &batch, seed);
                    // What came back of it is the log's now.
                    let got = all(&log);
                    model = got;
                }
            }
            check(&log, &model, &[], seed);
        }
        drop(log);
        let log = LogFiles::open(shared, &dir()).unwrap();
        if purged > 0 {
            log.purge(purged).unwrap();
        }
        check(&log, &model, &[], seed);
    }
}

#[test]
fn damage_before_the_last_segment_is_refused_and_a_newer_segment_too() {
    let disk = CrashDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let log = LogFiles::create(Arc::clone(&shared), &dir()).unwrap();
    for i in 1..=20 {
        log.append(&entries(i, i, 1 << 20)).unwrap();
    }
    drop(log);
    // A bit rotted in entry 3 (first segment of two).
    let seg = dir().join(segment_name(1));
    let at = SEGMENT_HEADER_BYTES + 2 * (RECORD_HEADER_BYTES + (1 << 20)) + 100;
    disk.flip(&seg, at).unwrap();
    let err = LogFiles::open(Arc::clone(&shared), &dir()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.message().contains(&segment_name(1)), "{err}");
    disk.flip(&seg, at).unwrap();
    let log = LogFiles::open(Arc::clone(&shared), &dir()).unwrap();
    assert_eq!(all(&log).len(), 20);
    drop(log);

    // A newer segment format.
    let seg = dir().join(segment_name(16));
    let file = shared.open(&seg, OpenMode::Existing).unwrap();
    let mut header = segment_header(16, 0);
    header[8] = 2;
    file.write_at(&header, 0).unwrap();
    let err = LogFiles::open(Arc::clone(&shared), &dir()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("format version 2"), "{err}");
}

/// The segment format, byte for byte (docs/formats.md): a golden file.
#[test]
fn a_segment_matches_the_golden_file() {
    let golden = include_bytes!("../golden/raft_log_segment_v1.bin");
    let disk = CrashDisk::new();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let log = LogFiles::create(Arc::clone(&shared), &dir()).unwrap();
    log.append(&entries(7, 8, 5)).unwrap();
    log.want_committed(Some(7), vec![0xc0, 0x01]);
    log.append(&entries(9, 9, 3)).unwrap();
    drop(log);
    let file = shared
        .open(&dir().join(segment_name(7)), OpenMode::Existing)
        .unwrap();
    // The header, three entries and a committed id.
    let len = SEGMENT_HEADER_BYTES as usize + 4 * RECORD_HEADER_BYTES as usize + 5 + 5 + 2 + 3;
    let mut bytes = vec![0u8; len];
    file.read_at(&mut bytes, 0).unwrap();
    if std::env::var_os("PSTORAGE_REGEN_GOLDEN").is_some() {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/mds/golden/raft_log_segment_v1.bin"
            ),
            &bytes,
        )
        .unwrap();
    }
    assert_eq!(bytes, golden.as_slice());
    // And it reads back.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(segment_name(7)), golden).unwrap();
    let log = LogFiles::open(Arc::new(RealDisk), tmp.path()).unwrap();
    assert_eq!(all(&log), {
        let mut e = entries(7, 8, 5);
        e.extend(entries(9, 9, 3));
        e
    });
    assert_eq!(log.committed(), Some(vec![0xc0, 0x01]));
}

#[test]
fn creating_the_log_syncs_its_directory_and_the_parent_naming_it() {
    // A `CrashDisk` makes every name durable at any directory sync, so its
    // power loss cannot tell a missing sync of the parent: read its record.
    let disk = CrashDisk::new();
    LogFiles::create(Arc::new(disk.clone()), &dir()).unwrap();
    let synced = disk.synced_dirs();
    assert!(synced.contains(&dir()), "{synced:?}");
    assert!(synced.contains(&PathBuf::from("/mds")), "{synced:?}");
}
