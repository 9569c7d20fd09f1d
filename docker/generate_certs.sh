#!/usr/bin/env bash
# Create a private CA and a SuperLink TLS server certificate signed by it.
#
# Usage: generate_certs.sh [OUT_DIR] [EXTRA_SANS]
#   OUT_DIR     where to write the files (default: ./certs next to this script)
#   EXTRA_SANS  comma-separated extra subjectAltNames for a SuperLink reachable under
#               another name, e.g. "DNS:fl.hospital-net.org,IP:10.0.0.5"
# Writes: ca.crt (give to every SuperNode and to the `flwr` CLI), ca.key (keep offline),
#         server.crt + server.key (SuperLink only).
set -euo pipefail

out_dir="${1:-$(dirname "$0")/certs}"
extra_sans="${2:-}"
days_ca=3650
days_server=825

if [[ -n "$extra_sans" && ! "$extra_sans" =~ ^((DNS|IP):[A-Za-z0-9.:*-]+,?)+$ ]]; then
    echo "EXTRA_SANS '$extra_sans' is not a comma-separated list of DNS:<name> / IP:<address>" >&2
    exit 2
fi
sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:superlink"
if [[ -n "$extra_sans" ]]; then
    sans="$sans,${extra_sans%,}"
fi

mkdir -p "$out_dir"
cd "$out_dir"
umask 077

# CA: P-256 key, self-signed, allowed to sign certificates only.
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days_ca" -out ca.crt \
    -subj "/CN=AdeptHEQ-FL private CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"

# SuperLink server key + CSR, then sign with the CA (SANs are what clients check).
openssl ecparam -name prime256v1 -genkey -noout -out server.key
openssl req -new -key server.key -out server.csr -subj "/CN=superlink"
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=$sans
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -sha256 -days "$days_server" -extfile server.ext -out server.crt
rm -f server.csr server.ext ca.srl

chmod 644 ca.crt server.crt
chmod 600 ca.key server.key
openssl verify -CAfile ca.crt server.crt
echo "Wrote $(pwd)/{ca.crt,ca.key,server.crt,server.key} with SANs: $sans"
