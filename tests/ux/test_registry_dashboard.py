"""Model names on the dashboard, in headless Chromium driven like a user (DevTools protocol) with
keys required: move the production alias by clicking and through the form, register a model
under a name from its page, remove an alias; after each click the very next API prediction by
name answers with the version the alias now points at."""

from __future__ import annotations

import json
from typing import Any

import httpx
from fitserve_client import FitserveClient

from tests.ux.cdp import Browser
from tests.ux.conftest import IRIS_NETWORK, IRIS_TRAINING, KeyedServer, _stop
from tests.ux.test_dashboard_keys import sign_in

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def served(browser: Browser) -> Any:
    """The version row the page marks as what the plain name serves, once the page is up."""
    return browser.evaluate(
        "(() => { const r = document.querySelector('tr.served');"
        " return r ? r.dataset.version : null; })()"
    )


def click(browser: Browser, selector: str) -> None:
    browser.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


def test_move_an_alias_by_clicking_and_predict_by_name(
    keyed_server: KeyedServer, browser: Browser
) -> None:
    url, auth = keyed_server.url, {"Authorization": f"Bearer {keyed_server.secret}"}
    worker = keyed_server.start_worker()
    try:
        with FitserveClient(url, api_key=keyed_server.secret) as client:
            jobs = [
                client.submit(IRIS_NETWORK, "iris", {**IRIS_TRAINING, "seed": seed}, epochs=5,
                              name=f"seed {seed}", register_as="churn")
                for seed in (1, 2)
            ]  # fmt: skip
            for job in jobs:
                assert client.wait(job.id, timeout=120).status == "succeeded"
    finally:
        _stop(worker)
    versions = httpx.get(f"{url}/v1/registered-models/churn", headers=auth, timeout=10).json()
    model = {v["version"]: v["model_id"] for v in versions["versions"]}
    assert sorted(model) == [1, 2]

    def predict(ref: str) -> Any:
        answer = httpx.post(f"{url}/v1/models/{ref}/predict", json={"inputs": ROWS},
                            headers=auth, timeout=10)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return answer.json()["outputs"]

    outputs = {version: predict(model_id) for version, model_id in model.items()}
    assert outputs[1] != outputs[2]  # two seeds: the outputs tell which version answered

    browser.goto(f"{url}/dashboard/names/churn")
    sign_in(browser, keyed_server.secret)
    assert browser.wait_for("document.querySelector('tr.served') !== null")
    assert served(browser) == "2"  # no production alias: the latest version
    assert predict("churn") == outputs[2]

    # a click on version 1's "production" button: the page reloads showing the move, and the
    # next prediction by name is version 1's
    click(browser, 'tr[data-version="1"] button[data-alias="production"]')
    browser.wait_for(
        'document.querySelector(\'tr[data-version="1"] .badge[data-alias="production"]\') !== null'
    )
    assert served(browser) == "1"
    assert predict("churn") == outputs[1]
    assert predict("churn@production") == outputs[1]

    # the form: any alias, any version
    browser.evaluate(
        "(() => { const f = document.querySelector('form[data-action=\"move-alias\"]');"
        " f.elements.alias.value = 'production'; f.elements.version.value = '2';"
        " f.requestSubmit(); })()"
    )
    browser.wait_for(
        'document.querySelector(\'tr[data-version="2"] .badge[data-alias="production"]\') !== null'
    )
    assert served(browser) == "2" and predict("churn") == outputs[2]

    # a refused alias shows the API's message and moves nothing
    browser.evaluate(
        "(() => { const f = document.querySelector('form[data-action=\"move-alias\"]');"
        " f.elements.alias.value = '2x'; f.requestSubmit(); })()"
    )
    refused = browser.wait_for("document.getElementById('names-error').textContent")
    assert "alias" in refused and ("not valid" in refused or "pattern" in refused), refused
    names = httpx.get(f"{url}/v1/registered-models/churn", headers=auth, timeout=10).json()
    assert names["aliases"] == {"production": 2}

    # removing the alias: the plain name is the latest version again
    click(browser, 'tr[data-version="2"] button[data-action="remove-alias"]')
    browser.wait_for(
        "document.querySelector('tr.served') !== null"
        " && document.querySelector('.badge[data-alias=\"production\"]') === null"
    )
    assert predict("churn") == outputs[2]

    # register version 1's model under another name from the model's page
    browser.goto(f"{url}/dashboard/models/{model[1]}")
    browser.wait_for("document.querySelector('form[data-action=\"register\"]') !== null")
    assert "churn" in browser.evaluate("document.getElementById('registered-as').textContent")
    browser.evaluate(
        "(() => { const f = document.querySelector('form[data-action=\"register\"]');"
        " f.elements.name.value = 'churn-best'; f.requestSubmit(); })()"
    )
    browser.wait_for(
        "(document.getElementById('registered-as') || {textContent: ''})"
        ".textContent.includes('churn-best')"
    )
    best = httpx.get(f"{url}/v1/registered-models/churn-best", headers=auth, timeout=10).json()
    assert [v["model_id"] for v in best["versions"]] == [model[1]]
    assert predict("churn-best") == outputs[1]
