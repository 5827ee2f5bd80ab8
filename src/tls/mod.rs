//! TLS with rustls over the owned-buffer I/O trait.
