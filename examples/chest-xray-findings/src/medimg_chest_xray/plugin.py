"""The registration: name, schemas, pipeline, intake check. Imports no worker code (the gateway loads it)."""

from __future__ import annotations

from app.plugins import TaskPlugin
from medimg_chest_xray.schemas import ChestXrayFindingsOptions, ChestXrayFindingsResult

CHEST_XRAY_FINDINGS = TaskPlugin(
    name="chest-xray-findings",
    title="Findings on a frontal chest radiograph (multi-label)",
    options=ChestXrayFindingsOptions,
    result=ChestXrayFindingsResult,
    pipeline="medimg_chest_xray.pipeline:ChestXrayFindingsPipeline",
    intake_check="medimg_chest_xray.intake:check_frontal_shape",
)
