//! TLS with rustls over the owned-buffer I/O trait: the server side for clients, the client side
//! for https backends. This is the only module that drives rustls I/O.
//!
//! - [`server_config`] / [`client_config`] build the rustls configurations from PEM files and
//!   report every problem at once, naming the file.
//! - [`TlsStream`] wraps any [`Io`](crate::net::Io) (plain TCP in production) and is itself an
//!   `Io`, so the proxy speaks HTTP over TLS and over TCP with the same code.
//!
//! ## Why a buffered `rustls::Connection` over owned buffers
//!
//! tokio-uring has no `AsyncRead`/`AsyncWrite`, so tokio-rustls cannot be used: its whole
//! design polls borrowed buffers. rustls 0.23 also offers `UnbufferedServerConnection`, which
//! decrypts in place and saves one plaintext copy per record, but it hands out slices that
//! borrow the caller's ciphertext buffer, while io_uring needs that buffer *moved* into the
//! kernel for every read; reconciling the two means a state machine of our own around every
//! record, and the API is gone again in rustls 0.24. The buffered `Connection` keeps rustls in
//! charge of framing, alerts, key updates and tickets, at the price of copies that are cheap
//! next to AES-GCM: socket → our ciphertext buffer → rustls → the caller's `Vec`. We keep the
//! rest lean: ciphertext buffers come from the per-core [`bufpool`](crate::net::bufpool) and go
//! back to it when idle (an idle keep-alive connection holds only a small read buffer), and a
//! read extends the caller's `Vec` only by the plaintext rustls holds, never zero-filling the
//! whole spare capacity.
//!
//! ## Concurrency invariant
//!
//! The proxy streams a request body up and a response body down at once, with a `read` and a
//! `write_all` future on the same stream joined in one task. Hence:
//!
//! - the `RefCell` around the rustls connection is never borrowed across an `.await`;
//! - moving TLS records from rustls to the socket needs the stream's write lock, and **the holder
//!   drains everything rustls has queued before it releases the lock**. Output that rustls makes
//!   while *reading* (alerts; rustls holds the answer to a KeyUpdate back until our next write)
//!   is sent by the reader if the lock is free, and otherwise by the current holder on its way
//!   out. Records never interleave, and a reader never waits for a writer that may itself be
//!   stuck behind a peer that is waiting for us to read;
//! - one read at a time: a second concurrent `read` is refused with an error.
//!
//! ## Timeout and shutdown rule
//!
//! [`TlsStream::accept`] and [`TlsStream::connect`] run the handshake under a deadline. When it
//! passes, a socket read is still in flight (dropping it does not cancel it), so they call
//! `shutdown()` on the inner `Io` to complete it and return `ErrorKind::TimedOut`; the stream is
//! consumed. The same holds for callers of [`TlsStream`] itself: a dropped `read` or `write_all`
//! leaves the connection unusable (a `write_all` dropped mid-record makes every later write fail
//! with `BrokenPipe`), so after a timeout call `shutdown()` and drop the stream.
//!
//! ## End of stream
//!
//! `read` returns `Ok(0)` on close_notify. A TCP EOF without close_notify is also `Ok(0)` when it
//! falls between two records: many HTTP clients (and IIS) close that way, and HTTP/1.1 framing
//! (Content-Length, chunked) detects truncated bodies on its own. Only bodies delimited by the
//! close itself cannot tell a truncation at a record boundary from the end. An EOF in the middle
//! of a record, or during the handshake, is `ErrorKind::UnexpectedEof`.

mod binding;
mod config;
mod plain_or_tls;
mod sni;
mod stream;

#[cfg(test)]
mod tests;

pub use binding::server_end_point;
pub use config::{client_config, server_config};
pub use plain_or_tls::Stream;
pub use stream::TlsStream;

/// The only application protocol we speak on either side.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Wraps a rustls error as an `io::Error` that keeps rustls' message (certificate problems
/// must reach the log as "invalid peer certificate: UnknownIssuer", not as a bare kind).
fn tls_error(e: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}
