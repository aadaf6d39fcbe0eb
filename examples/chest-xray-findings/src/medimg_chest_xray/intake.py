"""What the gateway checks from headers, beyond the manifest's `accepts`: a chest film's proportions."""

from __future__ import annotations

from app.errors import UnsuitableInput

MAX_ASPECT = 2.0  # detector plates are 35x43 cm or 43x43 cm; a strip this long is no chest radiograph


def check_frontal_shape(inputs, manifest, options) -> None:
    for item in inputs:
        if item.dicom is not None:
            rows, columns = item.dicom.rows, item.dicom.columns
        else:
            rows, columns = item.raster.height, item.raster.width
        if max(rows, columns) > MAX_ASPECT * min(rows, columns):
            raise UnsuitableInput(f"{item.staged.label} is {columns}x{rows} pixels; a chest radiograph is at most "
                                  f"{MAX_ASPECT:g} times as long as it is wide")
