#!/usr/bin/env bash
# A Debian bookworm base image (python3, python3-venv) made without a registry: debootstrap a root file system,
# then `podman import` it. The Dockerfile takes it as PYTHON_IMAGE. The tarball is cached (MEDIMG_CI_CACHE).
set -euo pipefail
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(realpath "$(dirname "$0")")/containers.conf}
cache=${MEDIMG_CI_CACHE:-/var/cache/medimg-ci}
image=${MEDIMG_BASE_IMAGE:-localhost/medimg-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$cache/bookworm-python3.tar

podman image exists "$image" && exit 0
mkdir -p "$cache"
if [ ! -f "$tarball" ]; then
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
fi
podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$image"
