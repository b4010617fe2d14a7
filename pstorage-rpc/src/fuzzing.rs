//! Entry points for the fuzz targets of `fuzz/` (the `fuzzing` feature;
//! not part of the normal API). Each function feeds bytes from the network
//! to the real decoder and checks what must hold for what it accepts
//! (mostly: it encodes back to the same value). A decoder must return an
//! error for bad input: a panic, an unbounded allocation or a hang here is
//! a bug.

use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use capnp::traits::OwnedStruct;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use pstorage_core::conf::{ClusterKey, KEY_LEN};
use pstorage_core::mds::raft::{MdsId, MdsRaftConfig};
use pstorage_core::types::{
    AttrUpdate, ChunkCounts, ChunkMap, ChunkReplicaInfo, ClusterStatus, ConfigEntry, CopyProgress,
    CopyStats, CsInfo, CsPlacementUpdate, CsRegistration, CsStats, Event, FileAttrs,
    HeartbeatReply, HeldLock, IoRates, Lease, LockRequest, MdsInfo, MdsMember, MdsMembership,
    NewNode, OpTag, OpenFlags, OpenReply, Perms, RebalanceStatus, Replica, Replicas,
    ReplicationStatus, SpaceInfo, Stat, StatChange, TierSpace, Timestamp,
};
use pstorage_core::types::{CertRecord, ChunkMapPage, DirPage, ReplicaPage, RevokedSerials};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::auth;
use crate::generated::pstorage_capnp::{chunk_control, mds};
use crate::wire::{
    failure_reason_from_wire, lease_mode_from_wire, read_list, read_op, read_perms, read_text,
    read_xattr_value, reader_options, xattr_set_from_wire, DataReply, NamesReply,
    RegisterReplyPage, TextReply, WireReply, WireStruct,
};

/// Data-path request frames (client -> chunk server), as the server reads
/// them; every request that decodes must encode back to itself.
pub fn data_requests(bytes: &[u8]) {
    crate::data::fuzzing::requests(bytes)
}

/// Data-path response frames (chunk server -> client), as the client reads
/// them, including the split of Read and BlockCrcs replies.
pub fn data_responses(bytes: &[u8]) {
    crate::data::fuzzing::responses(bytes)
}

// ---------------------------------------------------------------------------
// The authentication handshake

/// A stream that reads `input` (then end of file) and swallows writes: the
/// peer of a handshake that says exactly the fuzzer's bytes.
struct Scripted<'a> {
    input: &'a [u8],
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// The handshakes' deadlines need a runtime with a clock.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// The cluster key of the fuzzed enrollments.
const KEY: ClusterKey = ClusterKey([0x5a; KEY_LEN]);

/// A server classifying the first bytes of a connection (its
/// ClientHello, read with `MSG_PEEK`): `bytes` is what the client sent. It
/// must answer or refuse, never fail otherwise.
pub fn preface(bytes: &[u8]) {
    if let Ok(auth::Hello::Tls(_)) = auth::classify_hello(bytes) {
        // Only a TLS handshake record names a channel.
        assert_eq!(bytes[0], 22);
    }
}

/// The MDS side of an enrollment (inside TLS): `bytes` is what the node
/// sends (its SPAKE2 message, proof and request). The MDS's SPAKE2 share
/// is fresh, so no fixed input can carry a valid proof: every one must be
/// refused, and nothing issued.
pub fn enroll(bytes: &[u8]) {
    static ENROLLMENT: std::sync::OnceLock<crate::enroll::Enrollment> = std::sync::OnceLock::new();
    let enrollment = ENROLLMENT.get_or_init(|| {
        crate::enroll::Enrollment::new(
            "fuzz",
            KEY,
            std::sync::Arc::new(crate::pki::ClusterCa::generate("fuzz").expect("a CA")),
        )
    });
    // Every input from a clean slate (the failure limit would otherwise
    // cut the exchange short after a few).
    enrollment.forget_failures();
    RUNTIME.with(|rt| {
        let mut stream = Scripted { input: bytes };
        let from = std::net::IpAddr::from([127, 0, 0, 1]);
        let outcome = rt.block_on(enrollment.exchange(&mut stream, &[0u8; 32], from));
        assert!(
            outcome.is_err(),
            "the MDS issued a certificate to a forged proof"
        );
    })
}

// ---------------------------------------------------------------------------
// Cap'n Proto messages

/// Writes `value` into a fresh message and reads it back: the same value.
fn round_trip<T>(value: &T)
where
    T: WireStruct + PartialEq + Debug,
    for<'a> <T::Schema as OwnedStruct>::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
    for<'a> <T::Schema as OwnedStruct>::Reader<'a>: capnp::traits::FromPointerReader<'a>,
{
    let mut message = capnp::message::Builder::new_default();
    value.write(message.init_root::<<T::Schema as OwnedStruct>::Builder<'_>>());
    let reader = message
        .get_root_as_reader::<<T::Schema as OwnedStruct>::Reader<'_>>()
        .expect("a written message reads");
    let again = T::read(reader).expect("a written value decodes");
    assert_eq!(&again, value, "a value changed through write and read");
}

/// As [`round_trip`], for a method's result (value or error); values are
/// compared through `key` (the reply wrappers have no `PartialEq`).
fn round_trip_reply<T, U>(outcome: &pstorage_core::Result<T>, key: fn(&T) -> U)
where
    T: WireReply,
    for<'a> <T::Schema as OwnedStruct>::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
    for<'a> <T::Schema as OwnedStruct>::Reader<'a>: capnp::traits::FromPointerReader<'a>,
    U: PartialEq + Debug,
{
    let mut message = capnp::message::Builder::new_default();
    T::write_result(
        outcome,
        message.init_root::<<T::Schema as OwnedStruct>::Builder<'_>>(),
    );
    let reader = message
        .get_root_as_reader::<<T::Schema as OwnedStruct>::Reader<'_>>()
        .expect("a written message reads");
    let again = T::read_result(reader).expect("a written result decodes");
    match (&again, outcome) {
        (Ok(a), Ok(b)) => assert_eq!(key(a), key(b), "a result changed through write and read"),
        (Err(a), Err(b)) => {
            assert_eq!(a.kind(), b.kind());
            assert_eq!(a.message(), b.message());
        }
        _ => panic!("a result changed through write and read (ok <-> err)"),
    }
}

/// Decodes the root of `message` as a `T` (a struct mirrored by a core
/// type) and round-trips what decodes.
fn decode_struct<T>(message: &capnp::message::Reader<impl capnp::message::ReaderSegments>)
where
    T: WireStruct + PartialEq + Debug,
    for<'a> <T::Schema as OwnedStruct>::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
    for<'a> <T::Schema as OwnedStruct>::Reader<'a>: capnp::traits::FromPointerReader<'a>,
{
    let Ok(root) = message.get_root::<<T::Schema as OwnedStruct>::Reader<'_>>() else {
        return;
    };
    if let Ok(value) = T::read(root) {
        round_trip(&value);
    }
}

/// Decodes the root of `message` as a method result and round-trips it.
fn decode_reply<T, U>(
    message: &capnp::message::Reader<impl capnp::message::ReaderSegments>,
    key: fn(&T) -> U,
) where
    T: WireReply,
    for<'a> <T::Schema as OwnedStruct>::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
    for<'a> <T::Schema as OwnedStruct>::Reader<'a>: capnp::traits::FromPointerReader<'a>,
    U: PartialEq + Debug,
{
    let Ok(root) = message.get_root::<<T::Schema as OwnedStruct>::Reader<'_>>() else {
        return;
    };
    if let Ok(outcome) = T::read_result(root) {
        round_trip_reply(&outcome, key);
    }
}

/// Decodes the root of `message` as the params of an `Mds` or
/// `ChunkControl` method (`method` picks which), with the code the servers
/// run on their params.
fn decode_params(
    method: u8,
    message: &capnp::message::Reader<impl capnp::message::ReaderSegments>,
) -> capnp::Result<()> {
    macro_rules! params {
        ($module:ident :: $params:ident) => {
            message.get_root::<$module::$params::Reader<'_>>()?
        };
    }
    match method {
        0 => {
            let p = params!(mds::open_params);
            read_text(p.get_path())?;
            lease_mode_from_wire(p.get_mode()?);
            round_trip(&OpenFlags::read(p.get_flags()?)?);
            read_op(p.has_op(), || p.get_op())?;
            round_trip(&read_perms(p.has_perms(), || p.get_perms(), Perms::FILE)?);
        }
        1 => {
            let p = params!(mds::mkdir_params);
            read_op(p.has_op(), || p.get_op())?;
            read_perms(p.has_perms(), || p.get_perms(), Perms::DIR)?;
            read_text(p.get_path())?;
        }
        2 => {
            let p = params!(mds::rename_params);
            read_op(p.has_op(), || p.get_op())?;
            read_text(p.get_from())?;
            read_text(p.get_to())?;
        }
        3 => {
            let p = params!(mds::make_node_params);
            read_text(p.get_path())?;
            round_trip(&NewNode::read(p.get_node()?)?);
            if let Some(op) = read_op(p.has_op(), || p.get_op())? {
                round_trip(&op);
            }
        }
        4 => {
            let p = params!(mds::set_stat_params);
            read_text(p.get_path())?;
            round_trip(&StatChange::read(p.get_change()?)?);
        }
        5 => {
            let p = params!(mds::set_xattr_params);
            read_text(p.get_path())?;
            read_text(p.get_name())?;
            read_xattr_value(p.get_value()?)?;
            xattr_set_from_wire(p.get_how()?);
        }
        6 => {
            let p = params!(mds::set_attr_params);
            read_text(p.get_path())?;
            round_trip(&AttrUpdate::read(p.get_update()?)?);
        }
        7 => {
            let p = params!(mds::set_lock_params);
            round_trip(&LockRequest::read(p.get_req()?)?);
        }
        8 => {
            let p = params!(mds::report_failure_params);
            failure_reason_from_wire(p.get_reason()?);
        }
        9 => {
            let p = params!(mds::set_cs_params);
            round_trip(&CsPlacementUpdate::read(p.get_update()?)?);
        }
        10 => {
            // A part of a registration, as `registerCsPart` reads it...
            let _ = (|| -> capnp::Result<()> {
                let p = params!(mds::register_cs_part_params);
                let (chunks, unclean) = (p.get_chunks()?, p.get_unclean()?);
                if crate::registration::check_page(
                    "registerCsPart",
                    chunks.len() as usize,
                    unclean.len() as usize,
                )
                .is_ok()
                {
                    let _: Vec<ChunkReplicaInfo> = read_list(chunks)?;
                    let _: Vec<u64> = unclean.iter().collect();
                }
                p.get_token();
                Ok(())
            })();
            // ...and its last part.
            let p = params!(mds::register_cs_params);
            round_trip(&CsRegistration::read(p.get_registration()?)?);
            p.get_token();
        }
        11 => {
            let p = params!(mds::cs_heartbeat_params);
            round_trip(&SpaceInfo::read(p.get_space()?)?);
            round_trip(&CsStats::read(p.get_stats()?)?);
        }
        12 => {
            let p = params!(mds::report_bad_blocks_params);
            let list = p.get_blocks()?;
            if list.len() as usize <= pstorage_core::types::MAX_REPORTED_BLOCKS {
                let _: Vec<u64> = list.iter().collect();
            }
            p.get_outcome()?;
        }
        13 => {
            let p = params!(mds::raft_append_params);
            p.get_data()?.to_vec();
        }
        14 => {
            let p = params!(mds::add_mds_params);
            read_text(p.get_addr())?;
        }
        15 => {
            let p = params!(chunk_control::replicate_chunk_params);
            round_trip(&Replica::read(p.get_source()?)?);
        }
        _ => {
            let p = params!(mds::test_lock_params);
            round_trip(&LockRequest::read(p.get_req()?)?);
        }
    }
    Ok(())
}

/// Bytes as the control RPC reads a message: the segment table and
/// segments of the standard serialization, with the reader options
/// (traversal and nesting limits) of both sides of every control
/// connection. The first byte picks the method whose params the root is
/// read as (0-16), or a reply or struct type (17 on); the rest is the
/// message. (The connection reads the segments into a buffer of the size
/// the segment table announces first; here they are read in place.)
pub fn capnp_message(bytes: &[u8]) {
    let Some((&pick, mut rest)) = bytes.split_first() else {
        return;
    };
    let Ok(message) = capnp::serialize::read_message_from_flat_slice(&mut rest, reader_options())
    else {
        return;
    };
    match pick {
        0..=16 => {
            let _ = decode_params(pick, &message);
        }
        17 => decode_reply::<Stat, _>(&message, Clone::clone),
        18 => decode_reply::<OpenReply, _>(&message, Clone::clone),
        19 => decode_reply::<ChunkMap, _>(&message, Clone::clone),
        20 => decode_reply::<ClusterStatus, _>(&message, Clone::clone),
        21 => decode_reply::<RegisterReplyPage, _>(&message, Clone::clone),
        22 => decode_reply::<HeartbeatReply, _>(&message, Clone::clone),
        23 => decode_reply::<MdsMembership, _>(&message, Clone::clone),
        24 => decode_reply::<DirPage, _>(&message, Clone::clone),
        25 => decode_reply::<ChunkMapPage, _>(&message, Clone::clone),
        26 => decode_reply::<ReplicaPage, _>(&message, Clone::clone),
        27 => decode_reply::<Vec<ConfigEntry>, _>(&message, Clone::clone),
        28 => decode_reply::<Vec<Event>, _>(&message, Clone::clone),
        29 => decode_reply::<Option<HeldLock>, _>(&message, Clone::clone),
        30 => decode_reply::<Option<ChunkMap>, _>(&message, Clone::clone),
        31 => decode_reply::<Option<CopyProgress>, _>(&message, Clone::clone),
        32 => decode_reply::<TextReply, _>(&message, |r| r.0.clone()),
        33 => decode_reply::<DataReply, _>(&message, |r| r.0.clone()),
        34 => decode_reply::<NamesReply, _>(&message, |r| r.0.clone()),
        35 => decode_struct::<CsInfo>(&message),
        36 => decode_struct::<FileAttrs>(&message),
        37 => decode_struct::<Replicas>(&message),
        38 => decode_struct::<Timestamp>(&message),
        39 => decode_struct::<Lease>(&message),
        40 => decode_struct::<IoRates>(&message),
        41 => decode_struct::<ChunkCounts>(&message),
        42 => decode_struct::<ReplicationStatus>(&message),
        43 => decode_struct::<MdsInfo>(&message),
        44 => decode_struct::<MdsMember>(&message),
        45 => decode_struct::<TierSpace>(&message),
        46 => decode_struct::<RebalanceStatus>(&message),
        47 => decode_struct::<CopyStats>(&message),
        48 => decode_struct::<OpTag>(&message),
        49 => decode_reply::<Vec<CertRecord>, _>(&message, Clone::clone),
        50 => decode_reply::<RevokedSerials, _>(&message, Clone::clone),
        51 => decode_struct::<CertRecord>(&message),
        _ => decode_struct::<Stat>(&message),
    }
}

// ---------------------------------------------------------------------------
// Raft payloads

/// Decodes `bytes` as the payload of a `T`, and checks that its encoding
/// decodes and encodes to the same bytes (postcard accepts some
/// non-minimal varints, so the input itself may differ).
fn raft_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) {
    let Ok(value) = crate::raft::decode::<T>(what, bytes) else {
        return;
    };
    let once = crate::raft::encode(what, &value).expect("a decoded message encodes");
    let again: T = crate::raft::decode(what, &once).expect("its encoding decodes");
    let twice = crate::raft::encode(what, &again).expect("encodes");
    assert_eq!(
        once, twice,
        "a Raft {what} changed through encode and decode"
    );
}

/// A Raft payload (`raftAppend`, `raftVote`, `raftSnapshot` data: a version
/// byte and postcard) as each of the three requests an MDS serves.
pub fn raft_payload(bytes: &[u8]) {
    raft_round_trip::<AppendEntriesRequest<MdsRaftConfig>>("append-entries request", bytes);
    raft_round_trip::<VoteRequest<MdsId>>("vote request", bytes);
    raft_round_trip::<InstallSnapshotRequest<MdsRaftConfig>>("install-snapshot request", bytes);
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use pstorage_core::{Error, ErrorKind};

    use super::*;

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    fn put(target: &str, name: &str, bytes: &[u8]) {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn seed(pick: u8, message: &capnp::message::Builder<capnp::message::HeapAllocator>) -> Vec<u8> {
        [
            vec![pick],
            capnp::serialize::write_message_to_words(message),
        ]
        .concat()
    }

    /// Writes the Cap'n Proto seeds into fuzz/corpus/capnp_message (the
    /// other targets' come from scripts): run by hand,
    /// `cargo test -p pstorage-rpc --features fuzzing --lib write_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/"]
    fn write_seeds() {
        for pick in 0..=52u8 {
            // A null root: every field at its default.
            let mut empty = capnp::message::Builder::new_default();
            empty.init_root::<capnp::any_pointer::Builder<'_>>();
            put(
                "capnp_message",
                &format!("empty-{pick}"),
                &seed(pick, &empty),
            );
        }
        let mut m = capnp::message::Builder::new_default();
        {
            let mut p = m.init_root::<mds::open_params::Builder<'_>>();
            p.set_path("/vm/disk.img");
            OpenFlags {
                create: true,
                exclusive: false,
                truncate: true,
            }
            .write(p.reborrow().init_flags());
            Perms::FILE.write(p.reborrow().init_perms());
        }
        put("capnp_message", "open", &seed(0, &m));
        let mut m = capnp::message::Builder::new_default();
        {
            let mut p = m.init_root::<mds::set_xattr_params::Builder<'_>>();
            p.set_path("/f");
            p.set_name("user.x");
            crate::wire::write_xattr_value(Some(b"value"), p.reborrow().init_value());
        }
        put("capnp_message", "set-xattr", &seed(5, &m));
        let mut m = capnp::message::Builder::new_default();
        RevokedSerials::write_result(
            &Ok(RevokedSerials {
                total: 3,
                serials: vec![
                    pstorage_core::types::CertSerial(1),
                    pstorage_core::types::CertSerial(u128::MAX),
                ],
            }),
            m.init_root::<crate::generated::pstorage_capnp::revoked_serials_result::Builder<'_>>(),
        );
        put("capnp_message", "revoked-serials", &seed(50, &m));
        let mut m = capnp::message::Builder::new_default();
        <Vec<CertRecord>>::write_result(
            &Ok(vec![CertRecord {
                serial: pstorage_core::types::CertSerial(0x45d3),
                role: "client".into(),
                name: "host-a".into(),
                issued_ms: 1,
                not_after_ms: 2,
                revoked_ms: Some(3),
            }]),
            m.init_root::<crate::generated::pstorage_capnp::cert_records_result::Builder<'_>>(),
        );
        put("capnp_message", "cert-records", &seed(49, &m));
        // Protocol 4's pages: a registration's part and the paged answers.
        let mut m = capnp::message::Builder::new_default();
        {
            let mut p = m.init_root::<mds::register_cs_part_params::Builder<'_>>();
            p.set_token(7);
            let mut chunks = p.reborrow().init_chunks(2);
            chunks.reborrow().get(0).set_chunk(0x10);
            chunks.reborrow().get(0).set_version(3);
            chunks.reborrow().get(1).set_chunk(0x11);
            chunks.reborrow().get(1).set_version(4);
            p.init_unclean(1).set(0, 0x11);
        }
        put("capnp_message", "register-cs-part", &seed(10, &m));
        let mut m = capnp::message::Builder::new_default();
        RegisterReplyPage::write_result(
            &Ok(RegisterReplyPage {
                reply: pstorage_core::types::RegisterReply {
                    delete: vec![pstorage_core::types::ChunkId(5)],
                    stale: vec![pstorage_core::types::ChunkId(6)],
                    heartbeat_interval_ms: 1000,
                },
                more: true,
            }),
            m.init_root::<crate::generated::pstorage_capnp::register_result::Builder<'_>>(),
        );
        put("capnp_message", "register-reply-page", &seed(21, &m));
        let mut m = capnp::message::Builder::new_default();
        ReplicaPage::write_result(
            &Ok(ReplicaPage {
                replicas: vec![ChunkReplicaInfo {
                    chunk: pstorage_core::types::ChunkId(9),
                    version: pstorage_core::types::MapVersion(2),
                }],
                more: true,
            }),
            m.init_root::<crate::generated::pstorage_capnp::replica_page_result::Builder<'_>>(),
        );
        put("capnp_message", "replica-page", &seed(26, &m));
        let mut m = capnp::message::Builder::new_default();
        {
            let mut p = m.init_root::<mds::report_bad_blocks_params::Builder<'_>>();
            let mut blocks = p.reborrow().init_blocks(3);
            for i in 0..3 {
                blocks.set(i, u64::from(i) * 7);
            }
        }
        put("capnp_message", "report-bad-blocks", &seed(12, &m));
        for pick in 17..=34u8 {
            let error = Error::new(ErrorKind::NotFound, "no such file ✓");
            let mut m = capnp::message::Builder::new_default();
            fn write<T: WireReply>(
                m: &mut capnp::message::Builder<capnp::message::HeapAllocator>,
                e: Error,
            ) where
                for<'a> <T::Schema as OwnedStruct>::Builder<'a>:
                    capnp::traits::FromPointerBuilder<'a>,
            {
                T::write_result(
                    &Err(e),
                    m.init_root::<<T::Schema as OwnedStruct>::Builder<'_>>(),
                );
            }
            match pick {
                17 => write::<Stat>(&mut m, error),
                18 => write::<OpenReply>(&mut m, error),
                19 => write::<ChunkMap>(&mut m, error),
                24 => write::<DirPage>(&mut m, error),
                32 => write::<TextReply>(&mut m, error),
                _ => continue,
            }
            put("capnp_message", &format!("error-{pick}"), &seed(pick, &m));
        }
        let mut m = capnp::message::Builder::new_default();
        TextReply::write_result(
            &Ok(TextReply("target".into())),
            m.init_root::<crate::generated::pstorage_capnp::text_result::Builder<'_>>(),
        );
        put("capnp_message", "text", &seed(32, &m));
    }

    /// Writes the ClientHello seeds of fuzz/corpus/preface (one per
    /// channel, as this build's clients send them): run by hand,
    /// `cargo test -p pstorage-rpc --features fuzzing --lib write_preface_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/"]
    fn write_preface_seeds() {
        let creds = crate::tls::test_credentials(crate::pki::Role::Client);
        for channel in auth::Channel::ALL {
            let mut conn = rustls::ClientConnection::new(
                creds.client_config(channel),
                crate::tls::server_name(),
            )
            .unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            put(
                "preface",
                &format!("hello-{channel:?}").to_lowercase(),
                &hello,
            );
        }
    }

    /// Every entry point runs on its committed seeds without failing.
    #[test]
    fn the_seeds_pass() {
        type Entry = (&'static str, fn(&[u8]));
        let targets: [Entry; 6] = [
            ("data_request", data_requests),
            ("data_response", data_responses),
            ("preface", preface),
            ("enroll", enroll),
            ("capnp_message", capnp_message),
            ("raft_payload", raft_payload),
        ];
        for (target, run) in targets {
            let dir = std::fs::read_dir(corpus(target))
                .unwrap_or_else(|e| panic!("the corpus of {target}: {e}"));
            let mut seeds = 0;
            for entry in dir {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
                seeds += 1;
            }
            assert!(seeds > 0, "{target} has no seeds");
        }
    }
}
