//! A cursor over untrusted bytes that cannot panic.
//!
//! Every read returns `Option`: `None` means "the input ends before this field", and the caller
//! turns that into a protocol error. There is no indexing into the input anywhere else in the
//! NTLM and SPNEGO codecs; they only see what a [`Reader`] hands out. (Shape taken from rustls'
//! `codec::Reader`.)
//!
//! INVARIANT: `pos <= buf.len()` at all times, so `rest()` and every slice below are in bounds.

/// A forward-only cursor over a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    /// INVARIANT: `pos <= buf.len()`.
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next `n` bytes, or `None` (and no movement) when fewer remain.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    /// A little-endian `u16` (every NTLM integer is little-endian).
    pub fn u16_le(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32_le(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64_le(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// Everything not read yet, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// The next byte without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Reader;

    #[test]
    fn reads_are_bounded_and_do_not_move_on_failure() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r.u16_le(), Some(0x0201));
        assert_eq!(r.u64_le(), None);
        assert_eq!(r.position(), 2);
        assert_eq!(r.u32_le(), Some(0x0605_0403));
        assert_eq!(r.take(2), None);
        assert_eq!(r.peek(), Some(7));
        assert_eq!(r.u8(), Some(7));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
        assert_eq!(r.take(usize::MAX), None);
        assert_eq!(r.take(0), Some(&[][..]));
        assert_eq!(r.rest(), &[] as &[u8]);
    }
}
