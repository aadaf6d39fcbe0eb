"""Read what intake needs from a PNG or JPEG header, without decoding the whole image."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from app.errors import UnsuitableInput

JPEG_END_OF_IMAGE = b"\xff\xd9"


@dataclass(frozen=True)
class RasterHeader:
    width: int
    height: int
    mode: str

    @property
    def samples_per_pixel(self) -> int:
        return 1 if self.mode in {"1", "L", "I", "I;16", "F", "P"} else 3


def read_raster_header(path: Path, label: str, max_pixels: int) -> RasterHeader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                header = RasterHeader(width=image.width, height=image.height, mode=image.mode)
                if header.width * header.height > max_pixels:
                    raise UnsuitableInput(
                        f"{label} declares {header.width}x{header.height} pixels, more than the limit of "
                        f"{max_pixels} pixels (MEDIMG_MAX_IMAGE_PIXELS)"
                    )
                if image.format == "PNG":
                    image.verify()  # walks every chunk and its CRC, so a cut-off PNG is caught here
    except UnsuitableInput:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses above twice its own MAX_IMAGE_PIXELS before it says the size; ours is lower (the
        # setting's bound), so the limit that applies is still ours.
        raise UnsuitableInput(
            f"{label} declares more than {2 * Image.MAX_IMAGE_PIXELS} pixels, far above the limit of {max_pixels} "
            "pixels (MEDIMG_MAX_IMAGE_PIXELS)"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnsuitableInput(f"{label} is not a readable image ({type(exc).__name__}); it may be truncated") from exc
    if path.suffix == ".jpeg" and not _jpeg_has_end_marker(path):
        raise UnsuitableInput(f"{label} is a truncated JPEG (no end-of-image marker)")
    return header


def _jpeg_has_end_marker(path: Path) -> bool:
    with path.open("rb") as stream:
        stream.seek(max(path.stat().st_size - 64, 0))
        return JPEG_END_OF_IMAGE in stream.read()
