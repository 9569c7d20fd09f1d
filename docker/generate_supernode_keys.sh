#!/usr/bin/env bash
# Create one SuperNode authentication key pair per SuperNode (ECDSA P-384, OpenSSH format).
#
# Usage: generate_supernode_keys.sh [OUT_DIR] [COUNT]
#   OUT_DIR  default: ./auth next to this script; COUNT default: 3
# Writes OUT_DIR/supernode-<i>/auth_key     (private: mount into supernode-<i> only)
#        OUT_DIR/supernode-<i>/auth_key.pub (public: register with `flwr supernode register`)
# flower-supernode reads the private key with cryptography's load_ssh_private_key and
# `flwr supernode register` needs an OpenSSH public key on a NIST curve, which is exactly
# what `ssh-keygen -t ecdsa -b 384` writes.
set -euo pipefail

out_dir="${1:-$(dirname "$0")/auth}"
count="${2:-3}"
if ! [[ "$count" =~ ^[1-9][0-9]*$ ]]; then
    echo "COUNT '$count' must be a positive integer" >&2
    exit 2
fi

for i in $(seq 1 "$count"); do
    node_dir="$out_dir/supernode-$i"
    mkdir -p "$node_dir"
    if [[ -e "$node_dir/auth_key" ]]; then
        echo "$node_dir/auth_key exists; not overwriting (delete it to rotate the key)" >&2
        exit 1
    fi
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$node_dir/auth_key"
    chmod 600 "$node_dir/auth_key"
    chmod 644 "$node_dir/auth_key.pub"
done
echo "Wrote $count key pairs under $out_dir"
