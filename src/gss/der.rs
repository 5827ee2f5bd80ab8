//! The one DER reader and writer: what SPNEGO (RFC 4178 §4) and the GSS token framing
//! (RFC 2743 §3.1) use — single-byte tags, definite lengths of up to four bytes (X.690 §8.1.3).
//!
//! Invariants:
//!
//! - **No input can panic it**: every read goes through the panic-free [`Reader`], and every
//!   length is checked against its container before a value is handed out.
//! - **DER is exact**: [`only`] refuses bytes after the one TLV that must fill a container,
//!   indefinite lengths (BER only) are refused, and [`context_fields`] requires context tags
//!   in increasing order.
//! - **Minimal on output**: [`push_len`] writes the shortest length form, as DER requires.

use super::reader::Reader;

/// The tags used here (X.690 §8.1.2: universal, application and context classes).
pub mod tag {
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const ENUMERATED: u8 = 0x0a;
    pub const SEQUENCE: u8 = 0x30;
    /// `[APPLICATION 0]`, constructed: the GSS InitialContextToken.
    pub const APPLICATION_0: u8 = 0x60;
    /// `[APPLICATION 14]`, constructed: the krb5 AP-REQ (RFC 4120 §5.5.1).
    pub const APPLICATION_14: u8 = 0x6e;
    /// `[n]`, constructed.
    pub const fn context(n: u8) -> u8 {
        0xa0 | n
    }
}

/// Which DER rule an input broke; callers map it onto their own error (and text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DerError {
    /// A TLV that does not parse, runs past its container, or has an unexpected tag.
    Malformed,
    /// Bytes after the one TLV that must fill its container.
    Trailing,
    /// A context-tagged field out of order, or beyond the structure's last field.
    UnexpectedField,
}

/// Reads one TLV; the value is bounded by the enclosing reader.
pub fn tlv<'a>(r: &mut Reader<'a>) -> Option<(u8, &'a [u8])> {
    let t = r.u8()?;
    if t & 0x1f == 0x1f {
        return None; // high tag numbers are not used by SPNEGO or the GSS framing
    }
    let first = r.u8()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite length (BER only) or absurd
        }
        let mut len = 0usize;
        for b in r.take(n)? {
            len = (len << 8) | usize::from(*b);
        }
        len
    };
    Some((t, r.take(len)?))
}

/// Reads a TLV that must have tag `want`.
pub fn expect<'a>(r: &mut Reader<'a>, want: u8) -> Result<&'a [u8], DerError> {
    match tlv(r) {
        Some((t, v)) if t == want => Ok(v),
        _ => Err(DerError::Malformed),
    }
}

/// Reads exactly one TLV with tag `want` filling all of `buf`.
pub fn only(buf: &[u8], want: u8) -> Result<&[u8], DerError> {
    let mut r = Reader::new(buf);
    let v = expect(&mut r, want)?;
    if !r.is_empty() {
        return Err(DerError::Trailing);
    }
    Ok(v)
}

/// The `[n] value` fields of a SEQUENCE body, requiring increasing tag numbers up to `max_tag`.
pub fn context_fields(body: &[u8], max_tag: u8) -> Result<Vec<(u8, &[u8])>, DerError> {
    let mut r = Reader::new(body);
    let mut out = Vec::with_capacity(4);
    let mut next_min = 0u8;
    while !r.is_empty() {
        let (t, v) = tlv(&mut r).ok_or(DerError::Malformed)?;
        let n = t ^ 0xa0;
        if t & 0xe0 != 0xa0 || n > max_tag || n < next_min {
            return Err(DerError::UnexpectedField);
        }
        next_min = n + 1;
        out.push((n, v));
    }
    Ok(out)
}

/// Appends a definite length in its shortest form.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends one TLV.
pub fn push_tlv(out: &mut Vec<u8>, t: u8, value: &[u8]) {
    out.push(t);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// One TLV as a new buffer.
pub fn wrap(t: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    push_tlv(&mut out, t, value);
    out
}

/// Every prefix of `tok`, and every single-byte corruption of it to a value that matters to
/// DER (zero, the largest short length, the indefinite and four-byte long-form length bytes,
/// 0xff): what the "no input panics the parser" tests feed the parsers.
#[cfg(test)]
pub(crate) fn mutations(tok: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let prefixes = (0..=tok.len()).map(move |n| tok[..n].to_vec());
    let corrupted = (0..tok.len()).flat_map(move |i| {
        [0x00, 0x7f, 0x80, 0x84, 0xff].into_iter().map(move |b| {
            let mut t = tok.to_vec();
            t[i] = b;
            t
        })
    });
    prefixes.chain(corrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_encode_minimally() {
        for (len, want) in [
            (0usize, vec![0u8]),
            (127, vec![127]),
            (128, vec![0x81, 128]),
            (300, vec![0x82, 1, 44]),
            (70000, vec![0x83, 1, 0x11, 0x70]),
        ] {
            let mut out = Vec::new();
            push_len(&mut out, len);
            assert_eq!(out, want, "{len}");
        }
    }

    #[test]
    fn reads_are_exact_and_bounded() {
        let seq = wrap(tag::SEQUENCE, &wrap(tag::OID, &[1, 2, 3]));
        assert_eq!(only(&seq, tag::SEQUENCE).unwrap(), &seq[2..]);
        assert_eq!(only(&seq, tag::OID), Err(DerError::Malformed));
        let mut trailing = seq.clone();
        trailing.push(0);
        assert_eq!(only(&trailing, tag::SEQUENCE), Err(DerError::Trailing));
        for bad in [
            &[0x30, 0x80][..],                     // indefinite length
            &[0x30, 0x85, 0, 0, 0, 0, 1],          // five length bytes
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], // past the end
            &[0x1f, 0x01, 0x00],                   // high tag number
            &[0x30],
            &[],
        ] {
            assert_eq!(
                only(bad, tag::SEQUENCE),
                Err(DerError::Malformed),
                "{bad:?}"
            );
        }
        let long = wrap(tag::OCTET_STRING, &[7; 300]);
        assert_eq!(only(&long, tag::OCTET_STRING).unwrap().len(), 300);
    }

    #[test]
    fn context_fields_must_increase() {
        let a0 = wrap(tag::context(0), &[1]);
        let a2 = wrap(tag::context(2), &[2]);
        let ok = [a0.clone(), a2.clone()].concat();
        assert_eq!(
            context_fields(&ok, 3).unwrap(),
            [(0, &[1u8][..]), (2, &[2u8][..])]
        );
        let backwards = [a2.clone(), a0].concat();
        assert_eq!(
            context_fields(&backwards, 3),
            Err(DerError::UnexpectedField)
        );
        assert_eq!(context_fields(&a2, 1), Err(DerError::UnexpectedField));
        let not_context = wrap(tag::SEQUENCE, &[]);
        assert_eq!(
            context_fields(&not_context, 3),
            Err(DerError::UnexpectedField)
        );
        assert_eq!(context_fields(&[0xa0], 3), Err(DerError::Malformed));
    }
}
