#!/usr/bin/env bash
# Proves that the lab leaves the machine as it found it, and measures it:
#   snapshot -> up -> selfcheck -> down -> snapshot -> diff -> up again -> down.
#
#   tests/lab/cleancheck.sh            (the lab must be down; needs root)
#
# The snapshot covers what the lab could leak: network namespaces, links and addresses, mounts,
# the lab's daemons, SysV IPC, and files in the places Samba, MIT krb5, OpenLDAP and Apache write
# by default. Other users of a shared machine may change some of these meanwhile; the diff names
# every difference, and this script fails on any that mentions the lab.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
[ ! -e "$LAB_DIR" ] || die "cleancheck: $LAB_DIR exists: run tests/lab/lab.sh down first"

snapshot() {
  echo "## netns"; ip netns list 2>/dev/null; [ -d /run/netns ] && echo "/run/netns exists"
  echo "## links"; ip -o link show | awk '{print $2}' | sort
  echo "## addresses"; ip -o addr show | awk '{print $2, $4}' | sort
  echo "## mounts"; findmnt -rn -o TARGET,FSTYPE | sort
  echo "## daemons"
  for d in samba winbindd slapd krb5kdc apache2 ntlm_auth; do pgrep -a -x "$d" | cut -d' ' -f2- || true; done | sort
  echo "## sysv ipc"; ipcs -a | awk 'NF && $1 ~ /^0x/ {print $1, $3, $4}' | sort
  echo "## files"
  find /run /var/tmp /dev/shm /var/lib/samba /var/cache/samba /var/log/samba /var/lib/krb5kdc \
    /etc/krb5kdc /etc/samba /var/lib/ldap /var/log/apache2 /var/lib/apache2 /etc/krb5.conf \
    -xdev \( -path /run/user -o -path /run/systemd -o -path /run/lock \) -prune -o -print 2>/dev/null | sort
  echo "## tmp top level"; find /tmp -mindepth 1 -maxdepth 1 \( -name 'kcdproxy*' -o -name 'krb5*' \
    -o -name 'tkt*' -o -name '*samba*' -o -name '*slapd*' \) -print | sort
}

t() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$(t)" 'BEGIN { printf "%.1f", b - a }'; }

before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snapshot >"$before"

t0=$(t); KCD_LAB_SKIP_INSTALL=${KCD_LAB_SKIP_INSTALL:-0} "$LAB_SRC/lab.sh" up >/dev/null; up1=$(dt "$t0")
t0=$(t); "$LAB_SRC/selfcheck.sh"; sc=$(dt "$t0")
t0=$(t); "$LAB_SRC/lab.sh" down; down1=$(dt "$t0")
sleep 3  # stopped daemons stay zombies until init reaps them
snapshot >"$after"
if ! diff -u "$before" "$after"; then
  if diff "$before" "$after" | grep -qE "kcdl|kcdlab|$LAB_DIR|169\.254\.77\.|samba|slapd|krb5|apache"; then
    die "cleancheck: the machine differs after down (diff above)"
  fi
  log "cleancheck: differences above do not look like the lab's (another user of the machine?)"
fi
t0=$(t); KCD_LAB_SKIP_INSTALL=1 "$LAB_SRC/lab.sh" up >/dev/null; up2=$(dt "$t0")
t0=$(t); "$LAB_SRC/lab.sh" down; down2=$(dt "$t0")
echo "cleancheck: OK — nothing left after down; up ${up1} s, selfcheck ${sc} s, down ${down1} s;" \
  "up again ${up2} s, down again ${down2} s"
