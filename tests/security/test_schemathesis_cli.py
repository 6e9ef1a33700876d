"""`schemathesis run --checks all` as its users run it: the CLI against the OpenAPI document of
a live uvicorn (keyless loopback, as `make run` serves), on SQLite and on Postgres. Every check
(schema-valid data accepted, invalid data refused, Allow headers, SSE events, response shapes
and statuses...) must find nothing.

Bounded: a fixed seed, a few examples per operation, one worker (this CI has two cores) and a
time budget per database.

Where the schema can't state a rule, positive data may be refused with 422, and only for these
operations (the rules are in each field's description):
- POST /v1/datasets: a CSV's contents (UTF-8, a header row, the target column among them);
  JSON arrays whose rows agree in width with each other and the names;
- POST /v1/networks/import-keras: what Keras' to_json() holds (a JSON string's contents);
- POST /v1/networks/summary, /export-keras, /v1/jobs: a later layer's input_dim equal to the
  previous width, input_dim equal to input_shape's, unique layer names, the parameter cap;
- POST /v1/studies: the same, in every corner of the search space, and an objective metric the
  spec can produce (val_* needs a validation split).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app
from tests.conftest import serve

pytestmark = pytest.mark.slow

# The run's time budget: the examples and coverage phases run once, fuzzing repeats until the
# budget is spent (schemathesis' --max-time), so the test takes about this long on any machine.
MAX_SECONDS = 90
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]
SEMANTIC = [
    "POST /v1/datasets",
    "POST /v1/networks/import-keras",
    "POST /v1/networks/summary",
    "POST /v1/networks/export-keras",
    "POST /v1/jobs",
    "POST /v1/studies",
]
CONFIG = "\n".join(
    f'[[operations]]\ninclude-name = "{name}"\n'
    f"checks.positive_data_acceptance.expected-statuses = {[*ACCEPTED, '422']!r}\n"
    for name in SEMANTIC
)


def test_schemathesis_checks_all_find_nothing(module_database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    app = create_app(Settings(database_url=module_database_url))
    with serve(app) as url:
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
                "run", f"{url}/openapi.json", "--checks", "all",
                "--phases", "examples,coverage,fuzzing", "--max-examples", "6", "--seed", "1",
                "--workers", "1", "--request-timeout", "30", "--max-time", str(MAX_SECONDS),
                "--report-dir", str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=MAX_SECONDS + 150,
            cwd=tmp_path,
        )  # fmt: skip
    print(run.stdout[-1500:])  # the summary: operations, phases, test cases, time
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    # every generated case passed every check ("N generated, N passed"), and there were some
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 100, run.stdout[
        -3000:
    ]
