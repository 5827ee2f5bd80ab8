//! A deterministic, position-dependent byte pattern for large bodies.
//!
//! Byte `p` of every pattern stream is a pure function of `p`, so a sender generates it block by
//! block and a receiver checks it in place: no side ever holds a whole body, and a lost,
//! duplicated or reordered block shows up at its offset. The pattern is a 4 KiB table of
//! pseudo-random words XOR-ed with a per-4-KiB-block key, so blocks never repeat.

use std::sync::OnceLock;

const WORDS: usize = 512; // 4 KiB of table
const BLOCK: u64 = (WORDS * 8) as u64;

fn table() -> &'static [u64; WORDS] {
    static T: OnceLock<[u64; WORDS]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [0u64; WORDS];
        let mut s = 0x243F_6A88_85A3_08D3u64;
        for w in t.iter_mut() {
            // splitmix64
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *w = z ^ (z >> 31);
        }
        t
    })
}

fn word(index: u64) -> u64 {
    let key = (index / WORDS as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    table()[(index % WORDS as u64) as usize] ^ key
}

/// Fills `buf` with the pattern bytes at offsets `offset..offset + buf.len()`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    // Unaligned head, byte by byte.
    while i < buf.len() && pos % 8 != 0 {
        buf[i] = word(pos / 8).to_le_bytes()[(pos % 8) as usize];
        i += 1;
        pos += 1;
    }
    // Aligned words.
    while buf.len() - i >= 8 {
        buf[i..i + 8].copy_from_slice(&word(pos / 8).to_le_bytes());
        i += 8;
        pos += 8;
    }
    // Tail.
    while i < buf.len() {
        buf[i] = word(pos / 8).to_le_bytes()[(pos % 8) as usize];
        i += 1;
        pos += 1;
    }
}

/// The first `len` pattern bytes, for small bodies.
pub fn bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(0, &mut v);
    v
}

/// Checks `data` against the pattern at `offset`; on a mismatch, returns the absolute offset of
/// the first wrong byte.
pub fn check(offset: u64, data: &[u8]) -> Result<(), u64> {
    let mut expect = [0u8; BLOCK as usize];
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(expect.len());
        fill(offset + done as u64, &mut expect[..n]);
        if data[done..done + n] != expect[..n] {
            let k = (0..n).find(|&k| data[done + k] != expect[k]).unwrap_or(0);
            return Err(offset + (done + k) as u64);
        }
        done += n;
    }
    Ok(())
}

/// Streams `len` pattern bytes from offset 0 in pieces of at most `piece` bytes.
pub fn for_each_piece(len: u64, piece: usize, mut f: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; piece];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(piece);
        fill(off, &mut buf[..n]);
        f(&buf[..n]);
        off += n as u64;
    }
}
