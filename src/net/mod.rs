//! Sockets and buffers: the SO_REUSEPORT listeners, the small I/O trait that keeps tokio-uring
//! at arm's length, and the per-core buffer pool.
//!
//! tokio-uring is barely maintained, so nothing outside this module (and `tls`, which drives a
//! [`Io`] it is given) names its types in a signature. Swapping the reactor means rewriting this
//! module, not the proxy.

pub mod bufpool;
pub mod io;
pub mod listener;
pub mod stream;

pub use io::{Io, TcpIo};
pub use stream::Stream;
