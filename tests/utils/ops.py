"""Inputs and readers for the operations tests: a DICOM with patient identifiers, metrics and log parsing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pydicom
from prometheus_client.parser import text_string_to_metric_families

from devkit.fundus import dicom_fundus_bytes, make_fundus

# Values no log line may contain, in any of the spellings a careless log could use.
PHI = {
    "PatientName": ["Quixote^Alonso", "Quixote", "Alonso"],
    "PatientID": ["MRN-58213947", "58213947"],
    "PatientBirthDate": ["19480317", "1948-03-17"],
}


def phi_dicom_fundus(seed: int = 5) -> bytes:
    data = dicom_fundus_bytes(make_fundus(seed=seed, grade=2).rgb, patient_name="Quixote^Alonso")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientID = "MRN-58213947"
    ds.PatientBirthDate = "19480317"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def scrape(url: str) -> dict[str, list]:
    """Prometheus text exposition → {sample name: [(labels, value), ...]}."""
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(value for got, value in samples.get(name, []) if all(got.get(k) == v for k, v in labels.items()))


def json_lines(path: Path) -> list[dict]:
    """The JSON log lines of a process log (Celery's start banner and warnings are plain text)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return lines
