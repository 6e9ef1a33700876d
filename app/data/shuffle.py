"""Puts the built-in CSVs' rows in their fixed shuffled order: `python -m app.data.shuffle`.

Keras' validation_split takes the last rows, so a file sorted by class (as scikit-learn ships
iris, wine and digits) validates on one or two classes only. The shipped order is reproducible
from the rows alone, whatever order they are in: the data rows sorted as text, then shuffled by
Python's `random.Random(SEED)` (stable across Python versions for a given seed). Running it on
the shipped files changes nothing; `--check` exits 1 if a file is not in that order.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

SEED = 20261201
HERE = Path(__file__).resolve().parent


def shuffled(text: str) -> str:
    header, *rows = text.strip("\n").split("\n")
    rows.sort()
    random.Random(SEED).shuffle(rows)
    return "\n".join([header, *rows]) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path in sorted(HERE.glob("*.csv")):
        text = path.read_text()
        fixed = shuffled(text)
        if fixed != text:
            stale.append(path.name)
            if not check:
                path.write_text(fixed)
    if check and stale:
        print(f"not in the shipped order: {', '.join(stale)} (run python -m app.data.shuffle)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
