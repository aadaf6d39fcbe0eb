"""What every DICOM result carries: who made it (IHE AIR Contributing Equipment), which algorithm, new UIDs.

UIDs are derived from the job id, so a job run twice (late acks redeliver) writes the same instances; the
device UID is derived from the model id, version and weights digest, so it changes exactly when the model does.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app import __version__
from app.schemas.jobs import ModelRef

MANUFACTURER = "medimg"
DICOM_MEDIA_TYPE = "application/dicom"
# Concepts no standard terminology names yet; declared in each object's Coding Scheme Identification.
PRIVATE_SCHEME = "99MEDIMG"
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902


class ResultNotWritten(Exception):
    """A DICOM result that cannot be written for this input; the message goes into the job's notes."""


def private_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def derived_uid(*parts: str) -> str:
    """A 2.25 UID that is the same for the same parts: stable across re-runs of one job."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def device_uid(model: ModelRef) -> str:
    """Identifies the algorithm as a device; changes whenever the model id, version or weights change."""
    return derived_uid("medimg-device", model.id, str(model.version), model.sha256)


def contributing_equipment(model: ModelRef) -> hd.ContributingEquipment:
    """The Contributing Equipment item IHE AI Results asks for: the algorithm that processed the images."""
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.id,
        software_versions=[str(model.version), __version__],
        device_serial_number=model.sha256[:16],
        contribution_description=f"AI inference by {model.id} version {model.version}"[:64],
    )
    item.DeviceUID = device_uid(model)
    return item


def sr_algorithm(model: ModelRef) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.id, version=str(model.version), manufacturer=MANUFACTURER)


def seg_algorithm(model: ModelRef) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.id, family=codes.cid7162.ArtificialIntelligence, version=str(model.version),
        source=MANUFACTURER,
    )


def device_observer(model: ModelRef) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid(model), name=model.id, manufacturer_name=MANUFACTURER, model_name=model.id,
            ),
        )
    )


def declare_private_scheme(dataset: Dataset) -> None:
    """Names the private coding scheme in the SOP Common module, so readers can resolve its codes."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "medimg result concepts"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    dataset.CodingSchemeIdentificationSequence = [item]


# Type 2 attributes of the Patient and General Study modules that results copy from their source: a source
# without them (de-identified, or a minimal modality) gets them empty, which is what type 2 allows.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def read_sources(paths: Sequence[Path], pixels: bool = False) -> list[Dataset]:
    """The source instances (headers only unless `pixels`), with absent type 2 patient/study attributes empty."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [pydicom.dcmread(p, stop_before_pixels=not pixels, force=True) for p in paths]
    for dataset in datasets:
        for keyword in TYPE2_COPIED:
            if keyword not in dataset:
                setattr(dataset, keyword, None)
    return datasets


def encode(dataset: Dataset) -> bytes:
    """Part 10 bytes of a highdicom object."""
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
