//! The [`MetadataService`] suite: the namespace, leases, chunk maps, sizes,
//! cluster parameters and the event log as a client and the CLI rely on
//! them, error kinds included, run through an [`MdsTransport`].

use super::{case, kind, ChunkWorld, MdsTransport, MdsWorld};
use crate::error::ErrorKind;
use crate::traits::{CsRegistry, MetadataService};
use crate::types::CsId;
use crate::types::{
    AttrUpdate, CsRegistration, FailureReason, InodeKind, LeaseMode, OpTag, OpenFlags, Replicas,
    SessionId, SpaceInfo,
};

const SUITE: &str = "MetadataService";

/// Runs every case of the suite through `transport`.
pub async fn run(transport: &dyn MdsTransport) {
    case(
        SUITE,
        "the namespace and its refusals",
        MdsWorld::new(),
        |w| namespace(w, transport),
    )
    .await;
    case(
        SUITE,
        "leases exclude and share as documented",
        MdsWorld::new(),
        |w| leases(w, transport),
    )
    .await;
    case(
        SUITE,
        "chunk maps, sizes and truncation",
        MdsWorld::new(),
        |w| chunks(w, transport),
    )
    .await;
    case(
        SUITE,
        "a directory and a file longer than a page list whole and by pages",
        MdsWorld::new(),
        |w| pages(w, transport),
    )
    .await;
    case(
        SUITE,
        "a failed replica leaves the chain",
        MdsWorld::new(),
        |w| failure(w, transport),
    )
    .await;
    case(
        SUITE,
        "attributes are inherited and set",
        MdsWorld::new(),
        |w| attributes(w, transport),
    )
    .await;
    case(
        SUITE,
        "a tagged mutation executes once and never after its client ended it",
        MdsWorld::new(),
        |w| exactly_once(w, transport),
    )
    .await;
    case(
        SUITE,
        "cluster parameters, status and events",
        MdsWorld::new(),
        |w| cluster(w, transport),
    )
    .await;
}

const CREATE: OpenFlags = OpenFlags {
    create: true,
    exclusive: false,
    truncate: false,
};

const NONE: OpenFlags = OpenFlags {
    create: false,
    exclusive: false,
    truncate: false,
};

/// Registers the world's three chunk servers with the MDS (in process: the
/// registry has its own suite).
async fn register_all(w: &MdsWorld) {
    for expected in 1..=3 {
        let id = w.mds.allocate_cs_id().await.unwrap();
        assert_eq!(id, CsId(expected));
        w.mds
            .register_cs(CsRegistration {
                id,
                addr: ChunkWorld::addr(id),
                space: SpaceInfo {
                    total_bytes: 1 << 40,
                    free_bytes: 1 << 39,
                },
                chunks: vec![],
                unclean: vec![],
            })
            .await
            .unwrap();
    }
}

async fn namespace(w: MdsWorld, t: &dyn MdsTransport) {
    let md = t.metadata(&w.mds).await;
    let a = md.mkdir("/a", false, None).await.expect("mkdir /a");
    assert_eq!(a.kind, InodeKind::Dir);
    assert_eq!(
        kind("mkdir /a again", md.mkdir("/a", false, None).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(
            "mkdir without its parent",
            md.mkdir("/x/y", false, None).await
        ),
        ErrorKind::NotFound
    );
    md.mkdir("/x/y", true, None).await.expect("mkdir -p /x/y");
    assert_eq!(
        kind("a relative path", md.mkdir("rel", false, None).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind("stat of nothing", md.stat("/nope").await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(
            "opening a directory",
            md.open("/a", LeaseMode::Write, NONE, None).await
        ),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(
            "opening a missing file",
            md.open("/a/f", LeaseMode::Read, NONE, None).await
        ),
        ErrorKind::NotFound
    );
    let f = md
        .open("/a/f", LeaseMode::Write, CREATE, None)
        .await
        .expect("create /a/f");
    assert_eq!(f.stat.kind, InodeKind::File);
    md.close(f.lease.id).await.unwrap();
    let names: Vec<String> = md
        .readdir("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["a", "x"], "sorted by name");
    assert_eq!(
        kind("readdir of a file", md.readdir("/a/f").await),
        ErrorKind::NotADirectory
    );
    assert_eq!(
        kind(
            "unlink of a non-empty directory",
            md.unlink("/a", None).await
        ),
        ErrorKind::NotEmpty
    );
    md.rename("/a/f", "/x/g", None)
        .await
        .expect("rename a file");
    assert_eq!(
        kind("the old name", md.stat("/a/f").await),
        ErrorKind::NotFound
    );
    assert_eq!(md.stat("/x/g").await.unwrap().ino, f.stat.ino, "same inode");
    assert_eq!(
        kind("rename of nothing", md.rename("/a/f", "/a/h", None).await),
        ErrorKind::NotFound
    );
    md.unlink("/x/g", None).await.expect("unlink a file");
    assert_eq!(
        kind("unlink again", md.unlink("/x/g", None).await),
        ErrorKind::NotFound
    );
    md.unlink("/a", None)
        .await
        .expect("unlink an empty directory");
}

fn tag(seq: u64, done_below: u64) -> Option<OpTag> {
    Some(OpTag {
        session: SessionId(0x5e55),
        seq,
        done_below,
    })
}

/// The seed 71 history of the simulator: an attempt of `unlink /d/n` that
/// arrives after its client retried, ended the operation and created
/// `/d/n` again must not remove the new `/d/n`.
async fn exactly_once(w: MdsWorld, t: &dyn MdsTransport) {
    let md = t.metadata(&w.mds).await;
    md.mkdir("/d", false, tag(1, 1)).await.expect("mkdir /d");
    // A repeated attempt gets the first answer instead of AlreadyExists.
    let first = md
        .mkdir("/d/n", false, tag(2, 2))
        .await
        .expect("mkdir /d/n");
    let again = md.mkdir("/d/n", false, tag(2, 2)).await;
    assert_eq!(again.expect("a repeated mkdir replays its answer"), first);
    // An untagged repeat is a new operation.
    assert_eq!(
        kind("untagged mkdir again", md.mkdir("/d/n", false, None).await),
        ErrorKind::AlreadyExists
    );
    // unlink /d/n (operation 3) executes once: its repeat is not NotFound.
    md.unlink("/d/n", tag(3, 3)).await.expect("unlink /d/n");
    md.unlink("/d/n", tag(3, 3))
        .await
        .expect("a repeated unlink replays its answer");
    // A refusal is replayed too, even once the name exists.
    assert_eq!(
        kind("unlink a missing name", md.unlink("/d/m", tag(4, 3)).await),
        ErrorKind::NotFound
    );
    md.mkdir("/d/m", false, tag(5, 3))
        .await
        .expect("mkdir /d/m");
    assert_eq!(
        kind("the refusal replayed", md.unlink("/d/m", tag(4, 3)).await),
        ErrorKind::NotFound
    );
    assert!(
        md.stat("/d/m").await.is_ok(),
        "a replayed refusal removed /d/m"
    );
    // The client ends operations 3 to 5 and creates /d/n again (operation
    // 6): a late attempt of operation 3 is refused and changes nothing.
    md.mkdir("/d/n", false, tag(6, 6))
        .await
        .expect("mkdir /d/n again");
    assert_eq!(
        kind("a late unlink", md.unlink("/d/n", tag(3, 3)).await),
        ErrorKind::Stale
    );
    assert_eq!(
        kind("a late rename", md.rename("/d/n", "/d/o", tag(5, 5)).await),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(
            "a late open",
            md.open("/d/n/f", LeaseMode::Write, CREATE, tag(4, 4)).await
        ),
        ErrorKind::Stale
    );
    let names: Vec<String> = md
        .readdir("/d")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["m", "n"]);
    assert!(
        md.stat("/d/n/f").await.is_err(),
        "the late open created a file"
    );
    // Another session's operation 3 is its own.
    let other = Some(OpTag {
        session: SessionId(0x07e4),
        seq: 3,
        done_below: 3,
    });
    md.unlink("/d/m", other)
        .await
        .expect("another session's unlink");
    // A repeated open replays its lease while the lease lives, and says
    // Stale once it has ended.
    let opened = md
        .open("/f", LeaseMode::Write, CREATE, tag(7, 7))
        .await
        .expect("open /f");
    let replayed = md
        .open("/f", LeaseMode::Write, CREATE, tag(7, 7))
        .await
        .expect("a repeated open replays its lease");
    assert_eq!(replayed.lease, opened.lease);
    md.close(opened.lease.id).await.unwrap();
    assert_eq!(
        kind(
            "a repeated open whose lease ended",
            md.open("/f", LeaseMode::Write, CREATE, tag(7, 7)).await
        ),
        ErrorKind::Stale
    );
    // A malformed tag is refused.
    assert_eq!(
        kind(
            "done_below above seq",
            md.mkdir("/e", false, tag(8, 9)).await
        ),
        ErrorKind::InvalidArgument
    );
    assert!(md.stat("/e").await.is_err());
}

async fn leases(w: MdsWorld, t: &dyn MdsTransport) {
    let md = t.metadata(&w.mds).await;
    let writer = md.open("/f", LeaseMode::Write, CREATE, None).await.unwrap();
    assert_eq!(writer.lease.mode, LeaseMode::Write);
    assert!(writer.lease.duration_ms > 0);
    assert_eq!(
        kind(
            "a second writer",
            md.open("/f", LeaseMode::Write, NONE, None).await
        ),
        ErrorKind::Busy
    );
    assert_eq!(
        kind(
            "a reader beside a writer",
            md.open("/f", LeaseMode::Read, NONE, None).await
        ),
        ErrorKind::Busy
    );
    assert_eq!(
        kind("unlink under a lease", md.unlink("/f", None).await),
        ErrorKind::Busy
    );
    md.renew(writer.lease.id)
        .await
        .expect("renewing a live lease");
    md.close(writer.lease.id).await.unwrap();
    md.close(writer.lease.id)
        .await
        .expect("closing again is a no-op");
    assert_eq!(
        kind("renewing a released lease", md.renew(writer.lease.id).await),
        ErrorKind::Stale
    );
    let r1 = md.open("/f", LeaseMode::Read, NONE, None).await.unwrap();
    let r2 = md
        .open("/f", LeaseMode::Read, NONE, None)
        .await
        .expect("readers share");
    assert_ne!(r1.lease.id, r2.lease.id);
    assert_eq!(
        kind(
            "a writer beside readers",
            md.open("/f", LeaseMode::Write, NONE, None).await
        ),
        ErrorKind::Busy
    );
    md.close(r1.lease.id).await.unwrap();
    md.close(r2.lease.id).await.unwrap();
    let exclusive = OpenFlags {
        exclusive: true,
        ..CREATE
    };
    assert_eq!(
        kind(
            "create+exclusive of an existing file",
            md.open("/f", LeaseMode::Write, exclusive, None).await
        ),
        ErrorKind::AlreadyExists
    );
    let g = md
        .open("/g", LeaseMode::Write, exclusive, None)
        .await
        .expect("create+exclusive of a new file");
    md.close(g.lease.id).await.unwrap();
}

/// `readdir` and `file_chunks` of more than a page (what a remote caller
/// gets in pages) are whole, and their pages are what they say.
async fn pages(w: MdsWorld, t: &dyn MdsTransport) {
    use crate::types::{CHUNK_MAP_PAGE, DIR_PAGE_ENTRIES};
    register_all(&w).await;
    let md = t.metadata(&w.mds).await;
    md.mkdir("/big", false, None).await.unwrap();
    let n = DIR_PAGE_ENTRIES + 5;
    for i in (0..n).rev() {
        md.mkdir(&format!("/big/e{i:05}"), false, None)
            .await
            .unwrap();
    }
    let names = |entries: &[crate::types::DirEntry]| -> Vec<String> {
        entries.iter().map(|e| e.name.clone()).collect()
    };
    let expected: Vec<String> = (0..n).map(|i| format!("e{i:05}")).collect();
    assert_eq!(names(&md.readdir("/big").await.unwrap()), expected);
    let first = md.readdir_page("/big", None).await.unwrap();
    assert!(first.more);
    assert_eq!(names(&first.entries), expected[..DIR_PAGE_ENTRIES]);
    let last = &first.entries[DIR_PAGE_ENTRIES - 1].name;
    let rest = md.readdir_page("/big", Some(last)).await.unwrap();
    assert!(!rest.more);
    assert_eq!(names(&rest.entries), expected[DIR_PAGE_ENTRIES..]);
    // After a name that is not there: from the next one.
    let tail = md.readdir_page("/big", Some("e01025x")).await.unwrap();
    assert_eq!(names(&tail.entries), ["e01026", "e01027", "e01028"]);
    assert_eq!(
        kind(
            "readdir_page of a file",
            md.readdir_page("/big/e00001/none", None).await
        ),
        ErrorKind::NotFound
    );

    let f = md.open("/c", LeaseMode::Write, CREATE, None).await.unwrap();
    let count = CHUNK_MAP_PAGE as u64 + 3;
    let mut maps = Vec::new();
    for index in 0..count {
        let map = md.chunk_map(f.lease.id, index, true).await.unwrap();
        maps.push(map.expect("allocated"));
    }
    assert_eq!(md.file_chunks("/c").await.unwrap(), maps);
    let first = md.file_chunks_page("/c", 0).await.unwrap();
    assert!(first.more);
    assert_eq!(first.maps, maps[..CHUNK_MAP_PAGE]);
    let rest = md
        .file_chunks_page("/c", CHUNK_MAP_PAGE as u64)
        .await
        .unwrap();
    assert!(!rest.more);
    assert_eq!(rest.maps, maps[CHUNK_MAP_PAGE..]);
    md.close(f.lease.id).await.unwrap();
}

async fn chunks(w: MdsWorld, t: &dyn MdsTransport) {
    register_all(&w).await;
    let md = t.metadata(&w.mds).await;
    let f = md.open("/c", LeaseMode::Write, CREATE, None).await.unwrap();
    let lease = f.lease.id;
    assert_eq!(
        md.chunk_map(lease, 0, false).await.unwrap(),
        None,
        "nothing allocated yet"
    );
    let map = md
        .chunk_map(lease, 0, true)
        .await
        .unwrap()
        .expect("allocated");
    assert_eq!(map.index, 0);
    assert_eq!(map.replicas.len(), 3, "replicas.norm copies: {map:?}");
    assert_eq!(
        md.chunk_map(lease, 0, false).await.unwrap(),
        Some(map.clone())
    );
    assert_eq!(
        md.chunk_map(lease, 0, true).await.unwrap(),
        Some(map.clone()),
        "allocated once"
    );
    // Every replica exists on its chunk server at the map's version.
    for r in &map.replicas {
        let held = crate::traits::ChunkControl::list_chunks(&**w.chunks.server(r.cs))
            .await
            .unwrap();
        assert!(
            held.iter()
                .any(|h| h.chunk == map.chunk && h.version == map.version),
            "CS {}: {held:?}",
            r.cs
        );
    }
    assert_eq!(md.file_chunks("/c").await.unwrap(), vec![map.clone()]);
    md.commit_size(lease, 5000).await.unwrap();
    assert_eq!(md.stat("/c").await.unwrap().size, 5000);
    md.commit_size(lease, 100).await.unwrap();
    assert_eq!(
        md.stat("/c").await.unwrap().size,
        5000,
        "commit_size never shrinks"
    );
    md.truncate(lease, 0).await.unwrap();
    assert_eq!(md.stat("/c").await.unwrap().size, 0);
    assert!(
        md.file_chunks("/c").await.unwrap().is_empty(),
        "chunks beyond the size released"
    );
    md.close(lease).await.unwrap();
    let reader = md.open("/c", LeaseMode::Read, NONE, None).await.unwrap();
    assert!(
        md.chunk_map(reader.lease.id, 0, true).await.is_err(),
        "allocation needs a write lease"
    );
    assert_eq!(md.chunk_map(reader.lease.id, 0, false).await.unwrap(), None);
    md.close(reader.lease.id).await.unwrap();
    assert_eq!(
        kind("a released lease", md.chunk_map(lease, 0, false).await),
        ErrorKind::Stale
    );
}

async fn failure(w: MdsWorld, t: &dyn MdsTransport) {
    register_all(&w).await;
    let md = t.metadata(&w.mds).await;
    let f = md.open("/r", LeaseMode::Write, CREATE, None).await.unwrap();
    let map = md.chunk_map(f.lease.id, 0, true).await.unwrap().unwrap();
    let failed = map.replicas[1].cs;
    // Down for real: the MDS probes a replica reported unreachable.
    w.chunks.net.set_reachable(&ChunkWorld::addr(failed), false);
    let next = md
        .report_failure(
            f.lease.id,
            map.chunk,
            map.version,
            failed,
            FailureReason::Unreachable,
        )
        .await
        .expect("a report of a dead replica");
    assert!(next.replicas.iter().all(|r| r.cs != failed), "{next:?}");
    assert_eq!(next.replicas.len(), 2);
    assert!(next.version > map.version);
    // An outdated report returns the current map.
    let again = md
        .report_failure(
            f.lease.id,
            map.chunk,
            map.version,
            failed,
            FailureReason::Unreachable,
        )
        .await
        .expect("an outdated report");
    assert_eq!(again.version, next.version);
    assert_eq!(md.file_chunks("/r").await.unwrap(), vec![again]);
}

async fn attributes(w: MdsWorld, t: &dyn MdsTransport) {
    let md = t.metadata(&w.mds).await;
    md.mkdir("/d", false, None).await.unwrap();
    let update = AttrUpdate {
        replicas: Some(Replicas { norm: 2, min: 1 }),
        ..Default::default()
    };
    md.set_attr("/d", update, false, None).await.unwrap();
    let f = md
        .open("/d/f", LeaseMode::Write, CREATE, None)
        .await
        .unwrap();
    assert_eq!(
        f.stat.attrs.replicas,
        Replicas { norm: 2, min: 1 },
        "inherited at creation"
    );
    md.close(f.lease.id).await.unwrap();
    let bad = AttrUpdate {
        replicas: Some(Replicas { norm: 1, min: 2 }),
        ..Default::default()
    };
    assert_eq!(
        kind("min above norm", md.set_attr("/d", bad, true, None).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        md.stat("/d/f").await.unwrap().attrs.replicas,
        Replicas { norm: 2, min: 1 },
        "unchanged"
    );
    assert_eq!(
        kind(
            "set_attr of nothing",
            md.set_attr("/nope", update, false, None).await
        ),
        ErrorKind::NotFound
    );
}

async fn cluster(w: MdsWorld, t: &dyn MdsTransport) {
    register_all(&w).await;
    let md = t.metadata(&w.mds).await;
    let config = md.get_config().await.unwrap();
    assert!(!config.is_empty());
    let entry = config[0].clone();
    assert_eq!(
        kind(
            "an unknown parameter",
            md.set_config("no.such.parameter", 1).await
        ),
        ErrorKind::InvalidArgument
    );
    md.set_config(&entry.key, entry.default)
        .await
        .expect("a parameter at its default");
    let after = md.get_config().await.unwrap();
    assert_eq!(
        after.iter().find(|e| e.key == entry.key).unwrap().value,
        entry.default
    );
    let status = md.cluster_status().await.unwrap();
    assert_eq!(status.cs.len(), 3, "{status:?}");
    assert_eq!(
        status,
        w.mds.cluster_status().await.unwrap(),
        "every field carried"
    );
    let events = md.event_log(0).await.unwrap();
    assert!(!events.is_empty(), "the registrations are in the event log");
    assert!(
        events.windows(2).all(|p| p[0].seq < p[1].seq),
        "oldest first"
    );
    let last = events.last().unwrap().seq;
    assert!(md.event_log(last).await.unwrap().is_empty());
    assert_eq!(md.event_log(last - 1).await.unwrap().len(), 1);
}
