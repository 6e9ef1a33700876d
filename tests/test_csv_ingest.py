"""Reading a CSV upload: a reader over a file on disk reads at most READ_AHEAD_BLOCKS blocks past
the ones it has parsed (Arrow's own queue takes 32: the whole of a 32 MiB file sits in memory),
and the header pass reads a small block first."""

from __future__ import annotations

import tempfile
import threading
import time

import pyarrow.csv as pa_csv
import pytest

from app import csv_ingest, csv_parts
from app.csv_ingest import BLOCK_BYTES, HEADER_BLOCK_BYTES, READ_AHEAD_BLOCKS, FileSource, parse_csv
from app.uploads import UploadLimits, parse_upload


@pytest.mark.parametrize("paced", [True, False])
def test_reads_wait_for_the_parse(paced: bool) -> None:
    row = b"1.5,2.5,3.5,4.5,a\n"
    with tempfile.TemporaryFile() as file:
        file.write(b"f0,f1,f2,f3,label\n" + row * (16 * BLOCK_BYTES // len(row)))
        file.flush()
        source = FileSource(file)
        try:
            stream = source()
            if paced:
                stream.pace(READ_AHEAD_BLOCKS)  # type: ignore[union-attr]
            reader = pa_csv.open_csv(
                stream, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False)
            )
            reader.read_next_batch()
            if paced:
                stream.parsed()  # type: ignore[union-attr]
            # Arrow's read-ahead thread runs meanwhile: unpaced, until it is far ahead (a busy
            # machine may take a while); paced, half a second is ample to pass its bound
            deadline = time.monotonic() + (0.5 if paced else 10)
            while (
                time.monotonic() < deadline and stream.tell() <= 2 * READ_AHEAD_BLOCKS * BLOCK_BYTES
            ):
                time.sleep(0.01)
            blocks = stream.tell() / BLOCK_BYTES
        finally:
            source.close()
    if paced:
        assert blocks <= READ_AHEAD_BLOCKS + 2, blocks
    else:  # what the pacing is for: unpaced, Arrow reads the file far ahead of its parse
        assert blocks > 2 * READ_AHEAD_BLOCKS, blocks


@pytest.mark.parametrize("parts", [1, 2])
def test_no_read_waits_out_its_safety_net(monkeypatch: pytest.MonkeyPatch, parts: int) -> None:
    """Every paced stream is released or parsed from: with the wait's safety net at a minute,
    parsing a 6 MiB upload (whole, or in two parts) still ends in seconds."""
    monkeypatch.setattr(csv_ingest, "_READ_AHEAD_WAIT", 60.0)
    monkeypatch.setattr(csv_parts, "PART_MIN_BYTES", 1 << 20)
    monkeypatch.setattr(csv_parts, "cores", lambda: parts)
    row = b"1.5,2.5,3.5,4.5,a\n1.5,2.5,3.5,4.5,b\n"
    limits = UploadLimits(max_cells=10_000_000, max_table_bytes=2**40, max_text_bytes=2**40)
    done: list[int] = []
    with tempfile.TemporaryFile() as file:
        file.write(b"f0,f1,f2,f3,label\n" + row * (6 * BLOCK_BYTES // len(row)))
        file.flush()

        def parse() -> None:
            parsed = parse_upload(file, filename=None, content_type=None, target="label",
                                  task=None, limits=limits)  # fmt: skip
            done.append(parsed.rows)

        thread = threading.Thread(target=parse, daemon=True)
        thread.start()
        thread.join(30)
    assert done == [6 * BLOCK_BYTES // len(row) * 2]


def test_a_header_longer_than_the_header_block() -> None:
    names = [f"feature_{i:05d}" for i in range(6_000)]
    header = ",".join([*names, "label"]).encode()
    assert len(header) > HEADER_BLOCK_BYTES
    rows = b"".join(b",".join([b"0.5"] * 6_000 + [label]) + b"\n" for label in (b"a", b"b"))
    parsed = parse_csv(header + b"\n" + rows, target="label")
    assert parsed.feature_names == names and parsed.x.shape == (2, 6_000)
