#!/usr/bin/env bash
# perf/deleg.sh (also: perf/run.sh --scenario deleg): delegated traffic against the test lab.
#
# Three targets, same run, same lab backend (tests/lab: Samba AD EXAMPLE.TEST + Apache
# mod_auth_gssapi), loaded in turn:
#   kcdproxy-plain  kcdproxy without auth or delegation → backend /public/hello.txt (the ceiling)
#   kcdproxy-kcd    kcdproxy: Basic checked against an NT-hash file, KCD (S4U2Self + S4U2Proxy)
#                   to HTTP/backend.example.test → backend /whoami (Negotiate, 3-byte body)
#   kcdproxy-kcd-ntlm  the same with NTLM (a handshake per client connection) instead of Basic
#   apache-gw       Apache + mod_auth_gssapi (GssapiBasicAuth, GssapiUseS4U2Proxy) and a mod_wsgi
#                   app that calls /whoami with the delegated ccache, reusing a backend connection
#                   per user: the competitor
# Scenarios: deleg-keepalive (keep-alive connections) and deleg-newconn (a new connection every
# --per-conn requests), each with many distinct load users (created in the lab's AD by this
# script, idempotently). Then cold users: the first request of never-seen users through the
# delegating targets against their second request, and the KDC's own S4U time for them.
#
# Needs the lab up (tests/lab/lab.sh up; this script never brings it down) and root. Every load
# run is bounded in time; on exit every process this script started is killed by PID and its temp
# dir removed. See perf/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: perf/deleg.sh [options]        (or perf/run.sh --scenario deleg [options])
  --quick            smoke run: 0.5 s + 2 s windows, 16 connections, 50 users, 5 cold users
  --no-build         use the binaries already built (no apt, no cargo)
  --duration S       measured seconds per run             (env PERF_DURATION, default 5)
  --warmup S         warm-up seconds before each window   (env PERF_WARMUP,   default 1)
  --rounds N         alternations per scenario; the median round is shown (env PERF_ROUNDS, 1)
  --conns LIST       connection counts, e.g. "16 64"      (env PERF_CONNS, default 16)
  --scenarios LIST   of: keepalive newconn                (env PERF_DELEG_SCENARIOS)
  --targets LIST     of: kcdproxy-plain kcdproxy-kcd kcdproxy-kcd-ntlm apache-gw (env PERF_TARGETS)
  --users N          load users perfload001… (env PERF_USERS, default 100)
  --per-conn N       requests per connection in deleg-newconn (env PERF_PER_CONN, default 1)
  --cold N           never-seen users timed one by one (env PERF_COLD_USERS, default 20; 0 skips)
  --no-identity-check  skip the pass before the load that sends each load user once through each
                     delegating target (warm-up) and checks who the backend saw
  --delete-users     remove the perfload*/perfcold* users from the lab's AD and exit
env: PROXY_CPU (0), LOAD_CPU (1), KCDPROXY_BIN, CARGO_TARGET_DIR, KCDPROXY_START_TIMEOUT (5 s),
     KCD_LAB_DIR (the lab's state directory), PERF_GW_KRB5_TRACE (a file www-data may write:
     MIT krb5 trace of the Apache gateway, to count its KDC exchanges)
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${PERF_DURATION:-5}
WARMUP=${PERF_WARMUP:-1}
ROUNDS=${PERF_ROUNDS:-1}
CONNS=${PERF_CONNS:-16}
SCENARIOS=${PERF_DELEG_SCENARIOS:-"keepalive newconn"}
TARGETS=${PERF_TARGETS:-"kcdproxy-plain kcdproxy-kcd kcdproxy-kcd-ntlm apache-gw"}
USERS=${PERF_USERS:-100}
PER_CONN=${PERF_PER_CONN:-1}
COLD=${PERF_COLD_USERS:-20}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
START_TIMEOUT=${KCDPROXY_START_TIMEOUT:-5}
BUILD=1
QUICK=0
DELETE_USERS=0
IDENTITY_CHECK=1
LOAD_PREFIX=perfload
COLD_PREFIX=perfcold

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=${PERF_DURATION:-2}; WARMUP=${PERF_WARMUP:-0.5}
             CONNS=${PERF_CONNS:-16}; USERS=${PERF_USERS:-50}; COLD=${PERF_COLD_USERS:-5} ;;
    --no-build) BUILD=0 ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --users) USERS=$2; shift ;;
    --per-conn) PER_CONN=$2; shift ;;
    --cold) COLD=$2; shift ;;
    --delete-users) DELETE_USERS=1 ;;
    --no-identity-check) IDENTITY_CHECK=0 ;;
    --scenario) [ "$2" = deleg ] || { echo "deleg.sh: --scenario $2: only 'deleg' is here" >&2; exit 2; }; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "deleg.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[perf-deleg %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
check_list() { # NAME ALLOWED VALUES...
  local name=$1 allowed=" $2 " v; shift 2
  for v in "$@"; do
    case "$allowed" in *" $v "*) ;; *) echo "deleg.sh: $name: unknown '$v' (allowed:$allowed)" >&2; exit 2 ;; esac
  done
}
check_list --scenarios "keepalive newconn" $SCENARIOS
check_list --targets "kcdproxy-plain kcdproxy-kcd kcdproxy-kcd-ntlm apache-gw" $TARGETS
for v in $CONNS $ROUNDS $USERS $PER_CONN $COLD; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "deleg.sh: '$v' is not a whole number" >&2; exit 2; }
done
if [ "$USERS" -lt 1 ] || [ "$USERS" -gt 999 ] || [ "$COLD" -gt 999 ] || [ "$PER_CONN" -lt 1 ]; then
  echo "deleg.sh: --users must be 1..999, --cold at most 999, --per-conn at least 1" >&2; exit 2
fi

# ---- the lab -------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deleg.sh: needs root (the lab, the AD database, Apache as www-data)" >&2; exit 1; }
if ! LAB_ENV_TEXT=$("$ROOT/tests/lab/lab.sh" env 2>/dev/null); then
  echo "deleg.sh: the test lab is not up: run tests/lab/lab.sh up first" >&2
  exit 1
fi
# shellcheck disable=SC1090 # lab.env is generated by the lab
. <(printf '%s\n' "$LAB_ENV_TEXT")
"$ROOT/tests/lab/lab.sh" status >/dev/null 2>&1 \
  || { "$ROOT/tests/lab/lab.sh" status >&2 || true; echo "deleg.sh: a lab daemon is down" >&2; exit 1; }
export KRB5_CONFIG
PY=/usr/bin/python3   # samba's bindings and python3-gssapi live with Debian's interpreter

if [ "$DELETE_USERS" = 1 ]; then
  for p in $LOAD_PREFIX $COLD_PREFIX; do
    printf '%s: ' "$p"; "$PY" "$ROOT/perf/deleg_users.py" delete "$KCD_LAB_SMB_CONF" "$p"
  done
  exit 0
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
KCDPROXY_BIN=${KCDPROXY_BIN:-$TARGET_DIR/release/kcdproxy}
KCDLOAD=$TARGET_DIR/release/kcdload
RESULTS=$ROOT/perf/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)-deleg
RAW=$RESULTS/$STAMP.jsonl
TMP=$(mktemp -d /tmp/kcdperf-deleg.XXXXXX)
# Apache's workers run as www-data and must reach the gateway's files below.
chmod 755 "$TMP"

# ---- cleanup: every process this script started, by PID, then the temp dir -------------------
# Every server is a direct child of this shell; a PID is signalled only while its parent is still
# this shell, so a reaped and reused PID is never hit.
PIDS=()
ours() { # PID: a live (not zombie) child of this shell
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  set -- $s
  [ "$2" = "$$" ] && [ "$1" != Z ]
}
signal_ours() { local pid; for pid in "${PIDS[@]}"; do ours "$pid" && kill "-$1" "$pid" 2>/dev/null; done; return 0; }
cleanup() {
  local rc=$? pid alive
  trap - EXIT INT TERM
  signal_ours TERM
  for _ in $(seq 50); do
    alive=0
    for pid in "${PIDS[@]}"; do ours "$pid" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  signal_ours KILL
  wait 2>/dev/null || true
  # Apache's children leave with their master; give them a moment before the files go.
  sleep 0.5
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- dependencies and builds ------------------------------------------------------------------
KCD_STATE=ok
if [ "$BUILD" = 1 ]; then
  bash "$ROOT/scripts/install-deps.sh" apache2 libapache2-mod-auth-gssapi libapache2-mod-wsgi-py3 \
    python3-gssapi krb5-user
  log "building kcdproxy (release)"
  if ! (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q); then
    log "kcdproxy build FAILED: its rows will say 'not built'"
    KCD_STATE="not built"
  fi
  log "building kcdload (release)"
  (cd "$ROOT/perf/loadgen" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q)
fi
for tool in apache2 kinit curl taskset ss python3; do
  command -v "$tool" >/dev/null || { echo "deleg.sh: $tool not found" >&2; exit 1; }
done
[ -x "$KCDLOAD" ] || { echo "deleg.sh: $KCDLOAD missing (run without --no-build)" >&2; exit 1; }
[ -x "$KCDPROXY_BIN" ] || KCD_STATE="not built"

# ---- load users -------------------------------------------------------------------------------
# The lab has only alice and bob; many distinct users are what exercises per-user caches.
# Idempotent: existing users are kept (same names, same passwords), so reruns are quick.
log "load users: $USERS × $LOAD_PREFIX…, $COLD × $COLD_PREFIX… in $KCD_LAB_AD_REALM"
HASHES=$TMP/nt-hashes
cp "$KCD_LAB_NT_HASH_FILE" "$HASHES"
"$PY" "$ROOT/perf/deleg_users.py" create "$KCD_LAB_SMB_CONF" "$LOAD_PREFIX" "$USERS" "$TMP/users" "$HASHES" >&2
if [ "$COLD" -gt 0 ]; then
  "$PY" "$ROOT/perf/deleg_users.py" create "$KCD_LAB_SMB_CONF" "$COLD_PREFIX" "$COLD" "$TMP/cold-users" "$HASHES" >&2
fi
chmod 600 "$TMP/users" "$HASHES"
FIRST_USER=$(head -1 "$TMP/users")

# ---- ports ------------------------------------------------------------------------------------
read -r P_PLAIN P_KCD P_KCDN P_GW P_KCD_M P_KCDN_M < <(
  python3 -c 'import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
BACKEND=$KCD_LAB_BACKEND_HTTP   # 127.0.0.1:PORT
declare -A PORT=([kcdproxy-plain]=$P_PLAIN [kcdproxy-kcd]=$P_KCD [kcdproxy-kcd-ntlm]=$P_KCDN [apache-gw]=$P_GW)
# The delegating kcdproxy targets serve their counters (--metrics-listen): S4U exchanges, ticket
# cache hits, KDC latency, read around every load run and every cold user's first request.
declare -A METRICS_PORT=([kcdproxy-kcd]=$P_KCD_M [kcdproxy-kcd-ntlm]=$P_KCDN_M)
declare -A PATH_OF=([kcdproxy-plain]=/public/hello.txt [kcdproxy-kcd]=/whoami [kcdproxy-kcd-ntlm]=/whoami [apache-gw]=/whoami)
# How the load authenticates (kcdload flag) and how curl does (up check, cold users).
declare -A LOAD_AUTH=([kcdproxy-plain]=--basic-users [kcdproxy-kcd]=--basic-users
  [kcdproxy-kcd-ntlm]=--ntlm-users [apache-gw]=--basic-users)
declare -A CURL_AUTH=([kcdproxy-plain]=--basic [kcdproxy-kcd]=--basic [kcdproxy-kcd-ntlm]=--ntlm
  [apache-gw]=--basic)

# ---- the Apache mod_auth_gssapi gateway -------------------------------------------------------
GW=$TMP/apache-gw
mkdir -p "$GW/run" "$GW/app" "$GW/deleg" "$GW/rcache"
install -m 644 "$ROOT/perf/deleg_gw.wsgi" "$GW/app/gw.wsgi"
install -m 640 -g www-data "$KCD_LAB_AD_PROXY_KEYTAB" "$GW/proxy.keytab"
# The proxy's own TGT up front (the Samba KDC does not take the SPN as an AS-REQ client, so the
# ccache names the account); client_keytab renews it.
KRB5CCNAME=FILE:$GW/proxy.ccache kinit -k -t "$GW/proxy.keytab" "$KCD_LAB_AD_PROXY_PRINCIPAL"
chown www-data:www-data "$GW/proxy.ccache" "$GW/deleg" "$GW/rcache" "$GW/run"
chmod 700 "$GW/deleg" "$GW/rcache"
M=/usr/lib/apache2/modules
cat > "$GW/httpd.conf" <<EOF
# Generated by perf/deleg.sh: a private instance, nothing from /etc/apache2.
ServerRoot "$GW"
ServerName $KCD_LAB_PROXY_HOST
Listen 127.0.0.1:$P_GW
PidFile $GW/run/httpd.pid
DefaultRuntimeDir $GW/run
Mutex file:$GW/run default
ErrorLog $GW/error.log
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module $M/mod_mpm_event.so
LoadModule authz_core_module $M/mod_authz_core.so
LoadModule authn_core_module $M/mod_authn_core.so
LoadModule authz_user_module $M/mod_authz_user.so
LoadModule auth_gssapi_module $M/mod_auth_gssapi.so
LoadModule env_module $M/mod_env.so
LoadModule wsgi_module $M/mod_wsgi.so
# A fixed set of processes (no spawning or reaping under load), so the CPU time summed over the
# master's children covers every request. The app runs in 4 mod_wsgi daemon processes.
StartServers 2
ServerLimit 2
ThreadsPerChild 64
MaxRequestWorkers 128
MinSpareThreads 1
MaxSpareThreads 128
KeepAliveTimeout 300
MaxKeepAliveRequests 0
WSGISocketPrefix $GW/run/wsgi
WSGIDaemonProcess gw processes=4 threads=16 display-name=kcdperf-gw
WSGIProcessGroup gw
WSGIApplicationGroup %{GLOBAL}
WSGIScriptAlias / $GW/app/gw.wsgi
<Directory />
  Require all denied
  AllowOverride None
</Directory>
<Directory $GW/app>
  Require all granted
</Directory>
<Location />
  AuthType GSSAPI
  AuthName "kcdproxy perf gateway"
  GssapiBasicAuth On
  GssapiBasicAuthMech krb5
  GssapiAllowedMech krb5
  GssapiAcceptorName HTTP@$KCD_LAB_PROXY_HOST
  GssapiCredStore keytab:$GW/proxy.keytab
  GssapiCredStore client_keytab:$GW/proxy.keytab
  GssapiCredStore ccache:FILE:$GW/proxy.ccache
  GssapiUseS4U2Proxy On
  GssapiDelegCcacheDir $GW/deleg
  Require valid-user
  SetEnv KCD_PERF_BACKEND $BACKEND
  SetEnv KCD_PERF_BACKEND_HOST $KCD_LAB_BACKEND_HOST
</Location>
EOF

# ---- starting and watching servers ------------------------------------------------------------
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
# shellcheck disable=SC2046  # the child PIDs are meant to split into words
tree_pids() { echo "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); }
cpu_ticks() {
  local t=0 p s f
  for p in "$@"; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -ra f <<< "${s##*) }"
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}
cpu_line() { awk -v c="cpu$1" '$1 == c { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }
# The lab's KDC (every process in the DC's namespace) and backend (Apache master + children):
# their CPU per request is part of what delegation costs, and is reported beside the target's.
kdc_pids() { ip netns pids "$KCD_LAB_DC_NETNS" 2>/dev/null | tr '\n' ' '; }
backend_pids() {
  local pidfile=$KCD_LAB_DIR/backend/run/httpd.pid
  [ -s "$pidfile" ] && tree_pids "$(tr -dc '0-9' < "$pidfile")"
}

declare -A STATE PIDS_OF
start() { # NAME LOG CPU CMD...
  local name=$1 logf=$2 cpu=$3; shift 3
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  PIDS+=("$!")
  PIDS_OF[$name]=$!
}
# The first line of a failed server's output that says why, for the 'unavailable' rows.
reason_of() {
  local line
  line=$(grep -m1 -iE 'error|unknown|unexpected|invalid|failed' "$1" 2>/dev/null || head -1 "$1" 2>/dev/null || true)
  line=${line//\"/\'}
  printf '%s' "${line:0:160}"
}
# up NAME SECONDS LOG: listening, then one authenticated request answered 200.
up() {
  local name=$1 secs=$2 logf=$3 pid=${PIDS_OF[$1]} deadline=$((SECONDS + $2)) code
  until listening "${PORT[$name]}"; do
    if ! ours "$pid"; then
      wait "$pid" 2>/dev/null && rc=0 || rc=$?
      STATE[$name]="unavailable: exited (status $rc): $(reason_of "$logf")"
      log "$name: ${STATE[$name]}"; return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      STATE[$name]="unavailable: not listening after ${secs}s"; log "$name: ${STATE[$name]}"; return 0
    fi
    sleep 0.1
  done
  code=$(curl -sS -o /dev/null -D "$TMP/$name.head" -w '%{http_code}' --max-time 15 \
    "${CURL_AUTH[$name]}" -u "$FIRST_USER" \
    "http://127.0.0.1:${PORT[$name]}${PATH_OF[$name]}" 2>>"$TMP/$name.curl.log" || true)
  if [ "$code" != 200 ]; then
    # Whose answer it was (the proxy's own, or the backend's passed through) says most.
    local server
    server=$(tr -d '\r"' < "$TMP/$name.head" 2>/dev/null | sed -n 's/^[Ss]erver: *//p' | head -1)
    STATE[$name]="unavailable: first request of ${FIRST_USER%%:*} answered ${code:-nothing}${server:+ from $server}"
    log "$name: ${STATE[$name]}"; return 0
  fi
  STATE[$name]=ok
}

# metrics TARGET: the target's Prometheus counters as one JSON object ({} when it has none or
# does not answer); labels stay in the key, e.g. "kcdproxy_delegated_requests_total{ticket=\"hit\"}".
metrics() {
  local port=${METRICS_PORT[$1]:-}
  [ -n "$port" ] || { printf '{}'; return 0; }
  curl -sS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null |
    awk 'BEGIN { printf "{" } !/^#/ && NF == 2 { gsub(/"/, "\\\"", $1); printf "%s\"%s\":%s", sep, $1, $2; sep = "," } END { printf "}" }'
}

KCD_ENV=(env KRB5_CONFIG="$KRB5_CONFIG" KRB5RCACHEDIR="$TMP/rcache-kcd")
mkdir -p "$TMP/rcache-kcd"
for t in $TARGETS; do
  case $t in
    kcdproxy-plain|kcdproxy-kcd|kcdproxy-kcd-ntlm)
      [ "$KCD_STATE" = ok ] || { STATE[$t]=$KCD_STATE; continue; }
      args=(--listen "127.0.0.1:${PORT[$t]}" --workers 1 --cpus "$PROXY_CPU" --access-log off
            --backend-pool-size 512)
      if [ "$t" = kcdproxy-plain ]; then
        args+=(--route "/=http://$BACKEND")
      else
        # The delegation contract (issue #5): Basic (or NTLM) checked against the hash file,
        # S4U to the SPN.
        auth=basic; [ "$t" = kcdproxy-kcd-ntlm ] && auth=ntlm
        args+=(--keytab "$KCD_LAB_AD_PROXY_KEYTAB" --kerberos-login "$KCD_LAB_AD_PROXY_PRINCIPAL"
               --realm "$KCD_LAB_AD_REALM" --ntlm-hash-file "$HASHES"
               --route "/=http://$BACKEND;auth=$auth;spn=$KCD_LAB_BACKEND_SPN" --basic-over-http
               --metrics-listen "127.0.0.1:${METRICS_PORT[$t]}")
      fi
      start "$t" "$TMP/$t.log" "$PROXY_CPU" "${KCD_ENV[@]}" "$KCDPROXY_BIN" "${args[@]}"
      up "$t" "$START_TIMEOUT" "$TMP/$t.log"
      ;;
    apache-gw)
      start "$t" "$TMP/$t.log" "$PROXY_CPU" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        KRB5_CONFIG="$KRB5_CONFIG" KRB5RCACHEDIR="$GW/rcache" ${PERF_GW_KRB5_TRACE:+KRB5_TRACE="$PERF_GW_KRB5_TRACE"} \
        apache2 -d "$GW" -f "$GW/httpd.conf" -DFOREGROUND
      up "$t" 15 "$GW/error.log"
      [ "${STATE[$t]}" = ok ] || { tail -5 "$GW/error.log" "$TMP/$t.log" 2>/dev/null | sed 's/^/    /' >&2; }
      ;;
  esac
done

# ---- the run's environment ------------------------------------------------------------------
json_esc() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
states_json() {
  local t sep=""
  printf '{'
  for t in $TARGETS; do printf '%s"%s":%s' "$sep" "$t" "$(json_esc "${STATE[$t]}")"; sep=,; done
  printf '}'
}
kcd_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet 2>/dev/null || kcd_rev="$kcd_rev+dirty"
mkdir -p "$RESULTS"
{
  printf '{"kind":"env","suite":"deleg","stamp":"%s","date":%s,"host_cpus":%s,"cpu_model":%s,"kernel":%s,' \
    "$STAMP" "$(json_esc "$(date -u '+%Y-%m-%d %H:%M UTC')")" "$(nproc)" \
    "$(json_esc "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)")" "$(json_esc "$(uname -r)")"
  printf '"loadavg_start":%s,"apache":%s,"mod_auth_gssapi":%s,"kcdproxy_rev":"%s",' \
    "$(json_esc "$(cut -d' ' -f1-3 /proc/loadavg)")" \
    "$(json_esc "$(apache2 -v | sed -n 's/^Server version: //p')")" \
    "$(json_esc "$(dpkg-query -W -f='${Version}' libapache2-mod-auth-gssapi)")" "$kcd_rev"
  printf '"duration_s":%s,"warmup_s":%s,"rounds":%s,"quick":%s,"proxy_cpu":%s,"load_cpu":%s,"users":%s,"per_conn":%s,' \
    "$DURATION" "$WARMUP" "$ROUNDS" "$QUICK" "$PROXY_CPU" "$LOAD_CPU" "$USERS" "$PER_CONN"
  printf '"states":%s}\n' "$(states_json)"
} > "$RAW"

# ---- real delegation? (and warm-up) -------------------------------------------------------------
# Before the load: every load user once through each delegating target, and the backend must name
# that user (X-Remote-User, the client of the Kerberos ticket the proxy presented). This is also
# the targets' warm-up: each user's ticket is cached and a backend connection authenticated, so
# the load runs measure the steady state (a never-seen user's cost is the cold-user step below);
# without it deleg-newconn, which cycles through all users, would spend its window on the first
# S4U exchanges of the users deleg-keepalive never reached. The counters after it: S4U2Self should
# be the number of distinct users, and stay there through the load.
if [ "$IDENTITY_CHECK" = 1 ]; then
  for t in kcdproxy-kcd kcdproxy-kcd-ntlm; do
    case " $TARGETS " in *" $t "*) ;; *) continue ;; esac
    [ "${STATE[$t]}" = ok ] || continue
    log "warm-up + identity check: each of the $USERS load users through $t, as the backend sees them"
    checked=0 matched=0 mismatch=""
    while IFS= read -r cred; do
      u=${cred%%:*}
      got=$(curl -sS -o /dev/null -D - --max-time 15 "${CURL_AUTH[$t]}" -u "$cred" \
        "http://127.0.0.1:${PORT[$t]}${PATH_OF[$t]}" 2>/dev/null |
        tr -d '\r' | sed -n 's/^[Xx]-[Rr]emote-[Uu]ser: *//p' | tail -1)
      checked=$((checked + 1))
      if [ "$got" = "$u@$KCD_LAB_AD_REALM" ]; then
        matched=$((matched + 1))
      elif [ -z "$mismatch" ]; then
        mismatch="$u → ${got:-no X-Remote-User}"
      fi
    done < "$TMP/users"
    printf '{"kind":"identity","target":"%s","users":%s,"checked":%s,"matched":%s,"first_mismatch":%s,"metrics":%s}\n' \
      "$t" "$USERS" "$checked" "$matched" "$(json_esc "$mismatch")" "$(metrics "$t")" >> "$RAW"
  done
fi

# ---- load -----------------------------------------------------------------------------------
n=0; for _ in $SCENARIOS; do for _ in $CONNS; do n=$((n + 1)); done; done
log "$n scenarios × ($TARGETS) × $ROUNDS round(s), ${WARMUP}s + ${DURATION}s each, $USERS users"
i=0
for scen in $SCENARIOS; do
  for conns in $CONNS; do
    i=$((i + 1))
    log "[$i/$n] deleg-$scen × $conns"
    for round in $(seq "$ROUNDS"); do
      for t in $TARGETS; do
        if [ "${STATE[$t]}" = ok ] && ! ours "${PIDS_OF[$t]}"; then
          STATE[$t]="crashed: $(reason_of "$TMP/$t.log")"
          log "$t DIED during the run"; tail -5 "$TMP/$t.log" | sed 's/^/    /' >&2 || true
        fi
        head=$(printf '{"kind":"deleg","scenario":"deleg-%s","conns":%s,"target":"%s","round":%s' \
          "$scen" "$conns" "$t" "$round")
        if [ "${STATE[$t]}" != ok ]; then
          printf '%s,"state":%s,"result":null}\n' "$head" "$(json_esc "${STATE[$t]}")" >> "$RAW"
          continue
        fi
        per=(); [ "$scen" = newconn ] && per=(--requests-per-conn "$PER_CONN")
        pids=$(tree_pids "${PIDS_OF[$t]}")
        watch=(); for p in $pids; do watch+=(--watch-pid "$p"); done
        kdc=$(kdc_pids); be=$(backend_pids || true)
        read -r busy0 total0 < <(cpu_line "$PROXY_CPU")
        m0=$(metrics "$t")
        outer0=$(cpu_ticks $pids); kdc0=$(cpu_ticks $kdc); be0=$(cpu_ticks $be)
        result=$(taskset -c "$LOAD_CPU" "$KCDLOAD" --url "http://127.0.0.1:${PORT[$t]}${PATH_OF[$t]}" \
          "${LOAD_AUTH[$t]}" "$TMP/users" "${per[@]}" --connections "$conns" --duration "$DURATION" \
          --warmup "$WARMUP" --timeout 10s --label "$t deleg-$scen c$conns" "${watch[@]}" \
          2>>"$TMP/kcdload.log") || result=null
        read -r busy1 total1 < <(cpu_line "$PROXY_CPU")
        outer1=$(cpu_ticks $pids); kdc1=$(cpu_ticks $kdc); be1=$(cpu_ticks $be)
        m1=$(metrics "$t")
        printf '%s,"state":"ok","proxy_cpu_busy_ticks":%s,"proxy_cpu_total_ticks":%s,"target_ticks_outer":%s,"kdc_ticks":%s,"backend_ticks":%s,"metrics_before":%s,"metrics_after":%s,"result":%s}\n' \
          "$head" "$((busy1 - busy0))" "$((total1 - total0))" "$((outer1 - outer0))" \
          "$((kdc1 - kdc0))" "$((be1 - be0))" "$m0" "$m1" "${result:-null}" >> "$RAW"
      done
    done
  done
done

# ---- cold users -----------------------------------------------------------------------------
# Each never-seen user: a first request (the proxy must do S4U2Self + S4U2Proxy and open an
# authenticated backend connection) and then a second one, both on new connections, one user at
# a time so nothing queues. For kcdproxy the counters are read around the first request (its own
# KDC time for that user: kcdproxy_kdc_latency_seconds) and the lab backend's access log gives the
# backend's time for it (%D: accepting the AP-REQ and answering). Then the KDC's own time for the
# same S4U exchanges, without a proxy.
curl_time() { # TARGET USER:PASSWORD → "HTTP_CODE CONNECT_S TTFB_S TOTAL_S"
  curl -sS -o /dev/null -w '%{http_code} %{time_connect} %{time_starttransfer} %{time_total}\n' \
    --max-time 15 "${CURL_AUTH[$1]}" -u "$2" \
    "http://127.0.0.1:${PORT[$1]}${PATH_OF[$1]}" 2>/dev/null || echo "000 0 0 0"
}
BACKEND_LOG=$KCD_LAB_LOG_DIR/backend-access.log
if [ "$COLD" -gt 0 ]; then
  for t in kcdproxy-kcd kcdproxy-kcd-ntlm apache-gw; do
    case " $TARGETS " in *" $t "*) ;; *) continue ;; esac
    if [ "${STATE[$t]}" != ok ]; then
      printf '{"kind":"cold","target":"%s","state":%s}\n' "$t" "$(json_esc "${STATE[$t]}")" >> "$RAW"
      continue
    fi
    log "cold users: $COLD first requests through $t"
    firsts=() seconds=() detail=() bad=0
    log_off=$(stat -c %s "$BACKEND_LOG" 2>/dev/null || echo 0)
    while IFS= read -r cred; do
      m0=$(metrics "$t")
      read -r c1 k1 f1 s1 < <(curl_time "$t" "$cred")
      m1=$(metrics "$t")
      read -r c2 k2 f2 s2 < <(curl_time "$t" "$cred")
      if [ "$c1" = 200 ] && [ "$c2" = 200 ]; then
        firsts+=("$s1"); seconds+=("$s2")
        detail+=("$(printf '{"user":"%s","connect_s":%s,"ttfb_s":%s,"total_s":%s,"metrics_before":%s,"metrics_after":%s}' \
          "${cred%%:*}" "$k1" "$f1" "$s1" "$m0" "$m1")")
      else
        bad=$((bad + 1))
      fi
    done < "$TMP/cold-users"
    # The backend's %D of each cold user's first request (keep-alive count 0) on this target.
    be_us=$(tail -c +"$((log_off + 1))" "$BACKEND_LOG" 2>/dev/null | python3 -c '
import json, re, sys
first = {}
for line in sys.stdin:
    m = re.search(r" (\d+)us user=([^@ ]+)@\S+ .*keepalive=0", line)
    if m and m.group(2) not in first:
        first[m.group(2)] = int(m.group(1))
print(json.dumps(first))' || true)
    [ -n "$be_us" ] || be_us='{}'
    printf '{"kind":"cold","target":"%s","state":"ok","first_s":[%s],"second_s":[%s],"failed":%s,"backend_first_us":%s,"detail":[%s]}\n' \
      "$t" "$(IFS=,; echo "${firsts[*]}")" "$(IFS=,; echo "${seconds[*]}")" "$bad" "$be_us" \
      "$(IFS=,; echo "${detail[*]}")" >> "$RAW"
  done
  log "cold users: the KDC's S4U2Self + S4U2Proxy time for the same $COLD users (python3-gssapi)"
  s4u=$(KRB5CCNAME=MEMORY:kcdperf "$PY" "$ROOT/perf/deleg_s4u.py" "$KCD_LAB_AD_PROXY_KEYTAB" \
    "$KCD_LAB_AD_PROXY_PRINCIPAL" "$KCD_LAB_BACKEND_HOST" "$TMP/cold-users" 2>>"$TMP/s4u.log") || s4u=null
  printf '{"kind":"kdc_s4u","result":%s}\n' "${s4u:-null}" >> "$RAW"
fi

printf '{"kind":"end","loadavg_end":%s}\n' "$(json_esc "$(cut -d' ' -f1-3 /proc/loadavg)")" >> "$RAW"
if [ -s "$TMP/kcdload.log" ]; then
  log "kcdload stderr (first lines):"; head -5 "$TMP/kcdload.log" | sed 's/^/    /' >&2
fi
if [ -s "$GW/error.log" ] && grep -qv 'AH00489\|AH00094\|resuming normal' "$GW/error.log"; then
  log "apache-gw error.log (last lines):"; tail -5 "$GW/error.log" | sed 's/^/    /' >&2
fi
python3 "$ROOT/perf/report.py" "$RAW" | tee "$RESULTS/$STAMP.md"
log "raw: $RAW; table: $RESULTS/$STAMP.md; csv: $RESULTS/$STAMP.csv"
