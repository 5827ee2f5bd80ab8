//! Runs the `curl` CLI, always with `--max-time`, as an HTTP client independent of ours.

use std::process::Command;

/// What a curl run printed.
pub struct Curl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Curl {
    /// The JSON documents curl printed, one per line (the echo server ends each with `\n`).
    pub fn json_docs(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("curl output is not JSON ({e}): {l}\n{}", self.stderr)
                })
            })
            .collect()
    }
}

/// Runs `curl -sS --max-time 20 ARGS…`.
pub fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (is it installed? scripts/install-deps.sh)");
    Curl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
