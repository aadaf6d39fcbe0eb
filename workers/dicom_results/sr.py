"""TID 1500 Measurement Reports (Comprehensive 3D SR) with highdicom.

- Lung nodules: one Planar ROI measurement group per nodule: a closed POLYLINE box (2D SCOORD on the key slice,
  which OHIF draws), the centre as SCOORD3D, diameter in mm and the detection score, finding type Nodule,
  a tracking identifier and UID.
- DR grade / referable flag and thyroid malignancy probability / TI-RADS band: one image-level measurement
  group (TID 1501) on the source image, with measurements and qualitative evaluations.

Each report is a new series in the source study, with the algorithm identification in every group and the
Contributing Equipment item of IHE AI Results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app.schemas.jobs import ModelRef
from app.schemas.results import DRGradingResult, LungNoduleDetectionResult, NoduleFinding, ThyroidMalignancyResult
from workers.dicom_results.common import (
    MANUFACTURER,
    SR_SERIES_NUMBER,
    contributing_equipment,
    declare_private_scheme,
    derived_uid,
    device_observer,
    private_code,
    sr_algorithm,
)

DIABETIC_RETINOPATHY = hd.sr.CodedConcept("4855003", "SCT", "Diabetic retinopathy")
ICDR_GRADE = private_code("ICDR-GRADE", "ICDR diabetic retinopathy severity")
REFERABLE_DR = private_code("REFERABLE-DR", "Referable diabetic retinopathy")
REFERABLE_PROBABILITY = private_code("REFERABLE-DR-P", "Probability of referable diabetic retinopathy")
TIRADS_BAND = private_code("TIRADS-BAND", "ACR TI-RADS risk band")
DETECTION_SCORE = codes.DCM.CertaintyOfFinding
PROBABILITY_UNIT = codes.UCUM.NoUnits


def _report(evidence: Sequence[Dataset], groups: list, model: ModelRef, job_id: str, title: str,
            procedure: hd.sr.CodedConcept) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=device_observer(model),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=derived_uid(job_id, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(job_id, "sr-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"AI {title}"[:64],
        contributing_equipment=[contributing_equipment(model)],
    )
    declare_private_scheme(sr)
    return sr


def _probability(name: hd.sr.CodedConcept, value: float, model: ModelRef) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=PROBABILITY_UNIT, algorithm_id=sr_algorithm(model))


def _yes_no(flag: bool) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept.from_code(codes.SCT.Yes if flag else codes.SCT.No)


def _source_image(source: Dataset, frame_number: int | None) -> hd.sr.SourceImageForMeasurementGroup:
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=None if frame_number is None else [frame_number],
    )


# --- lung nodules ---------------------------------------------------------------------------------


def _plane(source: Dataset, frame_number: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image position, row direction, column direction and (row, column) spacing of one frame."""
    if frame_number is None or "PerFrameFunctionalGroupsSequence" not in source:
        return (np.asarray(source.ImagePositionPatient, float), np.asarray(source.ImageOrientationPatient[:3], float),
                np.asarray(source.ImageOrientationPatient[3:], float), np.asarray(source.PixelSpacing, float))
    frame = source.PerFrameFunctionalGroupsSequence[frame_number - 1]
    shared = source.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in source else Dataset()

    def group(keyword: str) -> Dataset:
        return (frame if keyword in frame else shared)[keyword][0]

    orientation = np.asarray(group("PlaneOrientationSequence").ImageOrientationPatient, float)
    return (np.asarray(group("PlanePositionSequence").ImagePositionPatient, float), orientation[:3], orientation[3:],
            np.asarray(group("PixelMeasuresSequence").PixelSpacing, float))


def nodule_box_on_key_slice(finding: NoduleFinding, source: Dataset) -> np.ndarray:
    """The finding's extent projected on its key slice: a closed POLYLINE of 5 (column, row) image points,
    0.0/0.0 being the top left corner of the top left pixel (PS3.3 C.18.6.1.2)."""
    position, row_dir, col_dir, (row_spacing, column_spacing) = _plane(source, finding.key_slice.frame_number)
    (x0, y0, z0), (x1, y1, z1) = finding.bbox_mm
    corners = np.array([(x, y, z) for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)]) - position
    columns = corners @ row_dir / column_spacing + 0.5
    rows = corners @ col_dir / row_spacing + 0.5
    c0, c1 = np.clip([columns.min(), columns.max()], 0, int(source.Columns))
    r0, r1 = np.clip([rows.min(), rows.max()], 0, int(source.Rows))
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)


def _nodule_group(finding: NoduleFinding, source: Dataset, frame_of_reference_uid: str, model: ModelRef,
                  job_id: str) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    frame = finding.key_slice.frame_number
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=nodule_box_on_key_slice(finding, source),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=None if frame is None else [frame],
        ),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(job_id, "nodule", str(finding.id)),
                                                     identifier=f"Nodule {finding.id}"),
        referenced_region=region,
        finding_type=codes.SCT.Nodule,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        algorithm_id=sr_algorithm(model),
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Diameter, value=float(finding.diameter_mm),
                              unit=codes.UCUM.Millimeter, algorithm_id=sr_algorithm(model)),
            _probability(DETECTION_SCORE, finding.score, model),
        ],
    )
    centre = hd.sr.Scoord3DContentItem(
        name=codes.DCM.Center,
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_mm], dtype=float),
        frame_of_reference_uid=frame_of_reference_uid,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group[0].ContentSequence.append(centre)
    return group


def lung_nodule_sr(result: LungNoduleDetectionResult, sources: Mapping[str, Dataset], model: ModelRef,
                   job_id: str) -> hd.sr.Comprehensive3DSR:
    """`sources` maps SOPInstanceUID to the header of every instance of the series (at least the key slices)."""
    missing = {n.key_slice.sop_instance_uid for n in result.nodules} - set(sources)
    if missing:
        raise ValueError(f"{len(missing)} key slice instance(s) are not among the sources")
    first = next(iter(sources.values()))
    groups = [_nodule_group(n, sources[n.key_slice.sop_instance_uid], first.FrameOfReferenceUID, model, job_id)
              for n in result.nodules]
    evidence_uids = list(dict.fromkeys(n.key_slice.sop_instance_uid for n in result.nodules))
    if not groups:  # nothing found: say so on the series, so the report still names what was read
        groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(job_id, "no-nodule"), identifier="Nodules"),
            finding_type=codes.SCT.Nodule,
            algorithm_id=sr_algorithm(model),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Nodule, codes.SCT.Absent)],
            source_images=[_source_image(first, None)],
        )]
        evidence_uids = [first.SOPInstanceUID]
    return _report([sources[uid] for uid in evidence_uids], groups, model, job_id, "Lung nodule detection",
                   hd.sr.CodedConcept("418023006", "SCT", "CT of chest"))


# --- image-level reports ----------------------------------------------------------------------------


def dr_grading_sr(result: DRGradingResult, source: Dataset, model: ModelRef, job_id: str) -> hd.sr.Comprehensive3DSR:
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(job_id, "finding", "dr"),
                                                     identifier="Diabetic retinopathy"),
        finding_type=DIABETIC_RETINOPATHY,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Retina)],
        algorithm_id=sr_algorithm(model),
        measurements=[_probability(REFERABLE_PROBABILITY, result.referable_probability, model)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(ICDR_GRADE, private_code(f"ICDR-{result.grade}", result.grade_name[:64])),
            hd.sr.QualitativeEvaluation(REFERABLE_DR, _yes_no(result.referable)),
        ],
        source_images=[_source_image(source, None)],
    )
    return _report([source], [group], model, job_id, "Diabetic retinopathy grading",
                   hd.sr.CodedConcept("392005004", "SCT", "Fundus photography"))


def thyroid_malignancy_sr(result: ThyroidMalignancyResult, source: Dataset, frame: int, model: ModelRef,
                          job_id: str) -> hd.sr.Comprehensive3DSR:
    """`frame` is 0-based; a multi-frame source is referenced with that frame."""
    measurements = [_probability(codes.DCM.ProbabilityOfCancer, result.malignancy_probability, model)]
    if result.nodule.max_diameter_mm is not None:
        measurements.append(hd.sr.Measurement(name=codes.SCT.Diameter, value=float(result.nodule.max_diameter_mm),
                                              unit=codes.UCUM.Millimeter, algorithm_id=sr_algorithm(model)))
    multi_frame = int(getattr(source, "NumberOfFrames", 1) or 1) > 1
    band = result.risk_band
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(job_id, "finding", "thyroid-nodule"),
                                                     identifier="Thyroid nodule"),
        finding_type=codes.SCT.ThyroidNodule,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Thyroid)],
        algorithm_id=sr_algorithm(model),
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(TIRADS_BAND, private_code(str(band.value), f"ACR TI-RADS {band.value}")),
        ],
        source_images=[_source_image(source, frame + 1 if multi_frame else None)],
    )
    return _report([source], [group], model, job_id, "Thyroid nodule malignancy",
                   hd.sr.CodedConcept("16310003", "SCT", "Ultrasonography"))
