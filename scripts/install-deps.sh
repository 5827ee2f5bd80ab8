#!/usr/bin/env bash
# Installs, idempotently, every Debian package the build, the tests, the lab and the perf harness
# need on a fresh Debian 12 machine (run as root). Safe to run again: installed packages are skipped.
set -euo pipefail

PKGS=(
  # build: libgssapi-sys needs libclang + krb5 headers
  pkg-config clang libclang-dev libkrb5-dev
  # tests and perf: real backends, proxies to compare with, clients
  curl nginx-light haproxy openssl python3 python3-venv procps iproute2
)
# Extra groups are requested by the scripts that need them (lab, perf) with "$0 NAME...".
[ "$#" -gt 0 ] && PKGS+=("$@")

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Package maintainer scripts must not start system-wide daemons (nginx, haproxy, samba, slapd):
# the tests start private instances. policy-rc.d exit 101 = "action forbidden".
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/kcdproxy-apt.log 2>&1; then
  apt-get update -q >>/tmp/kcdproxy-apt.log 2>&1
  apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/kcdproxy-apt.log 2>&1 || {
    echo "install-deps: apt-get failed; see /tmp/kcdproxy-apt.log" >&2; tail -20 /tmp/kcdproxy-apt.log >&2; exit 1; }
fi
