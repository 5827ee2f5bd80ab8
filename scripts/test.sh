#!/usr/bin/env bash
# Runs every test of kcdproxy on a fresh Debian 12 machine (as root): installs what is missing,
# checks formatting and lints, brings the Kerberos lab up, runs the unit, integration and lab
# tests, and brings the lab down again (also on failure; its logs are kept for failed runs).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing build and test dependencies"
./scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -- -D warnings"
cargo clippy --all-targets -- -D warnings

if [ -x tests/lab/lab.sh ]; then
  step "bringing the lab up"
  # On failure the lab's daemon logs are kept (the path is printed) for the post-mortem.
  trap 'rc=$?; if [ "$rc" != 0 ]; then export KCD_LAB_KEEP_LOGS=1; fi; tests/lab/lab.sh down || true; exit "$rc"' EXIT
  tests/lab/lab.sh up
fi

step "cargo test"
# The integration tests start real servers (the proxy, echo origins, nginx, the lab's Apache);
# two test threads keep them from starving each other on a 2-core machine.
# (RUST_TEST_THREADS rather than --test-threads: the criterion benches, run once each here as a
# smoke test, do not take libtest's flags.)
RUST_TEST_THREADS=2 cargo test --all-targets --no-fail-fast
step "doc tests"
cargo test --doc
