#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian packages, for hosts that reach a Debian mirror but no image
# registry. The Dockerfiles take it with --build-arg BASE_IMAGE=<tag>; their default stays the public
# python:3.11.13-slim-bookworm image, so hosts with a registry need none of this.
#
# Usage (as root, needs debootstrap and a running Docker engine):
#   build_base_image.sh [TAG] [MIRROR]
#     TAG     default adeptheq-fl/python-base:3.11-bookworm
#     MIRROR  default http://deb.debian.org/debian
# What it makes: debootstrap --variant=minbase of bookworm (python3 3.11, python3-venv, ca-certificates),
# a virtual environment in /opt/venv first on PATH (so `pip install` works as in the python image, without
# touching Debian's externally managed interpreter), apt lists, caches and docs removed, then `docker import`.
set -euo pipefail

tag="${1:-adeptheq-fl/python-base:3.11-bookworm}"
mirror="${2:-http://deb.debian.org/debian}"

if [[ $EUID -ne 0 ]]; then
    echo "build_base_image.sh must run as root (debootstrap and chroot need it)" >&2
    exit 2
fi
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "build_base_image.sh needs '$tool' on PATH" >&2; exit 2; }
done
if [[ ! "$tag" =~ ^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$ ]]; then
    echo "TAG '$tag' is not an image name such as adeptheq-fl/python-base:3.11-bookworm" >&2
    exit 2
fi

rootfs="$(mktemp -d /tmp/adeptheq-base.XXXXXX)"
chmod 0755 "$rootfs"  # it becomes the image's /: mktemp's 0700 would lock out every non-root user
trap 'rm -rf "$rootfs"' EXIT

echo "[base] debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

chroot "$rootfs" /usr/bin/python3 -m venv /opt/venv
chroot "$rootfs" /opt/venv/bin/python -c "import sys, ssl; assert sys.version_info[:2] == (3, 11), sys.version"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/info

echo "[base] importing as $tag"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
docker run --rm "$tag" python -c "import sys; print('[base] python', sys.version.split()[0], 'in', sys.prefix)"
docker image inspect -f '[base] {{.Size}} bytes' "$tag"
