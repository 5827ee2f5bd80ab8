#!/usr/bin/env bash
# The lab's Active Directory: a Samba AD DC (realm EXAMPLE.TEST, NetBIOS EXAMPLE) in its own
# network namespace, reached from the host over a veth pair with a link-local /30.
#
#   tests/lab/samba.sh up|down|status      (normally called by tests/lab/lab.sh)
#
# up: provision, create the accounts (samba_accounts.py), write AES-only keytabs, start `samba`
# (KDC, LDAP, RPC, and its own winbindd for NTLM validation), wait until the KDC answers and
# winbindd reaches the DC's netlogon service.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
load_state || die "samba.sh: $STATE_ENV missing: run tests/lab/lab.sh up"

SAMBA_LOG=$LOG_DIR/samba.log
SAMBA_PID_FILE=$SAMBA_DIR/run/samba.pid

netns_exists() { [ -e "/run/netns/$NETNS" ]; }

netns_up() {
  netns_exists && netns_down
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip link add "$VETH_HOST" type veth peer name "$VETH_DC" netns "$NETNS"
  ip addr add "$HOST_ADDR/30" dev "$VETH_HOST"
  ip link set "$VETH_HOST" up
  ip -n "$NETNS" addr add "$DC_ADDR/30" dev "$VETH_DC"
  ip -n "$NETNS" link set "$VETH_DC" up
}

netns_down() {
  local pids i
  if netns_exists; then
    # Every process in the namespace is the DC's (samba's prefork workers rename themselves, so
    # the namespace is what identifies them, not their names).
    stop_pid samba "$(pid_of "$SAMBA_PID_FILE" || true)" || true
    for ((i = 0; i < 50; i++)); do
      pids=$(ip netns pids "$NETNS" 2>/dev/null || true)
      [ -z "$pids" ] && break
      # shellcheck disable=SC2086 # one PID per word
      if [ "$i" = 20 ]; then kill -KILL $pids 2>/dev/null || true; else kill -TERM $pids 2>/dev/null || true; fi
      sleep 0.1
    done
    pids=$(ip netns pids "$NETNS" 2>/dev/null || true)
    [ -z "$pids" ] || log "WARNING: processes still in namespace $NETNS: $pids"
    ip netns del "$NETNS" 2>/dev/null || log "WARNING: could not delete network namespace $NETNS"
  fi
  # The veth pair dies with the namespace; this covers an `up` that failed half-way.
  if ip link show "$VETH_HOST" >/dev/null 2>&1; then ip link del "$VETH_HOST" 2>/dev/null || true; fi
  # `ip netns add` turned /run/netns into a mount point; undo that if this lab created it and
  # nobody else has a namespace there now.
  if [ "${NETNS_DIR_CREATED:-0}" = 1 ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    if mountpoint -q /run/netns; then umount -n /run/netns 2>/dev/null || true; fi
    rmdir /run/netns 2>/dev/null || true
  fi
}

provision() {
  rm -rf "$SAMBA_DIR"
  mkdir -p "$SAMBA_DIR/run" "$SAMBA_DIR/ncalrpc" "$SAMBA_DIR/ntp_signd" "$WINBIND_SOCKET_DIR"
  chmod 755 "$SAMBA_DIR" "$SAMBA_RUN" "$WINBIND_SOCKET_DIR"
  # -s /dev/null: none of Debian's default shares or settings from /etc/samba/smb.conf.
  # Services: only KDC, LDAP, RPC (netlogon, for winbindd's NTLM checks) and winbindd; no file
  # server, DNS, replication or NetBIOS.
  if ! (cd "$SAMBA_DIR" && samba-tool domain provision -s /dev/null \
    --realm="$AD_REALM" --domain="$AD_DOMAIN" --server-role=dc --dns-backend=SAMBA_INTERNAL \
    --host-name="${DC_HOSTNAME%%.*}" --host-ip="$DC_ADDR" --targetdir="$SAMBA_DIR" \
    --adminpass="$AD_ADMIN_PASSWORD" \
    --option="interfaces=lo $VETH_DC" --option="bind interfaces only=yes" \
    --option="pid directory=$SAMBA_DIR/run" --option="winbindd socket directory=$WINBIND_SOCKET_DIR" \
    --option="ncalrpc dir=$SAMBA_DIR/ncalrpc" --option="ntp signd socket directory=$SAMBA_DIR/ntp_signd" \
    --option="log file=$SAMBA_LOG" --option="max log size=20000" --option="disable netbios=yes" \
    --option="server services=rpc ldap kdc winbindd" \
    >"$LOG_DIR/samba-provision.log" 2>&1); then
    fail_daemon "samba-tool domain provision" "$LOG_DIR/samba-provision.log" "provisioning failed"
  fi
  # Provisioning copies the host's resolver as a DNS forwarder; the lab has no outside network.
  sed -i '/^[[:space:]]*dns forwarder[[:space:]]*=/d' "$SAMBA_CONF"
}

create_accounts() {
  local secrets=$SAMBA_DIR/accounts.secrets out
  (
    umask 077
    printf '%s\n' "ALICE=$ALICE" "ALICE_PASSWORD=$ALICE_PASSWORD" "BOB=$BOB" "BOB_PASSWORD=$BOB_PASSWORD" \
      "CAROL=$CAROL" "CAROL_PASSWORD=$CAROL_PASSWORD" \
      "PROXY_ACCOUNT=$AD_PROXY_ACCOUNT" "PROXY_PASSWORD=$AD_PROXY_PASSWORD" \
      "BACKEND_ACCOUNT=$AD_BACKEND_ACCOUNT" "BACKEND_PASSWORD=$AD_BACKEND_PASSWORD" \
      "PROXY_SPN=$PROXY_SPN" "BACKEND_SPN=$BACKEND_SPN" "OTHER_SPN=$OTHER_SPN" >"$secrets"
  )
  if ! out=$(cd "$SAMBA_DIR" && "$PY" "$LAB_SRC/samba_accounts.py" "$SAMBA_CONF" "$secrets" "$NT_HASH_FILE" \
    2>"$LOG_DIR/samba-accounts.log"); then
    fail_daemon "samba_accounts.py" "$LOG_DIR/samba-accounts.log" "creating the AD accounts failed"
  fi
  rm -f "$secrets"
  chmod 644 "$NT_HASH_FILE"
  AD_PROXY_KVNO=$(awk -v a="$AD_PROXY_ACCOUNT" '$1 == "KVNO" && $2 == a {print $3}' <<<"$out")
  AD_BACKEND_KVNO=$(awk -v a="$AD_BACKEND_ACCOUNT" '$1 == "KVNO" && $2 == a {print $3}' <<<"$out")
  if [ -z "$AD_PROXY_KVNO" ] || [ -z "$AD_BACKEND_KVNO" ]; then
    die "samba_accounts.py printed no key versions: $out"
  fi
}

# ad_keytab FILE ACCOUNT PASSWORD KVNO PRINCIPAL...: AES keys for each principal name, salted the
# AD way (REALM + account name). `samba-tool domain exportkeytab --principal=<SPN>` would write
# only an RC4 key, so the keys are derived here from the password.
ad_keytab() {
  local file=$1 account=$2 password=$3 kvno=$4 p e
  shift 4
  rm -f "$file"
  {
    for p in "$@"; do
      for e in aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96; do
        printf 'addent -password -p %s -k %s -e %s -s %s\n%s\n' "$p@$AD_REALM" "$kvno" "$e" \
          "$AD_REALM$account" "$password"
      done
    done
    printf 'wkt %s\nquit\n' "$file"
  } | ktutil >/dev/null 2>"$LOG_DIR/ktutil.log" || fail_daemon ktutil "$LOG_DIR/ktutil.log" "writing $file failed"
  [ -s "$file" ] || fail_daemon ktutil "$LOG_DIR/ktutil.log" "$file was not written"
  chmod 600 "$file"
}

write_wrappers() {
  mkdir -p "$BIN_DIR"
  # bin/with-winbind CMD...: runs CMD where libwbclient finds the lab's winbindd.
  cat >"$BIN_DIR/with-winbind" <<EOF
#!/bin/sh
# Runs a command in a private mount namespace in which /run/samba is the lab DC's run directory:
# Samba's client library (wbinfo, ntlm_auth, anything linked to libwbclient) looks for winbindd only
# at /run/samba/winbindd/pipe and ignores "winbindd socket directory". Outside that namespace
# nothing changes. Needs root (mount namespaces). Generated by tests/lab/samba.sh.
exec unshare --mount --propagation private -- /bin/sh -ec '
  if [ ! -d /run/samba ]; then mount -n -t tmpfs -o mode=0755 kcdproxy-lab /run; mkdir /run/samba; fi
  mount -n --bind "\$0" /run/samba
  exec "\$@"' "$SAMBA_RUN" "\$@"
EOF
  # bin/ntlm-auth ARGS...: the DC's ntlm_auth, e.g. --helper-protocol=ntlm-server-1.
  cat >"$BIN_DIR/ntlm-auth" <<EOF
#!/bin/sh
# ntlm_auth against the lab DC's winbindd (see with-winbind). Generated by tests/lab/samba.sh.
exec "$BIN_DIR/with-winbind" ntlm_auth --configfile="$SAMBA_CONF" "\$@"
EOF
  chmod 755 "$BIN_DIR/with-winbind" "$BIN_DIR/ntlm-auth"
}

start_dc() {
  : >>"$SAMBA_LOG"
  # The DC's Heimdal reads KRB5_CONFIG: give it the provisioned one, never the host's.
  if ! env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin KRB5_CONFIG="$SAMBA_DIR/private/krb5.conf" \
    ip netns exec "$NETNS" "$BIN_DIR/with-winbind" samba -s "$SAMBA_CONF" -D >>"$SAMBA_LOG" 2>&1; then
    fail_daemon samba "$SAMBA_LOG" "samba -D failed to start"
  fi
  local deadline=$((SECONDS + 60)) pid
  wait_until 10 samba "$SAMBA_LOG" test -s "$SAMBA_PID_FILE"
  pid=$(pid_of "$SAMBA_PID_FILE")
  # Ready = KDC and LDAP accept connections on the DC's address, and winbindd has a netlogon
  # connection to the DC (what NTLM validation needs).
  until tcp_open "$DC_ADDR" 88 && tcp_open "$DC_ADDR" 389 \
    && timeout 10 "$BIN_DIR/with-winbind" wbinfo --ping-dc >/dev/null 2>&1; do
    alive "$pid" || fail_daemon samba "$SAMBA_LOG" "samba (pid $pid) exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] \
      || fail_daemon "samba (KDC $DC_ADDR:88, LDAP :389, winbindd)" "$SAMBA_LOG" "not ready after 60s"
    sleep 0.2
  done
}

case "${1:-}" in
  up)
    netns_up
    provision
    create_accounts
    mkdir -p "$KEYTAB_DIR"
    ad_keytab "$KEYTAB_DIR/ad-proxy.keytab" "$AD_PROXY_ACCOUNT" "$AD_PROXY_PASSWORD" "$AD_PROXY_KVNO" \
      "$AD_PROXY_ACCOUNT" "$PROXY_SPN"
    ad_keytab "$KEYTAB_DIR/ad-backend.keytab" "$AD_BACKEND_ACCOUNT" "$AD_BACKEND_PASSWORD" "$AD_BACKEND_KVNO" \
      "$AD_BACKEND_ACCOUNT" "$BACKEND_SPN" "$OTHER_SPN"
    write_wrappers
    start_dc
    ;;
  down)
    netns_down
    ;;
  status)
    pid=$(pid_of "$SAMBA_PID_FILE" || true)
    if netns_exists && alive "$pid" && tcp_open "$DC_ADDR" 88; then
      echo "samba     up    pid $pid, KDC $DC_ADDR:88, netns $NETNS, log $SAMBA_LOG"
    else
      echo "samba     DOWN  (netns $NETNS $(netns_exists && echo present || echo absent), pid ${pid:-none}, log $SAMBA_LOG)"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
