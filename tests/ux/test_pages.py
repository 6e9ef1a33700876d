"""What a person sees: the API docs rendered by headless Chromium with no way to the internet, the
dashboard's drawn curves (checked in the screenshot's pixels), and the pages' HTML escaping."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.ux.cdp import Browser
from tests.ux.conftest import IRIS_NETWORK, IRIS_TRAINING, LiveServer, run_chromium

LOSS_BLUE = (0x1F, 0x77, 0xB4)  # the loss curve's stroke in app/dashboard/live.js


def test_docs_pages_use_only_local_assets(live_api: LiveServer) -> None:
    live_server = live_api
    for page in ("/docs", "/redoc"):
        html = httpx.get(live_server.url + page, timeout=10).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html)
        assert urls, html
        assert all(url.startswith("/") for url in urls), urls
        for url in urls:
            assert httpx.get(live_server.url + url, timeout=10).status_code == 200, url


def test_swagger_ui_lists_every_operation_offline(
    live_api: LiveServer, chromium: str, tmp_path: Path
) -> None:
    live_server = live_api
    schema = httpx.get(f"{live_server.url}/openapi.json", timeout=10).json()
    result = run_chromium(
        chromium, f"{live_server.url}/docs", tmp_path, "--virtual-time-budget=20000", "--dump-dom"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    expected = set(schema["paths"])
    assert "/v1/jobs/{job_id}/events" in expected and "/metrics" in expected
    assert expected <= rendered, expected - rendered
    assert "opblock-summary-method" in dom


def test_redoc_renders_offline(live_api: LiveServer, chromium: str, tmp_path: Path) -> None:
    live_server = live_api
    result = run_chromium(
        chromium, f"{live_server.url}/redoc", tmp_path, "--virtual-time-budget=20000", "--dump-dom"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Live progress as server-sent events" in result.stdout


def colour_pixels(png: Path, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)  # (height, width, 3)
    near = np.abs(pixels - np.array(colour, dtype=np.int16)).max(axis=2) <= tolerance
    return int(near.sum())


def test_dashboard_job_page_draws_the_curves(
    live_server: LiveServer, trained_job: dict[str, Any], chromium: str, tmp_path: Path
) -> None:
    url = f"{live_server.url}/dashboard/jobs/{trained_job['id']}"
    shot = tmp_path / "job.png"
    result = run_chromium(
        chromium, url, tmp_path, "--window-size=1300,900", "--virtual-time-budget=5000",
        f"--screenshot={shot}", "--hide-scrollbars",
    )  # fmt: skip
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    # A 640-px-wide curve 3 px thick covers well over a thousand pixels in the loss colour; the
    # page has nothing else in that colour.
    assert colour_pixels(shot, LOSS_BLUE) > 500

    dom = run_chromium(chromium, url, tmp_path, "--virtual-time-budget=5000", "--dump-dom").stdout
    lines = {
        m.group(2): m.group(1).split()
        for m in re.finditer(r'<polyline points="([^"]+)"[^>]*data-series="([^"]+)"', dom)
    }
    epochs = trained_job["epochs"]
    assert len(lines["loss"]) == epochs and len(lines["val_loss"]) == epochs
    assert len(lines["accuracy"]) == epochs
    assert len([name for name in lines if name.startswith("dense")]) == 2  # one per layer


def test_dashboard_lists_jobs_and_escapes_user_text(live_api: LiveServer) -> None:
    live_server = live_api
    name = '<script>alert("x")</script>'
    body = {"network": IRIS_NETWORK, "dataset": "iris", "training": {**IRIS_TRAINING, "epochs": 1}}
    job = httpx.post(f"{live_server.url}/v1/jobs", json={**body, "name": name}, timeout=10).json()
    html = httpx.get(f"{live_server.url}/dashboard", timeout=10).text
    assert job["id"][:8] in html
    assert name not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    page = httpx.get(f"{live_server.url}/dashboard/jobs/{job['id']}", timeout=10).text
    assert name not in page
    missing = httpx.get(f"{live_server.url}/dashboard/jobs/{'f' * 32}", timeout=10)
    assert missing.status_code == 404


def test_dashboard_model_page(live_server: LiveServer, trained_job: dict[str, Any]) -> None:
    html = httpx.get(
        f"{live_server.url}/dashboard/models/{trained_job['model_id']}", timeout=10
    ).text
    assert re.search(r"total params</th><th[^>]*>67<", html), html
    assert "petal_length_cm" in html  # the predict form names the inputs it needs
    assert f"/v1/models/{trained_job['model_id']}/predict" in html


@pytest.mark.parametrize("path", ["/dashboard/models/nope", "/dashboard/models/" + "0" * 32])
def test_dashboard_unknown_model(live_api: LiveServer, path: str) -> None:
    assert httpx.get(live_api.url + path, timeout=10).status_code == 404


def test_dashboard_follows_a_running_job_live(
    live_server: LiveServer, chromium: str, tmp_path: Path
) -> None:
    """The page is opened while the job waits behind another, so it starts with no epochs; the
    script's event stream (read through fetch, in real time) must bring in every epoch and the
    terminal status. The job ahead runs until it is cancelled once the page is up, so the order
    holds however fast the machine trains (a 10-epoch blocker was done before Chromium started)."""
    body = {"network": IRIS_NETWORK, "dataset": "iris", "training": IRIS_TRAINING}
    blocker = httpx.post(
        f"{live_server.url}/v1/jobs",
        json={**body, "training": {**IRIS_TRAINING, "epochs": 100_000}},
        timeout=10,
    ).json()
    epochs = 40
    job = httpx.post(
        f"{live_server.url}/v1/jobs",
        json={**body, "training": {**IRIS_TRAINING, "epochs": epochs}},
        timeout=10,
    ).json()
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.goto(f"{live_server.url}/dashboard/jobs/{job['id']}")
        after = browser.wait_for("document.getElementById('job').dataset.after")
        assert int(after) == 0  # the server-rendered page had no epoch yet
        httpx.post(
            f"{live_server.url}/v1/jobs/{blocker['id']}/cancel", timeout=10
        ).raise_for_status()
        browser.wait_for("document.getElementById('status').textContent === 'succeeded'", 120)
        points = browser.evaluate(
            "document.querySelector('#chart-loss polyline[data-series=\"loss\"]')"
            ".getAttribute('points').trim().split(/\\s+/).length"
        )
        assert points == epochs
        progress = browser.evaluate("document.getElementById('progress').textContent")
        assert progress == f"{epochs} / {epochs}"
    finally:
        browser.close()
