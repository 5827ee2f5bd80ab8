# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this file
# Shared helpers for the lab scripts (sourced, never run). Everything the lab creates lives under
# one state directory, $LAB_DIR; this file names its layout, the fixed lab identities, and the
# bounded waits every script uses so that a daemon that does not come up is reported by name and
# log file instead of hanging.

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAB_SRC/../.." && pwd)
LAB_DIR=${KCD_LAB_DIR:-/tmp/kcdproxy-lab}
# Debian's interpreter: samba's Python bindings live there, and www-data must be able to run the
# backend's CGI (a pyenv shim under /root would be found first on PATH otherwise).
PY=/usr/bin/python3

# Fixed lab identities. Passwords of people are fixed so that humans and tests can type them;
# service, admin and database secrets are random per `up` (state.env).
AD_REALM=EXAMPLE.TEST
AD_DOMAIN=EXAMPLE
AD_DNS_DOMAIN=example.test
DC_NETBIOS=DC1
DC_HOSTNAME=dc1.example.test
MIT_REALM=MIT.TEST
MIT_BASE_DN=dc=mit,dc=test
MIT_ADMIN_DN=cn=admin,dc=mit,dc=test
PROXY_HOST=proxy.example.test
BACKEND_HOST=backend.example.test
OTHER_HOST=other.example.test
PROXY_SPN=HTTP/$PROXY_HOST
BACKEND_SPN=HTTP/$BACKEND_HOST
OTHER_SPN=HTTP/$OTHER_HOST
AD_PROXY_ACCOUNT=svc-proxy
AD_BACKEND_ACCOUNT=svc-backend
ALICE=alice
ALICE_PASSWORD=Alice-Lab-Pw1
BOB=bob
BOB_PASSWORD=Bob-Lab-Pw1
# A second delegable user: two users interleaved must never see each other's identity.
CAROL=carol
CAROL_PASSWORD=Carol-Lab-Pw1
# Debian packages the lab needs (scripts/install-deps.sh adds the build/test base set).
# samba-dsdb-modules, samba-vfs-modules and samba-ad-provision are only "Recommends" of samba,
# and install-deps.sh installs without recommends: provisioning fails without them.
LAB_PACKAGES=(samba samba-dsdb-modules samba-vfs-modules samba-ad-provision winbind smbclient
  libwbclient-dev krb5-user krb5-kdc krb5-admin-server krb5-kdc-ldap slapd ldap-utils
  apache2 libapache2-mod-auth-gssapi openssl curl python3 iproute2 util-linux)

# Layout of the state directory.
STATE_ENV=$LAB_DIR/state.env   # allocated names, addresses, ports and secrets of this instance
LAB_ENV=$LAB_DIR/lab.env       # what tests read (lab.sh env)
MARKER=$LAB_DIR/.kcdproxy-lab  # down deletes only directories that carry it
LOG_DIR=$LAB_DIR/logs
KRB5_CONF=$LAB_DIR/krb5.conf
KRB5_MIT_CONF=$LAB_DIR/krb5-mit.conf
RCACHE_DIR=$LAB_DIR/rcache
PKI_DIR=$LAB_DIR/pki
KEYTAB_DIR=$LAB_DIR/keytabs
BIN_DIR=$LAB_DIR/bin
SAMBA_DIR=$LAB_DIR/samba
SAMBA_CONF=$SAMBA_DIR/etc/smb.conf
# Bound over /run/samba in a private mount namespace (bin/with-winbind): Samba's client library
# ignores "winbindd socket directory" and only looks for /run/samba/winbindd/pipe.
SAMBA_RUN=$SAMBA_DIR/run-samba
WINBIND_SOCKET_DIR=$SAMBA_RUN/winbindd
MIT_DIR=$LAB_DIR/mit
BACKEND_DIR=$LAB_DIR/backend
NT_HASH_FILE=$LAB_DIR/nt-hashes

log() { printf '[lab %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  printf '[lab %s] ERROR: %s\n' "$(date +%T)" "$*" >&2
  exit 1
}

# tail_log FILE: the end of a daemon's log, indented, for error messages.
tail_log() {
  if [ -s "$1" ]; then
    printf '    --- last lines of %s ---\n' "$1" >&2
    tail -n 15 "$1" | sed 's/^/    | /' >&2
  else
    printf '    (log %s is empty or missing)\n' "$1" >&2
  fi
}

# fail_daemon NAME LOG MESSAGE: the standard "which daemon, which log" failure.
fail_daemon() {
  printf '[lab %s] ERROR: %s: %s (log: %s)\n' "$(date +%T)" "$1" "$3" "$2" >&2
  tail_log "$2"
  exit 1
}

# wait_until SECONDS NAME LOG CMD...: polls CMD every 0.1 s; gives up with a clear message.
wait_until() {
  local limit=$1 name=$2 logf=$3
  shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail_daemon "$name" "$logf" "not ready after ${limit}s (waited for: $*)"
    fi
    sleep 0.1
  done
}

# alive PID: true while PID runs (a zombie counts as dead: stopped daemons linger as zombies).
alive() {
  local stat
  [ -n "${1:-}" ] && stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

pid_of() { [ -s "$1" ] && tr -dc '0-9' <"$1"; }

# stop_pid NAME PID: TERM, wait up to 10 s, then KILL (and its process group, if it leads one).
stop_pid() {
  local name=$1 pid=$2 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  log "$name (pid $pid) ignored TERM for 10 s; killing it"
  if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  log "WARNING: $name (pid $pid) still alive after KILL"
  return 1
}

# tcp_open HOST PORT: true when something accepts TCP connections there (1 s bound).
tcp_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# port_free PORT: nothing listens on it (TCP or UDP, any address).
port_free() { [ -z "$(ss -Htuln "sport = :$1" 2>/dev/null)" ]; }

load_state() {
  [ -s "$STATE_ENV" ] || return 1
  # shellcheck source=/dev/null
  . "$STATE_ENV"
}

# with_lab_krb5 CMD...: runs CMD with the lab's Kerberos configuration and nothing of the host's.
with_lab_krb5() {
  KRB5_CONFIG=$KRB5_CONF KRB5RCACHEDIR=$RCACHE_DIR "$@"
}

check_lab_dir() {
  case "$LAB_DIR" in
    /*) ;;
    *) die "KCD_LAB_DIR must be an absolute path (got '$LAB_DIR')" ;;
  esac
  [[ "$LAB_DIR" =~ ^/[A-Za-z0-9._/-]+$ ]] \
    || die "KCD_LAB_DIR may hold only letters, digits and ._/- (got '$LAB_DIR'): it goes into daemon configs"
  case "$LAB_DIR" in
    / | /tmp | /tmp/ | /root | /home | /var | /usr | /etc) die "KCD_LAB_DIR=$LAB_DIR is not a private directory" ;;
  esac
}

need_root() { [ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, port 88 in the DC's namespace, daemons)"; }
