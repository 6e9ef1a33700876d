"""What an uploaded dataset file is, and reading it: the format is sniffed from the file's first
bytes (Parquet, an Arrow IPC file, gzip, else CSV text), checked against what the form declared
(the file part's Content-Type or its name's extension), and the file is handed to its reader where
it lies — the upload's spooled temporary file, read block by block, never whole.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from typing import IO

from app.csv_ingest import parse_csv
from app.dataset_codec import ParsedDataset
from app.errors import FitserveError, PayloadTooLarge, Unprocessable, shown
from app.parquet import ARROW_MAGIC, MAGIC, parse_arrow_file, parse_parquet

GZIP_MAGIC = b"\x1f\x8b"
# What each format is called in messages.
FORMAT_NAMES = {
    "csv": "CSV text",
    "gzip": "a gzip'd file",
    "parquet": "Parquet",
    "arrow": "an Arrow IPC file",
}
_EXTENSIONS = {
    ".csv": "csv", ".txt": "csv", ".gz": "gzip", ".gzip": "gzip", ".parquet": "parquet",
    ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
}  # fmt: skip
_MEDIA_TYPES = {
    "text/csv": "csv", "application/csv": "csv", "application/gzip": "gzip",
    "application/x-gzip": "gzip", "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet", "application/vnd.apache.arrow.file": "arrow",
}  # fmt: skip


@dataclass(frozen=True)
class UploadLimits:
    max_cells: int  # rows x columns of a feature table
    max_table_bytes: int  # a Parquet table's uncompressed size (its footer's count)
    max_text_bytes: int  # a gzip'd CSV's text once decompressed


def sniff(file: IO[bytes]) -> str:
    file.seek(0)
    head = file.read(8)
    file.seek(0)
    if head.startswith(MAGIC):
        return "parquet"
    if head.startswith(ARROW_MAGIC):
        return "arrow"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "csv"


def declared_format(filename: str | None, content_type: str | None) -> tuple[str, str] | None:
    """(format, what declared it) from the part's Content-Type or file name; None when neither
    says (application/octet-stream, text/plain, no name)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _MEDIA_TYPES:
        return _MEDIA_TYPES[media], f"its Content-Type {media}"
    name = (filename or "").lower()
    for extension, kind in _EXTENSIONS.items():
        if name.endswith(extension):
            return kind, f"its name {shown(filename)}"
    return None


def parse_upload(
    file: IO[bytes],
    *,
    filename: str | None,
    content_type: str | None,
    target: str,
    task: str | None,
    limits: UploadLimits,
    where: str = "file",
) -> ParsedDataset:
    """A dataset file of any accepted format -> ParsedDataset, refused with what is wrong."""
    kind = sniff(file)
    declared = declared_format(filename, content_type)
    if declared is not None and declared[0] != kind:
        raise Unprocessable(
            f"{where} is declared as {FORMAT_NAMES[declared[0]]} ({declared[1]}) but holds "
            f"{FORMAT_NAMES[kind]}; upload it under a name and type that say what it is",
            loc=("body", "file"),
        )
    if kind == "parquet":
        return parse_parquet(
            file, target=target, task=task, max_bytes=limits.max_table_bytes,
            max_cells=limits.max_cells, where=where,
        )  # fmt: skip
    if kind == "arrow":
        return parse_arrow_file(file, target=target, task=task, max_cells=limits.max_cells,
                                where=where)  # fmt: skip
    if kind == "gzip":
        return _parse_gzip(file, target=target, task=task, limits=limits, where=where)
    return parse_csv(file, target=target, task=task, where=where, max_cells=limits.max_cells)


def _parse_gzip(
    file: IO[bytes], *, target: str, task: str | None, limits: UploadLimits, where: str
) -> ParsedDataset:
    text = _CappedText(file, limits.max_text_bytes)
    try:
        parsed = parse_csv(
            io.BufferedReader(text, 1 << 20), target=target, task=task, where=where,
            max_cells=limits.max_cells,
        )  # fmt: skip
    except (FitserveError, OSError, EOFError, zlib.error) as exc:
        if text.exceeded:
            raise text.too_large(where) from None
        if isinstance(exc, FitserveError):
            raise
        raise Unprocessable(
            f"{where} is not a whole gzip file ({exc}): upload it again, or as plain CSV"
        ) from None
    if text.exceeded:
        raise text.too_large(where)
    return parsed


class _CappedText(io.RawIOBase):
    """A gzip'd file's decompressed bytes, ending (and marked `exceeded`) past `limit`: a small
    upload can't become an unbounded text. Seekable back to 0 only (each parse pass rewinds)."""

    def __init__(self, file: IO[bytes], limit: int) -> None:
        super().__init__()
        self._file = file
        self._limit = limit
        self._gzip = gzip.GzipFile(fileobj=file, mode="rb")
        self._read = 0
        self.exceeded = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("only a rewind")
        self._file.seek(0)
        self._gzip = gzip.GzipFile(fileobj=self._file, mode="rb")
        self._read = 0
        return 0

    def tell(self) -> int:
        return self._read

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._read >= self._limit:
            self.exceeded = True
            return 0
        view = memoryview(buffer)[: self._limit - self._read]
        count = self._gzip.readinto(view)
        self._read += count
        return count

    def too_large(self, where: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"{where} decompresses to more than {self._limit:,} bytes of text, the upload limit "
            "(FITSERVE_MAX_UPLOAD_BYTES): upload fewer rows"
        )
