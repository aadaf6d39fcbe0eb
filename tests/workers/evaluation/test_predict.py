"""An evaluated case the quality gate refused is counted ungradable, with its reasons (milliseconds)."""

from __future__ import annotations

from pathlib import Path

from app.schemas.jobs import Job, JobStatus, ModelRef
from app.schemas.quality import Quality, QualityReason, UngradableResult
from app.schemas.tasks import TaskName
from workers.evaluation.base import Case
from workers.evaluation.predict import _outcome


def test_outcome_of_an_ungradable_job_names_its_reasons(tmp_path: Path) -> None:
    refused = UngradableResult(task=TaskName.DR_GRADING, research_use_only=True, quality=Quality(
        gradable=False, reasons=[QualityReason(code="out-of-focus", detail="The photo is out of focus")]))
    job = Job(id="j", task=TaskName.DR_GRADING, status=JobStatus.SUCCEEDED,
              model=ModelRef(id="m", version=1, sha256="0" * 64, research_use_only=True),
              result=refused.model_dump(mode="json"))

    outcome = _outcome(Case(case_id="c", files=("c.png",), truth={"grade": 2}), job, {}, evaluation=None, out=tmp_path)

    assert outcome == {"status": "ungradable",
                       "error": {"code": "ungradable", "detail": "out-of-focus: The photo is out of focus"}}
