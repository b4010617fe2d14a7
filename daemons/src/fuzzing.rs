//! Entry points for the fuzz targets of `fuzz/` (the `fuzzing` feature;
//! not part of the normal API): the NBD server's decoders of what a client
//! sends. A decoder must return an error for bad input: a panic, an
//! unbounded allocation or a hang here is a bug.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::mds::{MdsConfig, MdsService, MdsState};
use pstorage_core::traits::{ChunkControl, ControlConnector, MetadataService, SystemClock};
use pstorage_core::types::{FileAttrs, LeaseMode, OpenFlags, Perms};
use pstorage_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::nbd::export::Exports;
use crate::nbd::handshake::{negotiate, Negotiated, TlsState};
use crate::nbd::proto::{Request, REQUEST_BYTES};
use crate::nbd::NbdMetrics;

/// Transmission request headers (28 bytes each), as the server reads them:
/// every header that decodes encodes back to the same bytes.
pub fn nbd_requests(bytes: &[u8]) {
    for chunk in bytes.chunks_exact(REQUEST_BYTES) {
        let header: &[u8; REQUEST_BYTES] = chunk.try_into().expect("exact chunks");
        if let Some(request) = Request::decode(header) {
            assert_eq!(&request.encode(), header);
        }
    }
}

/// A stream that reads `input` (then end of file) and swallows writes: a
/// client that says exactly the fuzzer's bytes.
struct Scripted {
    input: Vec<u8>,
    at: usize,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.input.len() - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
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

/// The in-memory MDS makes no chunk copies here.
struct NoControl;

impl ControlConnector for NoControl {
    fn chunk_control<'a, 'b, 'c>(
        &'a self,
        addr: &'b str,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<dyn ChunkControl>>> + Send + 'c>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move { Err(Error::unavailable(format!("no chunk server {addr}"))) })
    }
}

/// The export every fuzzed handshake can name (`/disk`, also `disk`).
const EXPORT: &str = "/disk";

struct Env {
    runtime: tokio::runtime::Runtime,
    exports: Arc<Exports>,
}

fn env() -> Env {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let state = MdsState::new(FileAttrs::default()).expect("an empty namespace");
    let mds = Arc::new(MdsService::in_memory(
        state,
        Arc::new(NoControl),
        Arc::new(SystemClock),
        MdsConfig::default(),
    ));
    runtime.block_on(async {
        let flags = OpenFlags {
            create: true,
            ..OpenFlags::default()
        };
        let reply = mds
            .open_with(EXPORT, LeaseMode::Write, flags, Perms::FILE, None)
            .await
            .expect("creating the export");
        mds.commit_size(reply.lease.id, 1 << 20)
            .await
            .expect("sizing the export");
        mds.close(reply.lease.id).await.expect("closing the export");
    });
    let chunks = Arc::new(pstorage_rpc::data::TcpChunkConnector::new(
        pstorage_rpc::tls::test_credentials(pstorage_rpc::pki::Role::Client),
    ));
    let client = Client::new(mds, chunks, ClientOptions::default());
    let exports = runtime
        .block_on(async { Exports::new(client, false, Arc::new(NbdMetrics::default()), None) });
    Env { runtime, exports }
}

thread_local! {
    static ENV: Env = env();
}

/// The server side of the fixed newstyle handshake: `bytes` is everything
/// the client sends (flags, then options: `NBD_OPT_INFO`/`GO` requests are
/// parsed, export names looked up in an in-memory cluster holding
/// [`EXPORT`]). It must end, one way or the other, within a second.
pub fn nbd_handshake(bytes: &[u8]) {
    ENV.with(|env| {
        env.runtime.block_on(async {
            let mut stream = Scripted {
                input: bytes.to_vec(),
                at: 0,
            };
            let outcome = tokio::time::timeout(
                Duration::from_secs(1),
                negotiate(&mut stream, &env.exports, TlsState::Unavailable),
            )
            .await
            .expect("the handshake ended within a second");
            if let Ok(Negotiated::Export(handle)) = outcome {
                handle.release().await;
            }
        })
    })
}
