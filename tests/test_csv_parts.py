"""A CSV file read in parts on several threads (app/csv_parts.py) gives what one reader gives: the
same arrays, and for a bad file the same message, naming the file's row."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np
import pytest

from app import csv_parts
from app.dataset_codec import ParsedDataset
from app.errors import FitserveError
from app.uploads import UploadLimits, parse_upload

LIMITS = UploadLimits(max_cells=10_000_000, max_table_bytes=2**40, max_text_bytes=2**40)
PARTS = 4


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 64 KiB and four cores, so that a file of a few hundred KB is cut."""
    monkeypatch.setattr(csv_parts, "PART_MIN_BYTES", 1 << 16)
    monkeypatch.setattr(csv_parts, "cores", lambda: PARTS)


def table_csv(
    rows: int,
    *,
    newline: str = "\n",
    blank_every: int = 0,
    quoted: bool = False,
    cell: Callable[[int, int], str] | None = None,
) -> bytes:
    """8 features and a label: blank lines every `blank_every` rows, names and labels quoted
    (labels holding commas) when `quoted`, and `cell(row, column)` in place of a number where
    it returns one."""
    x = np.random.default_rng(3).normal(size=(rows, 8)).round(4)
    q = '"' if quoted else ""
    lines = [",".join(f"{q}f{j}{q}" for j in range(8)) + f",{q}label{q}"]
    for i, values in enumerate(x):
        cells = [(cell and cell(i, j)) or repr(float(v)) for j, v in enumerate(values)]
        label = ("north, east", "south", "west")[i % 3] if quoted else "abc"[i % 3]
        lines.append(",".join([*cells, f"{q}{label}{q}"]))
        if blank_every and i % blank_every == 0:
            lines.append("")
    return (newline.join(lines) + newline).encode()


def parse(data: bytes, *, parts: bool) -> ParsedDataset | FitserveError:
    """`data` read from a file on disk, as an upload is; cut into parts or read whole."""
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        planned = csv_parts.plan(f"/proc/self/fd/{file.fileno()}")
        if parts:
            assert planned is not None and len(planned) == PARTS, planned
        with pytest.MonkeyPatch.context() as patch:
            if not parts:
                patch.setattr(csv_parts, "plan", lambda path: None)
            try:
                return parse_upload(file, filename=None, content_type=None, target="label",
                                    task=None, limits=LIMITS)  # fmt: skip
            except FitserveError as exc:
                return exc


def same(a: ParsedDataset | FitserveError, b: ParsedDataset | FitserveError) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, FitserveError):
        assert str(a) == str(b)
        return
    assert isinstance(b, ParsedDataset)
    assert a.x.shape == b.x.shape and a.x.dtype == b.x.dtype
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert (a.classes, a.feature_names, a.task) == (b.classes, b.feature_names, b.task)


@pytest.mark.parametrize(
    "options",
    [{}, {"newline": "\r\n"}, {"blank_every": 97}, {"quoted": True}],
    ids=["plain", "crlf", "blank-lines", "quoted-header-and-labels"],
)
def test_parts_read_the_same_arrays(small_parts: None, options: dict[str, object]) -> None:
    data = table_csv(6_000, **options)  # type: ignore[arg-type]
    whole, cut = parse(data, parts=False), parse(data, parts=True)
    assert isinstance(whole, ParsedDataset) and whole.rows == 6_000
    same(cut, whole)


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        (lambda i, j: "n/a" if (i, j) == (5_000, 3) else None, ["data row 5001", "'n/a'"]),
        (lambda i, j: "1e999" if (i, j) in {(4_000, 1), (5_900, 2)} else None,
         ["data row 4001", "not a finite number"]),
        (lambda i, j: "1,2" if (i, j) == (3_500, 0) else None, ["data row 3501", "10 values"]),
    ],
    ids=["text-in-the-last-part", "first-of-two-bad-rows", "row-too-wide"],
)  # fmt: skip
def test_a_bad_row_in_a_later_part_is_named_as_one_reader_names_it(
    small_parts: None, cell: Callable[[int, int], str | None], words: list[str]
) -> None:
    data = table_csv(6_000, cell=cell)  # type: ignore[arg-type]
    cut = parse(data, parts=True)
    same(cut, parse(data, parts=False))
    assert isinstance(cut, FitserveError)
    for word in words:
        assert word in str(cut), (word, str(cut))


def test_the_cell_cap_is_said_from_the_parts(small_parts: None) -> None:
    data = table_csv(6_000)  # 54,000 values
    limits = UploadLimits(max_cells=45_000, max_table_bytes=2**40, max_text_bytes=2**40)
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        with pytest.raises(FitserveError, match="more than 45,000 values"):
            parse_upload(file, filename=None, content_type=None, target="label", task=None,
                         limits=limits)  # fmt: skip


def test_a_cut_inside_a_quoted_value_is_not_taken(small_parts: None) -> None:
    """Every label holds a newline: the first newline after any offset is inside quotes."""
    data = table_csv(6_000, quoted=True).replace(b'"south"', b'"so\nuth"')
    data = data.replace(b'"west"', b'"we\nst"').replace(b'"north, east"', b'"north,\neast"')
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        assert csv_parts.plan(f"/proc/self/fd/{file.fileno()}") is None
        parsed = parse_upload(file, filename=None, content_type=None, target="label", task=None,
                              limits=LIMITS)  # fmt: skip
    assert parsed.rows == 6_000 and parsed.classes == ["north,\neast", "so\nuth", "we\nst"]
