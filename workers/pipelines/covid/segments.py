"""The label values the model writes, and the DICOM SEG's masks and codes by segment."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from app.schemas.manifest import CodedConcept, ModelManifest, SegmentCoding
from workers.imaging.lungs import LungMask

BACKGROUND, GGO, CONSOLIDATION = 0, 1, 2
LUNGS = "lungs"
LUNGS_SEGMENT = SegmentCoding(
    label="lungs", category=CodedConcept(value="123037004", scheme="SCT", meaning="Anatomical Structure"),
    type=CodedConcept(value="39607008", scheme="SCT", meaning="Lung"), color_rgb=(80, 160, 255),
)


class SegmentMasks(Mapping[str, np.ndarray]):
    """The DICOM SEG's boolean masks by segment label, each made when read.

    The SEG is built after the pipeline returns, when the HU volume is gone; until then the job holds the two
    label volumes only, not three more full-size masks beside them.
    """

    def __init__(self, labels: np.ndarray, lungs: LungMask, manifest: ModelManifest) -> None:
        self._make: dict[str, Callable[[], np.ndarray]] = {
            manifest.class_names[GGO]: lambda: labels == GGO,
            manifest.class_names[CONSOLIDATION]: lambda: labels == CONSOLIDATION,
            LUNGS: lambda: lungs.both,
        }

    def codings(self, manifest: ModelManifest) -> dict[str, SegmentCoding]:
        """The model's classes as its manifest codes them; the lungs (segmented here, not by the model) as ours."""
        coded = {**(manifest.decoding.segments or {}), LUNGS: LUNGS_SEGMENT}
        return {name: coded[name] for name in self._make if name in coded}

    def __getitem__(self, label: str) -> np.ndarray:
        return self._make[label]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._make)

    def __len__(self) -> int:
        return len(self._make)

