"""models/ is the pure core: it never imports app/, fastapi or sqlalchemy."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"
FORBIDDEN = ("app", "fastapi", "sqlalchemy", "starlette", "alembic", "psycopg", "pickle")


def test_no_forbidden_import_statements() -> None:
    files = sorted(MODELS.rglob("*.py"))
    assert files, "models/ not found"
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_models_loads_none_of_them() -> None:
    code = (
        "import json, sys; import models; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=MODELS.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = set(json.loads(out.stdout))
    assert "models" in loaded and "torch" in loaded
    assert loaded.isdisjoint({"app", "fastapi", "sqlalchemy", "starlette", "alembic", "psycopg"})


def test_no_torch_load_or_getattr_on_torch_nn() -> None:
    for path in sorted(MODELS.rglob("*.py")):
        source = path.read_text()
        assert re.search(r"(?<![\w.])torch\.load\(", source) is None, (
            path.name
        )  # safetensors.torch.load is fine
        assert "getattr(nn," not in source and "getattr(torch.nn," not in source, path.name
