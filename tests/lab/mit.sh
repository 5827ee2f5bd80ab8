#!/usr/bin/env bash
# The lab's second KDC family: MIT krb5kdc with its database in LDAP (a private slapd), the way
# FreeIPA runs it. Realm MIT.TEST, the same principals as the AD side, and constrained delegation
# through the LDAP attribute krbAllowedToDelegateTo (MIT's default DB2 database cannot do S4U2Proxy).
#
#   tests/lab/mit.sh up|down|status      (normally called by tests/lab/lab.sh)
#
# Both daemons listen on 127.0.0.1 only, on ports lab.sh allocated (state.env).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
load_state || die "mit.sh: $STATE_ENV missing: run tests/lab/lab.sh up"

SLAPD_LOG=$LOG_DIR/slapd.log
KDC_LOG=$LOG_DIR/krb5kdc.log
SLAPD_PID_FILE=$MIT_DIR/slapd.pid
KDC_PID_FILE=$MIT_DIR/krb5kdc.pid
LDAP_URL=ldap://127.0.0.1:$MIT_LDAP_PORT
KDC_CONF=$MIT_DIR/kdc.conf
REALM_DN=cn=$MIT_REALM,cn=krbContainer,$MIT_BASE_DN

# The KDC and the admin tools see the lab client config plus kdc.conf, nothing of the host's.
mit_env() { KRB5_CONFIG=$KRB5_MIT_CONF KRB5_KDC_PROFILE=$KDC_CONF KRB5RCACHEDIR=$RCACHE_DIR "$@"; }

start_slapd() {
  mkdir -p "$MIT_DIR/ldap-db"
  zcat /usr/share/doc/krb5-kdc-ldap/kerberos.schema.gz >"$MIT_DIR/kerberos.schema"
  cat >"$MIT_DIR/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
include $MIT_DIR/kerberos.schema
pidfile $SLAPD_PID_FILE
argsfile $MIT_DIR/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "$MIT_BASE_DN"
rootdn "$MIT_ADMIN_DN"
rootpw $MIT_LDAP_PASSWORD
directory $MIT_DIR/ldap-db
maxsize 268435456
index objectClass eq
index krbPrincipalName eq,pres,sub
EOF
  chmod 600 "$MIT_DIR/slapd.conf"
  local dc=${MIT_BASE_DN#dc=}
  dc=${dc%%,*}
  printf 'dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: kcdproxy lab\ndc: %s\n' \
    "$MIT_BASE_DN" "$dc" >"$MIT_DIR/base.ldif"
  slapadd -f "$MIT_DIR/slapd.conf" -l "$MIT_DIR/base.ldif" >"$SLAPD_LOG" 2>&1 \
    || fail_daemon slapadd "$SLAPD_LOG" "loading the base entry failed"
  # -d 0: stay in the foreground (so stderr, where slapd reports its errors, goes to the log) with
  # no debug output; setsid detaches it from our terminal and process group.
  setsid slapd -f "$MIT_DIR/slapd.conf" -h "$LDAP_URL/" -d 0 >>"$SLAPD_LOG" 2>&1 </dev/null &
  local pid=$!
  local deadline=$((SECONDS + 15))
  until tcp_open 127.0.0.1 "$MIT_LDAP_PORT"; do
    alive "$pid" || fail_daemon slapd "$SLAPD_LOG" "slapd exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || fail_daemon slapd "$SLAPD_LOG" "not listening on $LDAP_URL after 15s"
    sleep 0.1
  done
}

create_realm() {
  cat >"$KDC_CONF" <<EOF
[kdcdefaults]
  kdc_listen = 127.0.0.1:$MIT_KDC_PORT
  kdc_tcp_listen = 127.0.0.1:$MIT_KDC_PORT

[realms]
  $MIT_REALM = {
    database_module = ldapconf
    key_stash_file = $MIT_DIR/stash
    acl_file = $MIT_DIR/kadm5.acl
    master_key_type = aes256-cts-hmac-sha1-96
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    max_life = 10h
    max_renewable_life = 7d
  }

[dbmodules]
  ldapconf = {
    db_library = kldap
    ldap_kerberos_container_dn = cn=krbContainer,$MIT_BASE_DN
    ldap_kdc_dn = $MIT_ADMIN_DN
    ldap_kadmind_dn = $MIT_ADMIN_DN
    ldap_service_password_file = $MIT_DIR/ldap.stash
    ldap_servers = $LDAP_URL
  }

[plugins]
  # SPAKE has no groups configured here; disabled, it stops logging an error at every start.
  kdcpreauth = {
    disable = spake
  }

[logging]
  kdc = FILE:$KDC_LOG
  admin_server = FILE:$LOG_DIR/kadmin.log
  default = FILE:$LOG_DIR/krb5-admin-tools.log
EOF
  : >"$MIT_DIR/kadm5.acl"
  local tools_log=$LOG_DIR/krb5-admin-tools.log
  mit_env kdb5_ldap_util -D "$MIT_ADMIN_DN" -w "$MIT_LDAP_PASSWORD" -H "$LDAP_URL" \
    create -subtrees "$MIT_BASE_DN" -r "$MIT_REALM" -s -P "$MIT_MASTER_PASSWORD" >>"$tools_log" 2>&1 \
    || fail_daemon kdb5_ldap_util "$tools_log" "creating realm $MIT_REALM in LDAP failed"
  printf '%s\n%s\n' "$MIT_LDAP_PASSWORD" "$MIT_LDAP_PASSWORD" \
    | mit_env kdb5_ldap_util -D "$MIT_ADMIN_DN" -w "$MIT_LDAP_PASSWORD" -H "$LDAP_URL" \
      stashsrvpw -f "$MIT_DIR/ldap.stash" "$MIT_ADMIN_DN" >>"$tools_log" 2>&1 \
    || fail_daemon kdb5_ldap_util "$tools_log" "stashing the LDAP password failed"

  # Users need pre-authentication; services must not (a protocol-transition evidence ticket has
  # no pre-auth flag, and the KDC refuses S4U2Proxy to a +requires_preauth service: "NO PREAUTH").
  # -allow_forwardable makes bob's tickets non-forwardable: MIT's "sensitive, cannot be delegated".
  # +ok_to_auth_as_delegate: protocol transition (AD's TrustedToAuthForDelegation).
  local r=$MIT_REALM k=$KEYTAB_DIR
  rm -f "$k/mit-proxy.keytab" "$k/mit-backend.keytab"
  mit_env kadmin.local -r "$MIT_REALM" >>"$tools_log" 2>&1 <<EOF || fail_daemon kadmin.local "$tools_log" "creating principals failed"
addprinc -pw $ALICE_PASSWORD +requires_preauth $ALICE@$r
addprinc -pw $BOB_PASSWORD +requires_preauth -allow_forwardable $BOB@$r
addprinc -pw $CAROL_PASSWORD +requires_preauth $CAROL@$r
addprinc -randkey +ok_to_auth_as_delegate $PROXY_SPN@$r
addprinc -randkey $BACKEND_SPN@$r
addprinc -randkey $OTHER_SPN@$r
ktadd -k $k/mit-proxy.keytab $PROXY_SPN@$r
ktadd -k $k/mit-backend.keytab $BACKEND_SPN@$r $OTHER_SPN@$r
EOF
  if ! [ -s "$k/mit-proxy.keytab" ] || ! [ -s "$k/mit-backend.keytab" ]; then
    fail_daemon kadmin.local "$tools_log" "keytabs were not written"
  fi
  chmod 600 "$k/mit-proxy.keytab" "$k/mit-backend.keytab"

  # The delegation list: only the backend SPN. kadmin has no option for it; it is plain LDAP.
  ldapmodify -x -H "$LDAP_URL" -D "$MIT_ADMIN_DN" -w "$MIT_LDAP_PASSWORD" >>"$SLAPD_LOG" 2>&1 <<EOF \
    || fail_daemon ldapmodify "$SLAPD_LOG" "setting krbAllowedToDelegateTo failed"
dn: krbPrincipalName=$PROXY_SPN@$r,$REALM_DN
changetype: modify
add: krbAllowedToDelegateTo
krbAllowedToDelegateTo: $BACKEND_SPN@$r
EOF
}

start_kdc() {
  : >>"$KDC_LOG"
  mit_env krb5kdc -r "$MIT_REALM" -P "$KDC_PID_FILE" >>"$KDC_LOG" 2>&1 \
    || fail_daemon krb5kdc "$KDC_LOG" "krb5kdc failed to start"
  wait_until 10 krb5kdc "$KDC_LOG" test -s "$KDC_PID_FILE"
  local pid deadline=$((SECONDS + 15))
  pid=$(pid_of "$KDC_PID_FILE")
  until tcp_open 127.0.0.1 "$MIT_KDC_PORT"; do
    alive "$pid" || fail_daemon krb5kdc "$KDC_LOG" "krb5kdc exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || fail_daemon krb5kdc "$KDC_LOG" "not listening on 127.0.0.1:$MIT_KDC_PORT after 15s"
    sleep 0.1
  done
}

status_line() {  # status_line NAME PIDFILE PORT LOG
  local pid
  pid=$(pid_of "$2" || true)
  if alive "$pid" && tcp_open 127.0.0.1 "$3"; then
    printf '%-9s up    pid %s, 127.0.0.1:%s, log %s\n' "$1" "$pid" "$3" "$4"
  else
    printf '%-9s DOWN  (pid %s, port %s, log %s)\n' "$1" "${pid:-none}" "$3" "$4"
    return 1
  fi
}

case "${1:-}" in
  up)
    mkdir -p "$MIT_DIR" "$KEYTAB_DIR"
    chmod 700 "$MIT_DIR"
    start_slapd
    create_realm
    start_kdc
    ;;
  down)
    stop_pid krb5kdc "$(pid_of "$KDC_PID_FILE" || true)" || true
    stop_pid slapd "$(pid_of "$SLAPD_PID_FILE" || true)" || true
    ;;
  status)
    rc=0
    status_line slapd "$SLAPD_PID_FILE" "$MIT_LDAP_PORT" "$SLAPD_LOG" || rc=1
    status_line krb5kdc "$KDC_PID_FILE" "$MIT_KDC_PORT" "$KDC_LOG" || rc=1
    exit "$rc"
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
