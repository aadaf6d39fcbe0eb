"""Small labelled sets in the public data sets' own formats, for `medimg eval`: synthetic images, real layouts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devkit.covid import covid_case
from devkit.ct import nodule_scan, synthetic_ct
from devkit.fundus import dicom_fundus_bytes, jpeg_bytes, make_fundus, png_bytes
from devkit.services import REPO_ROOT
from devkit.ultrasound import held_out_item
from devkit.ultrasound import png_bytes as us_png_bytes

EVAL_TIMEOUT = 300


@dataclass(frozen=True)
class LabelledSet:
    data: Path
    labels: Path
    truth: dict  # case id → what the labels say
    masks: Path | None = None


def _write_csv(path: Path, header: list[str], rows: list) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def eyepacs_set(root: Path, n: int = 10) -> LabelledSet:
    """EyePACS/Kaggle layout: train/<id>_<eye>.jpeg and trainLabels.csv (image,level), names without extension."""
    (root / "train").mkdir(parents=True)
    truth = {}
    for i in range(n):
        fundus = make_fundus(seed=700 + i, grade=i % 5)
        name = f"{13 + i // 2}_{'left' if i % 2 else 'right'}"
        data = dicom_fundus_bytes(fundus.rgb) if i == 0 else jpeg_bytes(fundus.rgb)
        (root / "train" / (f"{name}.dcm" if i == 0 else f"{name}.jpeg")).write_bytes(data)
        truth[name] = fundus.grade
    labels = _write_csv(root / "trainLabels.csv", ["image", "level"], list(truth.items()))
    return LabelledSet(root / "train", labels, truth)


def aptos_set(root: Path, n: int = 4) -> LabelledSet:
    """APTOS 2019 layout: train_images/<id_code>.png and train.csv (id_code,diagnosis)."""
    (root / "train_images").mkdir(parents=True)
    truth = {}
    for i in range(n):
        fundus = make_fundus(seed=800 + i, grade=(4 - i) % 5)
        code = f"{0x1f3c5a9e0b7d + i:012x}"
        (root / "train_images" / f"{code}.png").write_bytes(png_bytes(fundus.rgb))
        truth[code] = fundus.grade
    labels = _write_csv(root / "train.csv", ["id_code", "diagnosis"], list(truth.items()))
    return LabelledSet(root / "train_images", labels, truth)


def luna16_set(root: Path, diameters=((8.0, 14.0), ())) -> LabelledSet:
    """LUNA16 layout: subset0/<seriesuid>/ of DICOM (the one as a ZIP) and annotations.csv in world mm."""
    import zipfile

    ct = synthetic_ct()
    (root / "subset0").mkdir(parents=True)
    rows, truth = [], {}
    for k, scan_diameters in enumerate(diameters):
        scan = nodule_scan(seed=30 + k, diameters=scan_diameters, z_extent_mm=40.0)
        ids = ct.SeriesIds.new()
        folder = root / "subset0" / ids.series_instance_uid
        paths = ct.write_ct_series(scan.hu, scan.grid, folder, ids=ids)
        if k == 1:  # one series as a ZIP, as archives arrive; a scan without nodules, as LUNA16 has
            with zipfile.ZipFile(folder.with_suffix(".zip"), "w") as archive:
                for path in paths:
                    archive.write(path, f"DICOM/{path.name}")
            for path in paths:
                path.unlink()
            folder.rmdir()
        truth[ids.series_instance_uid] = [(*n.centre_mm, n.diameter_mm) for n in scan.nodules]
        rows += [(ids.series_instance_uid, *(round(float(v), 3) for v in n.centre_mm), n.diameter_mm)
                 for n in scan.nodules]
    labels = _write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], rows)
    return LabelledSet(root / "subset0", labels, truth)


def nifti_affine_of(grid) -> np.ndarray:
    """The NIfTI (RAS) affine of voxel (column, row, slice) on a grid given in DICOM LPS, as dcm2niix writes."""
    origin = grid.to_patient(np.zeros((1, 3)))[0]
    lps = np.eye(4)
    lps[:3, :3] = np.stack([grid.to_patient(np.eye(3)[i:i + 1])[0] - origin for i in range(3)], axis=1)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def reference_seg(paths: list[Path], lesion: np.ndarray, path: Path) -> None:
    """A DICOM SEG (highdicom) of the lesion mask (slice, row, column) over the series' instances, segment 1."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: int(d.InstanceNumber))
    for source in sources:  # type 2 attributes highdicom copies; the phantom writer leaves them out
        for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime",
                        "PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            if keyword not in source:
                setattr(source, keyword, "")
    order = [int(d.InstanceNumber) - 1 for d in sources]  # write_ct_series numbers instances along the slices
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=lesion[order], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="site", manufacturer_model_name="reader",
        software_versions="1", device_serial_number="1")
    seg.save_as(path)


def mosmed_set(root: Path, n: int = 2) -> LabelledSet:
    """MosMedData layout: studies/study_0001/ of DICOM and masks/study_0001.nii.gz (lesion = 1) on the CT grid;
    the last case's reference is a DICOM SEG (masks/study_0002.dcm, segment 1) instead.

    The NIfTI masks are written with their rows flipped (another voxel order, the same grid): the reader must go
    by the affine, not the array order."""
    import nibabel as nib

    (root / "studies").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for k in range(n):
        case = covid_case(seed=40 + k, matrix=96, slice_spacing=5.0, n_lesions=3)
        name = f"study_{k + 1:04d}"
        paths = synthetic_ct().write_ct_series(case.hu, case.grid, root / "studies" / name)
        truth[name] = case
        if k == n - 1:
            reference_seg(paths, case.labels > 0, root / "masks" / f"{name}.dcm")
            continue
        data = (case.labels > 0).astype(np.uint8).transpose(2, 1, 0)  # (column, row, slice)
        affine = nifti_affine_of(case.grid)
        flip = np.eye(4)
        flip[1, 1], flip[1, 3] = -1, data.shape[1] - 1
        nib.save(nib.Nifti1Image(data[:, ::-1, :].copy(), affine @ flip), root / "masks" / f"{name}.nii.gz")
    return LabelledSet(root / "studies", root / "masks", truth)


def thyroid_set(root: Path, n: int = 8) -> LabelledSet:
    """images/<name>.png, labels.csv (image,malignant) and masks/<name>.png (non-zero = nodule)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i in range(n):
        item = held_out_item(i)
        name = f"tn{i:03d}.png"
        (root / "images" / name).write_bytes(us_png_bytes(item.frame))
        (root / "masks" / name).write_bytes(us_png_bytes(item.mask.astype(np.uint8) * 255))
        truth[name] = (int(item.malignant), item.mask)
    labels = _write_csv(root / "labels.csv", ["image", "malignant"], [(k, v[0]) for k, v in truth.items()])
    return LabelledSet(root / "images", labels, truth, masks=root / "masks")


def medimg_eval(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, "-m", "app.cli", "eval", "--no-progress", *args], env=env,
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=EVAL_TIMEOUT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def read_cases(out: Path) -> list[dict]:
    with (out / "cases.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))
