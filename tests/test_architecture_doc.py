"""docs/architecture.md names only what exists: every file it cites, every `file.py: name`, every
dotted `module.name` and every code name in backticks resolves in the tree as it is now.

Names are looked up without importing: each module of app/ and models/ is read with ast for its
top-level functions, classes and assignments (and the methods of its classes), so a renamed or
deleted function fails here, in the commit that forgot the page.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("app", "models", "clients/python/fitserve_client")
# What backticks hold that is not a code name: values, statuses, settings, headers, SQL.
NOT_CODE = re.compile(r"^([a-z]+|[A-Z0-9_]+|[a-z]+(-[a-z]+)+)$")


def _module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _strings() -> frozenset[str]:
    """Every string constant in the code: spec values and table names the page may quote."""
    found: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return frozenset(found)


MODULES = _module_files()


@cache
def _names(module: str) -> frozenset[str]:
    """Top-level names of a module (and `Class.method` for its classes' members)."""
    tree = ast.parse(MODULES[module].read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.update((f"{node.name}.{item.name}", f".{item.name}"))
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.update((f"{node.name}.{item.target.id}", f".{item.target.id}"))
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):  # re-exports (models/__init__.py, spec.py)
            names.update(alias.asname or alias.name for alias in node.names)
    return frozenset(names)


STRINGS = _strings()
# Outside the tree: the page may cite torch's and numpy's own names.
OUTSIDE = ("torch.", "np.", "numpy.", "safetensors.", "keras.")


def _defined_anywhere(name: str) -> bool:
    """A top-level name, or (".name") a member of some class."""
    return any(name in _names(m) or f".{name}" in _names(m) for m in MODULES)


def _file(cited: str) -> Path | None:
    """A cited path, from the repository root or (in the app/ table) from app/."""
    for base in (ROOT, ROOT / "app"):
        if (base / cited).exists():
            return base / cited
    return None


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolves_dotted(dotted: str) -> bool:
    """`models.fit`, `auth.owner_for`, `services.predict.get_model`, `Predictor.predict`: some
    module (named in full, or under app./models.) defines the rest."""
    if dotted.startswith(OUTSIDE) or dotted.endswith(".csv"):  # a route's name, not code
        return True
    parts = dotted.split(".")
    if any(prefix + dotted in MODULES for prefix in ("", "app.", "models.")):
        return True
    for prefix in ("", "app.", "models.", "app.queue.", "app.services."):
        for cut in range(len(parts) - 1, 0, -1):
            module = prefix + ".".join(parts[:cut])
            if module in MODULES and ".".join(parts[cut:]) in _names(module):
                return True
    if parts[0] in {m.rsplit(".", 1)[-1] for m in MODULES}:  # a module's name: it must define it
        return False
    # `Class.method`, or `variable.member` (`trainer.checkpoint()`): some class has the member
    return _defined_anywhere(dotted) or _defined_anywhere(parts[-1])


TEXT = DOC.read_text()
SPANS = re.findall(r"`([^`\n]+)`", TEXT)
FILE_REF = re.compile(r"^([\w/.-]+\.(?:py|md|js|toml))(?::\s*([\w.]+))?$")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(\(.*\))?$")
NAME = re.compile(r"^[A-Za-z_]\w*(\(.*\))?$")


def _problems() -> list[str]:
    problems = []
    for span in SPANS:
        span = span.strip()
        if match := FILE_REF.match(span):
            cited, name = match.groups()
            path = _file(cited)
            if path is None:
                problems.append(f"`{span}`: no file {cited}")
            elif name and path.suffix == ".py" and name not in _names(_module_of(path)):
                problems.append(f"`{span}`: {cited} defines no {name}")
        elif DOTTED.match(span):
            dotted = span.split("(", 1)[0]
            if not _resolves_dotted(dotted):
                problems.append(f"`{span}`: nothing defines {dotted}")
        elif NAME.match(span):
            name = span.split("(", 1)[0]
            if not NOT_CODE.match(name) and not _defined_anywhere(name) and name not in STRINGS:
                problems.append(f"`{span}`: nothing in app/ or models/ defines {name}")
    return problems


def test_the_page_cites_names_at_all() -> None:
    assert sum(bool(FILE_REF.match(s)) for s in SPANS) > 30
    assert sum(bool(DOTTED.match(s)) for s in SPANS) > 10


def test_the_checker_notices_a_missing_name() -> None:
    assert _resolves_dotted("models.fit") and _resolves_dotted("services.predict.get_model")
    assert not _resolves_dotted("models.fit_everything")
    assert "run_attempt" in _names("app.queue.child")
    assert _file("queue/store.py") is not None and _file("queue/nothing.py") is None


@pytest.mark.parametrize("page", [DOC.name])
def test_every_name_on_the_page_exists(page: str) -> None:
    problems = _problems()
    assert not problems, f"{page} cites what does not exist:\n" + "\n".join(problems)
