"""Peer 1: the same DR ONNX model served by LitServe with its batching on (see bench/peer_grader.py).

    python -m bench.peer_litserve MODEL_DIR PORT WORKERS MAX_BATCH BATCH_TIMEOUT_S
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import litserve as ls
import numpy as np

from bench.peer_grader import PeerGrader, respond


class DRGradingAPI(ls.LitAPI):
    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.model_dir = model_dir

    def setup(self, device) -> None:
        self.grader = PeerGrader(self.model_dir)

    def decode_request(self, request):
        return self.grader.prepare(base64.b64decode(request["image"]))

    def batch(self, inputs):
        return inputs  # the tensors are stacked in predict; the graded pixels go on to the preview

    def predict(self, batch):
        return zip(self.grader.logits(np.stack([tensor for _, tensor, _ in batch])), batch, strict=True)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        logits, (graded, _, gradable) = output
        return respond(logits, graded, gradable)


if __name__ == "__main__":
    model_dir, port, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    max_batch, timeout = int(sys.argv[4]), float(sys.argv[5])
    server = ls.LitServer(DRGradingAPI(model_dir), accelerator="cpu", max_batch_size=max_batch,
                          batch_timeout=timeout, workers_per_device=workers)
    server.run(port=port, generate_client_file=False)
