"""A catalog of bad requests. Each is refused with the status that fits and a message that names
the problem, and leaves no row behind (every table is counted before and after). Run through real
HTTP on SQLite and on Postgres."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from app.auth import create_key
from app.config import Settings
from app.db import make_engine
from app.main import create_app
from models.spec import IRIS_NETWORK, IRIS_TRAINING

IRIS_TRAINING_SHORT = {**IRIS_TRAINING, "epochs": 1}


@dataclass
class Case:
    id: str
    method: str
    path: str
    status: int
    words: tuple[str, ...]
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    params: dict[str, Any] | None = None


def job(network: Any = None, training: Any = None, **extra: Any) -> dict[str, Any]:
    body = {
        "network": copy.deepcopy(IRIS_NETWORK) if network is None else network,
        "dataset": "iris",
        "training": dict(IRIS_TRAINING_SHORT) if training is None else training,
    }
    return {**body, **extra}


def layers(*changes: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """The iris network with layer `index` updated (a key set to None is removed)."""
    network = copy.deepcopy(IRIS_NETWORK)
    for change in changes:
        for k, v in change.items():
            if v is None:
                network["layers"][index].pop(k, None)
            else:
                network["layers"][index][k] = v
    return network


def training(**changes: Any) -> dict[str, Any]:
    out = dict(IRIS_TRAINING_SHORT)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def dataset(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "tiny",
        "task": "classification",
        "features": [[0.1, 1.0], [0.2, 2.0], [0.3, 3.0]],
        "targets": ["a", "b", "a"],
    }
    for k, v in changes.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def csv_upload(text: str | bytes, target: str = "y", **form: str) -> dict[str, Any]:
    data = text.encode() if isinstance(text, str) else text
    return {
        "files": {"file": ("data.csv", data, "text/csv")},
        "data": {"target": target, "name": "upload", **form},
    }


GOOD_CSV = "a,b,y\n1,2,x\n3,4,z\n5,6,x\n"
# 4 -> 10_000 -> 6_000 -> 3 is 6.0e7 parameters: under the spec's hard cap (1e8), over the
# service's configurable limit (5e7 by default), so the service's own message answers.
WIDE = {"layers": [
    {"type": "dense", "units": 10_000, "input_dim": 4, "activation": "relu"},
    {"type": "dense", "units": 6_000, "activation": "relu"},
    {"type": "dense", "units": 3, "activation": "softmax"},
]}  # fmt: skip
# 610_000 x 65_536 weights: 4.0e10 parameters, refused from the spec alone (nothing allocated).
HUGE = {"layers": [
    {"type": "dense", "units": 65_536, "input_dim": 610_000, "activation": "relu"},
    {"type": "dense", "units": 3, "activation": "softmax"},
]}  # fmt: skip

D = "/v1/datasets"
J = "/v1/jobs"
P = "/v1/models/{model}/predict"
JSON_CT = {"content-type": "application/json"}
CSV_HEADER = b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"

CATALOG: list[Case] = [
    # ---------------------------------------------------------------- datasets, JSON
    Case("dataset-misspelt-field", "POST", D, 422, ("feature", "extra"),
         json={**dataset(features=None), "feature": [[1.0]]}),
    Case("dataset-missing-features", "POST", D, 422, ("features", "sequences", "exactly one"),
         json=dataset(features=None)),
    Case("dataset-string-for-number", "POST", D, 422, ("features[0][1]", "number"),
         json=dataset(features=[[0.1, "1.0"], [0.2, 2.0], [0.3, 3.0]])),
    Case("dataset-bool-for-number", "POST", D, 422, ("features[1][0]",),
         json=dataset(features=[[0.1, 1.0], [True, 2.0], [0.3, 3.0]])),
    Case("dataset-nan", "POST", D, 422, ("features[1][0]", "NaN", "finite"),
         content=b'{"name": "n", "features": [[1, 2], [NaN, 1], [0, 0]], "targets": [0, 1, 0]}',
         headers={"content-type": "application/json"}),
    Case("dataset-infinity-target", "POST", D, 422, ("targets[2]", "Infinity"),
         content=b'{"name": "n", "task": "regression", "features": [[1], [2], [3]], '
                 b'"targets": [1.5, 2.5, -Infinity]}',
         headers={"content-type": "application/json"}),
    Case("dataset-1e999", "POST", D, 422, ("features[0][0]", "1e999"),
         content=b'{"name": "n", "features": [[1e999]], "targets": [1]}',
         headers={"content-type": "application/json"}),
    Case("dataset-ragged-rows", "POST", D, 422, ("features[2]", "1 values", "features[0] has 2"),
         json=dataset(features=[[0.1, 1.0], [0.2, 2.0], [0.3]])),
    Case("dataset-length-mismatch", "POST", D, 422, ("3 rows", "targets has 2"),
         json=dataset(targets=["a", "b"])),
    Case("dataset-empty", "POST", D, 422, ("features",),
         json=dataset(features=[], targets=[])),
    Case("dataset-empty-row", "POST", D, 422, ("features[0]", "empty"),
         json=dataset(features=[[], [], []])),
    Case("dataset-single-class", "POST", D, 422, ("single class", "at least 2"),
         json=dataset(targets=["a", "a", "a"])),
    Case("dataset-fractional-labels", "POST", D, 422, ("fractional", "regression"),
         json=dataset(targets=[0.5, 1.5, 0.5])),
    Case("dataset-mixed-label-types", "POST", D, 422, ("mixes label types",),
         json=dataset(targets=["a", 1, "a"])),
    Case("dataset-unknown-task", "POST", D, 422, ("task",),
         json=dataset(task="clustering")),
    Case("dataset-nul-in-name", "POST", D, 422, ("name", "control"),
         json=dataset(name="bad\x00name")),
    Case("dataset-lone-surrogate-in-name", "POST", D, 422, ("name holds a lone surrogate",),
         content=b'{"name": "x\\ud800y", "features": [[1], [2]], "targets": ["a", "b"]}',
         headers={"content-type": "application/json"}),
    Case("dataset-name-too-long", "POST", D, 422, ("name", "200"),
         json=dataset(name="n" * 201)),
    Case("dataset-feature-names-count", "POST", D, 422, ("feature_names has 3", "2 features"),
         json=dataset(feature_names=["a", "b", "c"])),
    Case("dataset-nul-in-feature-name", "POST", D, 422, ("feature_names[1]", "control"),
         json=dataset(feature_names=["a", "b\x00"])),
    Case("dataset-too-many-cells", "POST", D, 413,
         ("60,600 values", "limit", "FITSERVE_MAX_DATASET_CELLS"),
         json=dataset(features=[[0.5] * 100] * 600, targets=[0, 1] * 300)),
    Case("dataset-body-too-large", "POST", D, 413, ("limit", "FITSERVE_MAX_BODY_BYTES"),
         content=b'{"name": "big", "features": [' + b"[1]," * 600_000 + b"[1]]}",
         headers={"content-type": "application/json"}),
    Case("dataset-not-json", "POST", D, 422, ("json",),
         content=b'{"name": "x", "features": [[1]', headers={"content-type": "application/json"}),
    Case("dataset-wrong-media-type", "POST", D, 415, ("text/plain", "JSON"),
         content=b"a,b\n1,2\n", headers={"content-type": "text/plain"}),
    Case("dataset-array-body", "POST", D, 422, ("body",),
         json=[[1, 2], [3, 4]]),
    # ---------------------------------------------------------------- datasets, CSV
    Case("csv-ragged-row", "POST", D, 422, ("data row 2", "2 values", "3 columns"),
         **csv_upload("a,b,y\n1,2,x\n3,z\n5,6,x\n")),
    Case("csv-text-feature", "POST", D, 422, ("data row 2", "'b'", "'four'"),
         **csv_upload("a,b,y\n1,2,x\n3,four,z\n5,6,x\n")),
    Case("csv-nan", "POST", D, 422, ("data row 1", "'nan'", "finite"),
         **csv_upload("a,b,y\nnan,2,x\n3,4,z\n")),
    Case("csv-1e999", "POST", D, 422, ("data row 2", "1e999", "finite"),
         **csv_upload("a,b,y\n1,2,x\n1e999,4,z\n")),
    Case("csv-missing-target-column", "POST", D, 422, ("target column 'label'", "a, b, y"),
         **csv_upload(GOOD_CSV, target="label")),
    Case("csv-header-only", "POST", D, 422, ("no data rows",),
         **csv_upload("a,b,y\n")),
    Case("csv-empty-file", "POST", D, 422, ("empty",),
         **csv_upload("")),
    Case("csv-nul-bytes", "POST", D, 422, ("NUL",),
         **csv_upload("a,b,y\n1,2,x\n3,\x004,z\n")),
    Case("csv-not-utf8", "POST", D, 422, ("UTF-8",),
         **csv_upload(b"a,b,y\n1,2,\xff\xfe\n3,4,z\n")),
    Case("csv-single-class", "POST", D, 422, ("single class",),
         **csv_upload("a,b,y\n1,2,x\n3,4,x\n")),
    Case("csv-duplicate-columns", "POST", D, 422, ("repeats column names", "a"),
         **csv_upload("a,a,y\n1,2,x\n3,4,z\n")),
    Case("csv-unknown-form-field", "POST", D, 422, ("unknown form field", "colour"),
         **csv_upload(GOOD_CSV, colour="red")),
    Case("csv-missing-file", "POST", D, 422, ("file",),
         data={"target": "y", "name": "nofile"}, files={"other": ("x.txt", b"1", "text/plain")}),
    Case("csv-form-too-many-fields", "POST", "/v1/datasets", 422,
         ("too many fields", "target, name and task"),
         data={**{f"f{i}": "1" for i in range(11)}, "target": "y", "name": "many"},
         files={"file": ("x.csv", b"a,y\n1,2\n", "text/csv")}),
    Case("csv-bad-task", "POST", D, 422, ("task", "'clustering'"),
         **csv_upload(GOOD_CSV, task="clustering")),
    Case("csv-nul-in-name", "POST", D, 422, ("name", "control"),
         **csv_upload(GOOD_CSV, name="x\x00y")),
    # ---------------------------------------------------------------- jobs: the spec
    Case("job-unknown-layer-type", "POST", J, 422, ("conv2d", "dense"),
         json=job(layers({"type": "conv2d"}))),
    Case("job-unknown-activation", "POST", J, 422, ("activation", "relu2"),
         json=job(layers({"activation": "relu2"}))),
    Case("job-unknown-loss", "POST", J, 422, ("loss", "hinge"),
         json=job(training=training(loss="hinge"))),
    Case("job-unknown-optimizer", "POST", J, 422, ("optimizer", "adamax"),
         json=job(training=training(optimizer="adamax"))),
    Case("job-unknown-initializer", "POST", J, 422, ("kernel_initializer",),
         json=job(layers({"kernel_initializer": "xavier_magic"}))),
    Case("job-zero-units", "POST", J, 422, ("units", "greater than or equal to 1"),
         json=job(layers({"units": 0}))),
    Case("job-too-many-units", "POST", J, 422, ("units", "65536"),
         json=job(layers({"units": 10**7}))),
    Case("job-dropout-rate", "POST", J, 422, ("rate", "less than 1"),
         json=job({"layers": [*IRIS_NETWORK["layers"][:2], {"type": "dropout", "rate": 1.5},
                              IRIS_NETWORK["layers"][2]]})),
    Case("job-zero-epochs", "POST", J, 422, ("epochs", "greater than or equal to 1"),
         json=job(training=training(epochs=0))),
    Case("job-too-many-epochs", "POST", J, 422, ("epochs", "100000"),
         json=job(training=training(epochs=10**9))),
    Case("job-negative-learning-rate", "POST", J, 422, ("learning_rate", "greater than 0"),
         json=job(training=training(optimizer={"name": "adam", "learning_rate": -1.0}))),
    Case("job-weight-decay-out-of-range", "POST", J, 422, ("weight_decay", "less than or equal"),
         json=job(training=training(optimizer={"name": "sgd", "weight_decay": 2.0}))),
    Case("job-argument-the-optimizer-lacks", "POST", J, 422, ("beta_1", "extra"),
         json=job(training=training(optimizer={"name": "sgd", "beta_1": 0.9}))),
    Case("job-negative-start-from-epoch", "POST", J, 422, ("start_from_epoch",),
         json=job(training=training(early_stopping={"monitor": "loss", "start_from_epoch": -1}))),
    Case("job-keras-class-mismatch", "POST", J, 422, ("keras_class ELU computes elu",),
         json=job({"layers": [*IRIS_NETWORK["layers"][:1], {"type": "activation",
                   "activation": "tanh", "keras_class": "ELU"}, *IRIS_NETWORK["layers"][1:]]})),
    Case("job-batch-size-zero", "POST", J, 422, ("batch_size",),
         json=job(training=training(batch_size=0))),
    Case("job-batch-size-word", "POST", J, 422, ("batch_size",),
         json=job(training=training(batch_size="all"))),
    Case("job-misspelt-training-field", "POST", J, 422, ("epoch", "extra"),
         json=job(training={**training(epochs=None), "epoch": 5})),
    Case("job-misspelt-layer-field", "POST", J, 422, ("unit", "extra"),
         json=job(layers({"units": None, "unit": 8}))),
    Case("job-misspelt-top-field", "POST", J, 422, ("netwrok",),
         json={**job(), "netwrok": {}}),
    Case("job-string-for-units", "POST", J, 422, ("units", "integer"),
         json=job(layers({"units": "8"}))),
    Case("job-string-for-learning-rate", "POST", J, 422, ("learning_rate",),
         json=job(training=training(optimizer={"name": "adam", "learning_rate": "0.01"}))),
    Case("job-nan-learning-rate", "POST", J, 422, ("training.optimizer.learning_rate", "NaN"),
         content=b'{"network": {"layers": [{"type": "dense", "units": 3, "input_dim": 4, '
                 b'"activation": "softmax"}]}, "dataset": "iris", "training": {"loss": '
                 b'"categorical_crossentropy", "optimizer": {"name": "sgd", '
                 b'"learning_rate": NaN}}}',
         headers={"content-type": "application/json"}),
    Case("job-infinite-clipnorm", "POST", J, 422, ("training.clipnorm", "Infinity"),
         content=b'{"network": {"layers": [{"type": "dense", "units": 3, "input_dim": 4, '
                 b'"activation": "softmax"}]}, "dataset": "iris", "training": {"loss": '
                 b'"categorical_crossentropy", "clipnorm": Infinity}}',
         headers={"content-type": "application/json"}),
    Case("job-no-layers", "POST", J, 422, ("layers", "at least 1"),
         json=job({"layers": []})),
    Case("job-no-input-dim", "POST", J, 422, ("input_dim",),
         json=job(layers({"input_dim": None}))),
    Case("job-early-stopping-without-validation", "POST", J, 422,
         ("val_loss", "validation_split"),
         json=job(training=training(early_stopping={"monitor": "val_loss", "patience": 3}))),
    Case("job-too-many-parameters", "POST", J, 422,
         ("the network would have 6.0e7 parameters; the limit is 5.0e7",),
         json=job(WIDE)),
    Case("job-absurdly-many-parameters", "POST", J, 422,
         ("the network would have 4.0e10 parameters", "limit"),
         json=job(HUGE)),
    # ---------------------------------------------------------------- jobs: spec vs dataset
    Case("job-unknown-dataset", "POST", J, 422, ("dataset 'no-such-data' not found", "iris"),
         json=job(dataset="no-such-data")),
    Case("job-other-shape-id-dataset", "POST", J, 422, ("not found",),
         json=job(dataset="0" * 32)),
    Case("job-input-width", "POST", J, 422, ("expects 5 inputs", "4 features"),
         json=job(layers({"input_dim": 5}))),
    Case("job-output-units-vs-classes", "POST", J, 422, ("2 units", "3 classes"),
         json=job(layers({"units": 2}, index=2))),
    Case("job-loss-vs-output-activation", "POST", J, 422,
         ("categorical_crossentropy", "softmax", "sigmoid"),
         json=job(layers({"activation": "sigmoid"}, index=2))),
    Case("job-binary-loss-on-three-classes", "POST", J, 422,
         ("binary_crossentropy", "2 classes", "3"),
         json=job(training=training(loss="binary_crossentropy"))),
    Case("job-classification-loss-on-regression", "POST", J, 422,
         ("categorical_crossentropy", "numbers"),
         json=job({"layers": [{"type": "dense", "units": 1, "input_dim": 10}]},
                  dataset="diabetes")),
    Case("job-validation-split-leaves-no-rows", "POST", J, 422,
         ("validation_split", "leaves 0 for training"),
         json=job(training=training(validation_split=0.999))),
    Case("job-nul-in-name", "POST", J, 422, ("name", "control"),
         json=job(name="job\x00one")),
    Case("job-lone-surrogate-in-name", "POST", J, 422, ("name holds a lone surrogate",),
         content=b'{"name": "\\udc80", "network": {"layers": [{"type": "dense", "units": 3, '
                 b'"input_dim": 4, "activation": "softmax"}]}, "dataset": "iris", '
                 b'"training": {"loss": "categorical_crossentropy"}}',
         headers={"content-type": "application/json"}),
    Case("job-name-as-path", "POST", J, 422, ("dataset",),
         json=job(dataset="../../etc/passwd")),
    # ---------------------------------------------------------------- network summary
    Case("summary-unknown-activation", "POST", "/v1/networks/summary", 422, ("activation",),
         json=layers({"activation": "swishy"})),
    Case("summary-too-many-parameters", "POST", "/v1/networks/summary", 422,
         ("6.0e7 parameters", "5.0e7"), json=WIDE),
    # ---------------------------------------------------------------- predictions
    Case("predict-wrong-width", "POST", P, 422, ("inputs[0] has 3 values", "takes 4"),
         json={"inputs": [[5.1, 3.5, 1.4]]}),
    Case("predict-ragged-rows", "POST", P, 422, ("inputs[1] has 2 values",),
         json={"inputs": [[5.1, 3.5, 1.4, 0.2], [1.0, 2.0]]}),
    Case("predict-too-many-rows", "POST", P, 413, ("101 input rows", "limit is 100"),
         json={"inputs": [[5.1, 3.5, 1.4, 0.2]] * 101}),
    Case("predict-nan", "POST", P, 422, ("inputs[0][2] is NaN",),
         content=b'{"inputs": [[5.1, 3.5, NaN, 0.2]]}', headers=JSON_CT),
    Case("predict-infinity", "POST", P, 422, ("inputs[1][0] is Infinity",),
         content=b'{"inputs": [[5.1, 3.5, 1.4, 0.2], [Infinity, 1, 1, 1]]}',
         headers={"content-type": "application/json"}),
    Case("predict-1e999", "POST", P, 422, ("inputs[0][3] is 1e999",),
         content=b'{"inputs": [[5.1, 3.5, 1.4, 1e999]]}', headers=JSON_CT),
    Case("predict-beyond-float32", "POST", P, 422, ("inputs[0]", "float32"),
         json={"inputs": [[5.1, 3.5, 1.4, 1e39]]}),
    Case("predict-empty-inputs", "POST", P, 422, ("inputs", "at least 1"),
         json={"inputs": []}),
    Case("predict-string-values", "POST", P, 422, ("inputs[0][0]", "number"),
         json={"inputs": [["5.1", 3.5, 1.4, 0.2]]}),
    Case("predict-misspelt-field", "POST", P, 422, ("input", "extra"),
         json={"input": [[5.1, 3.5, 1.4, 0.2]]}),
    Case("predict-unknown-model", "POST", "/v1/models/" + "0" * 32 + "/predict", 404,
         ("model", "not found"), json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    Case("predict-csv-missing-column", "POST", P + ".csv", 422, ("petal_width_cm",),
         content=b"sepal_length_cm,sepal_width_cm,petal_length_cm\n5.1,3.5,1.4\n",
         headers={"content-type": "text/csv"}),
    Case("predict-csv-bad-cell", "POST", P + ".csv", 422, ("'abc'",),
         content=CSV_HEADER + b"5.1,abc,1.4,0.2\n", headers={"content-type": "text/csv"}),
    Case("predict-csv-nan", "POST", P + ".csv", 422, ("nan",),
         content=CSV_HEADER + b"5.1,3.5,nan,0.2\n", headers={"content-type": "text/csv"}),
    Case("infer-wrong-shape", "POST", "/v2/models/{model}/infer", 400, ("shape",),
         json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                           "data": [5.1, 3.5, 1.4]}]}),
    Case("models-limit-zero", "GET", "/v1/models", 422, ("limit",), params={"limit": 0}),
    # ---------------------------------------------------------------- listing parameters
    Case("jobs-bad-status-filter", "GET", J, 422, ("status", "queued"),
         params={"status": "done"}),
    Case("jobs-limit-zero", "GET", J, 422, ("limit", "greater than or equal to 1"),
         params={"limit": 0}),
    Case("jobs-limit-huge", "GET", J, 422, ("limit", "1000"), params={"limit": 10**9}),
    Case("jobs-limit-not-a-number", "GET", J, 422, ("limit", "integer"),
         params={"limit": "ten"}),
    Case("jobs-negative-offset", "GET", J, 422, ("offset",), params={"offset": -1}),
    Case("metrics-negative-after", "GET", J + "/{job}/metrics", 422, ("after",),
         params={"after": -5}),
]  # fmt: skip


@pytest.fixture(scope="module")
def refs(api: Any, trained: dict[str, str]) -> dict[str, str]:
    """Rows the catalog refers to: key A's trained model, and a queued job of key A."""
    r = api.http.post(J, json=job(), headers=api.a)
    assert r.status_code == 202, r.text
    return {"job": r.json()["id"], "model": trained["model"]}


def test_the_catalog_is_big_enough() -> None:
    assert len(CATALOG) >= 40
    assert len({c.id for c in CATALOG}) == len(CATALOG)


@pytest.mark.parametrize("case", CATALOG, ids=[c.id for c in CATALOG])
def test_bad_input_is_refused_and_stores_nothing(
    api: Any, refs: dict[str, str], case: Case
) -> None:
    before = api.row_counts()
    r = api.http.request(
        case.method,
        case.path.format(**refs),
        json=case.json,
        content=case.content,
        headers={**api.a, **case.headers},
        files=case.files,
        data=case.data,
        params=case.params,
    )
    assert r.status_code == case.status, r.text
    body = r.json()
    if case.path.startswith("/v2/"):  # the Open Inference Protocol's error object
        assert list(body) == ["error"], body
        detail = body["error"]
    else:
        assert set(body) >= {"detail", "code"}, body
        detail = body["detail"]
    for word in case.words:
        assert word.lower() in detail.lower(), f"{word!r} not in {detail!r}"
    assert api.row_counts() == before


def test_queued_jobs_per_key_are_limited(database_url: str, live_server: Any) -> None:
    settings = Settings(database_url=database_url, require_api_keys=True, max_queued_jobs_per_key=2)
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session, session.begin():
            _, key_a = create_key(session, name="a")
            _, key_b = create_key(session, name="b")
        a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
        with live_server(create_app(settings)) as url, httpx.Client(base_url=url) as http:
            for _ in range(2):
                assert http.post(J, json=job(), headers=a).status_code == 202
            r = http.post(J, json=job(), headers=a)
            assert r.status_code == 409
            assert "2 queued jobs, the limit is 2" in r.json()["detail"]
            assert "FITSERVE_MAX_QUEUED_JOBS_PER_KEY" in r.json()["detail"]
            assert len(http.get(J, headers=a).json()["items"]) == 2  # the third was not stored
            assert http.post(J, json=job(), headers=b).status_code == 202  # per key
            first = http.get(J, headers=a).json()["items"][0]["id"]
            assert http.post(f"{J}/{first}/cancel", headers=a).status_code == 202
            assert http.post(J, json=job(), headers=a).status_code == 202  # room again
    finally:
        engine.dispose()
