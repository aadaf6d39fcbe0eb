"""bench/gpu.sh cannot run without an NVIDIA GPU; its syntax and its plan (the dry run) are checked here."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_dry_run_installs_the_gpu_extra_and_runs_the_dr_and_ct_benchmarks():
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--repeats", "3"], capture_output=True, text=True,
                          check=True)
    steps = done.stdout.splitlines()
    assert all(step.startswith("+ ") for step in steps), steps  # printed, not run
    install = next(step for step in steps if " install " in step)
    assert "[gpu," in install and "cpu" not in install  # onnxruntime-gpu alone, never shadowed by onnxruntime
    assert any("CUDAExecutionProvider" in step and "get_available_providers" in step for step in steps)
    assert any(step.endswith("-m bench.dr --repeats 3") for step in steps)
    assert any("bench/ct_series.py --json > " in step and "/bench/results/" in step for step in steps)
    assert any("bench/covid_segmentation.py --json > " in step for step in steps)


def test_an_unknown_argument_is_refused():
    done = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
