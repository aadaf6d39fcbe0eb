"""Optional de-identification of stored DICOM inputs (MEDIMG_DEIDENTIFY_INPUTS), with dicognito.

Names, ids, dates and UIDs are replaced consistently within a job, so a series stays one series and
geometry is untouched; results then refer to the de-identified UIDs, not the hospital's originals.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom


def deidentify_files(paths: list[Path], job_id: str) -> None:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed=job_id)
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, force=True)
            anonymizer.anonymize(dataset)
            dataset.save_as(path)
