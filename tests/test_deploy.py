"""What can be checked of the Docker files without a Docker engine: the compose file's shape
(postgres healthy -> migrate once -> api; GPU workers), and that every fitserve command the
image and compose run is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE_INSTRUCTIONS = {
    "FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "ADD", "USER", "EXPOSE", "CMD",
    "ENTRYPOINT", "LABEL", "HEALTHCHECK", "VOLUME", "STOPSIGNAL", "SHELL", "ONBUILD",
}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _accepts(argv: list[str]) -> None:
    assert argv[0] == "fitserve", argv
    build_parser().parse_args(argv[1:])  # SystemExit (a failed test) if the CLI refuses it


def test_compose_orders_postgres_migrate_api_and_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert services["postgres"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    assert services["migrate"]["restart"] == "no"
    # The API is published on the host's loopback only.
    assert all(port.startswith("127.0.0.1:") for port in services["api"]["ports"])


def test_compose_workers_reserve_a_gpu_and_share_one_postgres(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "replicas" not in worker.get("deploy", {})  # `--scale worker=N` decides
    urls = {
        compose["services"][name]["environment"]["FITSERVE_DATABASE_URL"]
        for name in ("migrate", "api", "worker")
    }
    assert len(urls) == 1 and urls.pop().startswith("postgresql://")


def test_compose_commands_are_valid_fitserve_commands(compose: dict[str, Any]) -> None:
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    assert len(commands) == 3
    for command in commands:
        _accepts(command)


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_well_formed_and_copies_what_exists() -> None:
    instructions = _instructions()
    assert instructions[0][0] in {"FROM", "ARG"}
    assert {keyword for keyword, _ in instructions} <= DOCKERFILE_INSTRUCTIONS
    for keyword, args in instructions:
        if keyword == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_dockerfile_torch_pin_matches_pyproject_and_cmd_is_valid() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    instructions = _instructions()
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(rf"\b{re.escape(torch_pin)}\b", runs), f"the image must install {torch_pin}"
    (cmd,) = [args for keyword, args in instructions if keyword == "CMD"]
    _accepts(yaml.safe_load(cmd))  # the exec form is a JSON (hence YAML) list
