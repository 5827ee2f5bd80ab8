#!/usr/bin/env bash
# The kcdproxy test lab: a Samba AD DC (EXAMPLE.TEST) in a network namespace, an MIT KDC with an
# LDAP database (MIT.TEST), and a Kerberos-protected Apache backend, all private to one state
# directory (default /tmp/kcdproxy-lab, override with KCD_LAB_DIR). Needs root.
#
#   tests/lab/lab.sh up [--auto]     install what is missing, start everything, write lab.env.
#                                    Already up: a quick OK. --auto (the Rust fixture): mark the
#                                    lab as started for one test run, so `down --auto` may stop it.
#   tests/lab/lab.sh down [--auto|--force]
#                                    stop everything and remove the state directory (its logs are
#                                    kept after a failure, or with KCD_LAB_KEEP_LOGS=1).
#                                    Refuses while a test process holds the lab (users.lock)
#                                    unless --force. --auto: only a lab `up --auto` started, and
#                                    only when no test process uses it any more.
#   tests/lab/lab.sh status          one line per daemon; exit 0 only when all are up.
#   tests/lab/lab.sh env             the KEY=VALUE lines tests read (also $KCD_LAB_DIR/lab.env).
#
# `up` prints progress on stderr and, last, one line on stdout: KCD_LAB_UP=started|already.
# KCD_LAB_SKIP_INSTALL=1 skips the package check (scripts/install-deps.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

LOCK_FD=
SAMBA_JOB=
USERS_LOCK=$LAB_DIR/users.lock

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Serialises up/down on one state directory. The lock is the directory itself; `down` may remove
# it while we wait, so after locking, check that the path still names the locked directory.
lock_lab_dir() {
  local waited=0
  while :; do
    mkdir -p "$LAB_DIR"
    exec {LOCK_FD}<"$LAB_DIR"
    if ! flock -n "$LOCK_FD"; then
      [ "$waited" = 1 ] || log "waiting for another lab.sh working on $LAB_DIR (up to 10 min)"
      waited=1
      flock -w 600 "$LOCK_FD" || die "another lab.sh has held $LAB_DIR for 10 minutes; giving up"
    fi
    if [ "$(stat -c %d:%i "$LAB_DIR" 2>/dev/null)" = "$(stat -L -c %d:%i "/proc/self/fd/$LOCK_FD")" ]; then
      return 0
    fi
    exec {LOCK_FD}<&-
  done
}

# Component scripts run without our lock descriptor: a daemon inheriting it would hold the lock
# for its whole life.
component() {
  if [ -n "$LOCK_FD" ]; then "$LAB_SRC/$1.sh" "$2" {LOCK_FD}<&-; else "$LAB_SRC/$1.sh" "$2"; fi
}

all_up() {
  [ -s "$STATE_ENV" ] && [ -s "$LAB_ENV" ] || return 1
  component samba status >/dev/null 2>&1 && component mit status >/dev/null 2>&1 \
    && component backend status >/dev/null 2>&1
}

# Test processes hold users.lock shared while they use the lab; exclusive = nobody uses it.
lab_in_use() {
  [ -e "$USERS_LOCK" ] || return 1
  ! flock -n -x "$USERS_LOCK" true
}

lab_users() { lslocks -n -o PID,PATH 2>/dev/null | awk -v p="$USERS_LOCK" '$2 == p {print $1}' | sort -u | paste -sd' '; }

# Stops every daemon of this lab and removes its network namespace; keeps files.
stop_all() {
  if load_state; then
    component backend down || true
    component mit down || true
    component samba down || true
  fi
  # Whatever an interrupted `up` left without a pid file: lab daemons whose command line names
  # this state directory. Only those daemon names, so an editor or `tail -f` on a log survives.
  local p cmd comm
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] && continue
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    case "$comm" in
      samba | winbindd | slapd | krb5kdc | apache2 | ntlm_auth | wbinfo) ;;
      *) continue ;;
    esac
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *"$LAB_DIR/"*) stop_pid "$comm" "$p" || true ;;
    esac
  done
}

# Empties the state directory; logs (and the failure note) stay when asked for or after a failure.
remove_state() {
  local keep=0
  [ -e "$LAB_DIR/FAILED" ] && keep=1
  [ "${KCD_LAB_KEEP_LOGS:-0}" = 1 ] && keep=1
  if [ "$keep" = 1 ] && [ -d "$LOG_DIR" ]; then
    find "$LAB_DIR" -mindepth 1 -maxdepth 1 ! -name logs ! -name FAILED ! -name .kcdproxy-lab \
      ! -name logs.previous-failure -exec rm -rf {} +
    log "logs kept in $LOG_DIR$([ -e "$LAB_DIR/FAILED" ] && echo " (failed run: $(head -1 "$LAB_DIR/FAILED"))")"
  else
    rm -rf "$LAB_DIR"
  fi
}

allocate() {
  local id hex i net port used=" " ports=()
  id=$(printf '%s' "$LAB_DIR" | cksum | cut -d' ' -f1)
  hex=$(printf '%04x' $((id % 65536)))
  # A link-local /30 that exists only between the host and the DC's namespace; the first one
  # of 169.254.77.0/24 nobody uses (another lab instance may run beside this one).
  for ((i = 0; i < 64; i++)); do
    net=$((i * 4))
    if [ -z "$(ip -o -4 addr show to "169.254.77.$net/30" 2>/dev/null)" ] \
      && [ -z "$(ip -4 route show root "169.254.77.$net/30" 2>/dev/null)" ]; then
      break
    fi
  done
  [ "$i" -lt 64 ] || die "no free /30 in 169.254.77.0/24 for the DC's network namespace"
  # Four free ports (TCP and UDP) from a base derived from the state directory, below the
  # ephemeral range: the daemons' own outgoing connections (KDC -> slapd) take ports from there.
  local low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 20100 ] || low=32768
  port=$((20000 + (id % ((low - 20000) / 10)) * 10))
  while [ "${#ports[@]}" -lt 4 ]; do
    port=$((port + 1))
    [ "$port" -lt "$low" ] || port=20001
    if port_free "$port" && [[ "$used" != *" $port "* ]]; then
      ports+=("$port")
      used+="$port "
    fi
  done
  local created=1
  [ -d /run/netns ] && created=0
  (
    umask 077
    cat >"$STATE_ENV" <<EOF
LAB_INSTANCE=$(date +%s)-$$-$(openssl rand -hex 4)
NETNS=kcdlab-$hex
NETNS_DIR_CREATED=$created
VETH_HOST=kcdl${hex}h
VETH_DC=kcdl${hex}d
HOST_ADDR=169.254.77.$((net + 1))
DC_ADDR=169.254.77.$((net + 2))
MIT_KDC_PORT=${ports[0]}
MIT_LDAP_PORT=${ports[1]}
BACKEND_HTTP_PORT=${ports[2]}
BACKEND_HTTPS_PORT=${ports[3]}
AD_ADMIN_PASSWORD=Adm-$(openssl rand -hex 12)-9Z
AD_PROXY_PASSWORD=Svc-$(openssl rand -hex 12)-7Q
AD_BACKEND_PASSWORD=Svc-$(openssl rand -hex 12)-5W
MIT_MASTER_PASSWORD=$(openssl rand -hex 16)
MIT_LDAP_PASSWORD=$(openssl rand -hex 16)
EOF
  )
}

write_krb5_conf() {
  # No [domain_realm]: example.test names exist in both realms, so an MIT client asks the realm
  # of its own TGT (referral) for HTTP/backend.example.test and each realm serves its own.
  local default
  for default in "$AD_REALM:$KRB5_CONF" "$MIT_REALM:$KRB5_MIT_CONF"; do
    cat >"${default#*:}" <<EOF
# kcdproxy lab client configuration (generated by tests/lab/lab.sh; use through KRB5_CONFIG).
[libdefaults]
  default_realm = ${default%%:*}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  rdns = false
  dns_canonicalize_hostname = false
  forwardable = true
  permitted_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96
  default_tkt_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96
  default_tgs_enctypes = aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96

[realms]
  $AD_REALM = {
    kdc = $DC_ADDR:88
    admin_server = $DC_ADDR
  }
  $MIT_REALM = {
    kdc = 127.0.0.1:$MIT_KDC_PORT
  }
EOF
    chmod 644 "${default#*:}"
  done
}

write_lab_env() {
  local alice_hash bob_hash carol_hash
  alice_hash=$(awk -F: -v u="$ALICE" '$1 == u {print $2}' "$NT_HASH_FILE")
  carol_hash=$(awk -F: -v u="$CAROL" '$1 == u {print $2}' "$NT_HASH_FILE")
  bob_hash=$(awk -F: -v u="$BOB" '$1 == u {print $2}' "$NT_HASH_FILE")
  cat >"$LAB_ENV.tmp" <<EOF
# kcdproxy lab, instance $LAB_INSTANCE (tests/lab/lab.sh env). Test secrets only.
KCD_LAB_DIR=$LAB_DIR
KCD_LAB_INSTANCE=$LAB_INSTANCE
KCD_LAB_LOG_DIR=$LOG_DIR
KRB5_CONFIG=$KRB5_CONF
KCD_LAB_KRB5_CONFIG=$KRB5_CONF
KCD_LAB_MIT_KRB5_CONFIG=$KRB5_MIT_CONF
KRB5RCACHEDIR=$RCACHE_DIR
KCD_LAB_AD_REALM=$AD_REALM
KCD_LAB_AD_DOMAIN=$AD_DOMAIN
KCD_LAB_AD_DNS_DOMAIN=$AD_DNS_DOMAIN
KCD_LAB_DC_ADDR=$DC_ADDR
KCD_LAB_DC_HOSTNAME=$DC_HOSTNAME
KCD_LAB_DC_NETBIOS=$DC_NETBIOS
KCD_LAB_DC_NETNS=$NETNS
KCD_LAB_HOST_ADDR=$HOST_ADDR
KCD_LAB_AD_KDC=$DC_ADDR:88
KCD_LAB_AD_LDAP_URL=ldap://$DC_ADDR:389
KCD_LAB_AD_PROXY_ACCOUNT=$AD_PROXY_ACCOUNT
KCD_LAB_AD_PROXY_PRINCIPAL=$AD_PROXY_ACCOUNT@$AD_REALM
KCD_LAB_AD_PROXY_KEYTAB=$KEYTAB_DIR/ad-proxy.keytab
KCD_LAB_AD_BACKEND_ACCOUNT=$AD_BACKEND_ACCOUNT
KCD_LAB_AD_BACKEND_KEYTAB=$KEYTAB_DIR/ad-backend.keytab
KCD_LAB_MIT_REALM=$MIT_REALM
KCD_LAB_MIT_KDC=127.0.0.1:$MIT_KDC_PORT
KCD_LAB_MIT_LDAP_URL=ldap://127.0.0.1:$MIT_LDAP_PORT
KCD_LAB_MIT_LDAP_BASE_DN=$MIT_BASE_DN
KCD_LAB_MIT_LDAP_ADMIN_DN=$MIT_ADMIN_DN
KCD_LAB_MIT_LDAP_ADMIN_PASSWORD=$MIT_LDAP_PASSWORD
KCD_LAB_MIT_PROXY_PRINCIPAL=$PROXY_SPN@$MIT_REALM
KCD_LAB_MIT_PROXY_KEYTAB=$KEYTAB_DIR/mit-proxy.keytab
KCD_LAB_MIT_BACKEND_KEYTAB=$KEYTAB_DIR/mit-backend.keytab
KCD_LAB_PROXY_HOST=$PROXY_HOST
KCD_LAB_PROXY_SPN=$PROXY_SPN
KCD_LAB_BACKEND_HOST=$BACKEND_HOST
KCD_LAB_BACKEND_SPN=$BACKEND_SPN
KCD_LAB_NONDELEGABLE_SPN=$OTHER_SPN
KCD_LAB_BACKEND_HTTP=127.0.0.1:$BACKEND_HTTP_PORT
KCD_LAB_BACKEND_HTTPS=127.0.0.1:$BACKEND_HTTPS_PORT
KCD_LAB_BACKEND_HTTP_URL=http://127.0.0.1:$BACKEND_HTTP_PORT
KCD_LAB_BACKEND_HTTPS_URL=https://127.0.0.1:$BACKEND_HTTPS_PORT
KCD_LAB_BACKEND_KEYTAB=$BACKEND_DIR/http.keytab
KCD_LAB_ALICE=$ALICE
KCD_LAB_ALICE_PASSWORD=$ALICE_PASSWORD
KCD_LAB_ALICE_NT_HASH=$alice_hash
KCD_LAB_BOB=$BOB
KCD_LAB_BOB_PASSWORD=$BOB_PASSWORD
KCD_LAB_BOB_NT_HASH=$bob_hash
KCD_LAB_CAROL=$CAROL
KCD_LAB_CAROL_PASSWORD=$CAROL_PASSWORD
KCD_LAB_CAROL_NT_HASH=$carol_hash
KCD_LAB_NT_HASH_FILE=$NT_HASH_FILE
KCD_LAB_CA=$PKI_DIR/ca.pem
KCD_LAB_PROXY_CERT=$PKI_DIR/proxy.pem
KCD_LAB_PROXY_KEY=$PKI_DIR/proxy.key
KCD_LAB_BACKEND_CERT=$PKI_DIR/backend.pem
KCD_LAB_BACKEND_KEY=$PKI_DIR/backend.key
KCD_LAB_SMB_CONF=$SAMBA_CONF
KCD_LAB_WINBIND_SOCKET_DIR=$WINBIND_SOCKET_DIR
KCD_LAB_WINBIND_RUN_DIR=$SAMBA_RUN
KCD_LAB_WITH_WINBIND=$BIN_DIR/with-winbind
KCD_LAB_NTLM_AUTH=$BIN_DIR/ntlm-auth
EOF
  mv "$LAB_ENV.tmp" "$LAB_ENV"
  chmod 644 "$LAB_ENV"
}

# Everything `up` leaves behind when it fails: a note, the daemons stopped, the files kept.
on_up_exit() {
  local rc=$?
  [ "$rc" = 0 ] && return 0
  printf 'lab up failed (exit %s) at %s\n' "$rc" "$(date -Is)" >"$LAB_DIR/FAILED" 2>/dev/null || true
  log "up failed; stopping what was started. Logs: $LOG_DIR (kept until the next up; 'lab.sh down' removes the rest)"
  if [ -n "$SAMBA_JOB" ]; then
    kill -TERM -- "-$SAMBA_JOB" 2>/dev/null || true
    wait "$SAMBA_JOB" 2>/dev/null || true
  fi
  stop_all >/dev/null 2>&1 || true
  exit "$rc"
}

cmd_up() {
  local auto=0
  [ "${1:-}" = --auto ] && auto=1
  need_root
  lock_lab_dir
  if all_up; then
    load_state
    if [ "$auto" = 0 ] && [ -e "$LAB_DIR/autostarted" ]; then
      rm -f "$LAB_DIR/autostarted"
      log "lab adopted: it stays up until tests/lab/lab.sh down"
    fi
    log "already up ($LAB_DIR, instance $LAB_INSTANCE)"
    echo KCD_LAB_UP=already
    return 0
  fi
  if [ -n "$(ls -A "$LAB_DIR")" ] && [ ! -e "$MARKER" ]; then
    die "$LAB_DIR exists and is not a lab state directory (no .kcdproxy-lab): choose another KCD_LAB_DIR"
  fi
  if [ -s "$STATE_ENV" ]; then
    if [ -e "$LAB_DIR/FAILED" ]; then
      log "the previous run failed ($(head -1 "$LAB_DIR/FAILED")); starting afresh, its logs go to $LAB_DIR/logs.previous-failure"
    else
      log "lab in $LAB_DIR is only partly up; stopping it and starting afresh"
    fi
    lab_in_use && die "a test process ($(lab_users)) still uses the half-up lab; stop it first"
    stop_all
  fi

  local t0 t
  t0=$(now)
  if [ "${KCD_LAB_SKIP_INSTALL:-0}" != 1 ]; then
    t=$(now)
    "$REPO_ROOT/scripts/install-deps.sh" "${LAB_PACKAGES[@]}" {LOCK_FD}<&- \
      || die "installing the lab's packages failed (log: /tmp/kcdproxy-apt.log)"
    log "packages checked/installed in $(elapsed "$t") s"
  fi
  t0=$(now)

  # A fresh state directory; the logs of a previous failure move aside instead of vanishing.
  rm -rf "$LAB_DIR/logs.previous-failure"
  [ -e "$LAB_DIR/FAILED" ] && [ -d "$LOG_DIR" ] && mv "$LOG_DIR" "$LAB_DIR/logs.previous-failure"
  find "$LAB_DIR" -mindepth 1 -maxdepth 1 ! -name logs.previous-failure ! -name users.lock -exec rm -rf {} +
  chmod 755 "$LAB_DIR"
  : >"$MARKER"
  mkdir -p "$LOG_DIR" "$RCACHE_DIR" "$KEYTAB_DIR" "$BIN_DIR"
  chmod 755 "$LOG_DIR" "$RCACHE_DIR"
  chmod 700 "$KEYTAB_DIR"
  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM HUP

  allocate
  load_state
  write_krb5_conf
  "$LAB_SRC/certs.sh" "$PKI_DIR"

  # The DC (provisioning: ~10 s of CPU) and the MIT realm (~1 s) are independent: run them at once.
  # The DC's job runs in a session of its own so that a failure or Ctrl-C here can stop all of
  # it (background jobs of a script ignore SIGINT).
  local samba_rc=0 ts tm tb
  ts=$(now)
  setsid "$LAB_SRC/samba.sh" up {LOCK_FD}<&- &
  SAMBA_JOB=$!
  tm=$(now)
  component mit up
  tm=$(elapsed "$tm")
  wait "$SAMBA_JOB" || samba_rc=$?
  SAMBA_JOB=
  [ "$samba_rc" = 0 ] || die "the Samba AD DC did not come up (see the message above)"
  ts=$(elapsed "$ts")
  tb=$(now)
  component backend up
  tb=$(elapsed "$tb")
  write_lab_env
  [ "$auto" = 1 ] && : >"$LAB_DIR/autostarted"
  trap - EXIT INT TERM HUP
  log "up in $(elapsed "$t0") s (samba $ts s in parallel with mit $tm s, backend $tb s); instance $LAB_INSTANCE"
  log "environment: $LAB_ENV (tests/lab/lab.sh env); stop with: tests/lab/lab.sh down"
  echo KCD_LAB_UP=started
}

cmd_down() {
  local mode=${1:-}
  need_root
  if [ ! -d "$LAB_DIR" ]; then
    [ "$mode" = --auto ] || log "already down (no $LAB_DIR)"
    return 0
  fi
  [ -e "$MARKER" ] || die "$LAB_DIR is not a lab state directory (no .kcdproxy-lab); not touching it"
  lock_lab_dir
  if [ ! -e "$MARKER" ]; then  # removed while we waited for the lock
    rmdir "$LAB_DIR" 2>/dev/null || true
    return 0
  fi
  if [ "$mode" = --auto ] && [ ! -e "$LAB_DIR/autostarted" ]; then
    return 0  # started by hand: stays up
  fi
  if [ -e "$USERS_LOCK" ]; then
    exec {users_fd}<>"$USERS_LOCK"
    if ! flock -n -x "$users_fd"; then
      case "$mode" in
        --auto) log "lab still used by test process(es) $(lab_users); left up"; return 0 ;;
        --force) log "WARNING: stopping the lab under test process(es) $(lab_users)" ;;
        *) die "lab in use by test process(es) $(lab_users); wait for them or use 'down --force'" ;;
      esac
    fi
  fi
  local t0
  t0=$(now)
  stop_all
  remove_state
  log "down in $(elapsed "$t0") s"
}

cmd_status() {
  if ! load_state; then
    echo "lab: down (no state in $LAB_DIR)"
    return 3
  fi
  local rc=0
  echo "lab: $LAB_DIR, instance $LAB_INSTANCE$([ -e "$LAB_DIR/autostarted" ] && echo ', started by a test run')"
  component samba status || rc=1
  component mit status || rc=1
  component backend status || rc=1
  if [ -s "$LAB_ENV" ]; then echo "environment: $LAB_ENV"; else echo "lab.env: missing"; rc=1; fi
  [ -e "$LAB_DIR/FAILED" ] && echo "last failure: $(head -1 "$LAB_DIR/FAILED")"
  if lab_in_use; then echo "in use by test process(es): $(lab_users)"; fi
  return "$rc"
}

check_lab_dir
case "${1:-}" in
  up) cmd_up "${2:-}" ;;
  down) cmd_down "${2:-}" ;;
  status) cmd_status ;;
  env)
    [ -s "$LAB_ENV" ] || die "the lab is not up ($LAB_ENV missing): run tests/lab/lab.sh up"
    grep -v '^#' "$LAB_ENV"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
