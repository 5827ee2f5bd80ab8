#!/usr/bin/env bash
# Lab self-check: proves the lab does what kcdproxy's tests will rely on, against both KDC
# families, with the system's own tools (MIT kvno/kinit, curl, Samba's ntlm_auth).
#
#   tests/lab/selfcheck.sh            (the lab must be up: tests/lab/lab.sh up)
#
# Each check prints PASS or FAIL with the reason and its duration; the exit status is non-zero
# when any check failed (and the lab is marked failed, so `lab.sh down` keeps its logs).
# Refusals must be the KDC's constrained-delegation refusal (KDC_ERR_BADOPTION), not any error:
# a dead KDC does not pass a negative check.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
[ -s "$LAB_ENV" ] || die "selfcheck: the lab is not up ($LAB_ENV missing): run tests/lab/lab.sh up"
set -a
# shellcheck source=/dev/null
. "$LAB_ENV"
set +a

WORK=$(mktemp -d "$LAB_DIR/selfcheck.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=()
REASON=
T_START=$(date +%s.%N)
BACKEND_HTTP_PORT=${KCD_LAB_BACKEND_HTTP##*:}
BACKEND_HTTPS_PORT=${KCD_LAB_BACKEND_HTTPS##*:}
# curl derives the SPN from the URL's host: name the backend, resolve it to loopback.
BACKEND_HTTP=http://$KCD_LAB_BACKEND_HOST:$BACKEND_HTTP_PORT
BACKEND_HTTPS=https://$KCD_LAB_BACKEND_HOST:$BACKEND_HTTPS_PORT
CURL=(curl -sS --max-time 20 --resolve "$KCD_LAB_BACKEND_HOST:$BACKEND_HTTP_PORT:127.0.0.1"
  --resolve "$KCD_LAB_BACKEND_HOST:$BACKEND_HTTPS_PORT:127.0.0.1" --cacert "$KCD_LAB_CA")
BADOPTION="KDC can't fulfill requested option"

# check NAME FUNCTION ARGS...: FUNCTION returns 0 (pass) or sets REASON and returns 1.
check() {
  local name=$1 t0 dt
  shift
  REASON=
  t0=$(date +%s.%N)
  if "$@"; then
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    printf 'PASS  %-52s (%s s)\n' "$name" "$dt"
    PASSED=$((PASSED + 1))
  else
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    printf 'FAIL  %-52s (%s s): %s\n' "$name" "$dt" "${REASON:-no reason recorded}"
    FAILED+=("$name")
  fi
}

# run CMD...: runs CMD bounded by 30 s; its stdout+stderr in $OUT.
run() {
  local rc=0
  OUT=$(timeout 30 "$@" 2>&1) || rc=$?
  [ "$rc" = 124 ] && OUT="timed out after 30 s: $*"
  return "$rc"
}

oneline() { tr '\n' ' ' <<<"$1" | sed 's/  */ /g; s/ $//' | cut -c1-300; }

# --- Kerberos -----------------------------------------------------------------------------------

# kinit_keytab CCACHE KEYTAB PRINCIPAL
kinit_keytab() {
  run env KRB5CCNAME="FILE:$1" kinit -k -t "$2" "$3" && return 0
  REASON="kinit -k $3 from $2: $(oneline "$OUT")"
  return 1
}

# kinit_password CCACHE PRINCIPAL PASSWORD
kinit_password() {
  OUT=$(printf '%s\n' "$3" | KRB5CCNAME="FILE:$1" timeout 30 kinit "$2" 2>&1) && return 0
  REASON="kinit $2 with its password: $(oneline "$OUT")"
  return 1
}

# keytab_ok CCACHE KEYTAB SPN@REALM: AES keys only, and the KDC's ticket for SPN decrypts with it.
keytab_ok() {
  run klist -ke "$2" || { REASON="klist -ke $2: $(oneline "$OUT")"; return 1; }
  if grep -qiE 'arcfour|des-|des3' <<<"$OUT"; then
    REASON="$2 holds non-AES keys: $(oneline "$(grep -iE 'arcfour|des' <<<"$OUT")")"
    return 1
  fi
  grep -q "$3" <<<"$OUT" || { REASON="$2 has no key for $3"; return 1; }
  run env KRB5CCNAME="FILE:$1" kvno -k "$2" "$3" || { REASON="kvno -k $2 $3: $(oneline "$OUT")"; return 1; }
  grep -q 'keytab entry valid' <<<"$OUT" || { REASON="kvno -k: $(oneline "$OUT")"; return 1; }
}

# s4u_ok CCACHE USER SPN@REALM OUT_CCACHE [KRB5_CONFIG]: S4U2Self + S4U2Proxy succeed and yield
# an AES ticket to SPN for USER.
s4u_ok() {
  run env KRB5CCNAME="FILE:$1" KRB5_CONFIG="${5:-$KRB5_CONFIG}" kvno -U "$2" -P --out-cache "FILE:$4" "$3" \
    || { REASON="kvno -U $2 -P $3 exited non-zero: $(oneline "$OUT")"; return 1; }
  run klist -e -c "FILE:$4" || { REASON="klist $4: $(oneline "$OUT")"; return 1; }
  grep -q "Default principal: $2@" <<<"$OUT" || { REASON="delegated ccache is not $2's: $(oneline "$OUT")"; return 1; }
  grep -q "$3" <<<"$OUT" || { REASON="no ticket for $3 in the delegated ccache: $(oneline "$OUT")"; return 1; }
  grep -q 'aes256-cts-hmac-sha1-96' <<<"$OUT" || { REASON="delegated ticket not AES256: $(oneline "$OUT")"; return 1; }
}

# s4u_refused CCACHE USER SPN@REALM [KRB5_CONFIG]: the KDC refuses the delegation (BADOPTION).
s4u_refused() {
  if run env KRB5CCNAME="FILE:$1" KRB5_CONFIG="${4:-$KRB5_CONFIG}" kvno -U "$2" -P "$3"; then
    REASON="delegation of $2 to $3 was ALLOWED (kvno exit 0): $(oneline "$OUT")"
    return 1
  fi
  grep -qF "$BADOPTION" <<<"$OUT" && return 0
  REASON="refused, but not as constrained delegation (want '$BADOPTION'): $(oneline "$OUT")"
  return 1
}

# --- HTTP ---------------------------------------------------------------------------------------

# negotiate_echo CCACHE URL WANT_PRINCIPAL: curl --negotiate POSTs a body; the backend must name
# the principal and report the body's exact length and SHA-256.
negotiate_echo() {
  local body=$WORK/body want_sum
  head -c 70001 /dev/urandom >"$body"
  want_sum=$(sha256sum "$body" | cut -d' ' -f1)
  run env KRB5CCNAME="FILE:$1" "${CURL[@]}" --negotiate -u : -X POST --data-binary "@$body" \
    -D "$WORK/headers" -w '%{http_code}\n' "$2" || { REASON="curl $2: $(oneline "$OUT")"; return 1; }
  local code
  code=$(tail -n 1 <<<"$OUT")
  if [ "$code" != 200 ]; then
    REASON="HTTP $code from $2 ($(oneline "$(grep -i '^WWW-Authenticate' "$WORK/headers" | tr -d '\r' | cut -c1-60)"))"
    return 1
  fi
  grep -qx "authenticated as $3" <<<"$OUT" || { REASON="backend said: $(oneline "$OUT")"; return 1; }
  if ! grep -qx "method=POST" <<<"$OUT" || ! grep -qx "body_length=70001" <<<"$OUT" \
    || ! grep -qx "body_sha256=$want_sum" <<<"$OUT"; then
    REASON="echo mismatch: $(oneline "$OUT")"
    return 1
  fi
  grep -qi "^X-Remote-User: $3" "$WORK/headers" || { REASON="no X-Remote-User: $3 header"; return 1; }
}

# negotiate_whoami CCACHE URL WANT_PRINCIPAL: the cheap protected resource.
negotiate_whoami() {
  run env KRB5CCNAME="FILE:$1" "${CURL[@]}" --negotiate -u : -D "$WORK/headers" -o /dev/null \
    -w '%{http_code}' "$2" || { REASON="curl $2: $(oneline "$OUT")"; return 1; }
  [ "$OUT" = 200 ] || { REASON="status $OUT from $2"; return 1; }
  grep -qi "^X-Remote-User: $3" "$WORK/headers" \
    || { REASON="X-Remote-User is not $3: $(oneline "$(grep -i x-remote "$WORK/headers")")"; return 1; }
}

requires_negotiate() {
  run "${CURL[@]}" -o /dev/null -D "$WORK/headers" -w '%{http_code}' "$1" || { REASON="curl $1: $(oneline "$OUT")"; return 1; }
  [ "$OUT" = 401 ] || { REASON="want 401 without credentials, got $OUT"; return 1; }
  grep -qi '^WWW-Authenticate: Negotiate' "$WORK/headers" || { REASON="401 without 'WWW-Authenticate: Negotiate'"; return 1; }
}

public_echo() {
  run "${CURL[@]}" -X POST --data-binary 'hello' "$1" || { REASON="curl $1: $(oneline "$OUT")"; return 1; }
  if ! grep -qx 'not authenticated' <<<"$OUT" || ! grep -qx 'body_length=5' <<<"$OUT"; then
    REASON="backend said: $(oneline "$OUT")"
    return 1
  fi
}

# --- NTLM ---------------------------------------------------------------------------------------

ntlm() {  # ntlm USER PASSWORD: through the DC's winbindd, the way kcdproxy will validate
  run "$PY" "$LAB_SRC/ntlm_check.py" winbind "$1" "$KCD_LAB_AD_DOMAIN" "$2" "$KCD_LAB_DC_NETBIOS" -- "$KCD_LAB_NTLM_AUTH"
}
ntlm_ok() { ntlm "$1" "$2" && return 0; REASON=$(oneline "$OUT"); return 1; }
ntlm_refused() {
  local rc=0
  ntlm "$1" "$2" || rc=$?
  [ "$rc" = 1 ] && return 0
  REASON="want a refusal (exit 1), got exit $rc: $(oneline "$OUT")"
  return 1
}

nt_hash_file_ok() {
  local user pw want got
  for user in "$KCD_LAB_ALICE:$KCD_LAB_ALICE_PASSWORD" "$KCD_LAB_BOB:$KCD_LAB_BOB_PASSWORD"; do
    pw=${user#*:}
    user=${user%%:*}
    want=$("$PY" "$LAB_SRC/ntlm_check.py" nthash "$pw")
    got=$(awk -F: -v u="$user" '$1 == u {print $2}' "$KCD_LAB_NT_HASH_FILE")
    [ "$want" = "$got" ] || { REASON="$user: file has '${got:-nothing}', MD4(UTF-16LE(password)) is $want"; return 1; }
  done
}

# --- the checks ---------------------------------------------------------------------------------

AD=$KCD_LAB_AD_REALM
MIT=$KCD_LAB_MIT_REALM
AD_PROXY_CC=$WORK/ad-proxy.cc
MIT_PROXY_CC=$WORK/mit-proxy.cc

# Daemons first: a dead one is named with its log instead of surfacing as a dozen odd failures.
daemons_up() {
  local status
  status=$("$LAB_SRC/lab.sh" status 2>&1) && return 0
  REASON="$(oneline "$(grep -E 'DOWN|missing' <<<"$status")")"
  grep -oE 'log [^ )]+' <<<"$status" | while read -r _ f; do grep -q "$f" <<<"$REASON" && tail_log "$f"; done
  return 1
}
echo "== daemons"
check "lab: every daemon running" daemons_up

echo "== $AD (Samba AD DC at $KCD_LAB_AD_KDC)"
check "ad: proxy kinit from keytab" kinit_keytab "$AD_PROXY_CC" "$KCD_LAB_AD_PROXY_KEYTAB" "$KCD_LAB_AD_PROXY_PRINCIPAL"
check "ad: proxy keytab AES-only, valid for its SPN" keytab_ok "$AD_PROXY_CC" "$KCD_LAB_AD_PROXY_KEYTAB" "$KCD_LAB_PROXY_SPN@$AD"
check "ad: backend keytab AES-only, valid" keytab_ok "$AD_PROXY_CC" "$KCD_LAB_AD_BACKEND_KEYTAB" "$KCD_LAB_BACKEND_SPN@$AD"
check "ad: S4U2Self+S4U2Proxy alice -> backend" s4u_ok "$AD_PROXY_CC" "$KCD_LAB_ALICE" "$KCD_LAB_BACKEND_SPN@$AD" "$WORK/ad-alice-deleg.cc"
check "ad: delegated ticket accepted by backend" negotiate_echo "$WORK/ad-alice-deleg.cc" "$BACKEND_HTTP/echo/delegated" "$KCD_LAB_ALICE@$AD"
check "ad: delegating bob (sensitive) refused" s4u_refused "$AD_PROXY_CC" "$KCD_LAB_BOB" "$KCD_LAB_BACKEND_SPN@$AD"
check "ad: delegating to $KCD_LAB_NONDELEGABLE_SPN refused" s4u_refused "$AD_PROXY_CC" "$KCD_LAB_ALICE" "$KCD_LAB_NONDELEGABLE_SPN@$AD"
check "ad: alice kinit with password" kinit_password "$WORK/ad-alice.cc" "$KCD_LAB_ALICE@$AD" "$KCD_LAB_ALICE_PASSWORD"
check "ad: curl --negotiate alice -> backend /echo" negotiate_echo "$WORK/ad-alice.cc" "$BACKEND_HTTP/echo/x" "$KCD_LAB_ALICE@$AD"
check "ad: curl --negotiate alice -> backend https" negotiate_whoami "$WORK/ad-alice.cc" "$BACKEND_HTTPS/whoami" "$KCD_LAB_ALICE@$AD"
check "ad: NTLMv2 alice through winbindd" ntlm_ok "$KCD_LAB_ALICE" "$KCD_LAB_ALICE_PASSWORD"
check "ad: NTLMv2 wrong password refused" ntlm_refused "$KCD_LAB_ALICE" "Not-$KCD_LAB_ALICE_PASSWORD"
check "ad: NT-hash file matches the passwords" nt_hash_file_ok

echo "== $MIT (MIT krb5kdc + LDAP at $KCD_LAB_MIT_KDC)"
check "mit: proxy kinit from keytab" kinit_keytab "$MIT_PROXY_CC" "$KCD_LAB_MIT_PROXY_KEYTAB" "$KCD_LAB_MIT_PROXY_PRINCIPAL"
check "mit: proxy keytab AES-only, valid for its SPN" keytab_ok "$MIT_PROXY_CC" "$KCD_LAB_MIT_PROXY_KEYTAB" "$KCD_LAB_PROXY_SPN@$MIT"
check "mit: S4U2Self+S4U2Proxy alice -> backend" s4u_ok "$MIT_PROXY_CC" "$KCD_LAB_ALICE" "$KCD_LAB_BACKEND_SPN@$MIT" "$WORK/mit-alice-deleg.cc" "$KCD_LAB_MIT_KRB5_CONFIG"
check "mit: delegated ticket accepted by backend" negotiate_echo "$WORK/mit-alice-deleg.cc" "$BACKEND_HTTP/echo/delegated" "$KCD_LAB_ALICE@$MIT"
check "mit: delegating bob (no forwardable) refused" s4u_refused "$MIT_PROXY_CC" "$KCD_LAB_BOB" "$KCD_LAB_BACKEND_SPN@$MIT" "$KCD_LAB_MIT_KRB5_CONFIG"
check "mit: delegating to $KCD_LAB_NONDELEGABLE_SPN refused" s4u_refused "$MIT_PROXY_CC" "$KCD_LAB_ALICE" "$KCD_LAB_NONDELEGABLE_SPN@$MIT" "$KCD_LAB_MIT_KRB5_CONFIG"
check "mit: alice kinit with password" kinit_password "$WORK/mit-alice.cc" "$KCD_LAB_ALICE@$MIT" "$KCD_LAB_ALICE_PASSWORD"
check "mit: curl --negotiate alice -> backend /echo" negotiate_echo "$WORK/mit-alice.cc" "$BACKEND_HTTP/echo/x" "$KCD_LAB_ALICE@$MIT"

echo "== backend (127.0.0.1:$BACKEND_HTTP_PORT, TLS :$BACKEND_HTTPS_PORT)"
check "backend: /echo without credentials -> 401" requires_negotiate "$BACKEND_HTTP/echo/x"
check "backend: /whoami over TLS without credentials -> 401" requires_negotiate "$BACKEND_HTTPS/whoami"
check "backend: /public/echo open" public_echo "$BACKEND_HTTP/public/echo/x"

total=$(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "selfcheck: ${#FAILED[@]} FAILED, $PASSED passed (${total} s); logs in $KCD_LAB_LOG_DIR"
  printf 'selfcheck failed at %s: %s\n' "$(date -Is)" "$(IFS=,; echo "${FAILED[*]}")" >"$LAB_DIR/FAILED"
  exit 1
fi
echo "selfcheck: all $PASSED checks passed (${total} s)"
