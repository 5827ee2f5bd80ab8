//! Runs the `curl` CLI, always with `--max-time`, as an HTTP client independent of ours.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use super::Output;

/// Runs `curl -sS --max-time 20 ARGS…`.
pub fn curl(args: &[&str]) -> Output {
    curl_env(args, &[] as &[(&str, &str)])
}

/// [`curl`] with extra environment variables (`KRB5_CONFIG` and `KRB5CCNAME` for
/// `--negotiate`).
pub fn curl_env<K: AsRef<OsStr>, V: AsRef<OsStr>>(args: &[&str], env: &[(K, V)]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run curl (is it installed? scripts/install-deps.sh)")
        .into()
}
