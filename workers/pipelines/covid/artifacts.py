"""The job's files: NIfTI label and uncertainty volumes, mask and overlay PNGs per affected slice, slices.json,
and a display PNG per slice for the review page."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np

from workers.imaging.ct_display import display_slices, lung_window
from workers.imaging.ct_series import CTVolume
from workers.pipelines.base import ArtifactOutput
from workers.pipelines.covid.segments import CONSOLIDATION, GGO

OVERLAY_COLOURS = {GGO: (255, 200, 0), CONSOLIDATION: (230, 30, 30)}
OVERLAY_ALPHA = 0.45
MASK_GREY = {GGO: 128, CONSOLIDATION: 255}
NIFTI_NAME = "lesions.nii.gz"
SLICES_NAME = "slices.json"
UNCERTAINTY_NIFTI_NAME = "uncertainty.nii.gz"
UNCERTAINTY_PNG_NAME = "uncertainty.png"
UNCERTAIN_COLOUR = (0, 230, 255)


def nifti_affine(lps_affine: np.ndarray) -> np.ndarray:
    """NIfTI is RAS: the DICOM (LPS) affine with its x and y rows negated."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine


def label_nifti(labels: np.ndarray, lps_affine: np.ndarray) -> bytes:
    """The label volume as gzipped NIfTI-1, voxel (i, j, k) = (column, row, slice) of the series."""
    import nibabel as nib

    # The transposed view, not a copy: NIfTI stores column-fastest, so nibabel writes it slice by slice as is.
    image = nib.Nifti1Image(labels.transpose(2, 1, 0), nifti_affine(lps_affine))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"0 background, 1 ground-glass, 2 consolidation"
    image.set_qform(image.affine, code=1)  # scanner coordinates
    image.set_sform(image.affine, code=1)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as stream:  # never the whole file uncompressed
        image.to_stream(stream)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def mask_png(label_slice: np.ndarray) -> bytes:
    """Greyscale, source rows x columns: 0 background, 128 ground-glass, 255 consolidation."""
    grey = np.zeros(label_slice.shape, np.uint8)
    for label, value in MASK_GREY.items():
        grey[label_slice == label] = value
    return _png(grey)


def overlay_png(hu_slice: np.ndarray, label_slice: np.ndarray) -> bytes:
    """The slice in a lung window, ground-glass in amber and consolidation in red; source rows x columns."""
    return _png(overlay_rgb(hu_slice, label_slice))


def overlay_rgb(hu_slice: np.ndarray, label_slice: np.ndarray) -> np.ndarray:
    grey = lung_window(hu_slice)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, colour in OVERLAY_COLOURS.items():
        where = label_slice == label
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def slice_artifact_names(index: int) -> tuple[str, str]:
    return f"slice-{index:04d}-mask.png", f"slice-{index:04d}-overlay.png"


def write_artifacts(ct: CTVolume, labels: np.ndarray, affected: list[int]) -> list[ArtifactOutput]:
    artifacts = [ArtifactOutput(NIFTI_NAME, "application/gzip", label_nifti(labels, ct.affine))]
    entries = []
    for index in affected:
        mask_name, overlay_name = slice_artifact_names(index)
        artifacts.append(ArtifactOutput(mask_name, "image/png", mask_png(labels[index])))
        artifacts.append(ArtifactOutput(overlay_name, "image/png", overlay_png(ct.hu[index], labels[index])))
        header = ct.geometry.slices[index]
        entries.append({"index": index, "sop_instance_uid": header.sop_instance_uid,
                        "frame_number": None if header.frame is None else header.frame + 1,
                        "mask": mask_name, "overlay": overlay_name})
    document = {"series_instance_uid": ct.series_instance_uid, "n_slices": ct.geometry.n_slices,
                "labels": {"0": "background", "1": "ground-glass opacity", "2": "consolidation"},
                "nifti": NIFTI_NAME, "slices": entries}
    artifacts.append(ArtifactOutput(SLICES_NAME, "application/json", json.dumps(document, indent=1).encode()))
    artifacts += [ArtifactOutput(name, "image/png", png) for name, png in display_slices(ct.hu)]
    return artifacts



def uncertainty_artifacts(ct: CTVolume, labels: np.ndarray, disagreement: np.ndarray,
                          runs: int) -> list[ArtifactOutput]:
    """uncertainty.nii.gz: the share of augmentations disagreeing per voxel, on the series' grid (uint8 counts
    with a scale slope of 1/runs); uncertainty.png: the slice with the most disagreement, lesions in the lung
    window's overlay colours and uncertain voxels in cyan."""
    import nibabel as nib

    image = nib.Nifti1Image(disagreement.transpose(2, 1, 0), nifti_affine(ct.affine))
    image.header.set_xyzt_units("mm")
    image.header.set_slope_inter(1.0 / max(runs, 1), 0.0)
    image.header["descrip"] = b"share of augmentations whose lesion call differs"
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as stream:
        image.to_stream(stream)
    index = int(np.argmax(np.count_nonzero(disagreement, axis=(1, 2))))
    picture = overlay_rgb(ct.hu[index], labels[index])
    picture[disagreement[index] > 0] = UNCERTAIN_COLOUR
    return [ArtifactOutput(UNCERTAINTY_NIFTI_NAME, "application/gzip", buffer.getvalue()),
            ArtifactOutput(UNCERTAINTY_PNG_NAME, "image/png", _png(picture))]
