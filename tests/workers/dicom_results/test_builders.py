"""SEG and SR builders on real DICOM sources: highdicom reads back what was written, and dciodvfy finds no error.

The content tests run everywhere; only the conformance tests at the end skip when dicom3tools is missing."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from app.model_repository import ModelRepository
from app.schemas.jobs import ModelRef
from app.schemas.results import (
    DRGradingResult,
    KeySlice,
    LungNoduleDetectionResult,
    NoduleFinding,
    OperatingPointUsed,
    ThyroidMalignancyResult,
    ThyroidNodule,
)
from app.schemas.tirads import RiskBand, recommend
from devkit.ct import ramp_volume, small_grid, write_series
from tests.utils.dicom_validation import dciodvfy_errors
from devkit.fundus import dicom_fundus_bytes, make_fundus
from devkit.reference_models import REPO_ROOT
from devkit.ultrasound import dicom_us_bytes, make_frame
from workers.dicom_results.common import ResultNotWritten, device_uid, encode, read_sources
from workers.dicom_results.seg import covid_lesion_seg, thyroid_nodule_seg
from workers.dicom_results.sr import dr_grading_sr, lung_nodule_sr, thyroid_malignancy_sr
from workers.imaging.ct_series import read_ct_geometry
from workers.pipelines.covid.segments import LUNGS_SEGMENT

MODEL = ModelRef(id="some-model", version=3, sha256="ab" * 32, research_use_only=True)
COVID_MANIFEST = ModelRepository(REPO_ROOT / "models").get("covid-lesion-segmentation-reference").manifest
NODULE_CODING = ModelRepository(REPO_ROOT / "models").get(
    "thyroid-nodule-segmentation-reference").manifest.decoding.segments["nodule"]
POINT = OperatingPointUsed(name="default", threshold=0.5)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ct")
    paths = write_series(directory, ramp_volume(), small_grid())
    return paths, read_ct_geometry(paths)


def _reread(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _contributing_item(ds: pydicom.Dataset) -> pydicom.Dataset:
    items = [i for i in ds.ContributingEquipmentSequence
             if i.PurposeOfReferenceCodeSequence[0].CodeValue == "109102" and "DeviceUID" in i]
    assert len(items) == 1
    return items[0]


def _assert_identified(ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    item = _contributing_item(ds)
    assert (item.Manufacturer, item.ManufacturerModelName, item.DeviceUID) == ("medimg", MODEL.id, device_uid(MODEL))


def test_device_uid_changes_with_the_model_only() -> None:
    assert device_uid(MODEL) == device_uid(MODEL.model_copy())
    assert device_uid(MODEL) != device_uid(MODEL.model_copy(update={"version": 4}))
    assert device_uid(MODEL) != device_uid(MODEL.model_copy(update={"sha256": "cd" * 32}))


def _thyroid_seg(tmp_path):
    item = make_frame(1)
    path = tmp_path / "us.dcm"
    path.write_bytes(dicom_us_bytes(item.frame))
    source = read_sources([path])[0]
    mask = item.mask.astype(bool)
    return encode(thyroid_nodule_seg(source, mask, 0, NODULE_CODING, MODEL, "job-1")), source, mask


def test_thyroid_nodule_seg_references_the_frame_with_the_manifest_coding(tmp_path) -> None:
    data, source, mask = _thyroid_seg(tmp_path)

    seg = hd.seg.segread(io.BytesIO(data))
    _assert_identified(seg, source)
    assert seg.SegmentationType == "BINARY"
    assert seg.NumberOfFrames == 1  # the empty frames are omitted
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)]
    frame_ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert frame_ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    description = seg.get_segment_description(1)
    assert description.segmented_property_type == hd.sr.CodedConcept("237495005", "SCT", "Thyroid nodule")
    assert description.segment_label == NODULE_CODING.label
    assert "RecommendedDisplayCIELabValue" in description
    assert description.algorithm_identification[0].AlgorithmName == MODEL.id
    assert description.algorithm_identification[0].AlgorithmVersion == "3"
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), mask)


def test_thyroid_nodule_seg_of_a_multiframe_us_is_not_written(tmp_path) -> None:
    item = make_frame(1)
    path = tmp_path / "us.dcm"
    path.write_bytes(dicom_us_bytes([item.frame, item.frame]))
    with pytest.raises(ResultNotWritten, match="multi-frame"):
        thyroid_nodule_seg(read_sources([path])[0], item.mask.astype(bool), 1, NODULE_CODING, MODEL, "job-1")


def _covid_seg(ct_series):
    paths, geometry = ct_series
    sources = {ds.SOPInstanceUID: ds for ds in read_sources(paths)}
    ordered = [sources[uid] for uid in geometry.sop_instance_uids]
    shape = (len(ordered), geometry.rows, geometry.columns)
    lungs = np.zeros(shape, bool)
    lungs[1:5, 4:28, 4:36] = True
    ggo = np.zeros(shape, bool)
    ggo[2, 10:15, 10:15] = True
    consolidation = np.zeros(shape, bool)
    consolidation[3, 20:24, 20:30] = True

    codings = {**COVID_MANIFEST.decoding.segments, "lungs": LUNGS_SEGMENT}
    seg_ds = covid_lesion_seg(ordered, {"lungs": lungs, "ground-glass-opacity": ggo, "consolidation": consolidation},
                              codings, MODEL, "job-2")
    return encode(seg_ds), ordered, lungs, ggo, consolidation


def test_covid_lesion_seg_omits_empty_slices_and_codes_segments_from_the_manifest(ct_series) -> None:
    data, ordered, lungs, ggo, consolidation = _covid_seg(ct_series)

    seg = hd.seg.segread(io.BytesIO(data))
    _assert_identified(seg, ordered[0])
    labels = {seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers}
    assert set(labels) == {"ground-glass", "consolidation", "lungs"}
    ggo_coding = COVID_MANIFEST.decoding.segments["ground-glass-opacity"]
    assert seg.get_segment_description(labels["ground-glass"]).segmented_property_type == hd.sr.CodedConcept(
        ggo_coding.type.value, ggo_coding.type.scheme, ggo_coding.type.meaning)
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MEDIMG"
    assert seg.NumberOfFrames == 4 + 1 + 1  # non-empty (slice, segment) frames only
    for label, mask in (("lungs", lungs), ("ground-glass", ggo), ("consolidation", consolidation)):
        pixels = seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID for ds in ordered], segment_numbers=[labels[label]], skip_overlap_checks=True,
        )[..., 0]
        np.testing.assert_array_equal(pixels.astype(bool), mask)


def _nodule(geometry, nodule_id: int, voxel_low, voxel_high, score: float) -> NoduleFinding:
    low = np.asarray(voxel_low, float)
    high = np.asarray(voxel_high, float)
    centre_voxel = (low + high) / 2
    corners = [geometry.voxel_to_patient(c, r, s) for c in (low[0] - 0.5, high[0] + 0.5)
               for r in (low[1] - 0.5, high[1] + 0.5) for s in (low[2] - 0.5, high[2] + 0.5)]
    key = int(round(centre_voxel[2]))
    return NoduleFinding(
        id=nodule_id, score=score,
        center_mm=tuple(float(v) for v in geometry.voxel_to_patient(*centre_voxel)),
        center_voxel=tuple(float(v) for v in centre_voxel), diameter_mm=5.5,
        bbox_mm=(tuple(np.min(corners, axis=0).tolist()), tuple(np.max(corners, axis=0).tolist())),
        key_slice=KeySlice(index=key, sop_instance_uid=geometry.slices[key].sop_instance_uid),
    )


def _lung_sr(ct_series):
    paths, geometry = ct_series
    sources = {ds.SOPInstanceUID: ds for ds in read_sources(paths)}
    result = LungNoduleDetectionResult(
        series_instance_uid=geometry.series_instance_uid,
        nodules=[_nodule(geometry, 1, (10, 8, 2), (16, 14, 4), 0.9), _nodule(geometry, 2, (25, 20, 1), (30, 24, 1), 0.7)],
        spacing_mm=geometry.spacing_mm, n_slices=geometry.n_slices, operating_point=POINT, research_use_only=True,
    )

    return encode(lung_nodule_sr(result, sources, MODEL, "job-3")), sources, result


def test_lung_nodule_sr_has_a_box_centre_diameter_and_score_per_nodule(ct_series) -> None:
    data, sources, result = _lung_sr(ct_series)

    sr = hd.sr.Comprehensive3DSR.from_dataset(_reread(data))
    _assert_identified(sr, next(iter(sources.values())))
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    for group, nodule, (c0, r0, c1, r1) in zip(groups, result.nodules, [(10, 8, 17, 15), (25, 20, 31, 25)],
                                               strict=True):
        assert group.tracking_identifier == f"Nodule {nodule.id}"
        assert group.finding_type == codes.SCT.Nodule
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value, [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], atol=1e-3)
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == nodule.key_slice.sop_instance_uid
        (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
        assert diameter.value == pytest.approx(5.5) and diameter.unit == codes.UCUM.Millimeter
        (score,) = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        assert score.value == pytest.approx(nodule.score)
        centre = [item for item in group[0].ContentSequence if item.ValueType == "SCOORD3D"]
        assert len(centre) == 1 and centre[0].GraphicType == "POINT"
        np.testing.assert_allclose(centre[0].GraphicData, nodule.center_mm, atol=1e-3)
        assert centre[0].ReferencedFrameOfReferenceUID == sources[nodule.key_slice.sop_instance_uid].FrameOfReferenceUID
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {n.key_slice.sop_instance_uid for n in result.nodules}


def _lung_sr_absent(ct_series):
    paths, geometry = ct_series
    sources = {ds.SOPInstanceUID: ds for ds in read_sources(paths)}
    result = LungNoduleDetectionResult(series_instance_uid=geometry.series_instance_uid, nodules=[],
                                       spacing_mm=geometry.spacing_mm, n_slices=geometry.n_slices,
                                       operating_point=POINT, research_use_only=True)
    return encode(lung_nodule_sr(result, sources, MODEL, "job-4"))


def test_lung_nodule_sr_without_nodules_says_absent(ct_series) -> None:
    data = _lung_sr_absent(ct_series)
    sr = hd.sr.Comprehensive3DSR.from_dataset(_reread(data))
    (group,) = sr.content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations(name=codes.SCT.Nodule)
    assert evaluation.value == codes.SCT.Absent


def _dr_sr(tmp_path):
    path = tmp_path / "fundus.dcm"
    path.write_bytes(dicom_fundus_bytes(make_fundus(0, size=128).rgb))
    source = read_sources([path])[0]
    result = DRGradingResult(grade=2, grade_name="moderate NPDR", probabilities=[0.1, 0.2, 0.4, 0.2, 0.1],
                             referable=True, referable_probability=0.7, operating_point=POINT, research_use_only=True)

    return encode(dr_grading_sr(result, source, MODEL, "job-5")), source


def test_dr_grading_sr_carries_grade_and_referable_flag(tmp_path) -> None:
    data, source = _dr_sr(tmp_path)

    sr = hd.sr.Comprehensive3DSR.from_dataset(_reread(data))
    _assert_identified(sr, source)
    (group,) = sr.content.get_image_measurement_groups()
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    (probability,) = group.get_measurements()
    assert probability.value == pytest.approx(0.7)
    values = {e.name.value: e.value for e in group.get_qualitative_evaluations()}
    assert values["ICDR-GRADE"].value == "ICDR-2"
    assert values["REFERABLE-DR"] == codes.SCT.Yes


def _thyroid_sr(tmp_path):
    item = make_frame(2)
    path = tmp_path / "us.dcm"
    path.write_bytes(dicom_us_bytes(item.frame))
    source = read_sources([path])[0]
    result = ThyroidMalignancyResult(
        malignancy_probability=0.3, risk_band=RiskBand.TR4, recommendation=recommend(RiskBand.TR4, 12.5),
        nodule=ThyroidNodule(bbox_px=(10, 10, 40, 30), area_px=400, max_diameter_mm=12.5, taller_than_wide=False,
                             source="segmentation"),
        operating_point=POINT, pixel_spacing_mm=(0.1, 0.1), spacing_source="pixel-spacing", research_use_only=True,
    )

    return encode(thyroid_malignancy_sr(result, source, 0, MODEL, "job-6")), source


def test_thyroid_malignancy_sr_carries_probability_and_band(tmp_path) -> None:
    data, source = _thyroid_sr(tmp_path)

    sr = hd.sr.Comprehensive3DSR.from_dataset(_reread(data))
    _assert_identified(sr, source)
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type == codes.SCT.ThyroidNodule
    (probability,) = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
    assert probability.value == pytest.approx(0.3)
    (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
    assert diameter.value == pytest.approx(12.5)
    (band,) = group.get_qualitative_evaluations()
    assert band.value.value == "TR4"


# --- conformance: dciodvfy on every object above (these alone skip without dicom3tools) -------------------


@pytest.mark.parametrize("build", [
    lambda ct, tmp: _thyroid_seg(tmp)[0], lambda ct, tmp: _covid_seg(ct)[0], lambda ct, tmp: _lung_sr(ct)[0],
    lambda ct, tmp: _lung_sr_absent(ct), lambda ct, tmp: _dr_sr(tmp)[0], lambda ct, tmp: _thyroid_sr(tmp)[0],
], ids=["thyroid-seg", "covid-seg", "lung-sr", "lung-sr-absent", "dr-sr", "thyroid-sr"])
def test_dicom_result_passes_dciodvfy(build, ct_series, tmp_path) -> None:
    data = build(ct_series, tmp_path)
    assert dciodvfy_errors(data, tmp_path) == []
