//! GSS-API credentials from an explicit credential store, and GSS status codes that read right.
//!
//! libgssapi 0.11 has no safe wrapper for `gss_acquire_cred_from` (MIT's cred-store extension),
//! which is the only way to say *which* keytab, client keytab, ccache and replay cache a
//! credential uses without touching process-wide environment variables (`KRB5_KTNAME` would
//! race with every other core). This module is that wrapper: the only FFI of the Kerberos code,
//! kept small so every `unsafe` block can be checked by reading it.
//!
//! Blocking: [`acquire_from`] reads keytabs, and with usage `Both`/`Initiate` plus a client
//! keytab it may ask the KDC for a TGT. Call it at startup or in the [`super::pool`].
//!
//! [`GssStatus`] replaces libgssapi's `Error` for display: that one treats the routine-error
//! field as bit flags, so `GSS_S_NO_CRED` (7) prints as "BAD_MECH | BAD_NAME | BAD_BINDINGS".
//! Here the routine error is a number with its RFC 2744 name, the supplementary bits are
//! flags, and the minor code keeps its mechanism text (MIT: a com_err code; for krb5
//! errors `minor + 1765328384` is the KRB-ERROR number, see [`GssStatus::krb5_code`]).

use std::ffi::{c_void, CString};
use std::fmt;
use std::path::Path;
use std::ptr;

use libgssapi::credential::{Cred, CredUsage};
use libgssapi_sys as sys;

/// 1.2.840.113554.1.2.2 (Kerberos 5), without tag and length.
const KRB5_MECH: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// 1.2.840.113554.1.2.2.1 (GSS_KRB5_NT_PRINCIPAL_NAME): `name/instance@REALM`.
const KRB5_NT_PRINCIPAL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0x01];

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
    let mut mech = oid_desc(KRB5_MECH);
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
        let mut nt = oid_desc(KRB5_NT_PRINCIPAL);
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

/// A GSS-API major/minor status pair, displayed correctly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GssStatus {
    pub major: u32,
    pub minor: u32,
}

/// RFC 2744 routine errors, by number (major bits 16..24).
const ROUTINE: [&str; 19] = [
    "COMPLETE",
    "BAD_MECH",
    "BAD_NAME",
    "BAD_NAMETYPE",
    "BAD_BINDINGS",
    "BAD_STATUS",
    "BAD_SIG",
    "NO_CRED",
    "NO_CONTEXT",
    "DEFECTIVE_TOKEN",
    "DEFECTIVE_CREDENTIAL",
    "CREDENTIALS_EXPIRED",
    "CONTEXT_EXPIRED",
    "FAILURE",
    "BAD_QOP",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "DUPLICATE_ELEMENT",
    "NAME_NOT_MN",
];

/// Routine error numbers used by callers.
pub mod routine {
    pub const BAD_MECH: u32 = 1;
    pub const BAD_NAME: u32 = 2;
    pub const BAD_BINDINGS: u32 = 4;
    pub const BAD_SIG: u32 = 6;
    pub const NO_CRED: u32 = 7;
    pub const NO_CONTEXT: u32 = 8;
    pub const DEFECTIVE_TOKEN: u32 = 9;
    pub const DEFECTIVE_CREDENTIAL: u32 = 10;
    pub const CREDENTIALS_EXPIRED: u32 = 11;
    pub const CONTEXT_EXPIRED: u32 = 12;
    pub const FAILURE: u32 = 13;
    pub const UNAUTHORIZED: u32 = 15;
    pub const UNAVAILABLE: u32 = 16;
}

/// Supplementary-information bits (major bits 0..16).
pub mod supplementary {
    pub const CONTINUE_NEEDED: u32 = 1;
    pub const DUPLICATE_TOKEN: u32 = 2;
    pub const OLD_TOKEN: u32 = 4;
    pub const UNSEQ_TOKEN: u32 = 8;
    pub const GAP_TOKEN: u32 = 16;
}

/// MIT's com_err table base of krb5 errors (`ERROR_TABLE_BASE_krb5`): a minor code in
/// `[BASE, BASE + 256)` is krb5 error number `minor - BASE`; numbers below 128 are the
/// KRB-ERROR codes of RFC 4120 §7.5.9.
const KRB5_TABLE_BASE: i32 = -1_765_328_384;

impl GssStatus {
    fn bad_input() -> Self {
        GssStatus {
            major: sys::_GSS_S_CALL_INACCESSIBLE_READ,
            minor: 0,
        }
    }

    /// The routine error number (0 = none).
    pub fn routine(self) -> u32 {
        (self.major >> 16) & 0xff
    }

    /// The calling error number (0 = none): a bug on our side.
    pub fn calling(self) -> u32 {
        self.major >> 24
    }

    pub fn supplementary(self) -> u32 {
        self.major & 0xffff
    }

    /// The krb5 error number when the minor code is from MIT's krb5 table (e.g. 34 =
    /// `KRB_AP_ERR_REPEAT`, 37 = `KRB_AP_ERR_SKEW`, 181 = `KRB5_KT_NOTFOUND`).
    pub fn krb5_code(self) -> Option<u32> {
        let n = (self.minor as i32).wrapping_sub(KRB5_TABLE_BASE);
        u32::try_from(n).ok().filter(|n| *n < 256)
    }

    /// The mechanism's text for the minor code (MIT: the com_err message).
    pub fn minor_text(self) -> String {
        if self.minor == 0 {
            return String::new();
        }
        display_status(self.minor, sys::GSS_C_MECH_CODE as i32)
    }

    fn routine_name(self) -> &'static str {
        ROUTINE
            .get(self.routine() as usize)
            .copied()
            .unwrap_or("UNKNOWN_ROUTINE_ERROR")
    }
}

impl fmt::Display for GssStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.calling() != 0 {
            write!(f, "GSS calling error {}", self.calling())?;
        } else {
            write!(f, "GSS_S_{}", self.routine_name())?;
        }
        let sup = self.supplementary();
        for (bit, name) in [
            (supplementary::CONTINUE_NEEDED, "CONTINUE_NEEDED"),
            (supplementary::DUPLICATE_TOKEN, "DUPLICATE_TOKEN"),
            (supplementary::OLD_TOKEN, "OLD_TOKEN"),
            (supplementary::UNSEQ_TOKEN, "UNSEQ_TOKEN"),
            (supplementary::GAP_TOKEN, "GAP_TOKEN"),
        ] {
            if sup & bit != 0 {
                write!(f, "+{name}")?;
            }
        }
        if self.minor != 0 {
            write!(f, " (minor {}: {})", self.minor, self.minor_text())?;
        }
        Ok(())
    }
}

impl std::error::Error for GssStatus {}

impl From<libgssapi::error::Error> for GssStatus {
    fn from(e: libgssapi::error::Error) -> Self {
        GssStatus {
            major: e.major.bits(),
            minor: e.minor,
        }
    }
}

/// `gss_display_status` for one code, all its messages joined.
fn display_status(code: u32, kind: i32) -> String {
    let mut out = String::new();
    let mut message_context: sys::OM_uint32 = 0;
    // Bounded: MIT returns one message per code; a broken library must not loop us forever.
    for _ in 0..8 {
        let mut minor: sys::OM_uint32 = 0;
        let mut buf = sys::gss_buffer_desc {
            length: 0,
            value: ptr::null_mut(),
        };
        // SAFETY: all out-pointers are valid locals; mech_type NULL means the default mech.
        let major = unsafe {
            sys::gss_display_status(
                &mut minor,
                code,
                kind,
                ptr::null_mut(),
                &mut message_context,
                &mut buf,
            )
        };
        if major != sys::GSS_S_COMPLETE {
            break;
        }
        if !buf.value.is_null() && buf.length > 0 {
            // SAFETY: on success `buf` holds `length` bytes allocated by the library, valid
            // until gss_release_buffer below.
            let bytes = unsafe { std::slice::from_raw_parts(buf.value as *const u8, buf.length) };
            if !out.is_empty() {
                out.push_str("; ");
            }
            // MIT counts the terminating NUL in some messages' length.
            let text = String::from_utf8_lossy(bytes);
            out.push_str(text.trim_end_matches('\0'));
        }
        // SAFETY: `buf` was filled by gss_display_status and is released exactly once.
        unsafe { sys::gss_release_buffer(&mut minor, &mut buf) };
        if message_context == 0 {
            break;
        }
    }
    if out.is_empty() {
        out = format!("unknown code {code}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cred_reads_as_no_cred() {
        let s = GssStatus {
            major: 7 << 16,
            minor: 0,
        };
        assert_eq!(s.to_string(), "GSS_S_NO_CRED");
        assert_eq!(s.routine(), routine::NO_CRED);
    }

    #[test]
    fn krb5_codes_from_minor() {
        let repeat = GssStatus {
            major: 13 << 16,
            minor: (-1_765_328_350i32) as u32,
        };
        assert_eq!(repeat.krb5_code(), Some(34));
        assert!(repeat.to_string().starts_with("GSS_S_FAILURE (minor "));
        let asn1 = GssStatus {
            major: 9 << 16,
            minor: 1_859_794_437,
        };
        assert_eq!(asn1.krb5_code(), None);
        let dup = GssStatus {
            major: (13 << 16) | supplementary::DUPLICATE_TOKEN,
            minor: 0,
        };
        assert_eq!(dup.to_string(), "GSS_S_FAILURE+DUPLICATE_TOKEN");
    }

    #[test]
    fn store_rejects_nul() {
        assert!(CredStore::new().with("keytab", "a\0b").is_err());
        let s = CredStore::new()
            .keytab(Path::new("/etc/x:y.keytab"))
            .unwrap();
        assert_eq!(s.get("keytab"), Some("FILE:/etc/x:y.keytab"));
    }
}
