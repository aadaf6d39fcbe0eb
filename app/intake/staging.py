"""A private staging folder per upload: files land here, are checked, then move to the blob store or vanish.

Stored names are ours (`0000.dcm`, …), never the caller's, so a ZIP member called `../../etc/passwd` or a
file named after the patient cannot reach the file system or a log.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from app.errors import PayloadTooLarge, UnsuitableInput, UnsupportedMediaType
from app.intake.deflated import BudgetExceeded, inflate_if_deflated
from app.intake.formats import SniffedFormat, sniff_format

EXTENSIONS = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpeg", "zip": ".zip"}
COPY_CHUNK = 1 << 20
IGNORED_ZIP_MEMBERS = ("__MACOSX/", "DICOMDIR")
EOCD_SEARCH = 22 + 0xFFFF  # the record and its longest comment


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
    max_zip_ratio: float = 1000.0
    files: list[StagedFile] = field(default_factory=list)
    bytes_written: int = 0
    upload_digests: list[str] = field(default_factory=list)

    def add_upload(self, stream: BinaryIO, upload_index: int) -> None:
        """Copy one uploaded part to disk, detect its format from content, and unpack ZIPs."""
        label = f"file #{upload_index + 1}"
        raw_path = self.root / f"upload-{upload_index:04d}.part"
        digest = hashlib.sha256()
        self._copy(stream, raw_path, label, digest)
        self.upload_digests.append(digest.hexdigest())  # the request's fingerprint, for Idempotency-Key
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
        declared_members = _declared_zip_members(zip_path)
        if declared_members is not None and declared_members > self.max_files:
            # Said in the last bytes of the file: refused before zipfile parses a directory of 200,000 entries.
            raise PayloadTooLarge(
                f"{label} declares {declared_members} members, more than the {self.max_files} files an upload may "
                "hold (MEDIMG_MAX_UPLOAD_FILES, every member counts); split it into several jobs"
            )
        try:
            archive = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UnsuitableInput(f"{label} is not a readable ZIP archive ({exc})") from exc
        found_dicom = False
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            self._check_zip_directory(members, label)
            for index, member in enumerate(members):
                if member.filename.startswith(IGNORED_ZIP_MEMBERS) or member.filename.endswith("/DICOMDIR"):
                    continue
                member_label = f"{label}, member #{index + 1}"
                member_path = self.root / f"zip-{len(self.files):05d}.part"
                try:
                    with archive.open(member) as source:
                        # The directory can lie: a member may not unpack to more than it declared.
                        self._copy(source, member_path, member_label, declared=member.file_size)
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
                    raise UnsuitableInput(f"{member_label} cannot be extracted ({type(exc).__name__})") from exc
                if sniff_format(member_path) == "dicom":
                    found_dicom = True
                    self._keep(member_path, "dicom", member_label)
                else:
                    member_path.unlink()  # READMEs, viewers and thumbnails travel in PACS exports
        if not found_dicom:
            raise UnsuitableInput(f"{label} is a ZIP archive with no DICOM file inside")

    def _check_zip_directory(self, members: list[zipfile.ZipInfo], label: str) -> None:
        """Refuse from the central directory alone, before one member is unpacked."""
        if len(members) > self.max_files:
            raise PayloadTooLarge(
                f"{label} holds {len(members)} members, more than the {self.max_files} files an upload may hold "
                "(MEDIMG_MAX_UPLOAD_FILES, every member counts); split it into several jobs"
            )
        declared = sum(m.file_size for m in members)
        if self.bytes_written + declared > self.max_bytes:
            raise PayloadTooLarge(
                f"{label} declares {declared} bytes unpacked; with the rest of the upload that exceeds "
                f"{self.max_bytes} bytes (MEDIMG_MAX_UPLOAD_BYTES); send fewer or smaller files"
            )
        for index, member in enumerate(members):
            if member.file_size > self.max_zip_ratio * max(member.compress_size, 1) and member.file_size > COPY_CHUNK:
                raise UnsuitableInput(
                    f"{label}, member #{index + 1} declares {member.file_size} bytes packed into "
                    f"{member.compress_size}, a ratio above {self.max_zip_ratio:g} (MEDIMG_MAX_ZIP_RATIO): a "
                    "decompression bomb, or send it uncompressed"
                )

    def _copy(self, source: BinaryIO, target: Path, label: str, digest=None, declared: int | None = None) -> None:
        # Bytes are counted as they are written, so a ZIP bomb's lying sizes cannot fill the disk.
        copied = 0
        with target.open("wb") as sink:
            while chunk := source.read(COPY_CHUNK):
                copied += len(chunk)
                if declared is not None and copied > declared:
                    raise UnsuitableInput(f"{label} unpacks to more than the {declared} bytes the ZIP declares")
                self._count(len(chunk), label)
                if digest is not None:
                    digest.update(chunk)
                sink.write(chunk)

    def _count(self, size: int, label: str) -> None:
        self.bytes_written += size
        if self.bytes_written > self.max_bytes:
            raise PayloadTooLarge(
                f"The upload exceeds {self.max_bytes} bytes (MEDIMG_MAX_UPLOAD_BYTES) once unpacked, "
                f"at {label}; send fewer or smaller files"
            )

    def _keep(self, path: Path, detected: SniffedFormat, label: str) -> None:
        if len(self.files) >= self.max_files:
            raise PayloadTooLarge(
                f"The upload holds more than {self.max_files} files (MEDIMG_MAX_UPLOAD_FILES); split it into several jobs"
            )
        if detected == "dicom":
            try:
                self._count(inflate_if_deflated(path, self.max_bytes - self.bytes_written, label), label)
            except BudgetExceeded as exc:
                self._count(exc.inflated, f"{label} (a deflated data set, inflated)")
        final = path.with_name(f"{len(self.files):05d}{EXTENSIONS[detected]}")
        path.rename(final)
        self.files.append(StagedFile(path=final, format=detected, label=label))


def _declared_zip_members(path: Path) -> int | None:
    """Entry count from the end-of-central-directory record; None when absent or ZIP64 (0xFFFF)."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        stream.seek(max(size - EOCD_SEARCH, 0))
        tail = stream.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 12:
        return None
    (entries,) = struct.unpack_from("<H", tail, at + 10)
    return None if entries == 0xFFFF else entries


@contextmanager
def staging_area(staging_dir: Path, max_bytes: int, max_files: int,
                 max_zip_ratio: float = 1000.0) -> Iterator[StagingArea]:
    """Whatever happens inside, the staging folder is gone afterwards: accepted files have moved out."""
    root = staging_dir / uuid.uuid4().hex
    root.mkdir(parents=True, mode=0o700)  # uploads are patient data: readable by the service user only
    try:
        yield StagingArea(root=root, max_bytes=max_bytes, max_files=max_files, max_zip_ratio=max_zip_ratio)
    finally:
        try:
            root.rmdir()  # the usual end: every file accepted and moved out
        except OSError:
            shutil.rmtree(root, ignore_errors=True)
