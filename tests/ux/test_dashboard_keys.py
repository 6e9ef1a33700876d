"""The dashboard where keys are required, in headless Chromium driven like a user (DevTools
protocol): sign in with a key kept in the tab's sessionStorage, every page and the live event
stream fetched with it as a Bearer header, the compare view overlaying picked jobs' curves."""

from __future__ import annotations

import json

import httpx
from fitserve_client import FitserveClient

from tests.ux.cdp import Browser
from tests.ux.conftest import IRIS_NETWORK, IRIS_TRAINING, KeyedServer, _stop

EPOCHS = 15


def sign_in(browser: Browser, secret: str) -> None:
    browser.wait_for("document.getElementById('sign-in') !== null")
    browser.evaluate(
        f"(() => {{ const f = document.getElementById('sign-in');"
        f" f.elements.key.value = {json.dumps(secret)}; f.requestSubmit(); }})()"
    )


def test_sign_in_live_stream_and_compare_with_keys_required(
    keyed_server: KeyedServer, browser: Browser
) -> None:
    url = keyed_server.url
    with FitserveClient(url, api_key=keyed_server.secret) as client:
        a = client.submit(IRIS_NETWORK, "iris", IRIS_TRAINING, name="adam 0.02", epochs=EPOCHS)
        slow = {**IRIS_TRAINING, "optimizer": {"name": "sgd", "learning_rate": 0.01}}
        b = client.submit(IRIS_NETWORK, "iris", slow, name="sgd 0.01", epochs=EPOCHS)

    # Without a key the page is the sign-in form, holding nothing of the key's jobs.
    assert httpx.get(f"{url}/dashboard", timeout=10).status_code == 401
    browser.goto(f"{url}/dashboard")
    sign_in(browser, "fs_not-a-key")
    refused = browser.wait_for("document.getElementById('sign-in-error').textContent")
    assert "refused" in refused and "not known" in refused
    assert browser.evaluate("sessionStorage.getItem('fitserve.apiKey')") is None
    assert a.id not in browser.evaluate("document.documentElement.outerHTML")

    sign_in(browser, keyed_server.secret)
    browser.wait_for(
        "document.querySelector('h1') && document.querySelector('h1').textContent === 'Jobs'"
    )
    page = browser.evaluate("document.body.innerHTML")
    assert a.id in page and b.id in page
    assert browser.evaluate("sessionStorage.getItem('fitserve.apiKey')") == keyed_server.secret
    assert browser.evaluate("document.cookie") == ""  # the key is in no cookie

    # A navigation comes back to the sign-in page, whose script signs in again from the
    # session: the job page opens while the job is queued, then the worker starts and the
    # page's event stream (fetched with the Bearer header) brings every epoch and the end.
    browser.goto(f"{url}/dashboard/jobs/{a.id}")
    browser.wait_for("document.getElementById('job') !== null")
    assert browser.evaluate("document.getElementById('status').textContent") == "queued"
    worker = keyed_server.start_worker()
    try:
        browser.wait_for("document.getElementById('status').textContent === 'succeeded'", 120)
        progress = browser.evaluate("document.getElementById('progress').textContent")
        assert progress == f"{EPOCHS} / {EPOCHS}"
        points = browser.evaluate(
            "document.querySelector('#chart-loss polyline[data-series=\"loss\"]')"
            ".getAttribute('points').trim().split(/\\s+/).length"
        )
        assert points == EPOCHS
        with FitserveClient(url, api_key=keyed_server.secret) as client:
            assert client.wait(b.id, timeout=120).status == "succeeded"
    finally:
        _stop(worker)

    # Compare: tick both jobs on the list, submit, and both jobs' curves are overlaid.
    browser.goto(f"{url}/dashboard")
    browser.wait_for("document.getElementById('compare') !== null")
    browser.evaluate(
        "(() => { document.querySelectorAll('input[name=job]').forEach(c => c.checked = true);"
        " document.getElementById('compare').requestSubmit(); })()"
    )
    browser.wait_for("document.getElementById('compared-jobs') !== null")
    series = browser.evaluate(
        "[...document.querySelectorAll('#chart-loss polyline')].map(p =>"
        " [p.dataset.series, p.getAttribute('points').trim().split(/\\s+/).length,"
        "  p.getAttribute('stroke-dasharray')])"
    )
    assert sorted(series, key=lambda s: s[0]) == [
        ["adam 0.02 loss", EPOCHS, None],
        ["adam 0.02 val_loss", EPOCHS, "7 4"],
        ["sgd 0.01 loss", EPOCHS, None],
        ["sgd 0.01 val_loss", EPOCHS, "7 4"],
    ]
    metric = browser.evaluate(
        "[...document.querySelectorAll('#chart-metric polyline')].map(p => p.dataset.series)"
    )
    assert sorted(metric) == [
        "adam 0.02 accuracy", "adam 0.02 val_accuracy", "sgd 0.01 accuracy",
        "sgd 0.01 val_accuracy",
    ]  # fmt: skip

    # Signing out forgets the key: the next page is the sign-in form again.
    browser.evaluate("document.getElementById('sign-out').click()")
    browser.wait_for("document.getElementById('sign-in') !== null")
    assert browser.evaluate("sessionStorage.getItem('fitserve.apiKey')") is None


def test_compare_needs_one_to_six_of_your_jobs(keyed_server: KeyedServer) -> None:
    auth = {"Authorization": f"Bearer {keyed_server.secret}"}
    none = httpx.get(f"{keyed_server.url}/dashboard/compare", headers=auth, timeout=10)
    assert none.status_code == 422 and "pick between 1 and 6 jobs" in none.json()["detail"]
    ids = "&".join(f"job={i:032x}" for i in range(7))
    many = httpx.get(f"{keyed_server.url}/dashboard/compare?{ids}", headers=auth, timeout=10)
    assert many.status_code == 422 and "(got 7)" in many.json()["detail"]
    unknown = httpx.get(f"{keyed_server.url}/dashboard/compare?job={'0' * 32}", headers=auth,
                        timeout=10)  # fmt: skip
    assert unknown.status_code == 404
