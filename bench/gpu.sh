#!/usr/bin/env bash
# The DR and CT benchmarks on an NVIDIA GPU, with ONNX Runtime's CUDA provider, written to bench/results/
# like the CPU runs. Needs a machine with an NVIDIA driver (nvidia-smi) and Python 3.11.
#
#   bash bench/gpu.sh [--dry-run] [--repeats N]
#
# --dry-run prints each step instead of running it (it needs no GPU). The service, the peers and the
# pipeline limit all take the providers from MEDIMG_PROVIDERS; MEDIMG_REQUIRE_PROVIDER makes a worker
# refuse to start if its sessions fell back to the CPU (ONNX Runtime does so silently). The CT sliding
# window runs its patches in batches of the manifest's `batch_size`, one session run (one host-device copy
# each way) per batch.
set -euo pipefail

dry_run=0
repeats=5
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --repeats) repeats="$2"; shift ;;
    *) echo "usage: bash bench/gpu.sh [--dry-run] [--repeats N]" >&2; exit 2 ;;
  esac
  shift
done

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MEDIMG_GPU_VENV:-$root/.venv-gpu}"
stamp="$(date -u +%Y%m%d-%H%M%S)"
results="$root/bench/results"

run() {
  if [ "$dry_run" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

run_to() {  # run_to FILE COMMAND...: the command's standard output into FILE
  local file="$1"; shift
  if [ "$dry_run" = 1 ]; then printf '+ %s > %s\n' "$*" "$file"; else "$@" > "$file"; fi
}

if [ "$dry_run" = 0 ] && ! nvidia-smi > /dev/null 2>&1; then
  echo "no NVIDIA GPU answers (nvidia-smi failed): nothing to benchmark here" >&2
  exit 1
fi

run python3 -m venv "$venv"
# onnxruntime-gpu (the gpu extra) and not onnxruntime: both installed, one shadows the other.
run "$venv/bin/pip" install -e "$root[gpu,dev,bench]"
run "$venv/bin/python" -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()"

export MEDIMG_PROVIDERS='["CUDAExecutionProvider", "CPUExecutionProvider"]'
export MEDIMG_REQUIRE_PROVIDER=CUDAExecutionProvider
cd "$root"
run "$venv/bin/python" -m bench.dr --repeats "$repeats"
run_to "$results/ct-series-gpu-$stamp.json" "$venv/bin/python" bench/ct_series.py --json
run_to "$results/covid-segmentation-gpu-$stamp.json" "$venv/bin/python" bench/covid_segmentation.py --json
