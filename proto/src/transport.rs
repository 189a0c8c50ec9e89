//! Connections for gRPC under TLS: [`Buffered`] streams and the [`Connector`] that makes
//! them for a tonic `Endpoint`.
//!
//! rustls reads the socket at most 4 KiB at a time (its deframer's read size) and writes
//! whatever its 64 KiB send buffer holds, so a TLS connection carrying 150 MB/s of produce or
//! replication made many times the system calls of the same traffic in plain text, where
//! hyper reads into a large adaptive buffer and writes whole frames (measured on the dev
//! cluster, 500,000 records of 1 KiB: 106,506 `recvfrom` calls on the nodes against 9,328,
//! and 10,236 `writev` calls by the producing client against 2,822). Under TLS, [`Buffered`]
//! reads the socket in large chunks and hands rustls its small reads from memory, and
//! gathers what rustls writes until the stream is flushed (hyper's HTTP/2 flushes after
//! every round of frames) or the buffer is full. Without TLS it passes everything through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one socket read may take.
const CAPACITY: usize = 64 << 10;

/// How much written data is gathered before it goes to the socket unflushed.
const WRITE_CAPACITY: usize = 256 << 10;

/// `inner` with a read buffer of [`CAPACITY`] bytes (allocated on the first read, and
/// bypassed by reads at least that large) and a write buffer, or with neither.
#[derive(Debug)]
pub struct Buffered<S> {
    inner: S,
    /// Whether reads and writes are buffered.
    buffering: bool,
    buffer: Box<[u8]>,
    /// The unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    /// Written and not yet sent; `pending[..written]` is sent.
    pending: Vec<u8>,
    written: usize,
}

impl<S> Buffered<S> {
    /// Wraps `inner`, with buffers if `buffering` (for a stream under TLS); without them,
    /// reads and writes go straight to `inner`.
    pub fn new(inner: S, buffering: bool) -> Buffered<S> {
        Buffered {
            inner,
            buffering,
            buffer: Box::default(),
            start: 0,
            end: 0,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Buffered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start == this.end {
            if !this.buffering || out.remaining() >= CAPACITY {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buffer.is_empty() {
                this.buffer = vec![0; CAPACITY].into_boxed_slice();
            }
            let mut fill = ReadBuf::new(&mut this.buffer);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            // An empty fill is the end of the stream: it reads as an empty read.
            (this.start, this.end) = (0, fill.filled().len());
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buffer[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> Buffered<S> {
    /// Writes out everything the write buffer holds.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.buffering {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        }
        let len: usize = data.iter().map(|d| d.len()).sum();
        if this.pending.len() + len > WRITE_CAPACITY && !this.pending.is_empty() {
            ready!(this.poll_drain(cx))?;
        }
        if len >= WRITE_CAPACITY {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        }
        for d in data {
            this.pending.extend_from_slice(d);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        self.buffering || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Buffered<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(&self.inner)
    }
}

/// Connects a tonic `Endpoint` (`connect_with_connector_lazy`) over TCP with Nagle's
/// algorithm off, in a [`Buffered`] stream that buffers when `tls` is set (tonic puts its
/// TLS on top of the stream when the endpoint has a TLS configuration).
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    /// Whether the connection carries TLS.
    pub tls: bool,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Buffered<tokio::net::TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let tls = self.tls;
        Box::pin(async move {
            let unknown =
                || io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"));
            let host = uri.host().ok_or_else(unknown)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(Buffered::new(stream, tls)))
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Small reads, large reads and the end of the stream all see the bytes written, in
    /// order.
    #[tokio::test]
    async fn reads_of_any_size_see_every_byte_in_order() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                tx.write_all(&sent).await.unwrap();
            })
        };
        let mut rx = Buffered::new(rx, true);
        let mut got = Vec::new();
        let mut sizes = [1usize, 4096, 100_000, 7, CAPACITY].into_iter().cycle();
        loop {
            let mut chunk = vec![0; sizes.next().unwrap()];
            let n = rx.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, sent);
    }

    /// Writes are gathered until a flush or a full buffer, and every byte arrives in order;
    /// a flush sends what was gathered.
    #[tokio::test]
    async fn writes_arrive_in_order_once_flushed() {
        let (tx, mut rx) = tokio::io::duplex(4 << 20);
        let mut tx = Buffered::new(tx, true);
        tx.write_all(b"small").await.unwrap();
        let mut first = [0u8; 5];
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                rx.read_exact(&mut first)
            )
            .await
            .is_err(),
            "sent before a flush"
        );
        tx.flush().await.unwrap();
        rx.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"small");
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        for chunk in sent.chunks(3_000).chain([&sent[..WRITE_CAPACITY]]) {
            tx.write_all(chunk).await.unwrap();
        }
        tx.shutdown().await.unwrap();
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        let expected: Vec<u8> = sent
            .iter()
            .chain(&sent[..WRITE_CAPACITY])
            .copied()
            .collect();
        assert!(got == expected, "bytes differ");
    }
}
