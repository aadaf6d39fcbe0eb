"""Fuzz the real intake with mutated DICOM, PNG, JPEG and ZIP files; every answer must be a documented 4xx
or an accepted job whose pixels decode (or fail as bad input). Anything else counts as a 5xx.

    python -m tests.app.intake.fuzz_intake --cases 100000 [--seed 0] [--workdir DIR]

Seeds are pydicom's shipped test files, fundus photos (DICOM, deflated DICOM, PNG, JPEG) and ZIPs of DICOM;
each case applies 1-6 mutations (bit flips, cuts, insertions, deletions, planted 32-bit lengths) drawn from
`random.Random(seed + case)`, so any case can be replayed alone. It prints one JSON line: cases, answers by
status, 5xx seen, peak resident memory, seconds. The suite runs a few hundred cases
(tests/app/intake/test_intake_fuzz.py); bench/README.md records the last long run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from app.config import Settings
from app.errors import BadInputError, MedimgError
from app.intake.service import Intake
from app.schemas.tasks import TaskName
from app.storage.factory import make_blob_store, make_job_store, make_model_repository
from devkit.fundus import dicom_fundus_bytes, jpeg_bytes, make_fundus, png_bytes
from devkit.reference_models import MODELS_DIR
from workers.imaging.photo import load_photo
from workers.local import _RunLater

DOCUMENTED = {413, 415, 422}
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PLANTED = [b"\xff\xff\xff\xff", b"\xf0\xff\xff\x7f", b"\x01\x00\x00\x00", b"\x00\x00\x00\x00"]


def seed_files() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted(TEST_FILES.glob("*.dcm")) if p.stat().st_size < 400_000]
    fundus = make_fundus(seed=1, size=256).rgb
    dicom = dicom_fundus_bytes(fundus)
    seeds += [dicom, png_bytes(fundus), jpeg_bytes(fundus), _deflated(dicom), _zip([dicom, dicom[:4000]])]
    ct = [p.read_bytes() for p in sorted(TEST_FILES.glob("CT_small*.dcm"))]
    if ct:
        seeds.append(_zip(ct))
    return seeds


def _deflated(dicom: bytes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _zip(members: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, member in enumerate(members):
            archive.writestr(f"series/{index:04d}.dcm", member)
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        operation = rng.choice(["flip", "truncate", "insert", "delete", "overwrite-length"])
        position = rng.randint(0, max(len(data) - 1, 0))
        if operation == "flip" and data:
            data[position] ^= rng.randint(1, 255)
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = rng.randbytes(rng.randint(1, 16))
        elif operation == "delete":
            del data[position : position + rng.randint(1, 64)]
        else:  # a huge or odd 32-bit value where lengths and dimensions live
            data[position : position + 4] = rng.choice(PLANTED)
    return bytes(data)


@dataclass
class FuzzReport:
    cases: int = 0
    answers: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest_case_seconds: float = 0.0

    @property
    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def summary(self) -> dict:
        return {"cases": self.cases, "answers": dict(sorted(self.answers.items())),
                "5xx": len(self.server_errors), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "seconds": round(self.seconds, 1), "slowest_case_seconds": round(self.slowest_case_seconds, 2)}


def make_intake(data_dir: Path) -> Intake:
    settings = Settings(data_dir=data_dir, model_repository=MODELS_DIR, max_upload_bytes=20_000_000)
    return Intake(settings, make_model_repository(settings), make_job_store(settings), make_blob_store(settings),
                  _RunLater())


def run_case(intake: Intake, data: bytes, task: TaskName) -> str:
    """The answer: a documented status, "accepted", "accepted-bad-input"; raises AssertionError for a 5xx."""
    try:
        job, _ = intake.accept(task, [io.BytesIO(data)], None, caller="fuzz")
    except MedimgError as exc:
        assert exc.status in DOCUMENTED, f"{exc.status} {exc.code}: {exc.detail}"
        return str(exc.status)
    try:
        if task is TaskName.DR_GRADING:
            stored = job.inputs[0]
            image = load_photo(intake.blobs.local_path(stored.key), stored.format)
            assert image.dtype.name == "uint8" and image.ndim in (2, 3)
        return "accepted"
    except BadInputError:
        return "accepted-bad-input"
    finally:
        intake.jobs.delete(job.id)
        intake.blobs.delete_prefix(f"jobs/{job.id}")


def fuzz(cases: int, seed: int = 0, workdir: Path | None = None, progress: bool = False) -> FuzzReport:
    seeds = seed_files()
    report = FuzzReport()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir) as data_dir:
        intake = make_intake(Path(data_dir))
        for case in range(cases):
            rng = random.Random(seed + case)
            original = rng.choice(seeds)
            data = mutate(original, rng)
            # DICOM and ZIP cases also go to a volume task, which reads CT geometry from the headers.
            volume = original[:2] == b"PK" or original[128:132] == b"DICM"
            task = TaskName.LUNG_NODULE_DETECTION if volume and rng.random() < 0.3 else TaskName.DR_GRADING
            case_started = time.monotonic()
            try:
                report.answers[run_case(intake, data, task)] += 1
            except Exception as exc:  # noqa: BLE001 - anything but a documented answer is what we hunt
                report.answers["5xx"] += 1
                report.server_errors.append(f"case {seed + case} ({task.value}): {type(exc).__name__}: {exc}\n"
                                            + traceback.format_exc(limit=6))
            report.slowest_case_seconds = max(report.slowest_case_seconds, time.monotonic() - case_started)
            report.cases += 1
            if progress and report.cases % 1000 == 0:
                print(json.dumps(report.summary()), file=sys.stderr, flush=True)
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="First case's seed; case i uses seed + i")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the throw-away data dir goes")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom warns on every odd value; the answers are what count
    report = fuzz(args.cases, args.seed, args.workdir, progress=True)
    for error in report.server_errors[:20]:
        print(error, file=sys.stderr)
    print(json.dumps(report.summary()))
    return 1 if report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
