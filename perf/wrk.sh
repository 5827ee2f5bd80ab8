#!/usr/bin/env bash
# perf/wrk.sh: the same proxying load from an external load generator (wrk), for kcdproxy
# builds and nginx side by side in one run. A benchmark, not a test.
#
# The origin (nginx, a 100-byte file) and wrk share CPU 1; each proxy in turn runs one worker
# pinned to CPU 0. Rounds alternate the targets (nginx, then each kcdproxy binary) so slow drift
# on the machine hits them alike; the median round is printed. Per target: requests/s, latency
# p50/p99 (wrk --latency), the proxy's own CPU time per request (utime+stime from /proc), and
# the ratio of requests/s to nginx's. Several --kcdproxy binaries compare builds (A/B).
#
# All traffic goes to 127.0.0.1; every run is bounded in time (--duration).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: perf/wrk.sh [--kcdproxy PATH]... [--conns "1 16 64"] [--duration S] [--rounds N]
  --kcdproxy PATH  a kcdproxy binary (repeatable; default target/release/kcdproxy, built)
  --conns LIST     wrk connection counts (default "16")
  --duration S     seconds per measured run (default 5)
  --rounds N       alternations per connection count; the median is shown (default 3)
env: PROXY_CPU (0), LOAD_CPU (1)
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=() CONNS="16" DURATION=5 ROUNDS=3
PROXY_CPU=${PROXY_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
while [ $# -gt 0 ]; do
  case $1 in
    --kcdproxy) BINS+=("$2"); shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "wrk.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
log() { printf '[wrk %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "$(id -u)" = 0 ]; then bash "$ROOT/scripts/install-deps.sh" wrk; fi
if [ ${#BINS[@]} -eq 0 ]; then
  log "building kcdproxy (release)"
  (cd "$ROOT" && cargo build --release -q --bin kcdproxy)
  BINS=("${CARGO_TARGET_DIR:-$ROOT/target}/release/kcdproxy")
fi
for t in wrk nginx taskset curl; do command -v "$t" >/dev/null || { echo "wrk.sh: $t missing" >&2; exit 1; }; done

TMP=$(mktemp -d /tmp/kcdproxy-wrk.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_ORIGIN=$(free_port) P_PROXY=$(free_port)
mkdir -p "$TMP/www" "$TMP/origin" "$TMP/nginx"
head -c 100 /dev/zero | tr '\0' x > "$TMP/www/small"
nginx_conf() { # PREFIX PORT BODY
  cat > "$1/nginx.conf" <<EOF
worker_processes 1; pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $1/cb; proxy_temp_path $1/pt;
  fastcgi_temp_path $1/ft; uwsgi_temp_path $1/ut; scgi_temp_path $1/st;
  keepalive_requests 1000000000; $3
  server { listen 127.0.0.1:$2; $4 } }
EOF
}
nginx_conf "$TMP/origin" "$P_ORIGIN" "" "root $TMP/www;"
nginx_conf "$TMP/nginx" "$P_PROXY" "upstream o { server 127.0.0.1:$P_ORIGIN; keepalive 512; }" \
  "location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
[ "$(id -u)" = 0 ] && sed -i '1i user root;' "$TMP/origin/nginx.conf" "$TMP/nginx/nginx.conf"
taskset -c "$LOAD_CPU" nginx -p "$TMP/origin" -c "$TMP/origin/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

wait_up() { for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$1/small" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
wait_up "$P_ORIGIN" || { echo "wrk.sh: origin did not start" >&2; exit 1; }

ticks() { local t=0 p s f; for p in $(echo "$1" $(ps -o pid= --ppid "$1")); do
  s=$(cat "/proc/$p/stat" 2>/dev/null) || continue; read -ra f <<< "${s##*) }"; t=$((t + f[11] + f[12])); done; echo "$t"; }

# run NAME CONNS: starts the target on the proxy CPU, loads it, stops it; prints one result line.
run() {
  local name=$1 conns=$2 pid
  if [ "$name" = nginx ]; then
    taskset -c "$PROXY_CPU" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
  else
    taskset -c "$PROXY_CPU" "$name" --workers 1 --cpus "$PROXY_CPU" --listen "127.0.0.1:$P_PROXY" \
      --route "/=http://127.0.0.1:$P_ORIGIN" --backend-pool-size 512 --access-log off \
      2>"$TMP/kcdproxy.log" &
  fi
  pid=$!
  wait_up "$P_PROXY" || { echo "wrk.sh: $name did not start" >&2; cat "$TMP/kcdproxy.log" >&2 || true; exit 1; }
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d1s "http://127.0.0.1:$P_PROXY/small" >/dev/null
  local t0; t0=$(ticks "$pid")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION}s" --latency \
    "http://127.0.0.1:$P_PROXY/small" > "$TMP/out"
  local t1; t1=$(ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$TMP/out" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'EOF'
import re, sys
out = open(sys.argv[1]).read(); ticks = int(sys.argv[2]); hz = int(sys.argv[3])
def lat(p):
    m = re.search(r'^\s+%s%%\s+([\d.]+)(us|ms|s)' % p, out, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v * {'us': 1e-3, 'ms': 1, 's': 1e3}[u]
reqs = int(re.search(r'^\s*(\d+) requests in', out, re.M).group(1))
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
errs = sum(int(x) for x in re.findall(r'(?:connect|read|write|timeout) (\d+)', out))
errs += int((re.search(r'Non-2xx or 3xx responses: (\d+)', out) or [0, 0])[1])
print(f"{rps:.0f} {lat(50):.3f} {lat(99):.3f} {ticks / hz * 1e6 / max(reqs, 1):.1f} {errs}")
EOF
}

log "load: wrk -t1, ${DURATION}s per run, $ROUNDS rounds; proxies on CPU $PROXY_CPU, origin and wrk on CPU $LOAD_CPU; $(uptime | sed 's/.*load/load/')"
printf '| target | conns | req/s | ×nginx | p50 ms | p99 ms | proxy CPU µs/req | errors |\n|---|---|---|---|---|---|---|---|\n'
for c in $CONNS; do
  declare -A ALL=()
  for r in $(seq "$ROUNDS"); do
    for t in nginx "${BINS[@]}"; do ALL[$t]+="$(run "$t" "$c")"$'\n'; done
  done
  nginx_rps=$(printf '%s' "${ALL[nginx]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  for t in nginx "${BINS[@]}"; do
    printf '%s' "${ALL[$t]}" | sort -n | awk -v t="$t" -v c="$c" -v n="$nginx_rps" \
      '{l[NR]=$0} END {split(l[int((NR+1)/2)], f, " "); printf "| %s | %s | %d | %.2f | %s | %s | %s | %s |\n", t, c, f[1], f[1]/n, f[2], f[3], f[4], f[5]}'
  done
  unset ALL
done
