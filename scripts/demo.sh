#!/usr/bin/env bash
# The kcdproxy demo, in one command on a fresh Debian 12 machine (as root):
#
#   scripts/demo.sh
#
# It installs what is missing, brings the lab up (a Samba AD DC, an MIT KDC and a Kerberos-
# protected Apache backend: tests/lab/), builds kcdproxy and starts it with TLS in front of the
# backend, then shows a real client (curl) authenticating as alice and the backend answering
# "authenticated as alice@EXAMPLE.TEST":
#   1. curl --negotiate as alice straight to the backend;
#   2. the constrained delegation kcdproxy performs, done by hand with MIT's kvno: the proxy's
#      service account gets a ticket to the backend *for alice* without her password
#      (S4U2Self + S4U2Proxy), and the backend accepts it;
#   3. curl through kcdproxy (TLS, lab CA) to the backend's unprotected /public/ echo;
#   4. the main event: alice through kcdproxy to the Kerberos-only /echo, with NTLM (checked by
#      the domain controller through winbind), with Kerberos (curl --negotiate, her own ticket
#      as S4U2Proxy evidence) and with Basic. kcdproxy authenticates her, maps EXAMPLE\alice to
#      alice@EXAMPLE.TEST, obtains a ticket to the backend for her (S4U2Self + S4U2Proxy) and
#      the backend answers "authenticated as alice@EXAMPLE.TEST" — no second prompt;
#   5. what must fail, fails: a wrong password gets 401, bob (sensitive) gets 403.
# Each step prints what it ran and what came back. The exit status is non-zero when a step that
# should work today fails. kcdproxy is stopped at the end; the lab stays up (stop it with
# tests/lab/lab.sh down).
#
# Environment: KCD_DEMO_LISTEN (default 127.0.0.1:8443, another free port if taken),
# KCD_DEMO_EXTRA_FLAGS (more kcdproxy flags, split on spaces), KCD_DEMO_BIN (run this binary
# instead of building the release one), KCD_LAB_DIR, CARGO_TARGET_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
T0=$(date +%s)
RESULTS=()
FAILED=0
if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'; else B='' G='' R='' Y='' N=''; fi

step() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
show() { printf '   $ %s\n' "$*"; }
showq() { printf '   $'; printf ' %q' "$@"; printf '\n'; }
indent() { sed 's/^/   | /'; }
result() {  # result OK|FAIL|SKIP|EXPECTED TEXT
  local colour=$G
  case "$1" in FAIL) colour=$R; FAILED=1 ;; SKIP | EXPECTED) colour=$Y ;; esac
  printf '   %s%-8s%s %s\n' "$colour" "$1" "$N" "$2"
  RESULTS+=("$(printf '%-8s %s' "$1" "$2")")
}
die() { printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the lab creates a network namespace and starts daemons)"
[ -n "${KCD_DEMO_BIN:-}" ] || command -v cargo >/dev/null || die "cargo is missing: install a Rust toolchain (1.80 or newer) first"

step "1/7 Packages"
scripts/install-deps.sh || die "installing packages failed (log: /tmp/kcdproxy-apt.log)"
result OK "build, test and lab packages present"

step "2/7 Lab: Samba AD DC, MIT KDC + LDAP, Kerberos backend (tests/lab/lab.sh up)"
tests/lab/lab.sh up >/dev/null || die "the lab did not come up (the message above names the daemon and its log)"
set -a
# shellcheck source=/dev/null
. "${KCD_LAB_DIR:-/tmp/kcdproxy-lab}/lab.env"
set +a
result OK "lab up: realm $KCD_LAB_AD_REALM (DC $KCD_LAB_DC_ADDR), realm $KCD_LAB_MIT_REALM, backend $KCD_LAB_BACKEND_HTTP (TLS $KCD_LAB_BACKEND_HTTPS)"
DEMO=$(mktemp -d "$KCD_LAB_DIR/demo.XXXXXX")
PROXY_PID=
cleanup() {
  if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PROXY_PID" 2>/dev/null || true
  fi
  rm -rf "$DEMO"
}
trap cleanup EXIT

step "3/7 Build kcdproxy (cargo build --release)"
if [ -n "${KCD_DEMO_BIN:-}" ]; then
  BIN=$KCD_DEMO_BIN
  [ -x "$BIN" ] || die "KCD_DEMO_BIN=$BIN is not executable"
  result OK "using KCD_DEMO_BIN=$BIN (not built)"
else
  show cargo build --release
  tb=$(date +%s)
  if ! cargo build --release >"$DEMO/build.log" 2>&1; then
    tail -n 30 "$DEMO/build.log" | indent
    die "cargo build --release failed"
  fi
  tail -n 2 "$DEMO/build.log" | indent
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/kcdproxy
  [ -x "$BIN" ] || die "no binary at $BIN"
  result OK "built $BIN in $(($(date +%s) - tb)) s"
fi

step "4/7 Start kcdproxy with TLS in front of the backend"
LISTEN=${KCD_DEMO_LISTEN:-127.0.0.1:8443}
PORT=${LISTEN##*:}
if [ -n "$(ss -Hltn "sport = :$PORT")" ]; then
  for PORT in $(seq 18443 18543); do [ -z "$(ss -Hltn "sport = :$PORT")" ] && break; done
  echo "   ${LISTEN} is taken; using 127.0.0.1:$PORT"
  LISTEN=127.0.0.1:$PORT
fi
# Clients: Kerberos (Negotiate) accepted with the proxy's keytab; NTLM and Basic checked by the
# DC through winbind (ntlm_auth). Backend: constrained delegation as svc-proxy to the backend's
# SPN. Identities are mapped to the AD realm (and shown to /public in X-Kcd-User).
AUTH_FLAGS=(--keytab "$KCD_LAB_AD_PROXY_KEYTAB" --kerberos-login "$KCD_LAB_AD_PROXY_PRINCIPAL"
  --winbind-command "$KCD_LAB_NTLM_AUTH" --realm "$KCD_LAB_AD_REALM"
  --domain-realm "$KCD_LAB_AD_DOMAIN=$KCD_LAB_AD_REALM" --identity-header X-Kcd-User)
read -r -a EXTRA <<<"${KCD_DEMO_EXTRA_FLAGS:-}"
PROXY_CMD=("$BIN" --listen-tls "$LISTEN" --tls-cert "$KCD_LAB_PROXY_CERT" --tls-key "$KCD_LAB_PROXY_KEY"
  --route "/=$KCD_LAB_BACKEND_HTTP_URL;auth=negotiate,ntlm,basic;spn=$KCD_LAB_BACKEND_SPN"
  --route "/public=$KCD_LAB_BACKEND_HTTP_URL"
  --route "/public/echo/secure=$KCD_LAB_BACKEND_HTTP_URL;auth=negotiate,ntlm"
  --access-log "$KCD_LAB_LOG_DIR/kcdproxy-access.log"
  ${AUTH_FLAGS[@]+"${AUTH_FLAGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})
showq "${PROXY_CMD[@]}"
env KRB5_CONFIG="$KRB5_CONFIG" KRB5RCACHEDIR="$KRB5RCACHEDIR" "${PROXY_CMD[@]}" \
  >"$KCD_LAB_LOG_DIR/kcdproxy-demo.log" 2>&1 </dev/null &
PROXY_PID=$!
PROXY_UP=0
for _ in $(seq 100); do
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then break; fi
  if timeout 1 bash -c "exec 3<>/dev/tcp/${LISTEN%:*}/$PORT" 2>/dev/null; then PROXY_UP=1; break; fi
  sleep 0.1
done
if [ "$PROXY_UP" = 1 ]; then
  result OK "kcdproxy (pid $PROXY_PID) listening on https://$KCD_LAB_PROXY_HOST:$PORT"
else
  rc=0
  wait "$PROXY_PID" || rc=$?
  PROXY_PID=
  indent <"$KCD_LAB_LOG_DIR/kcdproxy-demo.log"
  if [ "$rc" = 0 ]; then
    result SKIP "kcdproxy accepted the flags and exited: this build has no proxy core yet (step 7 skipped)"
  else
    result FAIL "kcdproxy exited with status $rc (log above: $KCD_LAB_LOG_DIR/kcdproxy-demo.log)"
  fi
fi

# curl names hosts (the Kerberos SPN comes from the URL's host) and resolves them to loopback.
BPORT=${KCD_LAB_BACKEND_HTTP##*:}
CURL=(curl -sS --max-time 20 --cacert "$KCD_LAB_CA" --resolve "$KCD_LAB_BACKEND_HOST:$BPORT:127.0.0.1"
  --resolve "$KCD_LAB_PROXY_HOST:$PORT:127.0.0.1")
BACKEND=http://$KCD_LAB_BACKEND_HOST:$BPORT
PROXY=https://$KCD_LAB_PROXY_HOST:$PORT
ALICE_AT=$KCD_LAB_ALICE@$KCD_LAB_AD_REALM

# demo_curl WANT DESCRIPTION CURL-ARGS...: runs curl, shows the status and the body (for a 401,
# the challenges instead of Apache's HTML), checks WANT as a line of the body.
demo_curl() {
  local want=$1 what=$2 out code
  shift 2
  showq curl "$@"
  out=$("${CURL[@]}" -D "$DEMO/headers" -w '\n%{http_code}' "$@" 2>&1) || true
  code=$(tail -n 1 <<<"$out")
  out=$(sed '$d' <<<"$out")
  if [ "$code" = 401 ]; then
    { echo "HTTP 401"; grep -i '^WWW-Authenticate' "$DEMO/headers" | tr -d '\r' | awk '!seen[$0]++'; } | indent
  else
    { echo "HTTP $code"; sed '/^$/d' <<<"$out"; } | indent
  fi
  if grep -qx "$want" <<<"$out"; then result OK "$what"; return 0; fi
  LAST_CODE="HTTP $code"
  return 1
}

step "5/7 curl --negotiate as alice, straight to the Kerberos-protected backend"
show "kinit $ALICE_AT   (password $KCD_LAB_ALICE_PASSWORD)"
export KRB5CCNAME=FILE:$DEMO/alice.cc
if ! out=$(printf '%s\n' "$KCD_LAB_ALICE_PASSWORD" | kinit "$ALICE_AT" 2>&1); then
  indent <<<"$out"
  result FAIL "kinit $ALICE_AT failed"
fi
demo_curl "authenticated as $ALICE_AT" "the backend authenticated alice with her own Kerberos ticket" \
  --negotiate -u : --data-binary 'hello from the demo' "$BACKEND/echo/demo" \
  || result FAIL "backend did not answer 'authenticated as $ALICE_AT'"

step "6/7 Constrained delegation by hand: what kcdproxy does for a user it authenticated"
show "kinit -k -t $KCD_LAB_AD_PROXY_KEYTAB $KCD_LAB_AD_PROXY_PRINCIPAL"
PROXY_CC=FILE:$DEMO/proxy.cc
out=$(KRB5CCNAME=$PROXY_CC kinit -k -t "$KCD_LAB_AD_PROXY_KEYTAB" "$KCD_LAB_AD_PROXY_PRINCIPAL" 2>&1) \
  || { indent <<<"$out"; result FAIL "the proxy's service account could not log in from its keytab"; }
show "kvno -U $KCD_LAB_ALICE -P --out-cache $DEMO/alice-delegated.cc $KCD_LAB_BACKEND_SPN   # S4U2Self + S4U2Proxy"
rc=0
out=$(KRB5CCNAME=$PROXY_CC kvno -U "$KCD_LAB_ALICE" -P --out-cache "FILE:$DEMO/alice-delegated.cc" \
  "$KCD_LAB_BACKEND_SPN@$KCD_LAB_AD_REALM" 2>&1) || rc=$?
indent <<<"$out"
if [ "$rc" = 0 ]; then
  KRB5CCNAME=FILE:$DEMO/alice-delegated.cc demo_curl "authenticated as $ALICE_AT" \
    "the backend accepted the ticket the proxy account obtained for alice (no password of hers used)" \
    --negotiate -u : "$BACKEND/echo/delegated" \
    || result FAIL "the backend refused the delegated ticket"
else
  result FAIL "the KDC refused S4U2Self/S4U2Proxy for alice"
fi
show "kvno -U $KCD_LAB_BOB -P $KCD_LAB_BACKEND_SPN   # bob is sensitive: must be refused"
rc=0
out=$(KRB5CCNAME=$PROXY_CC kvno -U "$KCD_LAB_BOB" -P "$KCD_LAB_BACKEND_SPN@$KCD_LAB_AD_REALM" 2>&1) || rc=$?
indent <<<"$out"
if [ "$rc" != 0 ] && grep -qF "KDC can't fulfill requested option" <<<"$out"; then
  result OK "delegation for bob (account is sensitive) refused, as AD does"
else
  result FAIL "delegation for bob was not refused as constrained delegation (exit $rc)"
fi

step "7/7 Through kcdproxy (TLS, lab CA)"
if [ "$PROXY_UP" = 1 ]; then
  demo_curl "not authenticated" "kcdproxy forwarded to the backend's unprotected /public/ echo" \
    --data-binary 'through the proxy' "$PROXY/public/echo/demo" \
    || result FAIL "no answer from the backend's /public/ echo through kcdproxy"
  echo
  echo "   NTLM at the proxy: alice authenticates to kcdproxy, which passes her identity on:"
  demo_curl "x_kcd_user=$ALICE_AT" "kcdproxy authenticated EXAMPLE\\alice (NTLMv2) and mapped her to $ALICE_AT" \
    --ntlm -u "$KCD_LAB_AD_DOMAIN\\$KCD_LAB_ALICE:$KCD_LAB_ALICE_PASSWORD" --data-binary 'ntlm body' \
    "$PROXY/public/echo/secure" \
    || result FAIL "NTLM authentication of alice at kcdproxy failed"
  LAST_CODE=
  if demo_curl "x_kcd_user=$ALICE_AT" "a wrong password must not authenticate" \
    --ntlm -u "$KCD_LAB_AD_DOMAIN\\$KCD_LAB_ALICE:wrong-$KCD_LAB_ALICE_PASSWORD" "$PROXY/public/echo/secure"; then
    result FAIL "kcdproxy accepted a wrong password"
  else
    result OK "wrong password refused by kcdproxy (${LAST_CODE:-no answer})"
  fi
  echo
  echo "   The Kerberos-only /echo as alice through kcdproxy (constrained delegation):"
  demo_curl "authenticated as $ALICE_AT" "NTLM at the proxy (checked by the DC), Kerberos to the backend as alice" \
    --ntlm -u "$KCD_LAB_AD_DOMAIN\\$KCD_LAB_ALICE:$KCD_LAB_ALICE_PASSWORD" --data-binary 'ntlm, delegated' \
    "$PROXY/echo/through-proxy-ntlm" \
    || result FAIL "alice (NTLM) did not reach the Kerberos backend as herself through kcdproxy"
  demo_curl "authenticated as $ALICE_AT" "Kerberos at the proxy (curl --negotiate), Kerberos to the backend as alice" \
    --negotiate -u : "$PROXY/echo/through-proxy-kerberos" \
    || result FAIL "alice (Kerberos) did not reach the Kerberos backend as herself through kcdproxy"
  demo_curl "authenticated as $ALICE_AT" "Basic at the proxy (checked by the DC), Kerberos to the backend as alice" \
    -u "$KCD_LAB_ALICE:$KCD_LAB_ALICE_PASSWORD" "$PROXY/echo/through-proxy-basic" \
    || result FAIL "alice (Basic) did not reach the Kerberos backend as herself through kcdproxy"
  LAST_CODE=
  if demo_curl "authenticated as $KCD_LAB_BOB@$KCD_LAB_AD_REALM" "bob is sensitive: kcdproxy must not reach the backend as him" \
    -u "$KCD_LAB_BOB:$KCD_LAB_BOB_PASSWORD" "$PROXY/echo/through-proxy-bob"; then
    result FAIL "kcdproxy delegated for a sensitive account"
  elif [ "$LAST_CODE" = "HTTP 403" ]; then
    result OK "bob refused with 403 (the KDC would not delegate him; the reason is in the access log)"
  else
    result FAIL "bob got ${LAST_CODE:-no answer}, expected 403"
  fi
  echo
  echo "   kcdproxy's access log (scheme, user, mapped principal, SPN, ticket cache, KDC time):"
  sleep 0.4
  grep -E 'through-proxy' "$KCD_LAB_LOG_DIR/kcdproxy-access.log" | tail -n 4 | indent
else
  result SKIP "kcdproxy is not running (step 4): nothing to send through it yet"
fi

step "Summary ($(($(date +%s) - T0)) s)"
printf '   %s\n' "${RESULTS[@]}"
echo
echo "   kcdproxy stopped. The lab stays up: tests/lab/lab.sh status | env | down"
[ "$FAILED" = 0 ] || { echo "   ${R}demo: a step that should work failed${N}"; exit 1; }
