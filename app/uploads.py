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
from typing import IO, Any

from app.csv_ingest import FileSource, Opener, parse_csv
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
    source = FileSource(file)
    try:
        return _parse(kind, source, target=target, task=task, limits=limits, where=where)
    finally:
        source.close()


def _parse(
    kind: str,
    source: FileSource,
    *,
    target: str,
    task: str | None,
    limits: UploadLimits,
    where: str,
) -> ParsedDataset:
    if kind == "parquet":
        return parse_parquet(
            source(), target=target, task=task, max_bytes=limits.max_table_bytes,
            max_cells=limits.max_cells, where=where,
        )  # fmt: skip
    if kind == "arrow":
        return parse_arrow_file(source(), target=target, task=task, max_cells=limits.max_cells,
                                where=where)  # fmt: skip
    if kind == "gzip":
        return _parse_gzip(source, target=target, task=task, limits=limits, where=where)
    return parse_csv(source, target=target, task=task, where=where, max_cells=limits.max_cells)


def _parse_gzip(
    source: Opener, *, target: str, task: str | None, limits: UploadLimits, where: str
) -> ParsedDataset:
    texts: list[_CappedText] = []

    def text() -> IO[bytes]:
        """Each pass its own decompressing stream (app/csv_ingest.py: FileSource says why)."""
        texts.append(_CappedText(source(), limits.max_text_bytes))
        return io.BufferedReader(texts[-1], 1 << 20)

    try:
        parsed = parse_csv(text, target=target, task=task, where=where, max_cells=limits.max_cells)
    except (FitserveError, OSError, EOFError, zlib.error) as exc:
        if any(t.exceeded for t in texts):
            raise texts[0].too_large(where) from None
        if isinstance(exc, FitserveError):
            raise
        raise Unprocessable(
            f"{where} is not a whole gzip file ({exc}): upload it again, or as plain CSV"
        ) from None
    if any(t.exceeded for t in texts):
        raise texts[0].too_large(where)
    return parsed


class _CappedText(io.RawIOBase):
    """A gzip'd file's decompressed bytes, ending (and marked `exceeded`) past `limit`: a small
    upload can't become an unbounded text."""

    def __init__(self, raw: Any, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self._read = 0
        self.exceeded = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
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
