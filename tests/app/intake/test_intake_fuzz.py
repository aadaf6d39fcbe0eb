"""Fuzzing intake with mutated real files: every answer is a documented 4xx or an accepted job.

The suite runs a few hundred cases of `python -m tests.app.intake.fuzz_intake` (MEDIMG_FUZZ_CASES to change
it); the same command takes `--cases 100000` for a long run.
"""

from __future__ import annotations

import os

from tests.app.intake.fuzz_intake import fuzz


def test_intake_mutated_files_only_documented_answers(tmp_path) -> None:
    report = fuzz(int(os.environ.get("MEDIMG_FUZZ_CASES", "600")), seed=0, workdir=tmp_path)
    assert report.server_errors == [], "\n".join(report.server_errors[:5])
    assert report.answers["accepted"] > 0 and report.answers["422"] > 0, report.summary()
