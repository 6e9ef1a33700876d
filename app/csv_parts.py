"""Where a large CSV file can be cut so that its parts are read on several cores at once.

Arrow's streaming CSV reader parses on one thread (`use_threads` doesn't change that); a 159 MB
file takes it ~1.7 s on this project's 2-core VM. Cut at line ends into one part per core, the
parts are read by readers of their own (app/csv_ingest.py) and joined in order.

A cut must fall at the start of a row. It is put after the first newline at or past an even share
of the file, and taken only where the quotes before it are even: with standard CSV quoting (a
`"` opens and closes a quoted value, `""` inside one is two), an odd count means the newline is
inside a quoted value. A file with none (or with only carriage returns) is read whole.

Each cut also gives an upper bound of the data rows before it: its newlines less the header's one,
since the rows before a cut each end with a newline; blank lines make the bound larger than the
count, never smaller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

PART_MIN_BYTES = (
    32 << 20
)  # below this a second reader saves ~0.1 s and costs ~15 MB of allocator pools
MAX_PARTS = 8
_SCAN_BYTES = 1 << 20


@dataclass(frozen=True)
class Part:
    start: int  # byte offset of the part's first row
    stop: int  # byte offset just past its last
    rows_before: int  # at least the data rows before `start` (0 for the first part)


def cores() -> int:
    """The cores this process may run on, at most MAX_PARTS: a container's CPU quota doesn't
    show here, and each part holds a reader's blocks (~6 MB)."""
    found = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(found or 1, MAX_PARTS)


def plan(path: str, *, parts: int | None = None) -> list[Part] | None:
    """The file at `path` cut into `parts` (by default one per core, each at least
    PART_MIN_BYTES), or None where it can't or needn't be."""
    size = os.path.getsize(path)
    count = min(parts or cores(), size // PART_MIN_BYTES)
    if count < 2:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        cuts = [_line_end(fd, size * k // count, size) for k in range(1, count)]
        if None in cuts or len(set(cuts)) != len(cuts):
            return None
        bounds = _rows_before(fd, [c for c in cuts if c is not None])
    finally:
        os.close(fd)
    if bounds is None:
        return None
    starts = [0, *(c for c in cuts if c is not None)]
    stops = [*starts[1:], size]
    rows = [0, *bounds]
    return [
        Part(start, stop, before) for start, stop, before in zip(starts, stops, rows, strict=True)
    ]


def _line_end(fd: int, offset: int, size: int) -> int | None:
    """The offset just past the first newline at or after `offset`; None if it ends the file."""
    while offset < size:
        window = os.pread(fd, 1 << 16, offset)
        at = window.find(b"\n")
        if at >= 0:
            end = offset + at + 1
            return end if end < size else None
        offset += len(window)
    return None


def _rows_before(fd: int, cuts: list[int]) -> list[int] | None:
    """For each cut, the newlines before it less the header's; None where the quotes before a cut
    are odd (it is inside a quoted value)."""
    bounds = []
    newlines = quotes = offset = 0
    buffer = bytearray(_SCAN_BYTES)
    for cut in cuts:
        while offset < cut:
            read = os.preadv(fd, [memoryview(buffer)[: min(_SCAN_BYTES, cut - offset)]], offset)
            if not read:
                return None
            chunk = np.frombuffer(buffer, np.uint8, read)  # numpy counts ~4x faster than bytes
            newlines += int(np.count_nonzero(chunk == ord("\n")))
            quotes += int(np.count_nonzero(chunk == ord('"')))
            offset += read
        if quotes % 2:
            return None
        bounds.append(newlines - 1)
    return bounds
