#!/usr/bin/env bash
# Fills a wheelhouse (default deploy/wheelhouse/) with every wheel the images install, resolved by the image's
# own Python: bookworm's 3.11.2 selects other dependencies than a newer host Python would (redis needs
# async-timeout below 3.11.3), so pip runs inside the base image, with host networking and the host's pip
# configuration (config files, PIP_* variables, local indexes they name) passed in read-only.
# Then `docker|podman build --build-arg PIP_NO_INDEX=1 ...` installs from it alone: an air-gapped build.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
image=${MEDIMG_BASE_IMAGE:-localhost/medimg-base:bookworm}
out=$(realpath -m "${1:-deploy/wheelhouse}")
mkdir -p "$out"

requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
python3 - "$requirements" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
for extra in ("cpu", "s3"):  # gateway: [s3]; worker-cpu: [cpu,s3]; worker-gpu pins onnxruntime-gpu itself
    wanted += project["project"]["optional-dependencies"][extra]
open(sys.argv[1], "w").write("\n".join(w.split("#")[0].strip() for w in wanted) + "\n")
PY

mounts=(-v "$out:/wheelhouse" -v "$requirements:/requirements.txt:ro")
for conf in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip"; do
    [ -e "$conf" ] && mounts+=(-v "$conf:$conf:ro")
done
# Local folders the pip configuration names (find-links, file:// indexes, constraints), at the same paths.
for path in $( (pip config list 2>/dev/null; env | grep '^PIP_') | grep -oE "(file://)?/[^' ]+" | sed 's|^file://||'); do
    case "$path" in */simple|*/simple/) path=$(dirname "$path") ;; esac  # an index's files sit beside it
    [ -e "$path" ] && mounts+=(-v "$path:$path:ro")
done
envs=()
for name in $(env | grep -oE '^PIP_[A-Z_]+'); do envs+=(-e "$name"); done

podman run --rm --network host "${mounts[@]}" "${envs[@]}" "$image" sh -ec '
    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip wheel --quiet --wheel-dir /wheelhouse -r /requirements.txt'
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels in $out"
