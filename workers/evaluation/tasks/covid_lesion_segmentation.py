"""covid-lesion-segmentation: reference masks as NIfTI `<case>.nii.gz` on the CT's grid, or DICOM SEG `<case>.dcm`.

The data folder holds one sub-folder or ZIP of DICOM per case, named as its mask. Which label values (NIfTI)
or segment numbers (SEG) mean what is given by `--mask-label NAME=V[,V…]`, NAME one of lesion, ggo,
consolidation, lung (default lesion=1, MosMedData's convention; COVID-19-CT-Seg is lung=1,2 lesion=3).

Figures: Dice per class (mean over cases where the reference or the model has that class), the absolute
error of the total lesion volume (ml and %), and of the lung involvement (percentage points; against the
site's lung mask when `lung` is labelled, otherwise against the model's own lung volume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.schemas.jobs import Job
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from workers.evaluation import plots
from workers.evaluation.base import Case, LabelOptions, Scored
from workers.evaluation.files import LabelError
from workers.evaluation.intervals import BootstrapSettings, mean_figure

DEFAULT_LABELS = {"lesion": (1,)}
CLASS_NAMES = ("lesion", "ggo", "consolidation", "lung")
# The service's label volume (lesions.nii.gz): 1 ground-glass, 2 consolidation.
PREDICTED_VALUES = {"lesion": (1, 2), "ggo": (1,), "consolidation": (2,)}
NIFTI_ARTIFACT = "lesions.nii.gz"


def case_inputs(data: Path) -> dict[str, tuple[Path, ...]]:
    found = {}
    for entry in sorted(data.iterdir()):
        if entry.is_dir():
            found[entry.name] = tuple(sorted(p for p in entry.rglob("*") if p.is_file()))
        elif entry.suffix.lower() == ".zip":
            found[entry.stem] = (entry,)
    return found


def reference_mask(labels: Path, case: str) -> Path | None:
    for name in (f"{case}.nii.gz", f"{case}.nii", f"{case}.dcm", f"{case}.seg.dcm"):
        if (labels / name).is_file():
            return labels / name
    return None


class CovidLesionSegmentationEvaluation:
    task = TaskName.COVID_LESION_SEGMENTATION

    def read_cases(self, labels: LabelOptions) -> list[Case]:
        if not labels.labels.is_dir():
            raise LabelError(f"--labels {labels.labels} must be the folder of masks (<case>.nii.gz or <case>.dcm)")
        values = labels.mask_labels or DEFAULT_LABELS
        unknown = sorted(set(values) - set(CLASS_NAMES))
        if unknown:
            raise LabelError(f"--mask-label {unknown[0]}: classes are {', '.join(CLASS_NAMES)}")
        cases = []
        for name, files in case_inputs(labels.data).items():
            mask = reference_mask(labels.labels, name)
            if mask is None:
                continue
            cases.append(Case(case_id=name, files=tuple(str(f) for f in files),
                              truth={"mask": str(mask), "labels": {k: list(v) for k, v in values.items()}}))
        if not cases:
            raise LabelError(f"no case in {labels.data} has a mask named <case>.nii.gz or <case>.dcm in {labels.labels}")
        return cases

    def record(self, case: Case, job: Job, artifacts: dict[str, bytes], predictions_dir: Path) -> dict:
        from workers.evaluation.predict import safe_name

        prediction = predictions_dir / f"{safe_name(case.case_id)}.nii.gz"
        prediction.write_bytes(artifacts[NIFTI_ARTIFACT])
        predicted = _predicted_labels(prediction)
        truth, voxel_ml = _reference(case, prediction)
        result = job.result or {}
        record: dict = {"lesion_ml": result["lesion_volume_ml"]["total"],
                        "lung_ml": result["lung_volume_ml"]["left"] + result["lung_volume_ml"]["right"],
                        "involvement_percent": result["involvement_percent"]["total"], "dice": {}}
        for name, values in case.truth["labels"].items():
            reference = np.isin(truth, values)
            if name == "lung":
                record["reference_lung_ml"] = float(reference.sum() * voxel_ml)
                continue
            model = np.isin(predicted, PREDICTED_VALUES[name])
            total = int(reference.sum() + model.sum())
            record["dice"][name] = None if total == 0 else 2.0 * int((reference & model).sum()) / total
            if name == "lesion":
                record["reference_lesion_ml"] = float(reference.sum() * voxel_ml)
        if "reference_lesion_ml" not in record:
            lesion_values = [v for k, vs in case.truth["labels"].items() if k != "lung" for v in vs]
            record["reference_lesion_ml"] = float(np.isin(truth, lesion_values).sum() * voxel_ml)
        return record

    def score(self, cases: list[Case], records: list[dict], manifest: ModelManifest,
              settings: BootstrapSettings) -> Scored:
        metrics: dict[str, dict] = {}
        names = sorted({k for r in records for k in r["dice"]})
        for name in names:
            values = np.array([r["dice"][name] for r in records if r["dice"].get(name) is not None])
            if len(values):
                metrics[f"dice_{name}"] = mean_figure(values, settings)
        truth_ml = np.array([r["reference_lesion_ml"] for r in records])
        model_ml = np.array([r["lesion_ml"] for r in records])
        metrics["volume_error_ml"] = mean_figure(np.abs(model_ml - truth_ml), settings)
        with_lesion = truth_ml > 0
        if with_lesion.any():
            metrics["volume_error_percent"] = mean_figure(
                100.0 * np.abs(model_ml - truth_ml)[with_lesion] / truth_ml[with_lesion], settings)
        reference_lung = np.array([r.get("reference_lung_ml", r["lung_ml"]) for r in records])
        truth_involvement = np.divide(100.0 * truth_ml, reference_lung, out=np.zeros_like(truth_ml),
                                      where=reference_lung > 0)
        model_involvement = np.array([r["involvement_percent"] for r in records])
        metrics["involvement_error"] = mean_figure(np.abs(model_involvement - truth_involvement), settings)
        metrics["involvement_error"]["reference_lungs"] = (
            "site" if all("reference_lung_ml" in r for r in records) else "model")
        rows = [{"case": c.case_id, **{f"dice_{k}": v for k, v in r["dice"].items()},
                 "lesion_ml_reference": round(r["reference_lesion_ml"], 3), "lesion_ml_model": r["lesion_ml"],
                 "involvement_percent_model": r["involvement_percent"]} for c, r in zip(cases, records, strict=True)]
        plot_files = {"volume.png": plots.agreement(truth_ml, model_ml, "Lesion volume", "ml")}
        return Scored(metrics=metrics, plots=plot_files, rows=rows)


def _predicted_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def _reference(case: Case, prediction: Path) -> tuple[np.ndarray, float]:
    """The reference label volume on the prediction's voxels (both in NIfTI's closest-canonical order), and one
    voxel's volume in ml. A reference on another grid is refused rather than resampled."""
    import nibabel as nib

    predicted = nib.as_closest_canonical(nib.load(prediction))
    voxel_ml = float(abs(np.linalg.det(predicted.affine[:3, :3]))) / 1000.0
    path = Path(case.truth["mask"])
    if path.suffix == ".dcm":
        return _seg_on_grid(path, predicted), voxel_ml
    reference = nib.as_closest_canonical(nib.load(path))
    if reference.shape[:3] != predicted.shape[:3] or not np.allclose(reference.affine, predicted.affine, atol=0.05):
        raise LabelError(f"{path.name}: the mask is not on the CT's grid (shape {reference.shape[:3]} against "
                         f"{predicted.shape[:3]}, or another affine); write it on the series' own voxels")
    return np.rint(np.asarray(reference.dataobj)).astype(np.int32).reshape(reference.shape[:3]), voxel_ml


def _seg_on_grid(path: Path, predicted) -> np.ndarray:
    """A DICOM SEG's frames placed by their ImagePositionPatient (LPS) on the prediction's voxels; each voxel
    gets the number of the segment covering it (the values --mask-label names for SEG)."""
    import pydicom
    from nibabel.affines import apply_affine

    seg = pydicom.dcmread(path)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    ras_to_voxel = np.linalg.inv(predicted.affine)
    out = np.zeros(predicted.shape[:3], np.int32)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        rows, columns = np.nonzero(frames[index])
        if not len(rows):
            continue
        segment = int(_functional(group, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        origin = np.asarray(_functional(group, shared, "PlanePositionSequence").ImagePositionPatient, float)
        orientation = np.asarray(_functional(group, shared, "PlaneOrientationSequence").ImageOrientationPatient, float)
        spacing = _functional(group, shared, "PixelMeasuresSequence").PixelSpacing
        row_dir, column_dir = orientation[:3] * lps_to_ras, orientation[3:] * lps_to_ras
        points = (origin * lps_to_ras + np.outer(columns * float(spacing[1]), row_dir)
                  + np.outer(rows * float(spacing[0]), column_dir))
        voxels = np.rint(apply_affine(ras_to_voxel, points)).astype(int)
        inside = np.all((voxels >= 0) & (voxels < np.array(out.shape)), axis=1)
        out[tuple(voxels[inside].T)] = segment
    return out


def _functional(group, shared, keyword: str):
    """A functional group macro's item, from the frame's own groups or else the shared ones."""
    if keyword in group:
        return group[keyword].value[0]
    if shared is not None and keyword in shared:
        return shared[keyword].value[0]
    raise LabelError(f"the DICOM SEG has no {keyword} for its frames")


EVALUATION = CovidLesionSegmentationEvaluation()
