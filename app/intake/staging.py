"""A private staging folder per upload: files land here, are checked, then move to the blob store or vanish.

Stored names are ours (`0000.dcm`, …), never the caller's, so a ZIP member called `../../etc/passwd` or a
file named after the patient cannot reach the file system or a log.
"""

from __future__ import annotations

import shutil
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from app.errors import PayloadTooLarge, UnsuitableInput, UnsupportedMediaType
from app.intake.formats import SniffedFormat, sniff_format

EXTENSIONS = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpeg", "zip": ".zip"}
COPY_CHUNK = 1 << 20
IGNORED_ZIP_MEMBERS = ("__MACOSX/", "DICOMDIR")


@dataclass(frozen=True)
class StagedFile:
    path: Path
    format: SniffedFormat
    label: str = field(compare=False)


@dataclass
class StagingArea:
    root: Path
    max_bytes: int
    max_files: int
    files: list[StagedFile] = field(default_factory=list)
    bytes_written: int = 0

    def add_upload(self, stream: BinaryIO, upload_index: int) -> None:
        """Copy one uploaded part to disk, detect its format from content, and unpack ZIPs."""
        label = f"file #{upload_index + 1}"
        raw_path = self.root / f"upload-{upload_index:04d}.part"
        self._copy(stream, raw_path, label)
        detected = sniff_format(raw_path)
        if detected is None:
            raise UnsupportedMediaType(
                f"{label} is neither DICOM, PNG, JPEG nor a ZIP of DICOM files (judged from its content, "
                "not its name or content type)"
            )
        if detected == "zip":
            self._unpack_zip(raw_path, label)
            raw_path.unlink()
        else:
            self._keep(raw_path, detected, label)

    def _unpack_zip(self, zip_path: Path, label: str) -> None:
        try:
            archive = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UnsuitableInput(f"{label} is not a readable ZIP archive ({exc})") from exc
        found_dicom = False
        with archive:
            for index, member in enumerate(m for m in archive.infolist() if not m.is_dir()):
                if member.filename.startswith(IGNORED_ZIP_MEMBERS) or member.filename.endswith("/DICOMDIR"):
                    continue
                member_label = f"{label}, member #{index + 1}"
                member_path = self.root / f"zip-{len(self.files):05d}.part"
                try:
                    with archive.open(member) as source:
                        self._copy(source, member_path, member_label)
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                    raise UnsuitableInput(f"{member_label} cannot be extracted ({type(exc).__name__})") from exc
                if sniff_format(member_path) == "dicom":
                    found_dicom = True
                    self._keep(member_path, "dicom", member_label)
                else:
                    member_path.unlink()  # READMEs, viewers and thumbnails travel in PACS exports
        if not found_dicom:
            raise UnsuitableInput(f"{label} is a ZIP archive with no DICOM file inside")

    def _copy(self, source: BinaryIO, target: Path, label: str) -> None:
        # Bytes are counted as they are written, so a ZIP bomb's lying sizes cannot fill the disk.
        with target.open("wb") as sink:
            while chunk := source.read(COPY_CHUNK):
                self.bytes_written += len(chunk)
                if self.bytes_written > self.max_bytes:
                    raise PayloadTooLarge(
                        f"The upload exceeds {self.max_bytes} bytes (MEDIMG_MAX_UPLOAD_BYTES) once unpacked, "
                        f"at {label}; send fewer or smaller files"
                    )
                sink.write(chunk)

    def _keep(self, path: Path, detected: SniffedFormat, label: str) -> None:
        if len(self.files) >= self.max_files:
            raise PayloadTooLarge(
                f"The upload holds more than {self.max_files} files (MEDIMG_MAX_UPLOAD_FILES); split it into several jobs"
            )
        final = path.with_name(f"{len(self.files):05d}{EXTENSIONS[detected]}")
        path.rename(final)
        self.files.append(StagedFile(path=final, format=detected, label=label))


@contextmanager
def staging_area(staging_dir: Path, max_bytes: int, max_files: int) -> Iterator[StagingArea]:
    """Whatever happens inside, the staging folder is gone afterwards: accepted files have moved out."""
    root = staging_dir / uuid.uuid4().hex
    root.mkdir(parents=True)
    try:
        yield StagingArea(root=root, max_bytes=max_bytes, max_files=max_files)
    finally:
        try:
            root.rmdir()  # the usual end: every file accepted and moved out
        except OSError:
            shutil.rmtree(root, ignore_errors=True)
