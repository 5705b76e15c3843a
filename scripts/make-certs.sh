#!/usr/bin/env bash
# Make a small private CA and the certificates for a mutual-TLS MQTT setup (docs/protocol.md).
#
#   scripts/make-certs.sh DIR ca                       DIR/ca.crt, DIR/ca.key (keep ca.key offline)
#   scripts/make-certs.sh DIR server NAME [SAN...]     DIR/NAME.crt/.key for the broker;
#                                                      SANs default to DNS:localhost IP:127.0.0.1
#   scripts/make-certs.sh DIR client CN                DIR/CN.crt/.key; CN is the device id
#                                                      (or the fleet operator's name)
#
# The broker (config/mosquitto/mosquitto.conf) uses the client certificate's CN as the user
# name, and its ACL lets a device reach only <prefix>/<CN>/... Keys are EC P-256, mode 0600.
# DAYS (environment) sets the validity, default 825.
set -euo pipefail
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
dir=$1; kind=$2; shift 2
days=${DAYS:-825}
mkdir -p "$dir"
umask 077

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

sign() { # sign NAME SUBJECT EXTFILE
  local name=$1 subject=$2 ext=$3
  newkey "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$dir/$name.csr"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
  chmod 644 "$dir/$name.crt"
  echo "wrote $dir/$name.crt and $dir/$name.key"
}

case "$kind" in
  ca)
    [ -e "$dir/ca.key" ] && { echo "$dir/ca.key exists; not overwriting" >&2; exit 1; }
    newkey "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=edge-agent fleet CA" -days "$((days * 4))" -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$dir/ca.crt"
    chmod 644 "$dir/ca.crt"
    echo "wrote $dir/ca.crt and $dir/ca.key"
    ;;
  server)
    [ $# -ge 1 ] || usage
    name=$1; shift
    sans=("$@"); [ ${#sans[@]} -gt 0 ] || sans=(DNS:localhost IP:127.0.0.1)
    ext=$(mktemp)
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
      "$(IFS=,; echo "${sans[*]}")" > "$ext"
    sign "$name" "/CN=$name" "$ext"
    ;;
  client)
    [ $# -eq 1 ] || usage
    cn=$1
    [[ "$cn" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || { echo "CN $cn: expected a device id (letters, digits, _ . -)" >&2; exit 2; }
    ext=$(mktemp)
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$ext"
    sign "$cn" "/CN=$cn" "$ext"
    ;;
  *) usage ;;
esac
