//! The object identifiers the proxy speaks, as DER contents (without tag and length): what a
//! SPNEGO MechTypeList or a GSS InitialContextToken carries (RFC 2743 §3.1, RFC 4178 §4.1),
//! and what MIT's C interface takes as a `gss_OID`'s bytes.
//!
//! One definition each: the SPNEGO codec, the Kerberos framing check and the credential FFI
//! all compare against these.

/// 1.3.6.1.5.5.2 — SPNEGO (RFC 4178).
pub const SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// 1.3.6.1.4.1.311.2.2.10 — NTLMSSP (MS-NLMP).
pub const NTLM: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
/// 1.2.840.113554.1.2.2 — Kerberos 5 (RFC 4121).
pub const KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// 1.2.840.48018.1.2.2 — Kerberos 5 as misencoded by old Windows; still sent first by it.
pub const MS_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// 1.3.6.1.4.1.311.2.2.30 — NEGOEX.
pub const NEGOEX: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x1e];
/// 1.2.840.113554.1.2.2.1 — the krb5 principal name type (GSS_KRB5_NT_PRINCIPAL_NAME, RFC 1964
/// §2.1.1): `name/instance@REALM`.
pub const KRB5_NT_PRINCIPAL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0x01];

/// Either spelling of the Kerberos 5 mechanism.
pub fn is_krb5(mech: &[u8]) -> bool {
    mech == KRB5 || mech == MS_KRB5
}
