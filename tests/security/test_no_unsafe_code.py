"""No code path can unpickle, evaluate, fetch or unpack what a user or the database hands us.

An AST scan (not grep: aliases such as `import torch as t; t.load(...)` and `from pickle import
loads` are resolved) of every Python file we ship or run. The holes it keeps shut are the ones
model servers shipped: pickle loads (MLflow, TorchServe), archive path traversal (MLflow), and
server-side URL fetches.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "models", "migrations", "bench", "tests")

# Modules whose import alone is a finding: deserializers that run code, URL fetchers, archives.
BANNED_MODULES = {
    "pickle": "pickle runs code while loading",
    "_pickle": "pickle runs code while loading",
    "cPickle": "pickle runs code while loading",
    "cloudpickle": "pickle runs code while loading",
    "dill": "dill is pickle",
    "joblib": "joblib loads pickles",
    "marshal": "marshal loads code objects",
    "shelve": "shelve is pickle on disk",
    "urllib.request": "no server-side URL fetching",
    "urllib3": "no server-side URL fetching",
    "requests": "no server-side URL fetching",
    "aiohttp": "no server-side URL fetching",
    "http.client": "no server-side URL fetching",
    "ftplib": "no server-side URL fetching",
    "tarfile": "no archive extraction (path traversal)",
    "zipfile": "no archive extraction (path traversal)",
    "shutil.unpack_archive": "no archive extraction (path traversal)",
}

# Calls by their resolved dotted name.
BANNED_CALLS = {
    "torch.load": "torch.load unpickles; weights are safetensors",
    "torch.serialization.load": "torch.load unpickles; weights are safetensors",
    "torch.save": "torch.save writes pickles; weights are safetensors",
    "torch.jit.load": "TorchScript archives are not our weights format",
    "torch.hub.load": "no fetching code or weights from the internet",
    "torch.hub.load_state_dict_from_url": "no fetching weights from the internet",
    "torch.hub.download_url_to_file": "no fetching from the internet",
    "yaml.load": "yaml.load builds arbitrary objects; use yaml.safe_load",
    "yaml.load_all": "yaml.load_all builds arbitrary objects; use yaml.safe_load_all",
    "yaml.unsafe_load": "builds arbitrary objects",
    "yaml.full_load": "builds arbitrary objects",
    "shutil.unpack_archive": "no archive extraction (path traversal)",
    "eval": "eval runs arbitrary code",
    "exec": "exec runs arbitrary code",
    "builtins.eval": "eval runs arbitrary code",
    "builtins.exec": "exec runs arbitrary code",
    "os.system": "no shell commands",
    "os.popen": "no shell commands",
}

# Keyword arguments that switch a safe call into an unsafe one, whatever the callee.
BANNED_KEYWORDS = {
    ("allow_pickle", True): "allow_pickle=True unpickles",
    ("shell", True): "no shell commands (subprocess shell=True)",
}

# Method names that extract archives whatever object they are called on.
BANNED_METHODS = {"extractall": "no archive extraction (path traversal)"}


def python_files() -> list[Path]:
    files = []
    for top in SCANNED:
        base = ROOT / top
        if base.is_dir():
            files.extend(p for p in base.rglob("*.py") if ".venv" not in p.parts)
    return sorted(files)


class Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.findings: list[tuple[int, str]] = []

    def _flag(self, node: ast.AST, what: str, why: str) -> None:
        self.findings.append((getattr(node, "lineno", 0), f"{what}: {why}"))

    def _check_module(self, node: ast.AST, module: str) -> None:
        for banned, why in BANNED_MODULES.items():
            if module == banned or module.startswith(banned + "."):
                self._flag(node, f"import {module}", why)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0:
            self._check_module(node, module)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                self._check_module(node, full)
                if full in BANNED_CALLS:
                    self._flag(node, f"from {module} import {alias.name}", BANNED_CALLS[full])
                self.aliases[alias.asname or alias.name] = full
        self.generic_visit(node)

    def _dotted(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        if name is not None:
            if name in BANNED_CALLS:
                self._flag(node, f"{name}()", BANNED_CALLS[name])
        if isinstance(node.func, ast.Attribute) and node.func.attr in BANNED_METHODS:
            self._flag(node, f".{node.func.attr}()", BANNED_METHODS[node.func.attr])
        for keyword in node.keywords:
            if isinstance(keyword.value, ast.Constant):
                why = BANNED_KEYWORDS.get((keyword.arg or "", keyword.value.value))
                if why is not None and keyword.value.value is True:
                    self._flag(node, f"{keyword.arg}=True", why)
        self.generic_visit(node)


def scan(source: str, filename: str = "<test>") -> list[tuple[int, str]]:
    scanner = Scanner()
    scanner.visit(ast.parse(source, filename))
    return scanner.findings


def test_the_scan_covers_the_code() -> None:
    files = {p.relative_to(ROOT).parts[0] for p in python_files()}
    assert {"app", "tests"} <= files
    assert Path(__file__) in python_files()


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import pickle", "import pickle"),
        ("from pickle import loads", "import pickle"),
        ("import dill as d", "import dill"),
        ("import joblib", "import joblib"),
        ("import marshal", "import marshal"),
        ("import torch\ntorch.load('w.pt')", "torch.load()"),
        ("import torch as t\nt.load(f)", "torch.load()"),
        ("from torch import load\nload(f)", "torch.load"),
        ("import torch\ntorch.save(m, f)", "torch.save()"),
        ("import yaml\nyaml.load(s, Loader=yaml.Loader)", "yaml.load()"),
        ("import numpy as np\nnp.load(f, allow_pickle=True)", "allow_pickle=True"),
        ("import urllib.request\nurllib.request.urlopen(u)", "import urllib.request"),
        ("from urllib.request import urlopen", "import urllib.request"),
        ("import requests\nrequests.get(u)", "import requests"),
        ("import tarfile", "import tarfile"),
        ("import zipfile as z", "import zipfile"),
        ("archive.extractall(path)", ".extractall()"),
        ("eval(text)", "eval()"),
        ("exec(code)", "exec()"),
        ("import subprocess\nsubprocess.run(cmd, shell=True)", "shell=True"),
    ],
)
def test_the_scanner_catches(source: str, expected: str) -> None:
    findings = scan(source)
    assert any(expected in what for _, what in findings), findings


@pytest.mark.parametrize(
    "source",
    [
        "import yaml\nyaml.safe_load(s)",
        "module.eval()",  # torch's nn.Module.eval(): inference mode, not Python's eval
        "import safetensors.torch\nsafetensors.torch.load(b)",
        "from safetensors.numpy import load\nload(b)",
        "import json\njson.loads(s)",
        "import subprocess\nsubprocess.run(['fitserve', 'worker'], shell=False)",
        "text = 'import pickle'",
    ],
)
def test_the_scanner_allows(source: str) -> None:
    assert scan(source) == []


def test_no_unsafe_code_anywhere() -> None:
    findings = []
    for path in python_files():
        for line, what in scan(path.read_text(encoding="utf-8"), str(path)):
            findings.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert findings == [], "unsafe code found:\n" + "\n".join(findings)
