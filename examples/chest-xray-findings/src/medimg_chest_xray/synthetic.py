"""Synthetic frontal chest radiographs with known findings, for the reference model and the tests.

A bright body with two dark lung fields and a heart shadow between them. Each finding is drawn as it shows on
a film: cardiomegaly widens the heart shadow (cardiothoracic ratio above one half), a pleural effusion fills
the bottom of a lung field with fluid density and a meniscus, a pneumothorax leaves a dark rim without lung
markings along a lung's apex and outer edge. These are caricatures for exercising the service, nothing more.

`python -m medimg_chest_xray.synthetic OUT.png --findings cardiomegaly,pleural-effusion --seed 3` writes one.
"""

from __future__ import annotations

import argparse
import io

import numpy as np

FINDINGS = ("cardiomegaly", "pleural-effusion", "pneumothorax")
SIZE = 256


def radiograph(present: set[str], seed: int = 0, size: int = SIZE) -> np.ndarray:
    """uint8 (size, size) grey radiograph with the given findings."""
    unknown = present - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; known: {FINDINGS}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.75)
    jitter = lambda scale: rng.uniform(-scale, scale)  # noqa: E731
    lungs = []
    for side in (-1, 1):
        cx, cy = 0.5 + side * (0.2 + jitter(0.02)), 0.47 + jitter(0.02)
        rx, ry = 0.15 + jitter(0.015), 0.3 + jitter(0.02)
        lung = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        image[lung] = 0.25
        lungs.append((lung, cx, cy, rx, ry, side))
    markings = rng.normal(0, 0.04, (size, size))
    for lung, *_ in lungs:
        image[lung] += markings[lung]  # vessels: texture inside the lungs
    heart_width = rng.uniform(0.3, 0.4) if "cardiomegaly" in present else rng.uniform(0.18, 0.24)
    heart = ((xx - 0.52) / (heart_width / 2)) ** 2 + ((yy - 0.66) / 0.14) ** 2 <= 1.0
    image[heart] = 0.8
    if "pleural-effusion" in present:
        lung, cx, cy, rx, ry, side = lungs[int(rng.integers(2))]
        level = cy + ry * rng.uniform(0.2, 0.45)
        fluid = lung & (yy >= level - 0.04 * np.abs(xx - cx) / rx)  # meniscus: higher at the edge
        image[fluid] = 0.7
    if "pneumothorax" in present:
        lung, cx, cy, rx, ry, side = lungs[int(rng.integers(2))]
        edge = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        rim = lung & (edge >= rng.uniform(0.45, 0.6)) & (yy <= cy + 0.05) & ((xx - cx) * side >= -0.02)
        image[rim] = 0.08  # air without lung markings
    image += rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n radiographs, each finding present independently with probability 0.4, and their (n, 3) labels."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, len(FINDINGS))) < 0.4
    images = np.stack([radiograph({f for f, on in zip(FINDINGS, row) if on}, seed=seed * 100_000 + i)
                       for i, row in enumerate(labels)])
    return images, labels.astype(np.int64)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--findings", default="", help=f"comma-separated, of {', '.join(FINDINGS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    present = {f for f in args.findings.split(",") if f}
    with open(args.out, "wb") as stream:
        stream.write(png_bytes(radiograph(present, args.seed)))


if __name__ == "__main__":
    main()
