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

use std::cell::Cell;
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
    /// Bytes already read from the socket that the next reads return first: what followed a
    /// PROXY protocol header in its read ([`TcpIo::unread`]). Empty (no allocation) otherwise.
    unread: Cell<Vec<u8>>,
}

impl TcpIo {
    pub fn new(stream: tokio_uring::net::TcpStream) -> Self {
        TcpIo {
            stream,
            unread: Cell::default(),
        }
    }

    /// Puts `bytes` in front of the stream: the next reads return them before reading the
    /// socket again. The PROXY protocol reader reads past its header (it cannot know where the
    /// header ends before reading it), and the bytes past it belong to TLS or HTTP.
    pub fn unread(&self, bytes: Vec<u8>) {
        let mut pending = self.unread.take();
        if pending.is_empty() {
            pending = bytes;
        } else {
            pending.extend_from_slice(&bytes);
        }
        self.unread.set(pending);
    }

    /// Connects to `addr` with TCP_NODELAY set (the proxy writes whole heads; Nagle only adds
    /// latency to request/response exchanges).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio_uring::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(TcpIo::new(stream))
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
        let pending = self.unread.take();
        if !pending.is_empty() {
            // Same contract as a socket read: append into the spare capacity only (callers
            // size their buffers), keep what does not fit for the next read.
            let n = pending.len().min(buf.capacity() - buf.len());
            buf.extend_from_slice(&pending[..n]);
            if n < pending.len() {
                self.unread.set(pending[n..].to_vec());
            }
            return (Ok(n), buf);
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

impl TcpIo {
    /// True when the peer has closed (or reset) this idle connection: a non-blocking peek
    /// returns 0 or an error other than "would block". Used before reusing a pooled backend
    /// connection, so a request is not written into a socket the backend already closed.
    pub fn peer_closed(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        let mut byte = 0u8;
        // SAFETY: recv writes at most 1 byte into `byte`, which lives for the call; the fd is
        // owned by `self.stream` and open for the duration of the call.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return true;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            return e.kind() != io::ErrorKind::WouldBlock;
        }
        // Unsolicited bytes on an idle HTTP/1.1 backend connection (e.g. a 408 it sent before
        // closing) make it unusable too.
        true
    }
}
