//! GSS-API status codes that read right, and the krb5 error numbers inside them.
//!
//! [`GssStatus`] replaces libgssapi's `Error` for display: that one treats the routine-error
//! field as bit flags, so `GSS_S_NO_CRED` (7) prints as "BAD_MECH | BAD_NAME | BAD_BINDINGS".
//! Here the routine error is a number with its RFC 2744 name, the supplementary bits are
//! flags, and the minor code keeps its mechanism text (MIT: a com_err code; for krb5
//! errors `minor + 1765328384` is the KRB-ERROR number, see [`GssStatus::krb5_code`]).
//!
//! [`krb5_code`] is the one table of krb5 error numbers: the acceptor and the delegation engine
//! each map the numbers onto their own closed errors, but they name them from here.
//!
//! Invariant: formatting a status never fails and never loops unbounded (a broken library's
//! `gss_display_status` is cut off after a few messages).

use std::fmt;
use std::ptr;

use libgssapi_sys as sys;

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

/// MIT's com_err table base of ASN.1 errors (`ERROR_TABLE_BASE_asn1`): a minor code just above
/// it means a krb5 message (an AP-REQ, a KDC reply) did not decode.
pub const ASN1_TABLE_BASE: u32 = 1_859_794_432;

/// krb5 error numbers ([`GssStatus::krb5_code`], i.e. `minor - ERROR_TABLE_BASE_krb5`). Below
/// 128 they are the KRB-ERROR codes of RFC 4120 §7.5.9 (named as there); from 128 on, MIT's
/// own library errors.
pub mod krb5_code {
    pub const KDC_ERR_C_PRINCIPAL_UNKNOWN: u32 = 6;
    pub const KDC_ERR_S_PRINCIPAL_UNKNOWN: u32 = 7;
    pub const KDC_ERR_POLICY: u32 = 12;
    pub const KDC_ERR_BADOPTION: u32 = 13;
    pub const KDC_ERR_CLIENT_REVOKED: u32 = 18;
    pub const KDC_ERR_KEY_EXP: u32 = 23;
    pub const KDC_ERR_PREAUTH_FAILED: u32 = 24;
    pub const AP_ERR_BAD_INTEGRITY: u32 = 31;
    pub const AP_ERR_TKT_EXPIRED: u32 = 32;
    pub const AP_ERR_TKT_NYV: u32 = 33;
    pub const AP_ERR_REPEAT: u32 = 34;
    pub const AP_ERR_NOT_US: u32 = 35;
    pub const AP_ERR_BADMATCH: u32 = 36;
    pub const AP_ERR_SKEW: u32 = 37;
    pub const AP_ERR_BADVERSION: u32 = 39;
    pub const AP_ERR_MSG_TYPE: u32 = 40;
    pub const AP_ERR_MODIFIED: u32 = 41;
    pub const AP_ERR_BADKEYVER: u32 = 44;
    pub const AP_ERR_NOKEY: u32 = 45;
    /// KRB5KRB_AP_WRONG_PRINC: the ticket names another server.
    pub const AP_WRONG_PRINC: u32 = 144;
    /// KRB5_REALM_UNKNOWN: "Cannot find KDC for requested realm".
    pub const REALM_UNKNOWN: u32 = 154;
    /// KRB5_KDC_UNREACH: "Cannot contact any KDC for requested realm".
    pub const KDC_UNREACH: u32 = 156;
    /// KRB5_RC_TYPE_EXISTS ..= KRB5_RC_IO_SPACE: the replay cache's own errors.
    pub const RC_FIRST: u32 = 159;
    pub const RC_REPLAY: u32 = 163;
    pub const RC_LAST: u32 = 172;
    pub const KT_NOTFOUND: u32 = 181;
    pub const KT_END: u32 = 182;
    pub const RC_REQUIRED: u32 = 215;
    /// KRB5_REALM_CANT_RESOLVE.
    pub const REALM_CANT_RESOLVE: u32 = 220;
    pub const KT_KVNONOTFOUND: u32 = 230;
}

impl GssStatus {
    /// A calling error: our input could not be handed to the library (e.g. a NUL byte).
    pub(super) fn bad_input() -> Self {
        GssStatus {
            major: sys::_GSS_S_CALL_INACCESSIBLE_READ,
            minor: 0,
        }
    }

    /// A `GSS_S_FAILURE` carrying krb5 error number `code`, as MIT reports a krb5 error: for
    /// tests of the mappings built on [`krb5_code`].
    #[cfg(test)]
    pub(crate) fn krb5_failure(code: u32) -> Self {
        GssStatus {
            major: routine::FAILURE << 16,
            minor: KRB5_TABLE_BASE.wrapping_add_unsigned(code) as u32,
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

    /// Whether the KDC could not be found or reached (no verdict about the request was made).
    pub fn kdc_unreachable(self) -> bool {
        use krb5_code as k;
        matches!(
            self.krb5_code(),
            Some(k::REALM_UNKNOWN | k::KDC_UNREACH | k::REALM_CANT_RESOLVE)
        )
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
    fn kdc_unreachable_is_the_three_lookup_and_contact_failures() {
        for n in [154, 156, 220] {
            assert!(GssStatus::krb5_failure(n).kdc_unreachable(), "{n}");
        }
        for n in [6, 13, 34, 155, 157] {
            assert!(!GssStatus::krb5_failure(n).kdc_unreachable(), "{n}");
        }
        assert_eq!(GssStatus::krb5_failure(34).krb5_code(), Some(34));
        let errno = GssStatus {
            major: routine::FAILURE << 16,
            minor: libc::ETIMEDOUT as u32,
        };
        assert!(!errno.kdc_unreachable());
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
}
