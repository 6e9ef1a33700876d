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

A large file on disk is cut into parts read at once on several cores (app/csv_parts.py says where
it can be cut). Only the cell cap's refusal, which names no row, is said from there: any other
problem in a part sends the file through the one-reader passes above, so that a message names
the file's first bad row as it always has.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv

from app import csv_parts
from app.dataset_codec import ParsedDataset
from app.errors import PayloadTooLarge, Unprocessable, shown
from app.table_builder import TableBuilder, check_header, parses_as_float, target_columns

BLOCK_BYTES = 1 << 20  # one block of a 20-feature CSV is ~7,000 rows
# The header pass parses one block for the names: a small one (it read and parsed a whole 1 MiB
# block, and queued more, for a 100k-row upload's first 200 bytes: +8 MB and 18 ms, now +1 MB and
# 3 ms); a header longer than this is read again in BLOCK_BYTES blocks.
HEADER_BLOCK_BYTES = 1 << 16
# Blocks a CSV reader may read ahead of the blocks it has parsed. Arrow's own read-ahead queue
# holds up to 32 blocks: 32 MiB per reader, the whole of a 100k-row upload (its parse peaked 36
# MB above idle for 18 MB of text) and 64 MiB for a file read in two parts.
READ_AHEAD_BLOCKS = 4
# Seconds a read waits at most: a safety net, never the pace (`_release` ends the waits of a
# reader given up on).
_READ_AHEAD_WAIT = 5.0
# A fresh stream of the whole file from its first byte, with a position of its own.
Opener = Callable[[], "pa.NativeFile | IO[bytes]"]
_SNIFF_BYTES = 4096


class _TextNeeded(Exception):
    """The typed pass met a cell it can't read as float64: read the file again as text."""


class _Cancelled(Exception):
    """Another part of the file failed: this part's reader stops at its next block."""


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
    try:
        raw = _header(source, where=where, block_bytes=min(block_bytes, HEADER_BLOCK_BYTES))
    except Unprocessable:  # a longer header, or a fault in the first block: said as it was
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

    def builder(spare_rows: int = 0) -> TableBuilder:
        return TableBuilder(
            names=names,
            targets=targets,
            task=task,
            max_cells=max_cells,
            where=where,
            row_label=lambda i: f"data row {i + 1}",
            spare_rows=spare_rows,
        )

    parts = (
        csv_parts.plan(source.path)
        if isinstance(source, FileSource) and source.path and max_cells is not None
        else None
    )
    if parts is not None:
        assert isinstance(source, FileSource)
        table = builder(spare_rows=parts[-1].rows_before)
        try:
            return _read_parts(source, raw, table, parts, block_bytes=block_bytes)
        except _SerialNeeded:
            pass
    try:
        return _read(source, raw, builder(), typed=True, block_bytes=block_bytes)
    except _TextNeeded:
        return _read(source, raw, builder(), typed=False, block_bytes=block_bytes)


class _SerialNeeded(Exception):
    """A part of the file failed: read it with one reader, which names the first bad row."""


def _read_parts(
    source: FileSource,
    raw: list[str],
    table: TableBuilder,
    parts: list[csv_parts.Part],
    *,
    block_bytes: int,
) -> ParsedDataset:
    """The typed pass over the file's parts at once, the first on this thread."""
    builders = [table] + [table.part(part.rows_before) for part in parts[1:]]
    failed: list[BaseException | None] = [None] * len(parts)
    cancel = threading.Event()

    def read(index: int) -> None:
        part = parts[index]
        try:
            _read_blocks(source, raw, builders[index], typed=True, block_bytes=block_bytes,
                         part=part, cancel=cancel)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the first part's thread
            failed[index] = exc
            cancel.set()

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(1, len(parts))]
    for thread in threads:
        thread.start()
    read(0)
    for thread in threads:
        thread.join()
    too_large = [exc for exc in failed if isinstance(exc, PayloadTooLarge)]
    if too_large:
        raise too_large[0]  # the cell cap's message names no row: true from any part
    if any(exc is not None for exc in failed):
        raise _SerialNeeded
    for part in builders[1:]:
        table.join(part)
    return table.finish()


class FileSource:
    """Streams of one file, each from byte 0 (or of a byte range of it) with a position of its
    own, all closed by `close`.

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

    @property
    def path(self) -> str:
        """Where the file can be opened again; "" for bytes in memory."""
        return self._path

    def __call__(self, start: int = 0, stop: int | None = None) -> pa.NativeFile | IO[bytes]:
        if not self._path:
            return pa.BufferReader(self._data[start:stop])
        stream = _Stream(self._path, start, stop)
        self._streams.append(stream)
        return stream

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


class _Stream(io.RawIOBase):
    """Bytes `start` to `stop` of a file (by default all of it), opened for one pass. Closing
    waits for a read in flight (an abandoned Arrow reader's, on its I/O thread) and later reads
    see the end of the file: its descriptor is never closed under a read, so a number the kernel
    reuses is never read from."""

    def __init__(self, path: str, start: int = 0, stop: int | None = None) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._start = start
        self._stop = os.fstat(self._fd).st_size if stop is None else stop
        self._at = start
        self._lock = threading.Lock()
        self._parsed = threading.Condition(self._lock)
        self._ahead: int | None = None  # blocks read and not yet parsed, when paced
        self._blocks = 0

    def pace(self, blocks: int) -> None:
        """Reads wait while `blocks` blocks are read and not yet `parsed`."""
        self._ahead = blocks

    def parsed(self) -> None:
        """The reader parsed a block: one more may be read."""
        with self._lock:
            self._blocks -= 1
            self._parsed.notify()

    def _may_read(self) -> bool:
        return self._ahead is None or self._blocks < self._ahead  # close() unsets _ahead

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._lock:
            if self._ahead is not None:
                self._parsed.wait_for(self._may_read, _READ_AHEAD_WAIT)
                self._blocks += 1
            wanted = min(len(buffer), self._stop - self._at)
            if self._fd < 0 or wanted <= 0:
                return 0
            count = os.preadv(self._fd, [memoryview(buffer)[:wanted]], self._at)
            self._at += count
            return count

    def seekable(self) -> bool:
        return True  # Parquet's and Arrow IPC's readers seek to the footer

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with self._lock:
            if self._fd < 0:
                raise ValueError("seek of a closed file")
            base = {os.SEEK_SET: self._start, os.SEEK_CUR: self._at, os.SEEK_END: self._stop}
            self._at = max(self._start, base[whence] + offset)
            return self._at - self._start

    def tell(self) -> int:
        return self.seek(0, os.SEEK_CUR)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._ahead = None
            self._parsed.notify_all()
        super().close()


def _paced(stream: pa.NativeFile | IO[bytes]) -> pa.NativeFile | IO[bytes]:
    """A file on disk read by a CSV reader, paced to READ_AHEAD_BLOCKS (bytes in memory and
    gzip'd streams are not: their blocks are the upload's own, or small). `_release` it when
    the reader is done with or given up on."""
    if isinstance(stream, _Stream):
        stream.pace(READ_AHEAD_BLOCKS)
    return stream


def _release(stream: pa.NativeFile | IO[bytes]) -> None:
    """Closes a paced stream: a read-ahead waiting for a parse that won't come (a reader given
    up on) sees the end of the file at once."""
    if isinstance(stream, _Stream):
        stream.close()


def _header(source: Opener, *, where: str, block_bytes: int) -> list[str]:
    """The header row's names as written (Arrow parses the first block to find them)."""
    widths = _RowWidth()
    stream = _paced(source())
    try:
        reader = pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=block_bytes, use_threads=False),
            parse_options=_parse_options(widths),
            convert_options=pa_csv.ConvertOptions(column_types={}, strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _refusal(exc, widths, source=source, where=where, rows_before=0, block=1) from None
    finally:
        _release(stream)
    names = list(reader.schema.names)
    reader.close()
    return names


def _read(
    source: Opener, raw: list[str], table: TableBuilder, *, typed: bool, block_bytes: int
) -> ParsedDataset:
    _read_blocks(source, raw, table, typed=typed, block_bytes=block_bytes)
    return table.finish()


def _read_blocks(
    source: Opener,
    raw: list[str],
    table: TableBuilder,
    *,
    typed: bool,
    block_bytes: int,
    part: csv_parts.Part | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Every block of the file into `table`, or of one `part` of it (read with others at once:
    its failures are `_SerialNeeded`, and it stops when `cancel` is set)."""
    header = part is None or part.start == 0
    stream = _paced(source() if part is None else source(part.start, part.stop))  # type: ignore[call-arg]
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
            stream,
            read_options=pa_csv.ReadOptions(
                block_size=block_bytes, use_threads=False, column_names=None if header else raw
            ),
            parse_options=_parse_options(widths),
            convert_options=options,
        )
        while True:
            block += 1
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            if isinstance(stream, _Stream):
                stream.parsed()
            batch = pa.RecordBatch.from_arrays(batch.columns, names=table.names)
            try:
                table.add(batch)
            except Unprocessable:
                if typed:
                    raise _TextNeeded from None
                raise
    except pa.ArrowInvalid as exc:
        if part is not None:
            raise _SerialNeeded from None
        if typed and widths.row is None and "conversion error" in str(exc):
            raise _TextNeeded from None
        refusal = _refusal(
            exc, widths, source=source, where=table.where, rows_before=table.rows, block=block
        )
        raise refusal from None
    finally:
        _release(stream)


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
