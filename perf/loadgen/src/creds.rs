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
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = parse_basic_users(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if headers.is_empty() {
        return Err(format!("{}: no user:password lines", path.display()));
    }
    Ok(headers)
}

fn parse_basic_users(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, _)) if !user.is_empty() => {
                out.push(format!("Authorization: Basic {}", base64(line.as_bytes())))
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

/// Standard base64 with padding (RFC 4648 §4), as Basic credentials need.
fn base64(input: &[u8]) -> String {
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
        }
    }

    #[test]
    fn users_file_parses() {
        let got = parse_basic_users("# load users\n\nu1:p:w\r\n  \nu2:\n").unwrap();
        assert_eq!(
            got,
            ["Authorization: Basic dTE6cDp3", "Authorization: Basic dTI6"]
        );
        assert!(parse_basic_users("nocolon\n").is_err());
        assert!(parse_basic_users(":pw\n").is_err());
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
