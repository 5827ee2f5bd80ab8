//! Opening a backend connection: TCP, then TLS for `https://` backends.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::config::{Backend, Scheme};
use crate::error::{Error, ErrorKind};
use crate::net::TcpIo;
use crate::tls::{Stream, TlsStream};

/// Opens a connection to `backend`: TCP within `timeout`, then TLS (SNI and certificate name =
/// the host in the backend URL) within the same budget.
pub async fn connect(
    backend: &Backend,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Stream, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = match tokio::time::timeout_at(deadline, TcpIo::connect(backend.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Error::with_cause(
                ErrorKind::BackendConnect,
                format!("connect {}", backend.addr),
                e,
            ))
        }
        // The connect op is dropped in flight; its socket is closed when the kernel completes
        // it (tokio-uring keeps the fd alive until then).
        Err(_) => {
            return Err(Error::new(
                ErrorKind::BackendConnectTimeout,
                format!("connect {} timed out", backend.addr),
            ))
        }
    };
    match backend.scheme {
        Scheme::Http => Ok(Stream::Plain(tcp)),
        Scheme::Https => {
            let cfg = tls.ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    "https backend without a TLS client config",
                )
            })?;
            let name = ServerName::try_from(backend.host.clone()).map_err(|e| {
                Error::with_cause(
                    ErrorKind::BackendTls,
                    format!("bad TLS name {}", backend.host),
                    e,
                )
            })?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match TlsStream::connect(tcp, cfg.clone(), name, left).await {
                Ok(s) => Ok(Stream::Tls(Box::new(s))),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Error::new(
                    ErrorKind::BackendConnectTimeout,
                    format!("TLS handshake with {} timed out", backend.display()),
                )),
                Err(e) => Err(Error::with_cause(
                    ErrorKind::BackendTls,
                    format!("TLS handshake with {}", backend.display()),
                    e,
                )),
            }
        }
    }
}
