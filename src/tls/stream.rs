//! [`TlsStream`]: a buffered rustls connection driven over an owned-buffer [`Io`].
//!
//! See the module doc of [`crate::tls`] for the concurrency invariant and the timeout rule.

use std::cell::{Cell, RefCell};
use std::io::{self, Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use tokio::sync::Mutex;

use super::tls_error;
use crate::net::{bufpool, Io};

/// Ciphertext read size when the caller offers a small buffer (a request head; an idle
/// keep-alive connection waiting for the next one), and during the handshake. Bigger caller
/// buffers get a pool buffer of [`bufpool::STREAM_BUF`] bytes for the time of the read.
const SMALL_RX: usize = 8 * 1024;

/// The most plaintext encrypted per socket write: four records' worth, whose ciphertext (plus
/// 22 bytes of header and tag per record) still fits a pool buffer without reallocating.
const MAX_PLAIN_PER_WRITE: usize = bufpool::STREAM_BUF - 1024;

/// A TLS connection (server or client side) over an inner [`Io`], itself an [`Io`].
pub struct TlsStream<I: Io> {
    io: I,
    /// INVARIANT: never borrowed across an `.await`.
    conn: RefCell<Connection>,
    /// INVARIANT: never borrowed across an `.await`; its buffer is moved out for socket reads.
    rx: RefCell<Rx>,
    /// The write lock. INVARIANT: only its holder moves TLS records from `conn` to `io`, and the
    /// holder drains everything `conn` has queued before releasing it (so output queued by a
    /// reader while someone else held the lock still goes out, in order).
    tx: Mutex<()>,
    /// A `read` is in progress (reads are not reentrant: the ciphertext buffer is moved out).
    reading: Cell<bool>,
    /// A socket write failed or was dropped mid-way: the peer may have part of a record, so
    /// nothing more can be sent.
    tx_torn: Cell<bool>,
}

/// Ciphertext read from the socket that rustls has not taken yet.
#[derive(Default)]
struct Rx {
    /// `buf[pos..]` is still to be given to rustls.
    buf: Vec<u8>,
    pos: usize,
    /// Record framing of everything given to rustls so far, to tell a TCP EOF between
    /// records from one inside a record.
    records: RecordTracker,
}

/// Where a read stopped.
enum Absorbed {
    /// This many plaintext bytes were appended to the caller's buffer.
    Plain(usize),
    /// The peer sent close_notify and all plaintext before it has been delivered.
    Closed,
    /// rustls needs more ciphertext.
    Empty,
}

impl<I: Io> TlsStream<I> {
    /// Drives the server handshake to completion. On timeout: `io.shutdown()`, then
    /// `Err(ErrorKind::TimedOut)`.
    pub async fn accept(io: I, cfg: Arc<ServerConfig>, timeout: Duration) -> io::Result<Self> {
        let conn = ServerConnection::new(cfg).map_err(tls_error)?;
        Self::handshake(io, conn.into(), timeout).await
    }

    /// Drives the client handshake to completion, sending `server_name` as SNI and checking the
    /// backend's certificate against it. Same timeout rule as [`TlsStream::accept`].
    pub async fn connect(
        io: I,
        cfg: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let conn = ClientConnection::new(cfg, server_name).map_err(tls_error)?;
        Self::handshake(io, conn.into(), timeout).await
    }

    /// Server side: the name the client sent as SNI, if any.
    pub fn sni(&self) -> Option<String> {
        match &*self.conn.borrow() {
            Connection::Server(s) => s.server_name().map(str::to_owned),
            Connection::Client(_) => None,
        }
    }

    /// The peer's end-entity certificate (DER): on the client side, the backend's leaf
    /// certificate, for tls-server-end-point channel bindings.
    pub fn peer_end_entity_cert(&self) -> Option<Vec<u8>> {
        let conn = self.conn.borrow();
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The peer's end-entity certificate (DER), once the handshake is done.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let conn = self.conn.borrow();
        conn.peer_certificates()?
            .first()
            .map(|c| c.as_ref().to_vec())
    }

    async fn handshake(io: I, conn: Connection, timeout: Duration) -> io::Result<Self> {
        let stream = TlsStream {
            io,
            conn: RefCell::new(conn),
            rx: RefCell::new(Rx::default()),
            tx: Mutex::new(()),
            reading: Cell::new(false),
            tx_torn: Cell::new(false),
        };
        match tokio::time::timeout(timeout, stream.drive_handshake()).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => {
                // A socket read (or write) is still in flight: shutdown completes it, and the
                // peer sees the connection end.
                stream.io.shutdown();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake not complete after {timeout:?}"),
                ))
            }
        }
    }

    async fn drive_handshake(&self) -> io::Result<()> {
        // Nothing else can reach the stream yet; the lock is taken because flush_locked
        // relies on it.
        let _tx = self.tx.lock().await;
        loop {
            self.flush_locked().await?;
            if !self.conn.borrow().is_handshaking() {
                return Ok(());
            }
            if self.fill_rx(false).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
            if let Err(e) = self.feed_handshake() {
                // rustls has queued an alert that tells the peer why; send it if we can.
                let _ = self.flush_locked().await;
                return Err(e);
            }
        }
    }

    /// Gives rustls ciphertext until the handshake completes or the buffer is used up. What
    /// follows the handshake (the client's first request, often in the same segment as its
    /// Finished) stays buffered for `read`.
    fn feed_handshake(&self) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        let mut rx = self.rx.borrow_mut();
        while conn.is_handshaking() && rx.pending() > 0 {
            if rx.feed(&mut conn)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the TLS connection during the handshake",
                ));
            }
            conn.process_new_packets().map_err(tls_error)?;
        }
        Ok(())
    }

    /// Reads ciphertext from the socket, appending to what is still buffered. `big`: the
    /// caller has room for a lot of plaintext, so read a pool buffer's worth.
    async fn fill_rx(&self, big: bool) -> io::Result<usize> {
        let buf = {
            let mut rx = self.rx.borrow_mut();
            let pos = std::mem::take(&mut rx.pos);
            let mut buf = std::mem::take(&mut rx.buf);
            // Normally everything was consumed and this is a clear.
            buf.drain(..pos);
            rx_buffer(buf, big)
        };
        // If this future is dropped here (a timeout), the buffer stays with the kernel and
        // `rx` keeps an empty one: nothing unconsumed is lost, the stream is dead anyway.
        let (res, buf) = self.io.read(buf).await;
        self.rx.borrow_mut().buf = buf;
        res
    }

    async fn read_plain(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let absorbed = self.absorb(buf);
            // Output rustls made while reading (an alert) goes out now if the write lock is
            // free, else with the holder's final drain.
            let flushed = self.flush_if_idle().await;
            match absorbed? {
                Absorbed::Plain(n) => return Ok(n),
                Absorbed::Closed => return Ok(0),
                Absorbed::Empty => flushed?,
            }
            let big = buf.capacity() - buf.len() > SMALL_RX;
            if self.fill_rx(big).await? == 0 {
                return if self.rx.borrow().records.at_boundary() {
                    // No close_notify, but no record cut short either: see the module doc.
                    Ok(0)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection in the middle of a TLS record",
                    ))
                };
            }
        }
    }

    /// Moves plaintext into `out` (up to its capacity) and buffered ciphertext into rustls,
    /// without touching the socket.
    fn absorb(&self, out: &mut Vec<u8>) -> io::Result<Absorbed> {
        let mut conn = self.conn.borrow_mut();
        let mut rx = self.rx.borrow_mut();
        let mut got = 0;
        let stop = loop {
            let state = conn.process_new_packets().map_err(tls_error)?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = out.len();
                let room = out.capacity() - start;
                if room == 0 {
                    break Absorbed::Plain(got);
                }
                // Extend only by what rustls holds: zero-filling the whole spare capacity
                // (64 KiB) for a small record would cost more than the copy itself.
                out.resize(start + available.min(room), 0);
                match conn.reader().read(&mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        got += n;
                    }
                    Err(e) => {
                        out.truncate(start);
                        return Err(e);
                    }
                }
                continue;
            }
            if state.peer_has_closed() {
                break if got > 0 {
                    Absorbed::Plain(got)
                } else {
                    Absorbed::Closed
                };
            }
            if rx.pending() == 0 {
                break if got > 0 {
                    Absorbed::Plain(got)
                } else {
                    Absorbed::Empty
                };
            }
            if rx.feed(&mut conn)? == 0 {
                // Cannot happen before close_notify (checked above); never spin on it.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS connection refused further ciphertext",
                ));
            }
        };
        if rx.pending() == 0 && rx.buf.capacity() >= bufpool::STREAM_BUF {
            // Idle streams keep no big buffer: it goes back to the core's pool.
            rx.pos = 0;
            bufpool::give(std::mem::take(&mut rx.buf));
        }
        Ok(stop)
    }

    /// Encrypts and sends all of `plain`, holding the write lock throughout.
    async fn send(&self, plain: &[u8]) -> io::Result<()> {
        let _tx = self.tx.lock().await;
        let mut cipher = bufpool::take();
        let mut sent = 0;
        let res = loop {
            let sealed = {
                let mut conn = self.conn.borrow_mut();
                let end = plain.len().min(sent + MAX_PLAIN_PER_WRITE);
                match conn.writer().write(&plain[sent..end]) {
                    Ok(n) => {
                        sent += n;
                        // Everything queued goes out, including what a reader queued.
                        drain(&mut conn, &mut cipher)
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = sealed {
                break Err(e);
            }
            if cipher.is_empty() {
                break if sent == plain.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS connection accepts no more data",
                    ))
                };
            }
            let (res, buf) = self.put(cipher).await;
            cipher = buf;
            cipher.clear();
            if let Err(e) = res {
                break Err(e);
            }
        };
        bufpool::give(cipher);
        res
    }

    /// Sends everything rustls has queued. The caller holds the write lock.
    async fn flush_locked(&self) -> io::Result<()> {
        let mut cipher = Vec::new();
        loop {
            drain(&mut self.conn.borrow_mut(), &mut cipher)?;
            if cipher.is_empty() {
                return Ok(());
            }
            let (res, buf) = self.put(cipher).await;
            res?;
            cipher = buf;
            cipher.clear();
        }
    }

    /// Sends what rustls has queued if no one holds the write lock. If someone does, they send
    /// it before releasing the lock; waiting for them here could deadlock (they may be blocked
    /// on a peer that is itself blocked until we read).
    async fn flush_if_idle(&self) -> io::Result<()> {
        if !self.conn.borrow().wants_write() {
            return Ok(());
        }
        match self.tx.try_lock() {
            Ok(_tx) => self.flush_locked().await,
            Err(_) => Ok(()),
        }
    }

    /// Writes ciphertext to the socket. The caller holds the write lock.
    async fn put(&self, cipher: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if self.tx_torn.get() {
            return (
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "an earlier TLS write failed or was abandoned mid-record",
                )),
                cipher,
            );
        }
        // Stays set if this future is dropped mid-write.
        self.tx_torn.set(true);
        let (res, cipher) = self.io.write_all(cipher).await;
        self.tx_torn.set(res.is_err());
        (res, cipher)
    }
}

#[cfg(test)]
impl<I: Io> TlsStream<I> {
    /// The rustls connection, for tests to check what was negotiated or to start a key
    /// update. Never held across an `.await`.
    pub(super) fn conn(&self) -> std::cell::RefMut<'_, Connection> {
        self.conn.borrow_mut()
    }

    pub(super) fn rx_capacity(&self) -> usize {
        self.rx.borrow().buf.capacity()
    }
}

impl<I: Io> Io for TlsStream<I> {
    /// Appends decrypted plaintext to `buf` (up to its capacity; a full buffer is grown by
    /// 4 KiB like `TcpIo` does). `Ok(0)`: close_notify, or a TCP EOF between records.
    async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if self.reading.replace(true) {
            return (
                Err(io::Error::other("TlsStream: a read is already in progress")),
                buf,
            );
        }
        let _reading = ClearOnDrop(&self.reading);
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let res = self.read_plain(&mut buf).await;
        (res, buf)
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = self.send(&buf).await;
        (res, buf)
    }

    /// Sends close_notify (best effort), then shuts the socket down for writing.
    async fn close(&self) {
        {
            let _tx = self.tx.lock().await;
            self.conn.borrow_mut().send_close_notify();
            let _ = self.flush_locked().await;
        }
        self.io.close().await;
    }

    fn shutdown(&self) {
        self.io.shutdown();
    }
}

impl Rx {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Gives rustls as much buffered ciphertext as it takes (it buffers at most about one
    /// record; call `process_new_packets` before feeding more).
    fn feed(&mut self, conn: &mut Connection) -> io::Result<usize> {
        let mut unread = &self.buf[self.pos..];
        let n = conn.read_tls(&mut unread)?;
        self.records.advance(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Picks the buffer for the next socket read; `buf` holds unconsumed ciphertext (normally none).
fn rx_buffer(mut buf: Vec<u8>, big: bool) -> Vec<u8> {
    let is_big = buf.capacity() >= bufpool::STREAM_BUF;
    if big && !is_big {
        let mut pooled = bufpool::take();
        pooled.extend_from_slice(&buf);
        return pooled;
    }
    if !big && is_big && buf.is_empty() {
        bufpool::give(buf);
        return Vec::with_capacity(SMALL_RX);
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(SMALL_RX);
    }
    buf
}

/// Moves everything rustls has queued for the peer into `out`.
fn drain(conn: &mut Connection, out: &mut Vec<u8>) -> io::Result<()> {
    while conn.wants_write() {
        if conn.write_tls(out)? == 0 {
            break;
        }
    }
    Ok(())
}

/// Follows TLS record framing (5-byte header with a 16-bit length, then the body) over a byte
/// stream, without looking inside records.
#[derive(Default)]
pub(super) struct RecordTracker {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl RecordTracker {
    pub(super) fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (self.header.len() - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == self.header.len() {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
    }

    pub(super) fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }
}

/// Clears the "read in progress" flag even when the read future is dropped.
struct ClearOnDrop<'a>(&'a Cell<bool>);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}
