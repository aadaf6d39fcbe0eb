"""A saliency overlay as a DICOM Secondary Capture (highdicom's SCImage) in the source's study, so a viewer
shows it beside the image it explains: the same rows and columns, derived from that instance."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from app.schemas.jobs import ModelRef
from workers.dicom_results.common import MANUFACTURER, contributing_equipment, derived_uid

SALIENCY_SERIES_NUMBER = 9903


def saliency_sc(source: Dataset, overlay: np.ndarray, model: ModelRef, job_id: str) -> hd.sc.SCImage:
    if overlay.shape[:2] != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"overlay {overlay.shape[:2]} is not on the source's {source.Rows}x{source.Columns} grid")
    stated = source.get("PatientOrientation", None)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay[..., :3], np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=derived_uid(job_id, "saliency-series"),
        series_number=SALIENCY_SERIES_NUMBER,
        sop_instance_uid=derived_uid(job_id, "saliency-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=tuple(stated) if stated and len(stated) == 2 else ("L", "F"),
        laterality=side if (side := source.get("ImageLaterality") or source.get("Laterality")) in ("R", "L") else None,
        contributing_equipment=[contributing_equipment(model)],
        series_description=f"Saliency (occlusion) {model.id} v{model.version}"[:64],
    )
    # Derived from the photo it explains, so viewers can hang them together.
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    # PatientOrientation is Type 2 (may be empty) in the General Image module; highdicom insists on a value,
    # so a photo that states none gets the empty value back instead of an orientation nobody measured.
    sc.PatientOrientation = list(stated) if stated else None
    if "Laterality" not in sc:  # Type 2C for paired structures such as the eye: present, empty when unknown
        sc.Laterality = None
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "Occlusion-sensitivity saliency of the model's score, overlaid on the source image"
    sc.SourceImageSequence = [reference]
    return sc
