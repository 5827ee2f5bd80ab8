//! Reads and writes with deadlines, following the tokio-uring cancellation rule: when a
//! deadline fires, the operation is still in flight and owns the buffer, so the stream is shut
//! down (completing the operation) and the caller must give the connection up.

use std::io;

use tokio::time::Instant;

use crate::net::Io;

pub enum ReadError {
    /// The deadline passed; the stream has been shut down and the buffer is gone.
    Timeout,
    Io(io::Error),
}

/// Reads (appending into `buf`'s spare capacity) before `deadline`.
pub async fn read_by<I: Io>(
    io: &I,
    buf: Vec<u8>,
    deadline: Instant,
) -> Result<(usize, Vec<u8>), (ReadError, Option<Vec<u8>>)> {
    match tokio::time::timeout_at(deadline, io.read(buf)).await {
        Ok((Ok(n), buf)) => Ok((n, buf)),
        Ok((Err(e), buf)) => Err((ReadError::Io(e), Some(buf))),
        Err(_) => {
            io.shutdown();
            Err((ReadError::Timeout, None))
        }
    }
}

pub enum WriteError {
    Timeout,
    Io(io::Error),
}

/// Writes all of `buf` before `deadline`. On success the buffer comes back.
pub async fn write_by<I: Io>(
    io: &I,
    buf: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, WriteError> {
    match tokio::time::timeout_at(deadline, io.write_all(buf)).await {
        Ok((Ok(()), buf)) => Ok(buf),
        Ok((Err(e), _)) => Err(WriteError::Io(e)),
        Err(_) => {
            io.shutdown();
            Err(WriteError::Timeout)
        }
    }
}
