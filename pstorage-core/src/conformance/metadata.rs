//! The [`MetadataService`] suite: the namespace, leases, chunk maps, sizes,
//! cluster parameters and the event log as a client and the CLI rely on
//! them, error kinds included, run through an [`MdsTransport`].

use super::{case, kind, ChunkWorld, MdsTransport, MdsWorld};
use crate::error::ErrorKind;
use crate::traits::{CsRegistry, MetadataService};
use crate::types::{
    AttrUpdate, CsRegistration, FailureReason, InodeKind, LeaseMode, OpenFlags, Replicas, SpaceInfo,
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
        assert_eq!(id, expected);
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
    let a = md.mkdir("/a", false).await.expect("mkdir /a");
    assert_eq!(a.kind, InodeKind::Dir);
    assert_eq!(
        kind("mkdir /a again", md.mkdir("/a", false).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind("mkdir without its parent", md.mkdir("/x/y", false).await),
        ErrorKind::NotFound
    );
    md.mkdir("/x/y", true).await.expect("mkdir -p /x/y");
    assert_eq!(
        kind("a relative path", md.mkdir("rel", false).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind("stat of nothing", md.stat("/nope").await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(
            "opening a directory",
            md.open("/a", LeaseMode::Write, NONE).await
        ),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(
            "opening a missing file",
            md.open("/a/f", LeaseMode::Read, NONE).await
        ),
        ErrorKind::NotFound
    );
    let f = md
        .open("/a/f", LeaseMode::Write, CREATE)
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
        kind("unlink of a non-empty directory", md.unlink("/a").await),
        ErrorKind::NotEmpty
    );
    md.rename("/a/f", "/x/g").await.expect("rename a file");
    assert_eq!(
        kind("the old name", md.stat("/a/f").await),
        ErrorKind::NotFound
    );
    assert_eq!(md.stat("/x/g").await.unwrap().ino, f.stat.ino, "same inode");
    assert_eq!(
        kind("rename of nothing", md.rename("/a/f", "/a/h").await),
        ErrorKind::NotFound
    );
    md.unlink("/x/g").await.expect("unlink a file");
    assert_eq!(
        kind("unlink again", md.unlink("/x/g").await),
        ErrorKind::NotFound
    );
    md.unlink("/a").await.expect("unlink an empty directory");
}

async fn leases(w: MdsWorld, t: &dyn MdsTransport) {
    let md = t.metadata(&w.mds).await;
    let writer = md.open("/f", LeaseMode::Write, CREATE).await.unwrap();
    assert_eq!(writer.lease.mode, LeaseMode::Write);
    assert!(writer.lease.duration_ms > 0);
    assert_eq!(
        kind(
            "a second writer",
            md.open("/f", LeaseMode::Write, NONE).await
        ),
        ErrorKind::Busy
    );
    assert_eq!(
        kind(
            "a reader beside a writer",
            md.open("/f", LeaseMode::Read, NONE).await
        ),
        ErrorKind::Busy
    );
    assert_eq!(
        kind("unlink under a lease", md.unlink("/f").await),
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
    let r1 = md.open("/f", LeaseMode::Read, NONE).await.unwrap();
    let r2 = md
        .open("/f", LeaseMode::Read, NONE)
        .await
        .expect("readers share");
    assert_ne!(r1.lease.id, r2.lease.id);
    assert_eq!(
        kind(
            "a writer beside readers",
            md.open("/f", LeaseMode::Write, NONE).await
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
            md.open("/f", LeaseMode::Write, exclusive).await
        ),
        ErrorKind::AlreadyExists
    );
    let g = md
        .open("/g", LeaseMode::Write, exclusive)
        .await
        .expect("create+exclusive of a new file");
    md.close(g.lease.id).await.unwrap();
}

async fn chunks(w: MdsWorld, t: &dyn MdsTransport) {
    register_all(&w).await;
    let md = t.metadata(&w.mds).await;
    let f = md.open("/c", LeaseMode::Write, CREATE).await.unwrap();
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
    let reader = md.open("/c", LeaseMode::Read, NONE).await.unwrap();
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
    let f = md.open("/r", LeaseMode::Write, CREATE).await.unwrap();
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
    md.mkdir("/d", false).await.unwrap();
    let update = AttrUpdate {
        replicas: Some(Replicas { norm: 2, min: 1 }),
        ..Default::default()
    };
    md.set_attr("/d", update, false).await.unwrap();
    let f = md.open("/d/f", LeaseMode::Write, CREATE).await.unwrap();
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
        kind("min above norm", md.set_attr("/d", bad, true).await),
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
            md.set_attr("/nope", update, false).await
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
