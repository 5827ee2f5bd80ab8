//! A deterministic, position-dependent byte pattern for large bodies.
//!
//! Byte `p` of every pattern stream is a pure function of `p`, so a sender generates it piece by
//! piece and a receiver checks it in place: no side ever holds a whole body. The stream is made
//! of 4 KiB blocks: a fixed table of pseudo-random bytes whose first 8 bytes are replaced by a
//! per-block key (the block index, scrambled). A lost, duplicated or reordered block shows up at
//! its offset, and any shift within a block changes the random bytes. Generating is a copy, so
//! a gigabyte costs little even in the tests' lightly optimised build.

use std::sync::OnceLock;

const BLOCK: usize = 4096;

fn table() -> &'static [u8; BLOCK] {
    static T: OnceLock<[u8; BLOCK]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [0u8; BLOCK];
        let mut s = 0x243F_6A88_85A3_08D3u64;
        for w in t.chunks_exact_mut(8) {
            // splitmix64
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        t
    })
}

/// The first 8 bytes of block `b`.
fn block_key(b: u64) -> [u8; 8] {
    (b.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5DEE_CE66_D1CE_4E5B).to_le_bytes()
}

/// Fills `buf` with the pattern bytes at offsets `offset..offset + buf.len()`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    let t = table();
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let block = pos / BLOCK as u64;
        let at = (pos % BLOCK as u64) as usize;
        let n = (BLOCK - at).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&t[at..at + n]);
        if at < 8 {
            let key = block_key(block);
            let k = (8 - at).min(n);
            buf[i..i + k].copy_from_slice(&key[at..at + k]);
        }
        i += n;
        pos += n as u64;
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
    let mut expect = [0u8; BLOCK];
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
