"""API keys: `fitserve keys` on a real database, hashing, and the refusal to serve in the open."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import ApiKeysMissing, ensure_keys_for_host, hash_key
from app.cli import main
from app.config import Settings
from app.db import make_engine
from app.tables import ApiKey

FITSERVE = str(Path(sys.executable).with_name("fitserve"))


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keys", *args])
    out, err = capsys.readouterr()
    return code, out, err


def stored_keys(url: str) -> list[ApiKey]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))
    finally:
        engine.dispose()


def test_create_prints_the_secret_once_and_stores_only_its_hash(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = keys(capsys, "create", "alice", "--database-url", database_url)
    assert code == 0
    secret = out.strip()
    assert secret.startswith("fs_") and len(secret) > 40 and "\n" not in secret
    assert "only time" in err
    [row] = stored_keys(database_url)
    assert row.name == "alice" and row.revoked_at is None
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_key(secret)
    assert secret not in row.key_hash

    code, out, _ = keys(capsys, "list", "--database-url", database_url)
    assert code == 0 and "alice" in out and "active" in out
    assert secret not in out and row.key_hash not in out


def test_names_are_unique_and_printable(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keys(capsys, "create", "ci", "--database-url", sqlite_url)[0] == 0
    code, out, err = keys(capsys, "create", "ci", "--database-url", sqlite_url)
    assert code == 1 and out == "" and "already exists" in err
    code, out, err = keys(capsys, "create", "bad\x00name", "--database-url", sqlite_url)
    assert code == 2 and out == "" and "NUL" in err
    code, _, err = keys(capsys, "create", "x" * 101, "--database-url", sqlite_url)
    assert code == 2 and "1 to 100 characters" in err
    assert [k.name for k in stored_keys(sqlite_url)] == ["ci"]


def test_revoke(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys(capsys, "create", "bob", "--database-url", database_url)
    code, _, err = keys(capsys, "revoke", "bob", "--database-url", database_url)
    assert code == 0 and "401" in err
    [row] = stored_keys(database_url)
    assert row.revoked_at is not None
    code, out, _ = keys(capsys, "list", "--database-url", database_url)
    assert "revoked" in out
    code, _, err = keys(capsys, "revoke", "nobody", "--database-url", database_url)
    assert code == 1 and "no key named 'nobody'" in err


def test_keys_commands_migrate_a_fresh_database(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    code, out, _ = keys(capsys, "create", "first", "--database-url", url)
    assert code == 0 and out.startswith("fs_")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_serving_off_loopback_without_a_key_is_refused(
    database_url: str, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    settings = Settings(database_url=database_url, host=host)
    engine = make_engine(settings.database_url)
    try:
        with pytest.raises(ApiKeysMissing) as refused:
            ensure_keys_for_host(settings, engine)
        message = str(refused.value)
        assert host in message and "fitserve keys create NAME" in message
        assert "127.0.0.1" in message  # the other way out

        keys(capsys, "create", "ops", "--database-url", database_url)
        ensure_keys_for_host(settings, engine)  # a key exists: allowed

        keys(capsys, "revoke", "ops", "--database-url", database_url)
        with pytest.raises(ApiKeysMissing):  # a revoked key can't be sent
            ensure_keys_for_host(settings, engine)
    finally:
        engine.dispose()


def test_loopback_runs_keyless_but_not_open_by_override(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        for host in ("127.0.0.1", "localhost", "::1"):
            ensure_keys_for_host(Settings(database_url=sqlite_url, host=host), engine)
        forced = Settings(database_url=sqlite_url, require_api_keys=True)
        with pytest.raises(ApiKeysMissing, match="FITSERVE_REQUIRE_API_KEYS=true"):
            ensure_keys_for_host(forced, engine)
        opened = Settings(database_url=sqlite_url, host="0.0.0.0", require_api_keys=False)
        with pytest.raises(ApiKeysMissing, match="always required off loopback"):
            ensure_keys_for_host(opened, engine)
    finally:
        engine.dispose()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _serve(url: str, host: str, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    return subprocess.Popen(
        [FITSERVE, "serve", "--host", host, "--port", str(port), "--workers", "0",
         "--database-url", url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_fitserve_serve_off_loopback_refuses_without_a_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/serve.db"
    port = _free_port("127.0.0.1")
    process = _serve(url, "0.0.0.0", port)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "refusing to serve on 0.0.0.0" in err
    assert "fitserve keys create NAME" in err
    with pytest.raises(OSError):  # nothing was bound
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.slow  # starts the real `fitserve serve` (uvicorn importing torch): ~10 s
def test_fitserve_serve_off_loopback_starts_once_a_key_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 127.0.0.2 is not one of the loopback names fitserve trusts (so keys are required), yet is
    # still this machine: the test binds nothing reachable from outside.
    url = f"sqlite:///{tmp_path}/serve.db"
    code, secret, _ = keys(capsys, "create", "ops", "--database-url", url)
    assert code == 0
    port = _free_port("127.0.0.2")
    process = _serve(url, "127.0.0.2", port)
    try:
        base = f"http://127.0.0.2:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "fitserve serve did not answer"
            time.sleep(0.2)
        assert httpx.get(f"{base}/v1/jobs").status_code == 401
        auth = {"Authorization": f"Bearer {secret.strip()}"}
        assert httpx.get(f"{base}/v1/jobs", headers=auth).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
