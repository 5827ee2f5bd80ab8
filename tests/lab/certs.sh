#!/usr/bin/env bash
# Lab PKI: one CA and two server certificates (ECDSA P-256, SHA-256, 30 days), idempotent.
#
#   tests/lab/certs.sh DIR
#
# Writes into DIR (created 0755; server keys 0640 root:www-data so the backend's workers can read
# theirs, the CA key 0600):
#   ca.pem ca.key                     the lab CA (trust anchor: curl --cacert, --backend-ca)
#   proxy.pem proxy.key               kcdproxy: proxy.example.test, localhost, 127.0.0.1
#   backend.pem backend.key           the Apache backend: backend.example.test, localhost, 127.0.0.1
# Existing files are kept when the certificate still verifies against ca.pem, so rerunning is cheap.
set -euo pipefail

dir=${1:?usage: certs.sh DIR}
mkdir -p "$dir"
chmod 755 "$dir"
group=root
getent group www-data >/dev/null && group=www-data

key() {  # key FILE: a fresh P-256 key in PKCS#8 PEM (what rustls and mod_ssl both read)
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chgrp "$group" "$1"
  chmod 640 "$1"
}

if ! [ -s "$dir/ca.pem" ] || ! [ -s "$dir/ca.key" ] \
  || ! openssl x509 -in "$dir/ca.pem" -noout -checkend 86400 >/dev/null 2>&1; then
  key "$dir/ca.key"
  chgrp root "$dir/ca.key"
  chmod 600 "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 30 -subj "/O=kcdproxy lab/CN=kcdproxy lab CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" -out "$dir/ca.pem" 2>/dev/null
  rm -f "$dir/proxy.pem" "$dir/backend.pem"  # signed by the old CA
fi

leaf() {  # leaf NAME CN SAN
  local name=$1 cn=$2 san=$3
  if [ -s "$dir/$name.pem" ] && [ -s "$dir/$name.key" ] \
    && openssl verify -CAfile "$dir/ca.pem" "$dir/$name.pem" >/dev/null 2>&1 \
    && openssl x509 -in "$dir/$name.pem" -noout -checkend 86400 >/dev/null 2>&1; then
    return 0
  fi
  key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "/O=kcdproxy lab/CN=$cn" -out "$dir/$name.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=$san" "authorityKeyIdentifier=keyid" \
    "subjectKeyIdentifier=hash" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

leaf proxy proxy.example.test "DNS:proxy.example.test,DNS:localhost,IP:127.0.0.1"
leaf backend backend.example.test "DNS:backend.example.test,DNS:localhost,IP:127.0.0.1"
chmod 644 "$dir"/*.pem
