//! The I/O trait every byte stream of the proxy implements: plain TCP here, TLS in `tls`.
//!
//! Buffers move by ownership (io_uring needs the kernel to own them while an operation is in
//! flight) and come back with the result. A read *appends* into the spare capacity of the
//! `Vec`: bytes `[len, capacity)` are offered to the kernel, and `len` grows by what was read.
//!
//! Cancellation: dropping an in-flight read does not cancel it; the kernel keeps the buffer and
//! the socket stays open. A caller that gives up on a read (timeout) must call
//! [`Io::shutdown`] so the operation completes and the peer sees the close, and must then drop
//! the connection: its buffer is gone.

use std::io;
use std::net::{Shutdown, SocketAddr};

/// An owned-buffer byte stream, used from a single core (no `Send` bound on the futures).
// Reason: async fn in a trait has no `Send` bound on its future; that is the point here,
// everything runs on the core that owns the connection and is never moved across threads.
#[allow(async_fn_in_trait)]
pub trait Io {
    /// Reads into `buf[len..capacity]`, appending. Returns the number of bytes read; `Ok(0)`
    /// means end of stream (or that `buf` had no spare capacity: callers must reserve first).
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);

    /// Writes all of `buf[..len]`. The buffer comes back unchanged (callers usually `clear` it).
    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);

    /// Ends the stream gracefully for writing (TLS: sends close_notify first). Best effort.
    async fn close(&self);

    /// Aborts both directions now. Completes any read left in flight by a timeout.
    fn shutdown(&self);
}

/// A plain TCP stream on the core's io_uring.
pub struct TcpIo {
    stream: tokio_uring::net::TcpStream,
}

impl TcpIo {
    pub fn new(stream: tokio_uring::net::TcpStream) -> Self {
        TcpIo { stream }
    }

    /// Connects to `addr` with TCP_NODELAY set (the proxy writes whole heads; Nagle only adds
    /// latency to request/response exchanges).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio_uring::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(TcpIo { stream })
    }

    pub fn set_nodelay(&self) -> io::Result<()> {
        self.stream.set_nodelay(true)
    }
}

impl Io for TcpIo {
    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        use tokio_uring::buf::BoundedBuf;
        let len = buf.len();
        let cap = buf.capacity();
        if len == cap {
            // No room: reserve rather than report a false EOF.
            buf.reserve(4096);
        }
        let cap = buf.capacity().max(cap);
        let (res, slice) = self.stream.read(buf.slice(len..cap)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.stream.write_all(buf).await
    }

    async fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
