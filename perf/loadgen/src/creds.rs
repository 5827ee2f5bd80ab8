//! Per-connection credentials (`--basic-users FILE`): many distinct users, so a proxy that
//! caches per user (tickets, backend connections) is measured with a realistic spread of users
//! rather than one hot entry.
//!
//! The file holds `user:password` lines (blank lines and `#` comments are skipped; the password
//! is everything after the first `:`). Every request on a connection carries that line's
//! `Authorization: Basic` header. Which line a connection uses is decided by [`line_for`].

use std::path::Path;

/// `Authorization: Basic …` header lines, one per user, in file order.
pub fn basic_headers(path: &Path) -> Result<Vec<String>, String> {
    Ok(read_users(path)?
        .iter()
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}",
                base64(format!("{u}:{p}").as_bytes())
            )
        })
        .collect())
}

/// The `(user, password)` pairs of a users file, at least one.
pub fn read_users(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let users = parse_users(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if users.is_empty() {
        return Err(format!("{}: no user:password lines", path.display()));
    }
    Ok(users)
}

fn parse_users(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                out.push((user.to_string(), password.to_string()))
            }
            _ => return Err(format!("line {}: expected user:password", n + 1)),
        }
    }
    Ok(out)
}

/// The credential line used by the `k`-th connection (0, 1, …) that task `task` of `tasks` opens,
/// out of `lines`. With keep-alive (one connection per task) this is `task mod lines`; with a
/// connection per N requests the tasks step through all lines, so every user is seen even when
/// there are fewer connections than users.
pub fn line_for(task: usize, k: u64, tasks: usize, lines: usize) -> usize {
    let step = (k % lines as u64) as usize * (tasks % lines);
    (task % lines + step) % lines
}

/// Standard base64 with padding (RFC 4648 §4), as Basic credentials and NTLM tokens need.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); None on any other byte.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in input.iter().take_while(|&&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        #[rustfmt::skip]
        let table: &[(&str, &str)] = &[
            ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
            ("alice:Alice-Lab-Pw1", "YWxpY2U6QWxpY2UtTGFiLVB3MQ=="),
        ];
        for (plain, want) in table {
            assert_eq!(base64(plain.as_bytes()), *want, "{plain}");
            assert_eq!(
                base64_decode(want.as_bytes()).unwrap(),
                plain.as_bytes(),
                "{want}"
            );
        }
        assert!(base64_decode(b"Zm9v!").is_none());
    }

    #[test]
    fn users_file_parses() {
        let got = parse_users("# load users\n\nu1:p:w\r\n  \nu2:\n").unwrap();
        let pair = |u: &str, p: &str| (u.to_string(), p.to_string());
        assert_eq!(got, [pair("u1", "p:w"), pair("u2", "")]);
        assert!(parse_users("nocolon\n").is_err());
        assert!(parse_users(":pw\n").is_err());
    }

    #[test]
    fn lines_cover_every_user() {
        // Keep-alive: connection i uses line i mod N.
        assert_eq!(
            (0..5).map(|t| line_for(t, 0, 5, 3)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1]
        );
        // Reconnecting: 4 tasks over 10 users reach all 10 lines within 3 connections each.
        let mut seen = [false; 10];
        for t in 0..4 {
            for k in 0..3 {
                seen[line_for(t, k, 4, 10)] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        // One line: always line 0.
        assert_eq!(line_for(7, 9, 16, 1), 0);
    }
}
