"""MEDIMG_ROUTING_RULES give a series its task and its priority, by headers or by the sender's AE title."""

from __future__ import annotations

import pydicom
import pytest
from pydantic import ValidationError

from app.config import RoutingRule
from app.intake.routing import Routing, route
from app.schemas.jobs import JobPriority
from app.schemas.tasks import TaskName

RULES = [
    RoutingRule(calling_ae_title="ED_CT", priority="stat"),
    RoutingRule(attributes={"RequestedProcedureDescription": "(?i).*trauma.*"}, priority="stat"),
    RoutingRule(modality="CT", task="lung-nodule-detection", priority="routine"),
]


def header(**attributes) -> pydicom.Dataset:
    dataset = pydicom.Dataset()
    dataset.Modality = "CT"
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.parametrize(("attributes", "calling_ae", "priority"), [
    ({}, "ED_CT", JobPriority.STAT),
    ({"RequestedProcedureDescription": "CT head TRAUMA"}, None, JobPriority.STAT),
    ({"RequestedProcedureDescription": "screening"}, "CLINIC", JobPriority.ROUTINE),
])
def test_route_task_and_priority_from_first_matching_rules(attributes, calling_ae, priority) -> None:
    assert route(header(**attributes), RULES, calling_ae) == Routing(TaskName.LUNG_NODULE_DETECTION, priority)


def test_route_no_match_names_nothing() -> None:
    assert route(header(Modality="US"), RULES[2:]) == Routing(None, None)


def test_routing_rule_without_task_or_priority_refused() -> None:
    with pytest.raises(ValidationError, match="must name a task, a priority or both"):
        RoutingRule(modality="CT")
