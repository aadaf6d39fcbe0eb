"""The peer: the same DR ONNX model served by LitServe with its batching on, same preprocessing.

    python -m bench.peer_litserve MODEL_DIR PORT MAX_BATCH BATCH_TIMEOUT_S
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import litserve as ls
import numpy as np
from PIL import Image

from app.model_repository import load_model_version
from workers.imaging.fundus import preprocess_fundus


class DRGradingAPI(ls.LitAPI):
    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.model_dir = model_dir

    def setup(self, device) -> None:
        import onnxruntime as ort

        self.version = load_model_version(self.model_dir)
        self.session = ort.InferenceSession(str(self.version.onnx_path), providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(request["image"]))).convert("RGB"))
        return preprocess_fundus(rgb, self.version.manifest.preprocessing)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, batch):
        return self.session.run(["logits"], {"image": batch})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, logits):
        exp = np.exp(logits - logits.max())
        probabilities = exp / exp.sum()
        return {"grade": int(probabilities.argmax()), "probabilities": probabilities.round(6).tolist()}


if __name__ == "__main__":
    model_dir, port, max_batch, timeout = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    server = ls.LitServer(DRGradingAPI(model_dir), accelerator="cpu", max_batch_size=max_batch,
                          batch_timeout=timeout, workers_per_device=1)
    server.run(port=port, generate_client_file=False)
