"""Which task runs on a series that arrives without one (DICOMweb STOW-RS, DIMSE C-STORE).

Rules come from MEDIMG_ROUTING_RULES, like MONAI Deploy's series selector; the first that matches wins.
"""

from __future__ import annotations

import re

import pydicom

from app.config import RoutingRule
from app.schemas.tasks import TaskName


def route(header: pydicom.Dataset, rules: list[RoutingRule]) -> TaskName | None:
    rule = matching_rule(header, rules)
    return TaskName(rule.task) if rule is not None else None


def matching_rule(header: pydicom.Dataset, rules: list[RoutingRule]) -> RoutingRule | None:
    """The first rule whose every given field matches; it names the task and the export destinations."""
    for rule in rules:
        if rule.modality is not None and header.get("Modality") != rule.modality:
            continue
        if rule.body_part_examined is not None and header.get("BodyPartExamined") != rule.body_part_examined:
            continue
        if rule.sop_class_uid is not None and header.get("SOPClassUID") != rule.sop_class_uid:
            continue
        if rule.series_description is not None and not re.search(rule.series_description,
                                                                   str(header.get("SeriesDescription", ""))):
            continue
        return rule
    return None
