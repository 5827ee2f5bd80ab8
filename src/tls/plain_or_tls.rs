//! A byte stream that is either plain TCP or TLS over TCP: what a client connection or a backend
//! connection is, decided at accept/connect time. An enum, not a trait object, so the hot path
//! is a predictable branch and the futures need no boxing.

use std::io;

use super::TlsStream;
use crate::net::{Io, TcpIo};

pub enum Stream {
    Plain(TcpIo),
    // Boxed: a TLS session is several KiB and most streams in a mixed deployment are one kind;
    // keeping the enum small keeps the per-connection future small.
    Tls(Box<TlsStream<TcpIo>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// RFC 5929 `tls-server-end-point` channel-binding data of a TLS connection (as a
    /// client): `"tls-server-end-point:"` and the hash of the server's certificate. `None` for
    /// plain connections.
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => super::server_end_point(&t.peer_certificate()?),
        }
    }

    /// The TCP stream underneath, for socket-level checks (liveness peeks).
    pub fn tcp(&self) -> &TcpIo {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => t.get_ref(),
        }
    }
}

impl Io for Stream {
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => s.write_all(buf).await,
        }
    }

    async fn close(&self) {
        match self {
            Stream::Plain(s) => s.close().await,
            Stream::Tls(s) => s.close().await,
        }
    }

    fn shutdown(&self) {
        match self {
            Stream::Plain(s) => s.shutdown(),
            Stream::Tls(s) => s.shutdown(),
        }
    }
}
