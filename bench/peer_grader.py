"""What both peers serve: the DR model set up exactly as the service sets it up, so a peer differs only in
how it is served.

The session comes from the service's own loader (`workers.onnx.load_model`: the same session options, idle
threads not spinning, the same thread count), photos are decoded by the service's decoder
(`workers.imaging.photo.decode_photo`: libspng for PNG, DCT-scaled JPEG), and each photo gets the work the
service's DR pipeline does for it with `uncertainty` and `explain` off: the fundus quality gate, the crop and
resize, one inference, and the JPEG preview of the graded pixels (computed, and its size returned).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.config import Settings
from app.model_repository import load_model_version
from workers.imaging.fundus import fit_to_model, to_model_tensor
from workers.imaging.photo import decode_photo
from workers.onnx import load_model
from workers.pipelines.dr_grading import decode_side, retina_preview
from workers.quality.fundus import check_fundus

# MEDIMG_PROVIDERS, as the service reads it (bench/gpu.sh sets CUDA); the CPU otherwise, as on the CPU runs.
PROVIDERS = Settings().providers or ["CPUExecutionProvider"]


def session_settings() -> dict:
    """The ONNX Runtime settings the service uses by default, which every peer gets too (recorded per row)."""
    defaults = Settings()
    return {"intra_op_threads": defaults.inference_threads or "onnxruntime default (all cores)",
            "thread_spinning": defaults.inference_thread_spinning, "providers": PROVIDERS}


class PeerGrader:
    def __init__(self, model_dir: Path) -> None:
        defaults = Settings()
        self.model = load_model(load_model_version(model_dir), PROVIDERS, defaults.inference_threads,
                                defaults.inference_thread_spinning)
        manifest = self.model.manifest
        self.preprocessing, self.min_side = manifest.preprocessing, decode_side(manifest)
        self.quality_limits = manifest.quality.fundus
        self.input_name, self.output_name = manifest.inputs[0].name, manifest.outputs[0].name

    def prepare(self, data: bytes) -> tuple[np.ndarray, np.ndarray, bool]:
        """One uploaded photo → (graded uint8 pixels, the model's CHW input, gradable), as the pipeline does."""
        photo = decode_photo(data, self.min_side)
        gradable = check_fundus(photo, self.quality_limits).gradable
        graded = fit_to_model(photo, self.preprocessing)
        return graded, to_model_tensor(graded, self.preprocessing), gradable

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.model.session.run([self.output_name], {self.input_name: batch})[0]


def respond(logits: np.ndarray, graded: np.ndarray, gradable: bool) -> dict:
    exp = np.exp(logits - logits.max())
    probabilities = exp / exp.sum()
    return {"grade": int(probabilities.argmax()), "probabilities": probabilities.round(6).tolist(),
            "gradable": gradable, "preview_bytes": len(retina_preview(graded).data)}
