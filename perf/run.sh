#!/usr/bin/env bash
# perf/run.sh: kcdproxy against nginx and haproxy, same origin, same run, alternating.
#
# Each proxy runs ONE worker pinned to the proxy CPU (default 0); the origin (nginx) and the
# load generator (kcdload) share the other CPU (default 1). For every scenario
# (response size × connections × plain/TLS) the targets run in turn: nginx, haproxy, kcdproxy,
# then the origin directly as a reference. Then idle keep-alive connections are opened to each
# proxy to measure the memory one costs. One markdown table is printed; raw results stay in
# perf/results/. A benchmark, not a test: nothing here is part of any test command.
#
# All traffic goes to 127.0.0.1; every load run is bounded in time. See perf/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: perf/run.sh [options]
  --quick            smoke run: short windows, fewer idle connections (about 2 minutes)
  --no-build         use the binaries already built (no apt, no cargo)
  --duration S       measured seconds per run            (env PERF_DURATION, default 5)
  --warmup S         warm-up seconds before each window  (env PERF_WARMUP,   default 1)
  --rounds N         alternations per scenario; the median round is shown (env PERF_ROUNDS, default 1)
  --sizes LIST       of: small 16k 1m                    (env PERF_SIZES)
  --conns LIST       connection counts, e.g. "1 16 256"  (env PERF_CONNS)
  --modes LIST       of: plain tls                       (env PERF_MODES)
  --targets LIST     of: nginx haproxy kcdproxy direct   (env PERF_TARGETS)
  --idle N           idle connections per proxy for the memory figure, 0 skips it
                     (env PERF_IDLE_CONNS, default 10000)
  --scenario deleg   instead: delegated traffic against the test lab (kcdproxy plain, kcdproxy
                     with KCD, Apache mod_auth_gssapi gateway); runs perf/deleg.sh, whose
                     options then apply (perf/deleg.sh --help)
  --scenario auth    instead: client authentication without delegation (issue 4): the same
                     kcdproxy, same origin, three routes: anonymous, auth=basic (every request
                     checked against a local NT-hash file, --basic-over-http) and auth=ntlm (one
                     handshake per keep-alive connection). Defaults then: --sizes small
                     --modes plain --conns "1 16" --rounds 3 --idle 0, targets
                     "kcdproxy kcdproxy-basic kcdproxy-ntlm" (+ direct if asked)
  --users N          auth scenario: users in the hash file, cycled by kcdload (env PERF_USERS, 20)
env: PROXY_CPU (0), LOAD_CPU (1), KCDPROXY_BIN, CARGO_TARGET_DIR, KCDPROXY_START_TIMEOUT (5 s),
     PERF_NGINX_BUF (nginx proxy buffer size, 64k)
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --scenario deleg: the delegated-traffic suite needs the lab and other targets; its own script.
# --scenario auth: this script, with the authenticating routes (see below).
SCENARIO=proxy
prev=""
for a in "$@"; do
  if [ "$prev" = --scenario ]; then
    case "$a" in
      deleg) exec "$ROOT/perf/deleg.sh" "$@" ;;
      auth) SCENARIO=auth ;;
      *) echo "run.sh: --scenario: unknown '$a' (allowed: deleg auth)" >&2; exit 2 ;;
    esac
  fi
  prev=$a
done
[ "$prev" = --scenario ] && { echo "run.sh: --scenario needs a value (deleg, auth)" >&2; exit 2; }
if [ "$SCENARIO" = auth ]; then
  : "${PERF_SIZES:=small}" "${PERF_MODES:=plain}" "${PERF_CONNS:=1 16}" "${PERF_ROUNDS:=3}"
  : "${PERF_IDLE_CONNS:=0}" "${PERF_TARGETS:=kcdproxy kcdproxy-basic kcdproxy-ntlm}"
fi
AUTH_USERS=${PERF_USERS:-20}

DURATION=${PERF_DURATION:-5}
WARMUP=${PERF_WARMUP:-1}
ROUNDS=${PERF_ROUNDS:-1}
SIZES=${PERF_SIZES:-"small 16k 1m"}
CONNS=${PERF_CONNS:-"1 16 256"}
MODES=${PERF_MODES:-"plain tls"}
TARGETS=${PERF_TARGETS:-"nginx haproxy kcdproxy direct"}
IDLE_CONNS=${PERF_IDLE_CONNS:-10000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
START_TIMEOUT=${KCDPROXY_START_TIMEOUT:-5}
BUILD=1
QUICK=0

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=${PERF_DURATION:-0.8}; WARMUP=${PERF_WARMUP:-0.3}
             IDLE_CONNS=${PERF_IDLE_CONNS:-2000}
             if [ "$SCENARIO" = auth ]; then ROUNDS=1; fi ;;
    --no-build) BUILD=0 ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --modes) MODES=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --idle) IDLE_CONNS=$2; shift ;;
    --scenario) shift ;;   # auth (deleg was handed over above)
    --users) AUTH_USERS=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[perf %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Reject a bad list before anything is started.
check_list() { # NAME ALLOWED VALUES...
  local name=$1 allowed=" $2 " v; shift 2
  for v in "$@"; do
    case "$allowed" in *" $v "*) ;; *) echo "run.sh: $name: unknown '$v' (allowed:$allowed)" >&2; exit 2 ;; esac
  done
}
check_list --sizes "small 16k 1m" $SIZES
check_list --modes "plain tls" $MODES
if [ "$SCENARIO" = auth ]; then
  check_list --targets "kcdproxy kcdproxy-basic kcdproxy-ntlm direct" $TARGETS
else
  check_list --targets "nginx haproxy kcdproxy direct" $TARGETS
fi
for v in $CONNS $ROUNDS $IDLE_CONNS $AUTH_USERS; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "run.sh: '$v' is not a whole number" >&2; exit 2; }
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
KCDPROXY_BIN=${KCDPROXY_BIN:-$TARGET_DIR/release/kcdproxy}
KCDLOAD=$TARGET_DIR/release/kcdload
RESULTS=$ROOT/perf/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
[ "$SCENARIO" = auth ] && STAMP=$STAMP-auth
RAW=$RESULTS/$STAMP.jsonl
TMP=$(mktemp -d /tmp/kcdperf.XXXXXX)

# ---- cleanup: every process this script started, by PID, then the temp dir -------------------
# Every server and kcdload is a direct child of this shell. A PID is signalled only while its
# parent is still this shell, so a PID already reaped and reused by someone else is never hit.
PIDS=()
ours() { # PID: a live (not zombie) child of this shell
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  set -- $s
  [ "$2" = "$$" ] && [ "$1" != Z ]
}
signal_ours() { # SIGNAL
  local pid
  for pid in "${PIDS[@]}"; do ours "$pid" && kill "-$1" "$pid" 2>/dev/null; done
  return 0
}
cleanup() {
  local rc=$? pid alive
  trap - EXIT INT TERM
  signal_ours TERM
  for _ in $(seq 30); do
    alive=0
    for pid in "${PIDS[@]}"; do ours "$pid" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  signal_ours KILL
  wait 2>/dev/null || true
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- dependencies and builds ------------------------------------------------------------------
KCD_STATE=ok   # ok | not built
if [ "$BUILD" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    bash "$ROOT/scripts/install-deps.sh"
  else
    log "not root: skipping scripts/install-deps.sh (nginx, haproxy, openssl, curl must be installed)"
  fi
  log "building kcdproxy (release)"
  if ! (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q); then
    log "kcdproxy build FAILED: its rows will say 'not built'"
    KCD_STATE="not built"
  fi
  log "building kcdload (release)"
  (cd "$ROOT/perf/loadgen" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q)
fi
for tool in nginx haproxy openssl curl taskset ss python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done
[ -x "$KCDLOAD" ] || { echo "run.sh: $KCDLOAD missing (run without --no-build)" >&2; exit 1; }
[ -x "$KCDPROXY_BIN" ] || KCD_STATE="not built"

# Idle connections need a descriptor each in kcdload and in the proxy. Raising the hard limit
# needs CAP_SYS_RESOURCE, which containers often drop: then the soft limit goes up to the hard one.
ulimit -Hn 262144 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
if [ "$IDLE_CONNS" -gt $((FD_LIMIT - 1024)) ]; then
  IDLE_CONNS=$((FD_LIMIT - 1024))
  log "descriptor limit $FD_LIMIT: idle connections reduced to $IDLE_CONNS"
fi
MAXCONN=$((FD_LIMIT - 512))   # per proxy; every proxy gets the same

# ---- ports, certificates, origin files --------------------------------------------------------
# Ask the kernel for free ports (all bound at once so they differ), then release them.
read -r P_ORIGIN P_ORIGIN_TLS P_NGINX P_NGINX_TLS P_HAPROXY P_HAPROXY_TLS P_KCD P_KCD_TLS < <(
  python3 -c 'import socket
ss = [socket.socket() for _ in range(8)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')

mkdir -p "$TMP/certs" "$TMP/www" "$RESULTS"
(
  cd "$TMP/certs"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 2 \
    -subj "/CN=kcdproxy perf lab CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -subj "/CN=localhost" -keyout server.key -out server.csr
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem
  cat server.pem server.key > haproxy.pem
) >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; exit 1; }
CA=$TMP/certs/ca.pem CERT=$TMP/certs/server.pem KEY=$TMP/certs/server.key

declare -A SIZE_BYTES=([small]=100 [16k]=16384 [1m]=1048576)
declare -A SIZE_LABEL=([small]="100 B" [16k]="16 KiB" [1m]="1 MiB")
for s in "${!SIZE_BYTES[@]}"; do
  head -c "${SIZE_BYTES[$s]}" /dev/zero | tr '\0' 'k' > "$TMP/www/$s"
done

# ---- auth scenario: users, their NT hashes, the files under each route's prefix ---------------
# kcdproxy does not strip a route's prefix, so /basic/small reaches the origin as /basic/small:
# the same files are served there. The hash file holds MD4(UTF-16LE(password)) per user (OpenSSL
# 3 has MD4 only in its legacy provider).
declare -A PREFIX=([nginx]="" [haproxy]="" [kcdproxy]="" [direct]="" [kcdproxy-basic]=/basic
  [kcdproxy-ntlm]=/ntlm)
declare -A LOAD_AUTH=([kcdproxy-basic]=--basic-users [kcdproxy-ntlm]=--ntlm-users)
declare -A CURL_AUTH=([kcdproxy-basic]=--basic [kcdproxy-ntlm]=--ntlm)
AUTH_ARGS=()
if [ "$SCENARIO" = auth ]; then
  mkdir -p "$TMP/auth" "$TMP/www/basic" "$TMP/www/ntlm"
  for s in "${!SIZE_BYTES[@]}"; do cp "$TMP/www/$s" "$TMP/www/basic/$s"; cp "$TMP/www/$s" "$TMP/www/ntlm/$s"; done
  : > "$TMP/auth/users"; : > "$TMP/auth/hashes"
  for i in $(seq -f %03g "$AUTH_USERS"); do
    u=perfauth$i pw="Perf-Auth-$i-pw"
    h=$(printf '%s' "$pw" | iconv -f UTF-8 -t UTF-16LE |
      openssl dgst -md4 -provider legacy -provider default -r 2>/dev/null | cut -d' ' -f1) || h=""
    [[ "$h" =~ ^[0-9a-f]{32}$ ]] || { echo "run.sh: cannot compute an NT hash (openssl MD4, legacy provider)" >&2; exit 1; }
    printf '%s:%s\n' "$u" "$pw" >> "$TMP/auth/users"
    printf '%s:%s\n' "$u" "$h" >> "$TMP/auth/hashes"
  done
  chmod 600 "$TMP/auth/users" "$TMP/auth/hashes"
  AUTH_ARGS=(--ntlm-hash-file "$TMP/auth/hashes" --basic-over-http --realm EXAMPLE.TEST
    --route "/basic/=http://127.0.0.1:$P_ORIGIN;auth=basic"
    --route "/ntlm/=http://127.0.0.1:$P_ORIGIN;auth=ntlm")
fi

# ---- configurations ---------------------------------------------------------------------------
# Running as root, nginx workers would switch to nobody, who cannot read the 0700 temp dir.
NGINX_USER=""; [ "$(id -u)" = 0 ] && NGINX_USER="user root;"
BACKEND_KEEPALIVE=512   # idle backend connections kept, the same for every proxy
NGINX_BUF=${PERF_NGINX_BUF:-64k}   # nginx proxy buffer size (k units)

nginx_common() { # $1 = prefix dir
  cat <<EOF
$NGINX_USER
worker_processes 1;
worker_rlimit_nofile $FD_LIMIT;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $MAXCONN; }
EOF
}
nginx_temp_paths() { # $1 = prefix dir
  local t
  for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $1/${t}_temp;"; done
}

mkdir -p "$TMP/origin" "$TMP/nginx" "$TMP/haproxy" "$TMP/kcdproxy"
{
  nginx_common "$TMP/origin"
  cat <<EOF
http {
  access_log off;
$(nginx_temp_paths "$TMP/origin")
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  open_file_cache max=16 inactive=1h; open_file_cache_valid 1h;
  keepalive_timeout 300s; keepalive_requests 1000000000;
  server {
    listen 127.0.0.1:$P_ORIGIN;
    listen 127.0.0.1:$P_ORIGIN_TLS ssl;
    ssl_certificate $CERT; ssl_certificate_key $KEY;
    root $TMP/www;
  }
}
EOF
} > "$TMP/origin/nginx.conf"

{
  nginx_common "$TMP/nginx"
  cat <<EOF
http {
  access_log off;
$(nginx_temp_paths "$TMP/nginx")
  tcp_nodelay on;
  keepalive_timeout 300s; keepalive_requests 1000000000;
  upstream origin {
    server 127.0.0.1:$P_ORIGIN;
    keepalive $BACKEND_KEEPALIVE; keepalive_requests 1000000000; keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    listen 127.0.0.1:$P_NGINX_TLS ssl;
    ssl_certificate $CERT; ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Stream through memory buffers of kcdproxy's streaming-buffer size (64 KiB) rather than
      # the 4 KiB default, and never spool a 1 MiB body to a temp file.
      proxy_buffer_size $NGINX_BUF;
      proxy_buffers 8 $NGINX_BUF;
      proxy_busy_buffers_size $((2 * ${NGINX_BUF%k}))k;
      proxy_max_temp_file_size 0;
    }
  }
}
EOF
} > "$TMP/nginx/nginx.conf"

cat > "$TMP/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  cpu-map 1/1 $PROXY_CPU
  # haproxy sizes its descriptor need as 2 × maxconn and, with strict-limits (the default),
  # refuses to start when it cannot raise the limit that far. Idle client connections hold one
  # descriptor each, so the same maxconn as the others fits; the check is made a warning.
  no strict-limits
  ulimit-n $FD_LIMIT
  maxconn $MAXCONN
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  maxconn $MAXCONN
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 10s
  timeout http-keep-alive 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $TMP/certs/haproxy.pem alpn http/1.1
  default_backend origin
backend origin
  server origin 127.0.0.1:$P_ORIGIN
EOF

# ---- starting and watching servers ------------------------------------------------------------
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# wait_listen PID SECONDS PORT...: every port listening while PID lives; fails otherwise.
wait_listen() {
  local pid=$1 secs=$2 port ok; shift 2
  local deadline=$((SECONDS + secs))
  while :; do
    ours "$pid" || return 1
    ok=1
    for port in "$@"; do listening "$port" || ok=0; done
    [ "$ok" = 1 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.1
  done
}

# The PID and its children (nginx master + worker): CPU and memory are summed over them.
# shellcheck disable=SC2046  # the child PIDs are meant to split into words
tree_pids() { echo "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); }

# utime+stime (ticks) summed over PIDs.
cpu_ticks() {
  local t=0 p s f
  for p in "$@"; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -ra f <<< "${s##*) }"
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}

# busy and total ticks of one CPU from /proc/stat.
cpu_line() {
  awk -v c="cpu$1" '$1 == c { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat
}

# "Pss Rss" in kB summed over PIDs.
mem_kb() {
  local p
  for p in "$@"; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done |
    awk '$1 == "Pss:" { pss += $2 } $1 == "Rss:" { rss += $2 } END { print pss + 0, rss + 0 }'
}

declare -A STATE PIDS_OF PORT TLS_PORT
PORT=([nginx]=$P_NGINX [haproxy]=$P_HAPROXY [kcdproxy]=$P_KCD [direct]=$P_ORIGIN)
TLS_PORT=([nginx]=$P_NGINX_TLS [haproxy]=$P_HAPROXY_TLS [kcdproxy]=$P_KCD_TLS [direct]=$P_ORIGIN_TLS)

# start NAME LOG CPU CMD...: starts CMD pinned to CPU; records the PID.
start() {
  local name=$1 logf=$2 cpu=$3; shift 3
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  PIDS_OF[$name]=$pid
}

# up NAME SECONDS: waits for both listeners, then checks one request through each.
up() {
  local name=$1 secs=$2 pid=${PIDS_OF[$1]} scheme
  if ! wait_listen "$pid" "$secs" "${PORT[$name]}" "${TLS_PORT[$name]}"; then
    if ours "$pid"; then
      STATE[$name]="not running"; log "$name: not listening after ${secs}s"
    else
      wait "$pid" && rc=0 || rc=$?
      STATE[$name]="not running"; log "$name: exited (status $rc) without listening"
    fi
    return 0
  fi
  for scheme in http https; do
    local port=${PORT[$name]}; [ "$scheme" = https ] && port=${TLS_PORT[$name]}
    if ! curl -fsS -o /dev/null --max-time 5 --cacert "$CA" "$scheme://127.0.0.1:$port/small" \
        2>>"$TMP/$name.curl.log"; then
      STATE[$name]="not proxying"; log "$name: listening but $scheme request failed"
      return 0
    fi
  done
  STATE[$name]=ok
  PIDS_OF[$name]=$(tree_pids "$pid")
}

log "starting origin on CPU $LOAD_CPU, proxies on CPU $PROXY_CPU"
start direct "$TMP/origin/stderr.log" "$LOAD_CPU" \
  nginx -p "$TMP/origin" -c "$TMP/origin/nginx.conf" -g "daemon off;"
up direct 10
[ "${STATE[direct]}" = ok ] || { cat "$TMP/origin/stderr.log" "$TMP/origin/error.log" >&2 || true; exit 1; }

start nginx "$TMP/nginx/stderr.log" "$PROXY_CPU" \
  nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g "daemon off;"
start haproxy "$TMP/haproxy/stderr.log" "$PROXY_CPU" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
if [ "$KCD_STATE" = ok ]; then
  start kcdproxy "$TMP/kcdproxy/stderr.log" "$PROXY_CPU" "$KCDPROXY_BIN" \
    --workers 1 --cpus "$PROXY_CPU" \
    --listen "127.0.0.1:$P_KCD" --listen-tls "127.0.0.1:$P_KCD_TLS" \
    --tls-cert "$CERT" --tls-key "$KEY" \
    --route "/=http://127.0.0.1:$P_ORIGIN" --backend-pool-size "$BACKEND_KEEPALIVE" \
    --max-connections "$MAXCONN" --access-log off "${AUTH_ARGS[@]}"
else
  STATE[kcdproxy]=$KCD_STATE
fi
up nginx 10
up haproxy 10
[ "$KCD_STATE" = ok ] && up kcdproxy "$START_TIMEOUT"
# The authenticating routes live in the same kcdproxy process: same PIDs, same ports; each must
# answer an authenticated request with 200 (and an unauthenticated one with 401).
for t in kcdproxy-basic kcdproxy-ntlm; do
  [ "$SCENARIO" = auth ] || break
  PORT[$t]=${PORT[kcdproxy]} TLS_PORT[$t]=${TLS_PORT[kcdproxy]} PIDS_OF[$t]=${PIDS_OF[kcdproxy]}
  if [ "${STATE[kcdproxy]}" != ok ]; then STATE[$t]=${STATE[kcdproxy]}; continue; fi
  anon=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:${PORT[$t]}${PREFIX[$t]}/small" 2>/dev/null || true)
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "${CURL_AUTH[$t]}" -u "$(head -1 "$TMP/auth/users")" \
    "http://127.0.0.1:${PORT[$t]}${PREFIX[$t]}/small" 2>>"$TMP/$t.curl.log" || true)
  if [ "$anon" = 401 ] && [ "$code" = 200 ]; then
    STATE[$t]=ok
  else
    STATE[$t]="not authenticating (no credentials: $anon, with: $code)"; log "$t: ${STATE[$t]}"
  fi
done
for t in nginx haproxy kcdproxy; do
  if [ "${STATE[$t]}" != ok ] && [ -s "$TMP/$t/stderr.log" ]; then
    log "$t output:"; tail -5 "$TMP/$t/stderr.log" | sed 's/^/    /' >&2
  fi
done

# ---- the run's environment, recorded first ----------------------------------------------------
kcd_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet 2>/dev/null || kcd_rev="$kcd_rev+dirty"
json_esc() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
{
  printf '{"kind":"env","stamp":"%s","date":%s,"host_cpus":%s,"cpu_model":%s,"kernel":%s,' \
    "$STAMP" "$(json_esc "$(date -u '+%Y-%m-%d %H:%M UTC')")" "$(nproc)" \
    "$(json_esc "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)")" \
    "$(json_esc "$(uname -r)")"
  printf '"loadavg_start":%s,"nginx":%s,"haproxy":%s,"kcdproxy_rev":"%s",' \
    "$(json_esc "$(cut -d' ' -f1-3 /proc/loadavg)")" \
    "$(json_esc "$(nginx -v 2>&1 | sed 's/.*: //')")" \
    "$(json_esc "$(haproxy -v | head -1 | awk '{ print $3 }')")" "$kcd_rev"
  printf '"duration_s":%s,"warmup_s":%s,"rounds":%s,"quick":%s,"proxy_cpu":%s,"load_cpu":%s,' \
    "$DURATION" "$WARMUP" "$ROUNDS" "$QUICK" "$PROXY_CPU" "$LOAD_CPU"
  printf '"suite":"%s","users":%s,"states":{' "$SCENARIO" "$AUTH_USERS"
  sep=""
  for t in $TARGETS; do printf '%s"%s":%s' "$sep" "$t" "$(json_esc "${STATE[$t]:-not started}")"; sep=,; done
  printf '}}\n'
} > "$RAW"

# ---- idle keep-alive memory ---------------------------------------------------------------
# Measured first, on fresh processes: memory a load run freed but kept (allocator caches) would
# otherwise absorb the idle connections and hide their cost. Two equal batches: the first also
# pays one-time costs (lazy pools, first-use tables); the second batch's growth alone is the
# per-connection figure.
IDLE_PIDS=()
# idle_batch TARGET N OUT: opens N idle connections in the background; returns once they are
# reported open (or kcdload died, or 90 s passed).
idle_batch() {
  local t=$1 n=$2 out=$3 deadline=$((SECONDS + 90))
  taskset -c "$LOAD_CPU" "$KCDLOAD" --url "http://127.0.0.1:${PORT[$t]}/small" \
    --idle "$n" --hold 180s --timeout 10s --label "$t idle" >"$out" 2>>"$TMP/kcdload.log" &
  local pid=$!
  PIDS+=("$pid"); IDLE_PIDS+=("$pid")
  while [ ! -s "$out" ] && ours "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
  done
  sleep 1   # let the proxy finish its post-response bookkeeping
}
if [ "$IDLE_CONNS" -gt 1 ]; then
  for t in nginx haproxy kcdproxy; do
    case " $TARGETS " in *" $t "*) ;; *) continue ;; esac
    if [ "${STATE[$t]}" != ok ]; then
      printf '{"kind":"idle","target":"%s","state":"%s"}\n' "$t" "${STATE[$t]}" >> "$RAW"
      continue
    fi
    log "idle memory: $IDLE_CONNS keep-alive connections to $t (two batches)"
    IDLE_PIDS=()
    read -r pss0 rss0 < <(mem_kb ${PIDS_OF[$t]})
    idle_batch "$t" $((IDLE_CONNS / 2)) "$TMP/idle-$t-1.json"
    read -r pss1 rss1 < <(mem_kb ${PIDS_OF[$t]})
    idle_batch "$t" $((IDLE_CONNS - IDLE_CONNS / 2)) "$TMP/idle-$t-2.json"
    read -r pss2 rss2 < <(mem_kb ${PIDS_OF[$t]})
    for pid in "${IDLE_PIDS[@]}"; do ours "$pid" && kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${IDLE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    printf '{"kind":"idle","target":"%s","state":"ok","pss_kb":[%s,%s,%s],"rss_kb":[%s,%s,%s],"batches":[%s,%s]}\n' \
      "$t" "$pss0" "$pss1" "$pss2" "$rss0" "$rss1" "$rss2" \
      "$(head -1 "$TMP/idle-$t-1.json" 2>/dev/null | grep . || echo null)" \
      "$(head -1 "$TMP/idle-$t-2.json" 2>/dev/null | grep . || echo null)" >> "$RAW"
    sleep 2   # the proxy closes the connections before the load runs
  done
fi

# ---- load scenarios ---------------------------------------------------------------------------
n_scen=0
for _ in $MODES; do for _ in $SIZES; do for _ in $CONNS; do n_scen=$((n_scen + 1)); done; done; done
log "$n_scen scenarios × ($TARGETS) × $ROUNDS round(s), ${WARMUP}s + ${DURATION}s each"

i=0
for mode in $MODES; do
  for size in $SIZES; do
    for conns in $CONNS; do
      i=$((i + 1))
      log "[$i/$n_scen] $mode ${SIZE_LABEL[$size]} × $conns"
      for round in $(seq "$ROUNDS"); do
        for t in $TARGETS; do
          # A server that died mid-run is reported, not measured as a wall of connect errors.
          if [ "${STATE[$t]}" = ok ] && ! ours "${PIDS_OF[$t]%% *}"; then
            STATE[$t]=crashed
            log "$t DIED during the run; its remaining rows say 'crashed'"
            [ -s "$TMP/$t/stderr.log" ] && tail -5 "$TMP/$t/stderr.log" | sed 's/^/    /' >&2
          fi
          head=$(printf '{"kind":"load","mode":"%s","size":"%s","conns":%s,"target":"%s","round":%s' \
            "$mode" "$size" "$conns" "$t" "$round")
          if [ "${STATE[$t]}" != ok ]; then
            printf '%s,"state":%s,"result":null}\n' "$head" "$(json_esc "${STATE[$t]}")" >> "$RAW"
            continue
          fi
          url="http://127.0.0.1:${PORT[$t]}${PREFIX[$t]}/$size" tls_args=()
          [ "$mode" = tls ] && url="https://127.0.0.1:${TLS_PORT[$t]}${PREFIX[$t]}/$size" tls_args=(--cacert "$CA")
          if [ -n "${LOAD_AUTH[$t]:-}" ]; then tls_args+=("${LOAD_AUTH[$t]}" "$TMP/auth/users"); fi
          watch=()
          for p in ${PIDS_OF[$t]}; do watch+=(--watch-pid "$p"); done
          read -r busy0 total0 < <(cpu_line "$PROXY_CPU")
          outer0=$(cpu_ticks ${PIDS_OF[$t]})
          result=$(taskset -c "$LOAD_CPU" "$KCDLOAD" --url "$url" "${tls_args[@]}" \
            --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" --timeout 10s \
            --label "$t $mode $size c$conns" "${watch[@]}" 2>>"$TMP/kcdload.log") || result=null
          read -r busy1 total1 < <(cpu_line "$PROXY_CPU")
          outer1=$(cpu_ticks ${PIDS_OF[$t]})
          # Time on the proxy CPU that was not the target's: other engineers' builds, etc.
          printf '%s,"state":"ok","proxy_cpu_busy_ticks":%s,"proxy_cpu_total_ticks":%s,"target_ticks_outer":%s,"result":%s}\n' \
            "$head" "$((busy1 - busy0))" "$((total1 - total0))" "$((outer1 - outer0))" \
            "${result:-null}" >> "$RAW"
        done
      done
    done
  done
done

printf '{"kind":"end","loadavg_end":%s}\n' "$(json_esc "$(cut -d' ' -f1-3 /proc/loadavg)")" >> "$RAW"
if [ -s "$TMP/kcdload.log" ]; then
  log "kcdload stderr (first lines):"; head -5 "$TMP/kcdload.log" | sed 's/^/    /' >&2
fi
python3 "$ROOT/perf/report.py" "$RAW" | tee "$RESULTS/$STAMP.md"
log "raw: $RAW; table: $RESULTS/$STAMP.md; csv: $RESULTS/$STAMP.csv"
