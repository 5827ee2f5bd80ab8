//! A per-core pool of large buffers for body streaming.
//!
//! An idle keep-alive connection holds only a small head buffer; the large buffers used to move
//! bodies are borrowed from this pool for the duration of a transfer and returned after. The
//! pool is thread-local (one per core), so taking and returning a buffer takes no lock.

use std::cell::RefCell;

/// Size of a streaming buffer: large enough that a 1 MiB body moves in 16 reads.
pub const STREAM_BUF: usize = 64 * 1024;
/// Buffers kept per core; more are freed on return.
const MAX_POOLED: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Takes an empty buffer with at least [`STREAM_BUF`] capacity.
pub fn take() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(STREAM_BUF))
}

/// Returns a buffer to this core's pool. Buffers of an unexpected size are dropped.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() < STREAM_BUF || buf.capacity() > 4 * STREAM_BUF {
        return;
    }
    buf.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    });
}
