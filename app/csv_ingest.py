"""CSV uploads read with Apache Arrow's streaming reader (`pyarrow.csv.open_csv`), block by block.

The upload is read where it lies (the spooled temporary file of a multipart upload, or bytes for
the built-ins; a gzip'd one through a decompressing stream), and each parsed block goes straight
to a `TableBuilder`: memory holds float32 numbers, never the file's text, and a table past the
cell cap is refused at the first block that passes it. Arrow parses and converts in C with the
GIL released, so the thread that runs this leaves the event loop free.

At most two passes. The first reads the feature columns (and numeric targets) straight as
float64, which is all nearly every upload needs. When Arrow refuses a cell there (text, an empty
cell, "nan"), the file is read again with every column as text, so that the message names the
row, the column and the cell as written — and what Python reads as a number (" 1.5") still is
one, as it was when this was csv.reader and float().
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv

from app.dataset_codec import ParsedDataset
from app.errors import Unprocessable, shown
from app.table_builder import TableBuilder, check_header, parses_as_float, target_columns

BLOCK_BYTES = 1 << 20  # one block of a 20-feature CSV is ~7,000 rows
# A fresh stream of the whole file from its first byte, with a position of its own.
Opener = Callable[[], "pa.NativeFile | IO[bytes]"]
_SNIFF_BYTES = 4096


class _TextNeeded(Exception):
    """The typed pass met a cell it can't read as float64: read the file again as text."""


class _RowWidth:
    """Arrow's invalid_row_handler: notes the first row whose width isn't the header's."""

    def __init__(self) -> None:
        self.row: pa_csv.InvalidRow | None = None

    def __call__(self, row: pa_csv.InvalidRow) -> str:
        if not row.text.strip(" \t\r,"):
            return "skip"  # a line of blanks and commas: no data, as csv.reader's path skipped
        self.row = self.row or row
        return "error"


def parse_csv(
    data: bytes | IO[bytes] | Opener,
    *,
    target: str,
    task: str | None = None,
    where: str = "file",
    max_cells: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> ParsedDataset:
    """A CSV with a header row; `target` names the target column(s), comma-separated.

    `data` is bytes, a binary file (read from its start), or an `Opener` (a `FileSource`, or a
    gzip'd CSV's decompressing streams: its caller closes what it opens).
    """
    if callable(data):
        return _parse(data, target=target, task=task, where=where, max_cells=max_cells,
                      block_bytes=block_bytes)  # fmt: skip
    source = FileSource(data)
    try:
        return _parse(source, target=target, task=task, where=where, max_cells=max_cells,
                      block_bytes=block_bytes)  # fmt: skip
    finally:
        source.close()


def _parse(
    source: Opener,
    *,
    target: str,
    task: str | None,
    where: str,
    max_cells: int | None,
    block_bytes: int,
) -> ParsedDataset:
    head = source().read(_SNIFF_BYTES)
    if not head.strip():
        raise Unprocessable(f"{where} is empty; send a CSV with a header row and data rows")
    if b"\x00" in head:
        raise Unprocessable(f"{where} contains NUL bytes; is it really a CSV file?")
    raw = _header(source, where=where, block_bytes=block_bytes)
    names = [name.strip() for name in raw]
    if any("\ufffd" in name for name in names):  # Arrow decodes a header with replacement
        raise _not_utf8(where)
    wanted = [t.strip() for t in target.split(",") if t.strip()]
    if any(map(parses_as_float, names)) and not set(wanted) <= set(names):
        raise Unprocessable(
            f"{where}'s first row holds numbers ({shown(', '.join(raw[:4]))}), not column "
            "names, and the target column is not among them: the file has no header row; add "
            "one naming each column"
        )
    check_header(names, where=where)
    targets = target_columns(target, names)

    def builder() -> TableBuilder:
        return TableBuilder(
            names=names,
            targets=targets,
            task=task,
            max_cells=max_cells,
            where=where,
            row_label=lambda i: f"data row {i + 1}",
        )

    try:
        return _read(source, raw, builder(), typed=True, block_bytes=block_bytes)
    except _TextNeeded:
        return _read(source, raw, builder(), typed=False, block_bytes=block_bytes)


class FileSource:
    """Streams of one file, each from byte 0 with a position of its own, all closed by `close`.

    An Arrow reader reads ahead on a thread of its own, so a reader given up on (the header's,
    a typed pass that met text) may still be reading when the next pass starts: on a shared file
    object the two would take each other's blocks. A file on disk is opened again through
    /proc/self/fd (a new open file description) for each pass; bytes are read in place.
    """

    def __init__(self, data: bytes | IO[bytes]) -> None:
        self._path = ""
        self._data = b""
        self._streams: list[_Stream] = []
        if not isinstance(data, bytes):
            try:
                self._path = f"/proc/self/fd/{data.fileno()}"  # a spooled upload rolls to disk
            except (OSError, AttributeError, io.UnsupportedOperation):
                pass
            if not (self._path and os.path.exists(self._path)):
                self._path = ""
                data.seek(0)
                data = data.read()  # a file in memory (io.BytesIO) already is
        if isinstance(data, bytes):
            self._data = data

    def __call__(self) -> pa.NativeFile | IO[bytes]:
        if not self._path:
            return pa.BufferReader(self._data)
        stream = _Stream(self._path)
        self._streams.append(stream)
        return stream

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


class _Stream(io.RawIOBase):
    """A file opened for one pass. Closing waits for a read in flight (an abandoned Arrow
    reader's, on its I/O thread) and later reads see the end of the file: its descriptor is
    never closed under a read, so a number the kernel reuses is never read from."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._lock:
            return os.readv(self._fd, [buffer]) if self._fd >= 0 else 0

    def seekable(self) -> bool:
        return True  # Parquet's and Arrow IPC's readers seek to the footer

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with self._lock:
            if self._fd < 0:
                raise ValueError("seek of a closed file")
            return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return self.seek(0, os.SEEK_CUR)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


def _header(source: Opener, *, where: str, block_bytes: int) -> list[str]:
    """The header row's names as written (Arrow parses the first block to find them)."""
    widths = _RowWidth()
    try:
        reader = pa_csv.open_csv(
            source(),
            read_options=pa_csv.ReadOptions(block_size=block_bytes, use_threads=False),
            parse_options=_parse_options(widths),
            convert_options=pa_csv.ConvertOptions(column_types={}, strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _refusal(exc, widths, source=source, where=where, rows_before=0, block=1) from None
    names = list(reader.schema.names)
    reader.close()
    return names


def _read(
    source: Opener, raw: list[str], table: TableBuilder, *, typed: bool, block_bytes: int
) -> ParsedDataset:
    label = None if table.numeric_targets else raw[table.names.index(table.targets[0])]
    types: dict[str, pa.DataType] = {name: pa.string() for name in raw}
    if typed:
        types = {name: (pa.string() if name == label else pa.float64()) for name in raw}
    widths = _RowWidth()
    options = pa_csv.ConvertOptions(
        column_types=types,
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        check_utf8=True,
    )
    block = 0
    try:
        reader = pa_csv.open_csv(
            source(),
            read_options=pa_csv.ReadOptions(block_size=block_bytes, use_threads=False),
            parse_options=_parse_options(widths),
            convert_options=options,
        )
        while True:
            block += 1
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            batch = pa.RecordBatch.from_arrays(batch.columns, names=table.names)
            try:
                table.add(batch)
            except Unprocessable:
                if typed:
                    raise _TextNeeded from None
                raise
    except pa.ArrowInvalid as exc:
        if typed and widths.row is None and "conversion error" in str(exc):
            raise _TextNeeded from None
        refusal = _refusal(
            exc, widths, source=source, where=table.where, rows_before=table.rows, block=block
        )
        raise refusal from None
    return table.finish()


def _data_row_of(source: Opener, text: str) -> int | None:
    """The data row (1-based, blank lines not counted, as csv.reader's path counted) of the
    first line that reads `text`: Arrow names a row of the wrong width by its text alone. Only
    on that error path; lines are split in C, a block at a time."""
    needle = text.encode("utf-8", "surrogateescape")
    stream = source()
    row = -1  # the header is row 0
    rest = b""
    while True:
        chunk = stream.read(BLOCK_BYTES)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop() if chunk else b""
        for line in lines:
            if not line.strip():
                continue
            row += 1
            if row > 0 and line.rstrip(b"\r") == needle:
                return row
        if not chunk:
            return None


def _parse_options(widths: Callable[[pa_csv.InvalidRow], str]) -> pa_csv.ParseOptions:
    # Quoted cells may hold newlines, as csv.reader allowed.
    return pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=widths)


def _refusal(
    exc: Exception,
    widths: _RowWidth,
    *,
    source: Opener,
    where: str,
    rows_before: int,
    block: int,
) -> Unprocessable:
    """Arrow's error, said the way the rules say it."""
    text = str(exc)
    place = f"block {block} of the file, read in {BLOCK_BYTES >> 20} MiB blocks"
    if widths.row is not None:
        row = widths.row
        number = _data_row_of(source, row.text)
        named = f"data row {number}" if number is not None else f"a data row after {rows_before}"
        return Unprocessable(
            f"{where} {named} ({place}) has {row.actual_columns} values but the header has "
            f"{row.expected_columns} columns ({shown(row.text)}); every row needs one value per "
            "column"
        )
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in text or "UTF-8" in text:
        return _not_utf8(where)
    if "straddling" in text or "block size" in text:
        return Unprocessable(
            f"{where} has a row ({place}) longer than {BLOCK_BYTES >> 20} MiB (or an unclosed "
            "quote); rows that long are not a table of numbers: check the quoting"
        )
    return Unprocessable(f"{where} is not valid CSV ({place}): {text}")


def _not_utf8(where: str) -> Unprocessable:
    return Unprocessable(
        f"{where} is not UTF-8 text (a byte can't be decoded); save the CSV as UTF-8"
    )
