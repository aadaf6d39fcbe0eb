"""BINARY DICOM Segmentations with highdicom: the thyroid nodule on its ultrasound frame, COVID-19 lesions on CT.

Each is a new series in the source study, references the exact source instances (and frames), carries the
algorithm identification in every segment and the Contributing Equipment item; empty frames are omitted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from app.schemas.jobs import ModelRef
from app.schemas.manifest import CodedConcept, SegmentCoding
from workers.dicom_results.common import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    SEG_SERIES_NUMBER,
    ResultNotWritten,
    contributing_equipment,
    declare_private_scheme,
    derived_uid,
    seg_algorithm,
)


def _concept(code: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment(number: int, coding: SegmentCoding, model: ModelRef, tracking_uid: str) -> hd.seg.SegmentDescription:
    """A segment coded as the model's manifest says (decoding.segments), colour included when it gives one."""
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=coding.label,
        segmented_property_category=_concept(coding.category),
        segmented_property_type=_concept(coding.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=seg_algorithm(model),
        tracking_uid=tracking_uid,
        tracking_id=coding.label,
        display_color=None if coding.color_rgb is None else hd.color.CIELabColor.from_rgb(*coding.color_rgb),
    )


def _uses_private_scheme(codings: Sequence[SegmentCoding]) -> bool:
    return any(code.scheme == PRIVATE_SCHEME for c in codings for code in (c.category, c.type))


# Frames per slab in _Segmentation's overlap check: 16 frames of 512 x 512 are 32 MB of int64 sums.
OVERLAP_CHECK_FRAMES = 16


class _Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, checking stacked boolean masks for overlap slab by slab.

    highdicom finds SegmentsOverlap by summing the whole (frames, rows, columns, segments) array over segments
    into int64: 8 bytes per voxel, 600 MB for a 512 x 512 x 300 CT series and the largest allocation of a COVID
    job. Overlap in any slab is overlap of the whole, so its own check on slabs of frames gives the same answer.
    The hook is private to highdicom (0.28 here): if it is renamed the SEG stays the same and only the saving
    goes; the SEG tests in tests/workers/dicom_results catch a changed signature.
    """

    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, *args, **kwargs):
        binary = hd.seg.SegmentationTypeValues(segmentation_type) == hd.seg.SegmentationTypeValues.BINARY
        if not (binary and isinstance(pixel_array, np.ndarray) and pixel_array.ndim == 4
                and pixel_array.dtype == bool):
            return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, *args,
                                                        **kwargs)
        overlap = hd.seg.SegmentsOverlapValues.NO
        for first in range(0, pixel_array.shape[0], OVERLAP_CHECK_FRAMES):
            slab = pixel_array[first:first + OVERLAP_CHECK_FRAMES]
            _, slab_overlap = super()._check_and_cast_pixel_array(slab, segment_numbers, segmentation_type, *args,
                                                                  **kwargs)
            if slab_overlap == hd.seg.SegmentsOverlapValues.YES:
                overlap = slab_overlap
        return pixel_array, overlap


def _segmentation(sources: Sequence[Dataset], pixels: np.ndarray, segments: list[hd.seg.SegmentDescription],
                  model: ModelRef, job_id: str, description: str) -> hd.seg.Segmentation:
    seg = _Segmentation(
        source_images=list(sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=derived_uid(job_id, "seg-series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=derived_uid(job_id, "seg-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.id,
        software_versions=str(model.version),
        device_serial_number=model.sha256[:16],
        content_label="AI_SEG",
        content_description=description[:64],
        series_description=f"AI {description}"[:64],
        omit_empty_frames=True,
        contributing_equipment=[contributing_equipment(model)],
    )
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        seg.PatientOrientation = None  # type 2C when the images have no frame of reference (e.g. US): empty
    return seg


def thyroid_nodule_seg(source: Dataset, mask: np.ndarray, frame: int, coding: SegmentCoding, model: ModelRef,
                       job_id: str) -> hd.seg.Segmentation:
    """The nodule on frame `frame` (0-based) of one US instance; a multi-frame source gets only that frame.
    `coding` is the segmentation model's manifest coding of its nodule class."""
    rows, columns = int(source.Rows), int(source.Columns)
    if mask.shape != (rows, columns):
        raise ValueError(f"the mask is {mask.shape}, the source frame {(rows, columns)}")
    n_frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    if not 0 <= frame < n_frames:
        raise ValueError(f"frame {frame} is outside the source's {n_frames} frames")
    if n_frames > 1 and "FrameOfReferenceUID" not in source:
        raise ResultNotWritten(
            "No DICOM SEG: the source is a multi-frame image without a frame of reference, which highdicom "
            "segments only as a single frame"
        )
    if "FrameOfReferenceUID" not in source and "PixelSpacing" in source:
        # Without a frame of reference there is no plane to measure: highdicom would write a Pixel Measures
        # item without SliceThickness, which it cannot read back. US spacing lives in its regions anyway.
        source = copy.deepcopy(source)
        del source.PixelSpacing
    pixels = np.zeros((n_frames, rows, columns), dtype=bool)
    pixels[frame] = mask.astype(bool)
    segment = _segment(1, coding, model, derived_uid(job_id, "finding", "thyroid-nodule"))
    seg = _segmentation([source], pixels if n_frames > 1 else pixels[0], [segment], model, job_id,
                        "Thyroid nodule segmentation")
    if _uses_private_scheme([coding]):
        declare_private_scheme(seg)
    return seg


def covid_lesion_seg(sources: Sequence[Dataset], masks: Mapping[str, np.ndarray],
                     codings: Mapping[str, SegmentCoding], model: ModelRef, job_id: str) -> hd.seg.Segmentation:
    """Ground-glass, consolidation and lungs on a single-frame CT series.

    `sources` are the slices in the order of the masks' first axis; `masks` maps a name to a boolean (slices, rows,
    columns) array, each read once (it may be made on reading); `codings` says how each name is written (segment
    label, category, type, colour). Slices where every segment is empty are omitted.
    """
    uncoded = sorted(set(masks) - set(codings))
    if uncoded:
        raise ResultNotWritten(f"No DICOM SEG: no segment coding for {uncoded} (the model manifest's "
                               "decoding.segments names the classes to write)")
    names = list(masks)
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    pixels = _stack_segments(masks, names, shape)
    segments = [
        _segment(number, codings[name], model, derived_uid(job_id, "segment", codings[name].label))
        for number, name in enumerate(names, start=1)
    ]
    seg = _segmentation(sources, pixels, segments, model, job_id, "COVID-19 lesion segmentation")
    if _uses_private_scheme([codings[name] for name in names]):
        declare_private_scheme(seg)
    return seg


def _stack_segments(masks: Mapping[str, np.ndarray], labels: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """(slices, rows, columns, segments) booleans, filled one mask at a time: no list of full-size copies."""
    pixels = np.empty((*shape, len(labels)), bool)
    for number, label in enumerate(labels):
        mask = masks[label]
        if mask.shape != shape:
            raise ValueError(f"mask {label!r} is {mask.shape}; the series is {shape}")
        pixels[..., number] = mask
    return pixels
