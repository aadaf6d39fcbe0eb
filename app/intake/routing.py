"""Which task and priority a series gets when it arrives without them (DICOMweb STOW-RS, DIMSE C-STORE).

Rules come from MEDIMG_ROUTING_RULES, like MONAI Deploy's series selector: the first matching rule that
names a task gives the task (and the export destinations, app/export), the first that names a priority
gives the priority.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pydicom

from app.config import RoutingRule
from app.schemas.jobs import JobPriority
from app.schemas.tasks import TaskName


@dataclass(frozen=True)
class Routing:
    task: TaskName | None = None
    priority: JobPriority | None = None
    export_to: tuple[str, ...] = ()  # the destinations of the rule that gave the task


def route(header: pydicom.Dataset, rules: list[RoutingRule], calling_ae_title: str | None = None) -> Routing:
    task = priority = None
    export_to: tuple[str, ...] = ()
    for rule in rules:
        if not _matches(rule, header, calling_ae_title):
            continue
        if task is None and rule.task is not None:
            task = TaskName(rule.task)
            export_to = tuple(rule.export_to)
        if priority is None and rule.priority is not None:
            priority = JobPriority(rule.priority)
    return Routing(task, priority, export_to)


def _matches(rule: RoutingRule, header: pydicom.Dataset, calling_ae_title: str | None) -> bool:
    if rule.modality is not None and header.get("Modality") != rule.modality:
        return False
    if rule.body_part_examined is not None and header.get("BodyPartExamined") != rule.body_part_examined:
        return False
    if rule.sop_class_uid is not None and header.get("SOPClassUID") != rule.sop_class_uid:
        return False
    if rule.series_description is not None and not re.search(rule.series_description,
                                                               str(header.get("SeriesDescription", ""))):
        return False
    if rule.calling_ae_title is not None and (calling_ae_title or "").strip() != rule.calling_ae_title:
        return False
    return all(re.fullmatch(pattern, str(header.get(keyword, ""))) for keyword, pattern in rule.attributes.items())


def rule_keywords(rules: list[RoutingRule]) -> set[str]:
    """Attribute keywords the rules read, beyond the fixed ones: what a collector must keep of each series."""
    return {keyword for rule in rules for keyword in rule.attributes}
