//! GSS-API credentials: from an explicit credential store, from a password, and the client's
//! credential an acceptor keeps for S4U2Proxy ([`DelegatedCred`]).
//!
//! libgssapi 0.11 has no safe wrapper for `gss_acquire_cred_from` (MIT's cred-store extension),
//! which is the only way to say *which* keytab, client keytab, ccache and replay cache a
//! credential uses without touching process-wide environment variables (`KRB5_KTNAME` would
//! race with every other core). This module is that wrapper, kept small so every `unsafe` block
//! can be checked by reading it.
//!
//! Blocking: [`acquire_from`] reads keytabs, and with usage `Both`/`Initiate` plus a client
//! keytab it may ask the KDC for a TGT; [`password_login`] is an AS exchange. Call them at
//! start-up or in the [`super::pool`].
//!
//! Invariant: every credential is restricted to the krb5 mechanism unless the caller names
//! others ([`mech_set`]), so GSS-API never negotiates a mechanism on our behalf.

use std::ffi::{c_void, CString};
use std::fmt;
use std::path::Path;
use std::ptr;

use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{Oid, OidSet, GSS_NT_KRB5_PRINCIPAL};
use libgssapi_sys as sys;

use super::oid;
use super::status::GssStatus;

/// Where a credential's secrets live: the `key=value` elements of `gss_acquire_cred_from`.
///
/// Keys MIT understands (1.20): `keytab` (acceptor keys), `client_keytab` (keys to get a TGT
/// with), `ccache` (where tickets go; `MEMORY:name` keeps them in-process), `rcache` (the
/// acceptor's replay cache; by default MIT's file cache in `$KRB5RCACHEDIR`), `password`.
#[derive(Clone, Debug, Default)]
pub struct CredStore {
    elements: Vec<(CString, CString)>,
}

impl CredStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key = value`. Fails on an interior NUL byte.
    pub fn with(mut self, key: &str, value: &str) -> Result<Self, GssStatus> {
        let k = CString::new(key).map_err(|_| GssStatus::bad_input())?;
        let v = CString::new(value).map_err(|_| GssStatus::bad_input())?;
        self.elements.push((k, v));
        Ok(self)
    }

    /// `keytab = FILE:<path>`: the keys tickets to us are decrypted with. The `FILE:` prefix
    /// keeps a path with a colon from being read as `TYPE:residual`.
    pub fn keytab(self, path: &Path) -> Result<Self, GssStatus> {
        let v = format!("FILE:{}", path.display());
        self.with("keytab", &v)
    }

    /// `client_keytab = FILE:<path>`: the keys the credential gets its own TGT with.
    pub fn client_keytab(self, path: &Path) -> Result<Self, GssStatus> {
        let v = format!("FILE:{}", path.display());
        self.with("client_keytab", &v)
    }

    /// `ccache = <name>`, e.g. `MEMORY:kcd-1`.
    pub fn ccache(self, name: &str) -> Result<Self, GssStatus> {
        self.with("ccache", name)
    }

    /// `rcache = <name>`, e.g. `dfl:` or `file2:/var/lib/kcdproxy/rcache`.
    pub fn rcache(self, name: &str) -> Result<Self, GssStatus> {
        self.with("rcache", name)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.elements
            .iter()
            .find(|(k, _)| k.as_bytes() == key.as_bytes())
            .and_then(|(_, v)| v.to_str().ok())
    }
}

/// Acquires a Kerberos credential (krb5 mechanism only) for `principal` (`None`: any key in the
/// keytab for accepting; the client keytab's or ccache's principal for initiating) from
/// `store`. Blocking (see the module doc).
pub fn acquire_from(
    principal: Option<&str>,
    usage: CredUsage,
    store: &CredStore,
) -> Result<Cred, GssStatus> {
    let name = match principal {
        Some(p) => Some(ImportedName::krb5_principal(p)?),
        None => None,
    };
    let mut elements: Vec<sys::gss_key_value_element_desc> = store
        .elements
        .iter()
        .map(|(k, v)| sys::gss_key_value_element_desc {
            key: k.as_ptr(),
            value: v.as_ptr(),
        })
        .collect();
    let set = sys::gss_key_value_set_desc {
        count: u32::try_from(elements.len()).map_err(|_| GssStatus::bad_input())?,
        elements: elements.as_mut_ptr(),
    };
    let mut mech = oid_desc(oid::KRB5);
    let mut mechs = sys::gss_OID_set_desc {
        count: 1,
        elements: &mut mech,
    };
    let usage = match usage {
        CredUsage::Accept => sys::GSS_C_ACCEPT,
        CredUsage::Initiate => sys::GSS_C_INITIATE,
        CredUsage::Both => sys::GSS_C_BOTH,
    };
    let mut minor: sys::OM_uint32 = 0;
    let mut cred: sys::gss_cred_id_t = ptr::null_mut();
    // SAFETY: every pointer passed lives until the call returns: `name` (owned, released by its
    // Drop after this), `mechs`/`mech` (locals; `mech` points at a 'static OID that MIT only
    // reads), `set`, `elements` and the CStrings of `store` they point into. The output
    // `cred` is written only on success; actual_mechs and time_rec are optional (NULL).
    let major = unsafe {
        sys::gss_acquire_cred_from(
            &mut minor,
            name.as_ref().map_or(ptr::null_mut(), |n| n.0),
            sys::_GSS_C_INDEFINITE,
            &mut mechs,
            usage as sys::gss_cred_usage_t,
            &set,
            &mut cred,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if major != sys::GSS_S_COMPLETE {
        return Err(GssStatus { major, minor });
    }
    // SAFETY: gss_acquire_cred_from succeeded, so `cred` is a fresh credential that nothing
    // else owns; `Cred` releases it once, when its last clone drops.
    Ok(unsafe { Cred::from_c(cred) })
}

/// An OID descriptor over static bytes (MIT never writes through input OIDs).
fn oid_desc(bytes: &'static [u8]) -> sys::gss_OID_desc {
    sys::gss_OID_desc {
        length: bytes.len() as u32,
        elements: bytes.as_ptr() as *mut c_void,
    }
}

/// A `gss_name_t` we imported and must release.
struct ImportedName(sys::gss_name_t);

impl ImportedName {
    fn krb5_principal(principal: &str) -> Result<Self, GssStatus> {
        let mut nt = oid_desc(oid::KRB5_NT_PRINCIPAL);
        let mut buf = sys::gss_buffer_desc {
            length: principal.len(),
            value: principal.as_ptr() as *mut c_void,
        };
        let mut minor: sys::OM_uint32 = 0;
        let mut name: sys::gss_name_t = ptr::null_mut();
        // SAFETY: `buf` points at `principal`'s bytes (length given, no NUL needed), which
        // gss_import_name only reads and copies; `nt` points at a 'static OID. `name` is
        // written only on success.
        let major = unsafe { sys::gss_import_name(&mut minor, &mut buf, &mut nt, &mut name) };
        if major != sys::GSS_S_COMPLETE {
            return Err(GssStatus { major, minor });
        }
        Ok(ImportedName(name))
    }
}

impl Drop for ImportedName {
    fn drop(&mut self) {
        let mut minor: sys::OM_uint32 = 0;
        // SAFETY: `self.0` came from a successful gss_import_name and is released only here.
        unsafe { sys::gss_release_name(&mut minor, &mut self.0) };
    }
}

/// A krb5 principal name (`user@REALM`, `HTTP/host@REALM`) for libgssapi's calls.
pub fn krb5_name(principal: &str) -> Result<Name, GssStatus> {
    Name::new(principal.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL)).map_err(GssStatus::from)
}

/// A set of mechanisms to restrict a credential to.
pub fn mech_set(mechs: &[Oid<'static>]) -> Result<OidSet, GssStatus> {
    let mut set = OidSet::new();
    for m in mechs {
        set.add(*m)?;
    }
    Ok(set)
}

/// Logs `name` in with `password`: an AS exchange, the tickets kept in memory by the returned
/// initiator credential. BLOCKING (the KDC).
pub fn password_login(name: &Name, password: &str, mechs: &OidSet) -> Result<Cred, GssStatus> {
    Cred::acquire_with_password(Some(name), password, None, CredUsage::Initiate, Some(mechs))
        .map_err(GssStatus::from)
}

/// The client's credential kept by an acceptor: an S4U2Proxy-capable evidence ticket (or the
/// TGT the client delegated). Opaque: it goes to `ClientCtx::new` for the backend's SPN and
/// nowhere else. `Send + Sync`, cheap to clone (a reference-counted GSS handle).
///
/// Only made from what `gss_accept_sec_context` hands back (`DelegatedCred::from_accepted`),
/// so holding one means a client's ticket was verified with our key.
#[derive(Clone)]
pub struct DelegatedCred {
    cred: Cred,
    forwarded_tgt: bool,
}

impl DelegatedCred {
    /// Wraps the delegated credential of a completed acceptor context. MIT sets
    /// `GSS_C_DELEG_FLAG` for an evidence ticket too; what tells them apart is the impersonator
    /// (the proxy) that an S4U2Proxy-capable credential records (MS-SFU 3.1.5.2).
    pub(crate) fn from_accepted(cred: Cred) -> Self {
        DelegatedCred {
            forwarded_tgt: matches!(cred.proxy(), Ok(None)),
            cred,
        }
    }

    /// The GSS credential, for `ClientCtx::new(Some(cred), backend_spn, …)`.
    pub fn gss_cred(&self) -> &Cred {
        &self.cred
    }

    /// `true`: the client delegated its TGT (it asked with `GSS_C_DELEG_FLAG` and its KDC
    /// allowed it). `false`: the evidence ticket only, bound to the proxy's own TGT, usable for
    /// S4U2Proxy to the SPNs the proxy may delegate to.
    pub fn is_forwarded_tgt(&self) -> bool {
        self.forwarded_tgt
    }
}

impl fmt::Debug for DelegatedCred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedCred")
            .field("forwarded_tgt", &self.forwarded_tgt)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_rejects_nul() {
        assert!(CredStore::new().with("keytab", "a\0b").is_err());
        let s = CredStore::new()
            .keytab(Path::new("/etc/x:y.keytab"))
            .unwrap();
        assert_eq!(s.get("keytab"), Some("FILE:/etc/x:y.keytab"));
    }

    #[test]
    fn delegated_cred_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DelegatedCred>();
    }
}
