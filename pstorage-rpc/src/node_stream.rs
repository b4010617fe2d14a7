//! A connection between nodes once its handshake is done: TLS, or (the
//! data channel of a cluster made with a clear data path,
//! [`crate::pki::DataPath::Clear`]) the raw TCP connection the TLS
//! handshake authenticated.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One end of a connection: `T` is the TLS stream of that end.
#[derive(Debug)]
pub enum NodeStream<T> {
    /// Every byte inside TLS.
    Tls(T),
    /// After the TLS handshake, the raw connection (data channel of a
    /// clear-data-path cluster).
    Clear(TcpStream),
}

impl<T> NodeStream<T> {
    /// The TLS stream, when the connection still uses TLS.
    pub fn tls(&self) -> Option<&T> {
        match self {
            NodeStream::Tls(t) => Some(t),
            NodeStream::Clear(_) => None,
        }
    }

    /// Whether the bytes travel in clear.
    pub fn is_clear(&self) -> bool {
        matches!(self, NodeStream::Clear(_))
    }
}

impl NodeStream<tokio_rustls::server::TlsStream<TcpStream>> {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            NodeStream::Tls(t) => t.get_ref().0,
            NodeStream::Clear(s) => s,
        }
    }
}

impl NodeStream<tokio_rustls::client::TlsStream<TcpStream>> {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            NodeStream::Tls(t) => t.get_ref().0,
            NodeStream::Clear(s) => s,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for NodeStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Tls(t) => Pin::new(t).poll_read(cx, buf),
            NodeStream::Clear(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NodeStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Tls(t) => Pin::new(t).poll_write(cx, buf),
            NodeStream::Clear(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Tls(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            NodeStream::Clear(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Tls(t) => t.is_write_vectored(),
            NodeStream::Clear(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Tls(t) => Pin::new(t).poll_flush(cx),
            NodeStream::Clear(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Tls(t) => Pin::new(t).poll_shutdown(cx),
            NodeStream::Clear(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
