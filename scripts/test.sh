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
  trap 'tests/lab/lab.sh down || true' EXIT
  tests/lab/lab.sh up
fi

step "cargo test"
# The integration tests start real servers (the proxy, echo origins, nginx, the lab's Apache);
# two test threads keep them from starving each other on a 2-core machine.
cargo test --all-targets -- --test-threads=2
