//! Loopback tests of the data protocol against an in-memory chunk service.

use parking_lot::Mutex;
use pstorage_core::types::CsId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pstorage_core::chunk::{crc64, encode_block_crc};
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::traits::{
    CheckedBytes, ChunkConnector, ChunkService, ReplicaError, WritePayload, WriteRequest,
};
use pstorage_core::types::{ChunkId, MapVersion, Replica, BLOCK_SIZE, MAX_BLOCK_CRCS, MAX_IO_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::wire::{self, FrameReader, Response};
use super::*;
use crate::auth::{self, Channel};

/// A chunk that always fails its writes, blaming CS 7.
const FAILING_CHUNK: ChunkId = ChunkId(0xbad);

/// An in-memory chunk service: chunks are byte vectors that grow on write;
/// a chunk's version is set by its first write and checked afterwards.
#[derive(Default)]
struct MemService {
    chunks: Mutex<HashMap<ChunkId, (MapVersion, Vec<u8>)>>,
    last_chain: Mutex<Vec<Replica>>,
    writes_started: AtomicUsize,
    flushes: AtomicUsize,
    /// When set, writes wait for a permit (lets tests hold requests in flight).
    gate: Option<tokio::sync::Semaphore>,
}

impl MemService {
    fn gated() -> MemService {
        MemService {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..MemService::default()
        }
    }

    fn check_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        match self.chunks.lock().get(&chunk) {
            Some((v, _)) if *v != version => Err(Error::stale(format!(
                "chunk {chunk:#x} is at version {v}, the request has {version}"
            ))),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl ChunkService for MemService {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        self.writes_started.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if request.chunk == FAILING_CHUNK {
            return Err(ReplicaError {
                failed_cs: Some(CsId(7)),
                error: Error::new(
                    ErrorKind::NoSpace,
                    "chunk server 7 (127.0.0.1:9107) is out of space; add disks",
                ),
            });
        }
        self.check_version(request.chunk, request.version)
            .map_err(ReplicaError::local)?;
        *self.last_chain.lock() = request.chain.clone();
        let mut chunks = self.chunks.lock();
        let (_, data) = chunks
            .entry(request.chunk)
            .or_insert((request.version, Vec::new()));
        let start = request.offset as usize;
        let end = start + request.payload.len() as usize;
        if data.len() < end {
            data.resize(end, 0);
        }
        match &request.payload {
            WritePayload::Data(d) => data[start..end].copy_from_slice(d),
            WritePayload::Zeros(_) => data[start..end].fill(0),
        }
        Ok(())
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        self.check_version(chunk, version)?;
        let chunks = self.chunks.lock();
        let Some((_, data)) = chunks.get(&chunk) else {
            return Err(Error::not_found(format!("chunk {chunk:#x} is not here")));
        };
        let mut out = vec![0u8; len as usize];
        let start = (offset as usize).min(data.len());
        let end = ((offset + len) as usize).min(data.len());
        out[..end - start].copy_from_slice(&data[start..end]);
        Ok(CheckedBytes::new(offset, Bytes::from(out)))
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.check_version(chunk, version)?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// 0 for blocks past the written end or all zeros, else the block's
    /// encoded CRC-64.
    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        self.check_version(chunk, version)?;
        let chunks = self.chunks.lock();
        let Some((_, data)) = chunks.get(&chunk) else {
            return Err(Error::not_found(format!("chunk {chunk:#x} is not here")));
        };
        let bs = BLOCK_SIZE as usize;
        Ok((offset / BLOCK_SIZE..(offset + len) / BLOCK_SIZE)
            .map(|b| {
                let mut block = vec![0u8; bs];
                let start = (b as usize * bs).min(data.len());
                let end = (start + bs).min(data.len());
                block[..end - start].copy_from_slice(&data[start..end]);
                if block.iter().all(|&x| x == 0) {
                    0
                } else {
                    encode_block_crc(crc64(&block))
                }
            })
            .collect())
    }
}

/// A client's credentials: `1` of the test CA the servers trust, any
/// other of a CA of its own (another cluster).
fn key(b: u8) -> crate::tls::Credentials {
    if b == 1 {
        return crate::tls::test_credentials(crate::pki::Role::Client);
    }
    let other = crate::pki::ClusterCa::generate("other").unwrap();
    crate::tls::Credentials::new(
        other
            .issue_identity(crate::pki::Role::Client, "stranger")
            .unwrap(),
    )
    .unwrap()
}

/// Reads the preface and runs the TLS handshake as a chunk server would,
/// then serves the data protocol (a bad handshake just closes).
async fn serve_test_connection(mut stream: TcpStream, service: Arc<dyn ChunkService>) {
    match auth::peek_channel(&mut stream).await {
        Ok(Channel::Data) => {
            let server = crate::tls::test_credentials(crate::pki::Role::Cs);
            if let Ok((tls, peer)) = auth::accept_tls(stream, &server, Channel::Data).await {
                serve_data_connection(tls, peer, service).await
            }
        }
        Ok(other) => panic!("{other:?} channel in a data test"),
        Err(_) => {}
    }
}

/// A test chunk server: authenticates and serves every connection until the
/// handle is aborted, which closes every connection (like a crash).
struct TestServer {
    addr: String,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

async fn start_server(service: Arc<dyn ChunkService>, bind: &str) -> TestServer {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let service = service.clone();
            connections.spawn(serve_test_connection(stream, service));
        }
    });
    TestServer {
        addr,
        accepted,
        task,
    }
}

async fn client_for(addr: &str) -> DataClient {
    DataClient::new(auth::connect(addr, &key(1), Channel::Data).await.unwrap())
}

fn write_req(
    chunk: ChunkId,
    version: MapVersion,
    offset: u64,
    payload: WritePayload,
) -> WriteRequest {
    WriteRequest::new(chunk, version, offset, payload, Vec::new())
}

#[tokio::test]
async fn requests_round_trip() {
    let service = Arc::new(MemService::default());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let client = client_for(&server.addr).await;

    let chain = vec![
        Replica {
            cs: CsId(2),
            addr: "127.0.0.1:9102".into(),
        },
        Replica {
            cs: CsId(3),
            addr: "127.0.0.1:9103".into(),
        },
    ];
    let mut req = write_req(
        ChunkId(1),
        MapVersion(5),
        100,
        WritePayload::Data(Bytes::from_static(b"hello world")),
    );
    req.chain = chain.clone();
    client.write(req).await.unwrap();
    assert_eq!(*service.last_chain.lock(), chain);
    assert_eq!(
        client
            .read_verified(ChunkId(1), MapVersion(5), 100, 11)
            .await
            .unwrap(),
        Bytes::from_static(b"hello world")
    );
    // Past the end reads as zeros; an empty read is fine too.
    assert_eq!(
        client
            .read_verified(ChunkId(1), MapVersion(5), 105, 10)
            .await
            .unwrap(),
        &b" world\0\0\0\0"[..]
    );
    assert!(client
        .read_verified(ChunkId(1), MapVersion(5), 0, 0)
        .await
        .unwrap()
        .is_empty());

    client
        .write(write_req(
            ChunkId(1),
            MapVersion(5),
            102,
            WritePayload::Zeros(3),
        ))
        .await
        .unwrap();
    assert_eq!(
        client
            .read_verified(ChunkId(1), MapVersion(5), 100, 11)
            .await
            .unwrap(),
        &b"he\0\0\0 world"[..]
    );

    client.flush(ChunkId(1), MapVersion(5)).await.unwrap();
    assert_eq!(service.flushes.load(Ordering::SeqCst), 1);

    // A large (multi-frame-buffer) write and read.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    client
        .write(write_req(
            ChunkId(2),
            MapVersion(1),
            0,
            WritePayload::Data(Bytes::from(big.clone())),
        ))
        .await
        .unwrap();
    assert_eq!(
        client
            .read_verified(ChunkId(2), MapVersion(1), 0, big.len() as u64)
            .await
            .unwrap(),
        big
    );
    assert!(!client.is_closed());
}

#[tokio::test]
async fn block_crcs_round_trip_and_are_bounded() {
    let service = Arc::new(MemService::default());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let client = client_for(&server.addr).await;
    let block = vec![0x5au8; BLOCK_SIZE as usize];
    client
        .write(write_req(
            ChunkId(3),
            MapVersion(9),
            2 * BLOCK_SIZE,
            WritePayload::Data(Bytes::from(block.clone())),
        ))
        .await
        .unwrap();
    let entries = client
        .block_crcs(ChunkId(3), MapVersion(9), 0, 4 * BLOCK_SIZE)
        .await
        .unwrap();
    assert_eq!(entries, vec![0, 0, encode_block_crc(crc64(&block)), 0]);
    // The largest page, all beyond the written end.
    let page = client
        .block_crcs(
            ChunkId(3),
            MapVersion(9),
            4 * BLOCK_SIZE,
            MAX_BLOCK_CRCS * BLOCK_SIZE,
        )
        .await
        .unwrap();
    assert_eq!(page.len() as u64, MAX_BLOCK_CRCS);
    assert!(page.iter().all(|&e| e == 0));
    assert!(client
        .block_crcs(ChunkId(3), MapVersion(9), 0, 0)
        .await
        .unwrap()
        .is_empty());
    // Version-checked like a read.
    let e = client
        .block_crcs(ChunkId(3), MapVersion(8), 0, BLOCK_SIZE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    // Unaligned or oversized requests are refused before they are sent.
    for len in [100, (MAX_BLOCK_CRCS + 1) * BLOCK_SIZE] {
        let e = client
            .block_crcs(ChunkId(3), MapVersion(9), 0, len)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    // The connection is still good.
    assert_eq!(
        client
            .block_crcs(ChunkId(3), MapVersion(9), 8192, 4096)
            .await
            .unwrap()
            .len(),
        1
    );
    server.task.abort();
}

#[tokio::test]
async fn errors_survive_the_wire() {
    let service = Arc::new(MemService::default());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let client = client_for(&server.addr).await;

    let err = client
        .write(write_req(
            FAILING_CHUNK,
            MapVersion(1),
            0,
            WritePayload::Zeros(1),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.failed_cs, Some(CsId(7)));
    assert_eq!(err.error.kind(), ErrorKind::NoSpace);
    assert_eq!(
        err.error.message(),
        "chunk server 7 (127.0.0.1:9107) is out of space; add disks"
    );

    client
        .write(write_req(
            ChunkId(3),
            MapVersion(4),
            0,
            WritePayload::Zeros(8),
        ))
        .await
        .unwrap();
    let err = client
        .write(write_req(
            ChunkId(3),
            MapVersion(9),
            0,
            WritePayload::Zeros(8),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.failed_cs, None);
    assert_eq!(err.error.kind(), ErrorKind::Stale);
    assert!(err.error.message().contains("version 4"), "{err}");

    let err = client
        .read_verified(ChunkId(3), MapVersion(9), 0, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stale);
    let err = client
        .read_verified(ChunkId(77), MapVersion(1), 0, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("0x4d"), "{err}");
    let err = client.flush(ChunkId(3), MapVersion(9)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stale);

    // Refused before sending.
    let err = client
        .read_verified(ChunkId(3), MapVersion(4), 0, MAX_IO_SIZE + 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    // The connection survives all of that.
    assert_eq!(
        client
            .read_verified(ChunkId(3), MapVersion(4), 0, 8)
            .await
            .unwrap(),
        &[0u8; 8][..]
    );
    assert!(!client.is_closed());
}

#[tokio::test]
async fn server_answers_an_oversized_read_with_an_error() {
    let server = start_server(Arc::new(MemService::default()), "127.0.0.1:0").await;
    let mut stream = auth::connect(&server.addr, &key(1), Channel::Data)
        .await
        .unwrap();
    let mut frame = wire::encode_read(ChunkId(1), MapVersion(1), 0, MAX_IO_SIZE + 1);
    wire::set_id(&mut frame.head, 99);
    stream.write_all(&frame.head).await.unwrap();
    let mut reader = FrameReader::new(&mut stream);
    let (header, body) = reader.next_frame().await.unwrap().unwrap();
    assert_eq!(header.id, 99);
    match wire::decode_response(&header, body).unwrap() {
        Response::Err { error, failed_cs } => {
            assert_eq!(error.kind(), ErrorKind::InvalidArgument);
            assert_eq!(failed_cs, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn many_concurrent_requests_are_pipelined() {
    const N: u64 = 2000;
    let service = Arc::new(MemService::default());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let client = Arc::new(client_for(&server.addr).await);

    let writes = (0..N).map(|i| {
        let client = client.clone();
        async move {
            let data = Bytes::from(format!("req{i:013}"));
            assert_eq!(data.len(), 16);
            client
                .write(write_req(
                    ChunkId(i % 10),
                    MapVersion(1),
                    (i / 10) * 16,
                    WritePayload::Data(data),
                ))
                .await
        }
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    let reads = (0..N).map(|i| {
        let client = client.clone();
        async move {
            (
                i,
                client
                    .read_verified(ChunkId(i % 10), MapVersion(1), (i / 10) * 16, 16)
                    .await,
            )
        }
    });
    for (i, r) in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap(), Bytes::from(format!("req{i:013}")));
    }
    // All of it over one connection.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_death_fails_in_flight_requests_and_the_connector_reconnects() {
    let service = Arc::new(MemService::gated());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let addr = server.addr.clone();
    let connector = Arc::new(TcpChunkConnector::new(key(1)));

    let chunk_service = connector.chunk_service(&addr).await.unwrap();
    let in_flight: Vec<_> = (0..10u64)
        .map(|i| {
            let cs = chunk_service.clone();
            tokio::spawn(async move {
                cs.write(write_req(
                    ChunkId(1),
                    MapVersion(1),
                    i,
                    WritePayload::Zeros(1),
                ))
                .await
            })
        })
        .collect();
    while service.writes_started.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.task.abort();
    for task in in_flight {
        let err = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("in-flight requests must fail, not hang")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.failed_cs, None);
        assert_eq!(err.error.kind(), ErrorKind::Unavailable, "{err}");
    }
    // Later requests on the dead connection fail at once.
    let err = chunk_service
        .read_verified(ChunkId(1), MapVersion(1), 0, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);

    // While the server is down, dialing fails cleanly.
    let err = connector.chunk_service(&addr).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // It comes back on the same address: the connector dials it again.
    let restarted = start_server(Arc::new(MemService::default()), &addr).await;
    let fresh = connector.chunk_service(&addr).await.unwrap();
    fresh
        .write(write_req(
            ChunkId(1),
            MapVersion(1),
            0,
            WritePayload::Data(Bytes::from_static(b"back")),
        ))
        .await
        .unwrap();
    assert_eq!(
        fresh
            .read_verified(ChunkId(1), MapVersion(1), 0, 4)
            .await
            .unwrap(),
        &b"back"[..]
    );
    assert_eq!(restarted.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connector_shares_one_connection_per_address() {
    let server = start_server(Arc::new(MemService::default()), "127.0.0.1:0").await;
    let connector = Arc::new(TcpChunkConnector::new(key(1)));
    let dials = (0..20).map(|_| {
        let connector = connector.clone();
        let addr = server.addr.clone();
        async move { connector.chunk_service(&addr).await.unwrap() }
    });
    let services = futures::future::join_all(dials).await;
    for s in &services {
        assert!(Arc::ptr_eq(s, &services[0]));
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    // A connector with the wrong key is refused.
    let wrong = TcpChunkConnector::new(key(2));
    let err = wrong.chunk_service(&server.addr).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

/// Reads until the server closes the connection; fails if it stays open.
async fn assert_closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a bad connection open");
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let service = Arc::new(MemService::default());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let good = client_for(&server.addr).await;
    good.write(write_req(
        ChunkId(1),
        MapVersion(1),
        0,
        WritePayload::Data(Bytes::from_static(b"ok")),
    ))
    .await
    .unwrap();

    let mut bad_inputs: Vec<Vec<u8>> = vec![b"this is not a frame at all, just garbage".to_vec()];
    // A valid header announcing an oversized body.
    let mut oversized = Vec::new();
    wire::put_header(&mut oversized, wire::TYPE_WRITE, 1, 0);
    oversized[12..16].copy_from_slice(&(MAX_BODY_LEN as u32 + 1).to_le_bytes());
    bad_inputs.push(oversized);
    // A newer frame version.
    let mut newer = wire::encode_flush(ChunkId(1), MapVersion(1)).head;
    newer[1] = FRAME_VERSION + 1;
    bad_inputs.push(newer);
    // A well-framed write whose chain is too long.
    let mut long_chain = wire::encode_write(&write_req(
        ChunkId(1),
        MapVersion(1),
        0,
        WritePayload::Zeros(1),
    ))
    .unwrap()
    .head;
    long_chain[HEADER_LEN + 33] = 200;
    bad_inputs.push(long_chain);
    // A response sent to the server.
    bad_inputs.push(wire::encode_ok(1, Bytes::new()).head);

    for input in bad_inputs {
        let mut stream = auth::connect(&server.addr, &key(1), Channel::Data)
            .await
            .unwrap();
        stream.write_all(&input).await.unwrap();
        assert_closed_by_server(&mut stream).await;
        // The other client is unaffected.
        assert_eq!(
            good.read_verified(ChunkId(1), MapVersion(1), 0, 2)
                .await
                .unwrap(),
            &b"ok"[..]
        );
    }

    // Unauthenticated garbage never reaches the data protocol.
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream
        .write_all(&wire::encode_flush(ChunkId(1), MapVersion(1)).head)
        .await
        .unwrap();
    assert_closed_by_server(&mut stream).await;
    assert_eq!(service.flushes.load(Ordering::SeqCst), 0);

    // A frame cut short by the client closing.
    let mut stream = auth::connect(&server.addr, &key(1), Channel::Data)
        .await
        .unwrap();
    stream
        .write_all(&wire::encode_read(ChunkId(1), MapVersion(1), 0, 1).head[..20])
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    assert_closed_by_server(&mut stream).await;

    assert_eq!(
        good.read_verified(ChunkId(1), MapVersion(1), 0, 2)
            .await
            .unwrap(),
        &b"ok"[..]
    );
    assert!(!good.is_closed());
}

#[tokio::test]
async fn dropping_the_client_closes_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_test_connection(stream, Arc::new(MemService::default())).await;
    });
    let client = client_for(&addr).await;
    client.flush(ChunkId(1), MapVersion(1)).await.unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the server must see the connection end")
        .unwrap();
}

#[tokio::test]
async fn a_request_given_up_on_leaves_no_pending_entry_and_its_late_reply_is_discarded() {
    let service = Arc::new(MemService::gated());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let client = client_for(&server.addr).await;
    let held = client.write(write_req(
        ChunkId(2),
        MapVersion(1),
        0,
        WritePayload::Zeros(1),
    ));
    let others = async {
        // The peer keeps answering other requests while the write waits:
        // it is alive, so giving up on the write keeps the connection.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.flush(ChunkId(9), MapVersion(1)).await.unwrap();
        }
        std::future::pending::<()>().await
    };
    let raced = tokio::time::timeout(Duration::from_millis(1500), async {
        tokio::join!(held, others).0
    })
    .await;
    assert!(raced.is_err(), "the gated write cannot complete");
    assert_eq!(service.writes_started.load(Ordering::SeqCst), 1);
    assert_eq!(
        client.pending_requests(),
        0,
        "the abandoned request is forgotten"
    );
    assert!(!client.is_closed());
    // Its late reply arrives and is discarded; the connection goes on.
    service.gate.as_ref().unwrap().add_permits(1);
    while !service.chunks.lock().contains_key(&ChunkId(2)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Answered after the late reply, on the same connection.
    client.flush(ChunkId(9), MapVersion(1)).await.unwrap();
    assert!(!client.is_closed());
    assert_eq!(client.pending_requests(), 0);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_peer_that_never_answers_is_torn_down_and_redialed() {
    let service = Arc::new(MemService::gated());
    let server = start_server(service.clone(), "127.0.0.1:0").await;
    let connector = TcpChunkConnector::new(key(1));
    let first = connector.chunk_service(&server.addr).await.unwrap();
    let given_up = tokio::time::timeout(
        Duration::from_secs(1),
        first.write(write_req(
            ChunkId(1),
            MapVersion(1),
            0,
            WritePayload::Zeros(1),
        )),
    )
    .await;
    assert!(given_up.is_err(), "the peer never answers");
    // Nothing came back while the request waited: the connection is
    // condemned, and the next call dials a new one that works.
    let err = first.flush(ChunkId(1), MapVersion(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let second = connector.chunk_service(&server.addr).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    second.flush(ChunkId(1), MapVersion(1)).await.unwrap();
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connecting_to_a_peer_that_accepts_but_never_authenticates_times_out() {
    // A frozen process: the kernel completes the TCP connect, nobody
    // answers the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connector = TcpChunkConnector::new(key(1));
    let started = std::time::Instant::now();
    let err = connector.chunk_service(&addr).await.err().unwrap();
    // The connector's deadline or the handshake's own (auth.rs), whichever
    // fires first: both equal by default.
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::Unavailable),
        "{err}"
    );
    assert!(err.message().contains(&addr), "{err}");
    let waited = started.elapsed();
    assert!(waited >= DEFAULT_CONNECT_TIMEOUT, "{waited:?}");
    assert!(waited < DEFAULT_CONNECT_TIMEOUT * 4, "{waited:?}");
    // A shorter deadline can be asked for.
    let impatient = TcpChunkConnector::new(key(1)).with_connect_timeout(Duration::from_millis(300));
    let err = impatient.chunk_service(&addr).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    drop(listener);
}
