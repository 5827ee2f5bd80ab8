//! What GSS-API does not say about a credential: its tickets' flags and end times, read with
//! libkrb5 from a MEMORY ccache the credential is copied into. BLOCKING-free (memory only), but
//! it is only called from the pool, next to the KDC calls that produced the credential.
//!
//! Why it is needed:
//! - **Who cannot be delegated.** The KDC answers a sensitive user (AD "account is sensitive",
//!   MIT `-allow_forwardable`) and an SPN outside the proxy's list with the same
//!   `KDC_ERR_BADOPTION` to S4U2Proxy. The S4U2Self ticket (or a Kerberos client's evidence
//!   ticket) tells them apart: without the forwardable flag S4U2Proxy can only fail, and the
//!   fault is the user's (checked against both lab KDCs: alice's S4U2Self ticket is `FRAT`,
//!   bob's `RAT` on Samba, `FRT`/`RT` on MIT).
//! - **When a delegated ticket ends.** GSS reports no lifetime for a context still waiting for
//!   the AP-REP, and the credential's lifetime is the S4U2Self ticket's; the backend's service
//!   ticket may end sooner (KDC policy), and the cache must not use it past its end.
//!
//! Invariants: the scratch ccache is destroyed on every path (its `Drop`), and a krb5 context
//! never leaves the thread that made it (one per pool thread, thread-local).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use libgssapi::credential::{Cred, CredUsage};
use libgssapi::oid::GSS_MECH_KRB5;

/// `TKT_FLG_FORWARDABLE` (krb5.h).
const TKT_FLG_FORWARDABLE: i32 = 0x4000_0000;

/// One ticket of a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketInfo {
    /// The service principal, unparsed (`HTTP/backend.example.test@EXAMPLE.TEST`).
    pub server: String,
    pub forwardable: bool,
    /// End time, seconds since the epoch (krb5 timestamps are unsigned 32-bit in practice).
    pub endtime: u32,
}

// ---- the parts of krb5.h used here (MIT krb5 1.20, LP64) ----

type Krb5Context = *mut c_void;
type Krb5Ccache = *mut c_void;
type Krb5Principal = *mut c_void;
type Krb5Cursor = *mut c_void;

#[repr(C)]
struct Krb5Keyblock {
    magic: i32,
    enctype: i32,
    length: c_uint,
    contents: *mut u8,
}

#[repr(C)]
struct Krb5TicketTimes {
    authtime: i32,
    starttime: i32,
    endtime: i32,
    renew_till: i32,
}

#[repr(C)]
struct Krb5Data {
    magic: i32,
    length: c_uint,
    data: *mut c_char,
}

#[repr(C)]
struct Krb5Creds {
    magic: i32,
    client: Krb5Principal,
    server: Krb5Principal,
    keyblock: Krb5Keyblock,
    times: Krb5TicketTimes,
    is_skey: c_uint,
    ticket_flags: i32,
    addresses: *mut *mut c_void,
    ticket: Krb5Data,
    second_ticket: Krb5Data,
    authdata: *mut *mut c_void,
}

#[link(name = "krb5")]
extern "C" {
    fn krb5_init_context(ctx: *mut Krb5Context) -> c_int;
    fn krb5_free_context(ctx: Krb5Context);
    fn krb5_cc_resolve(ctx: Krb5Context, name: *const c_char, cc: *mut Krb5Ccache) -> c_int;
    fn krb5_cc_destroy(ctx: Krb5Context, cc: Krb5Ccache) -> c_int;
    fn krb5_cc_start_seq_get(ctx: Krb5Context, cc: Krb5Ccache, cursor: *mut Krb5Cursor) -> c_int;
    fn krb5_cc_next_cred(
        ctx: Krb5Context,
        cc: Krb5Ccache,
        cursor: *mut Krb5Cursor,
        creds: *mut Krb5Creds,
    ) -> c_int;
    fn krb5_cc_end_seq_get(ctx: Krb5Context, cc: Krb5Ccache, cursor: *mut Krb5Cursor) -> c_int;
    fn krb5_free_cred_contents(ctx: Krb5Context, creds: *mut Krb5Creds);
    fn krb5_unparse_name(
        ctx: Krb5Context,
        principal: Krb5Principal,
        name: *mut *mut c_char,
    ) -> c_int;
    fn krb5_free_unparsed_name(ctx: Krb5Context, name: *mut c_char);
}

/// Distinguishes the scratch ccaches of concurrent calls.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// One krb5 context per (pool) thread, made on first use and kept: a context reads
/// `krb5.conf` and scans plugins when made, which would otherwise happen on every call.
/// A context is not to be shared between threads; a thread-local one never is.
struct ThreadContext(Krb5Context);

impl Drop for ThreadContext {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: made by krb5_init_context on this thread, freed once at thread exit.
            unsafe { krb5_free_context(self.0) };
        }
    }
}

thread_local! {
    static CONTEXT: std::cell::RefCell<Option<ThreadContext>> = const { std::cell::RefCell::new(None) };
}

/// This thread's context, made on first use.
fn context() -> Result<Krb5Context, String> {
    CONTEXT.with(|c| {
        let mut slot = c.borrow_mut();
        if let Some(ctx) = slot.as_ref() {
            return Ok(ctx.0);
        }
        let mut ctx: Krb5Context = ptr::null_mut();
        // SAFETY: krb5_init_context writes a new context to `ctx` on success.
        let rc = unsafe { krb5_init_context(&mut ctx) };
        if rc != 0 || ctx.is_null() {
            return Err(format!("krb5_init_context: {rc}"));
        }
        *slot = Some(ThreadContext(ctx));
        Ok(ctx)
    })
}

/// A MEMORY ccache, destroyed on drop.
struct Scratch {
    ctx: Krb5Context,
    cc: Krb5Ccache,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.cc.is_null() {
            // SAFETY: resolved on this thread's context, destroyed once (which frees it).
            unsafe { krb5_cc_destroy(self.ctx, self.cc) };
        }
    }
}

/// The tickets `cred` holds (not the configuration entries MIT keeps beside them).
pub fn tickets_of(cred: &Cred) -> Result<Vec<TicketInfo>, String> {
    let name = format!(
        "MEMORY:kcdproxy-inspect-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let ctx = context()?;
    let mut scratch = Scratch {
        ctx,
        cc: ptr::null_mut(),
    };
    let cname = CString::new(name.clone()).map_err(|_| "ccache name".to_string())?;
    // SAFETY: a valid context and a NUL-terminated name; `cc` receives the handle.
    let rc = unsafe { krb5_cc_resolve(scratch.ctx, cname.as_ptr(), &mut scratch.cc) };
    if rc != 0 || scratch.cc.is_null() {
        scratch.cc = ptr::null_mut();
        return Err(format!("krb5_cc_resolve({name}): {rc}"));
    }
    // Copy the credential's tickets into that (process-local, in-memory) ccache.
    cred.store_into(&name, true, false, CredUsage::Initiate, Some(GSS_MECH_KRB5))
        .map_err(|e| format!("gss_store_cred_into: {e}"))?;

    let mut cursor: Krb5Cursor = ptr::null_mut();
    // SAFETY: valid context and ccache; `cursor` receives the iteration state.
    let rc = unsafe { krb5_cc_start_seq_get(scratch.ctx, scratch.cc, &mut cursor) };
    if rc != 0 {
        return Err(format!("krb5_cc_start_seq_get: {rc}"));
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: krb5_creds is plain data; zeroed is the state krb5_cc_next_cred expects to
        // fill in.
        let mut creds: Krb5Creds = unsafe { std::mem::zeroed() };
        // SAFETY: valid context, ccache and cursor from start_seq_get; `creds` is written on
        // success (rc 0) and then owned by us until krb5_free_cred_contents.
        let rc = unsafe { krb5_cc_next_cred(scratch.ctx, scratch.cc, &mut cursor, &mut creds) };
        if rc != 0 {
            break; // KRB5_CC_END, or an error: either way, no more tickets.
        }
        let mut server_ptr: *mut c_char = ptr::null_mut();
        // SAFETY: creds.server is the principal krb5_cc_next_cred just filled in.
        let server = if unsafe { krb5_unparse_name(scratch.ctx, creds.server, &mut server_ptr) }
            == 0
            && !server_ptr.is_null()
        {
            // SAFETY: krb5_unparse_name returned a NUL-terminated string we free below.
            let s = unsafe { CStr::from_ptr(server_ptr) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: allocated by krb5_unparse_name on this context.
            unsafe { krb5_free_unparsed_name(scratch.ctx, server_ptr) };
            s
        } else {
            String::new()
        };
        let info = TicketInfo {
            forwardable: creds.ticket_flags & TKT_FLG_FORWARDABLE != 0,
            endtime: creds.times.endtime as u32,
            server,
        };
        // SAFETY: frees what krb5_cc_next_cred allocated into `creds`, once.
        unsafe { krb5_free_cred_contents(scratch.ctx, &mut creds) };
        if !info.server.is_empty() && !info.server.starts_with("X-CACHECONF:") {
            out.push(info);
        }
    }
    // SAFETY: ends the iteration begun above on the same context and ccache.
    unsafe { krb5_cc_end_seq_get(scratch.ctx, scratch.cc, &mut cursor) };
    Ok(out)
}

/// Whether `server` names a ticket-granting ticket.
pub fn is_tgt(server: &str) -> bool {
    server.starts_with("krbtgt/")
}
