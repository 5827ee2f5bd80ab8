//! Authentication of clients: the per-connection state machine (to come), and the mechanisms
//! it drives — [`ntlm`] so far.
#![forbid(unsafe_code)]

pub mod ntlm;
