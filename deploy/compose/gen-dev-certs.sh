#!/usr/bin/env bash
# Create a private development CA and a server certificate for the Compose quick start.
#
#   deploy/compose/gen-dev-certs.sh [DIR] [EXTRA_HOST ...]
#
# DIR defaults to deploy/compose/tls. The server certificate names localhost, 127.0.0.1, ::1 and
# `pgward` (the service name inside the Compose network) plus every EXTRA_HOST (DNS name or IP
# address), so clients can use sslmode=verify-full with sslrootcert=DIR/ca.crt.
# Existing files are kept; delete them to start over. For production use certificates from your own CA.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/tls}
shift || true
uid=10001  # the pgward user in the container image

mkdir -p "$dir"
cd "$dir"
if [[ -e server.crt || -e server.key ]]; then
  echo "$dir already holds server.crt/server.key; delete them to generate new ones" >&2
  exit 1
fi

san="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:pgward"
for host in "$@"; do
  if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+=",IP:$host"; else san+=",DNS:$host"; fi
done

umask 077
if [[ ! -e ca.key ]]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.crt -days 365 -subj "/CN=pgward development CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=pgward" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out server.crt \
  -extfile <(printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=$san") 2>/dev/null
rm -f server.csr ca.srl
chmod 0644 ca.crt server.crt

# The container runs as uid 10001 and must read server.key through the bind mount.
if [[ $(id -u) -eq 0 ]]; then
  chown "$uid:$uid" server.key
  chmod 0600 server.key
  echo "server.key is owned by uid $uid (the container user), mode 0600"
else
  chmod 0644 server.key
  echo "warning: server.key is world-readable (0644) so the container user (uid $uid) can read it;" >&2
  echo "         fine for a local trial, otherwise run: sudo chown $uid:$uid $dir/server.key && sudo chmod 600 $dir/server.key" >&2
fi
echo "wrote $dir/{ca.crt,ca.key,server.crt,server.key}; clients trust ca.crt (SAN: $san)"
