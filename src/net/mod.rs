//! Sockets and buffers: the SO_REUSEPORT listeners, the small I/O trait that keeps tokio-uring
//! at arm's length, reads and writes under a deadline, the per-core buffer pool, and the PROXY
//! protocol header read at accept (before any TLS or HTTP byte). The floor
//! under `tls` (which wraps an [`Io`] in rustls and owns the plain-or-TLS `Stream`).
//!
//! tokio-uring is barely maintained, so nothing outside this module (and `tls`, which drives a
//! [`Io`] it is given) names its types in a signature. Swapping the reactor means rewriting this
//! module, not the proxy.

pub mod bufpool;
pub mod deadline;
pub mod io;
pub mod listener;
pub mod proxy_protocol;

pub use io::{Io, TcpIo};

/// Creates and drops the io_uring a worker runs on (tokio-uring's default ring, as
/// `runtime::worker` builds it), so that a process that may not have one (a seccomp profile
/// that denies `io_uring_setup`, `kernel.io_uring_disabled`, a locked-memory limit too small
/// for the ring) is told before any worker starts, instead of each worker panicking.
pub fn uring_available() -> std::io::Result<()> {
    tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop)
}
