"""Which agreement measure `medimg eval --shadow` uses follows the task registry, outside tasks included."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from app.plugins import TaskPlugin
from app.plugins.builtin import COVID_LESION_SEGMENTATION, DR_GRADING, LUNG_NODULE_DETECTION, THYROID_MALIGNANCY
from app.schemas.options import TaskOptions
from workers.evaluation import shadow
from workers.evaluation.intervals import BootstrapSettings


class FindingsResult(BaseModel):  # the shape of examples/chest-xray-findings' result
    findings: list[dict]


class GradeResult(BaseModel):
    grade: int


def _outside(result: type[BaseModel], **fields) -> TaskPlugin:
    return TaskPlugin(name="chest-xray-findings", title="t", options=TaskOptions, result=result,
                      pipeline="medimg_chest_xray.pipeline:ChestXrayFindingsPipeline", **fields)


def test_builtin_tasks_get_the_measure_their_registration_names() -> None:
    for plugin, expected in ((DR_GRADING, shadow.dr_agreement), (THYROID_MALIGNANCY, shadow.thyroid_agreement),
                             (COVID_LESION_SEGMENTATION, shadow.covid_agreement),
                             (LUNG_NODULE_DETECTION, shadow.nodule_agreement)):
        assert shadow.measure_of(plugin) is expected
        assert shadow.agreement_for(plugin.name) is expected  # through the installed registry


def test_an_outside_multilabel_task_gets_presence_agreement_by_its_result_kind() -> None:
    assert shadow.measure_of(_outside(FindingsResult)) is shadow.multilabel_agreement
    assert shadow.measure_of(_outside(GradeResult, shadow_agreement="workers.evaluation.shadow:dr_agreement")) \
        is shadow.dr_agreement
    with pytest.raises(ValueError, match="registers no shadow_agreement"):
        shadow.measure_of(_outside(GradeResult))


def _job(served: dict[str, tuple[float, bool]], shadowed: dict[str, tuple[float, bool]]) -> SimpleNamespace:
    def result(findings):
        return {"findings": [{"name": n, "probability": p, "present": x} for n, (p, x) in findings.items()]}

    return SimpleNamespace(result=result(served), shadow=SimpleNamespace(result=result(shadowed)))


def test_multilabel_agreement_counts_presence_flips_per_finding() -> None:
    jobs = [_job({"effusion": (0.9, True), "nodule": (0.2, False)}, {"effusion": (0.7, True), "nodule": (0.6, True)}),
            _job({"effusion": (0.1, False), "nodule": (0.3, False)}, {"effusion": (0.1, False), "nodule": (0.3, False)})]
    figures = shadow.multilabel_agreement(jobs, None, BootstrapSettings(n_resamples=50))

    # job 1: 1 of 2 agree, |0.2| and |0.4| apart; job 2: both agree, no difference
    assert figures["presence_agreement"]["value"] == pytest.approx((0.5 + 1.0) / 2)
    assert figures["probability_difference"]["value"] == pytest.approx((0.3 + 0.0) / 2)
    assert figures["presence_flips"] == {"effusion": 0, "nodule": 1}
