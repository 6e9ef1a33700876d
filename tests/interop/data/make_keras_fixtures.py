"""Write the Keras test data in this folder from REAL Keras. Run by hand; not part of the suite.

    python3 -m venv /tmp/kerasenv
    /tmp/kerasenv/bin/pip install keras==3.15.1 torch==2.13.0
    KERAS_BACKEND=torch /tmp/kerasenv/bin/python tests/interop/data/make_keras_fixtures.py

Each `<name>.json` holds what Keras itself says about one Sequential model:

    {"keras_version", "model_json": model.to_json() (a string, exactly as Keras wrote it),
     "count_params", "trainable_params", "non_trainable_params", "layer_params": {name: n},
     "parity"?: {"weights": {"<layer>/<variable>": nested lists}, "inputs": [[...]],
                 "outputs": model.predict(inputs)}}

`parity` (set weights, including non-trivial batch-norm moving statistics, and Keras' own
outputs for them) lets the tests check that an imported spec computes what Keras computes, not
only that it has the same parameter counts.

    ... make_keras_fixtures.py --check-export FILE.json ...

loads fitserve's exported Keras JSON files with keras.models.model_from_json and prints their
parameter counts: the by-hand check that real Keras accepts what models/keras_json.py writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import constraints, initializers, layers, regularizers  # noqa: E402

HERE = Path(__file__).resolve().parent


def iris() -> keras.Sequential:
    # The 4 -> 8 -> 8 -> 3 classifier of DESIGN.md: 40 + 72 + 27 = 139 parameters.
    return keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(8, activation="relu"),
            layers.Dense(8, activation="relu"),
            layers.Dense(3, activation="softmax"),
        ],
        name="iris",
    )


def reuters() -> keras.Sequential:
    # Chollet, Deep Learning with Python: the Reuters newswire topic classifier.
    return keras.Sequential(
        [
            keras.Input((10000,)),
            layers.Dense(256, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(46, activation="softmax"),
        ],
        name="reuters",
    )


def batchnorm_regularized() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((20,)),
            layers.Dense(
                64,
                use_bias=False,
                kernel_initializer="he_normal",
                kernel_regularizer=regularizers.l1_l2(l1=1e-5, l2=1e-4),
            ),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Dropout(0.2),
            layers.Dense(
                32,
                kernel_initializer=initializers.HeUniform(seed=7),
                kernel_regularizer=regularizers.l2(1e-3),
                bias_regularizer=regularizers.l1(1e-4),
            ),
            layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
            layers.Activation("tanh"),
            layers.Dense(1, activation="sigmoid", kernel_initializer="glorot_normal"),
        ],
        name="batchnorm_regularized",
    )


def normalization_parity() -> keras.Sequential:
    # Small enough to carry its weights: every supported layer kind and some less common options.
    return keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(
                10,
                activation="elu",
                kernel_initializer=initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
            ),
            layers.BatchNormalization(momentum=0.95, epsilon=1e-4),
            layers.LeakyReLU(negative_slope=0.1),
            layers.LayerNormalization(epsilon=1e-5),
            layers.Dropout(0.3),
            layers.Dense(8, activation="gelu", kernel_initializer="lecun_uniform"),
            layers.Dense(3),
            layers.Activation("softmax"),
        ],
        name="normalization_parity",
    )


def unsupported_layer() -> keras.Sequential:
    return keras.Sequential(
        [keras.Input((8,)), layers.Dense(4), layers.GaussianNoise(0.1), layers.Dense(1)],
        name="unsupported_layer",
    )


def unsupported_option() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(4, kernel_constraint=constraints.MaxNorm(3)),
            layers.Dense(1),
        ],
        name="unsupported_option",
    )


MODELS = {
    "iris": iris,
    "reuters": reuters,
    "batchnorm_regularized": batchnorm_regularized,
    "normalization_parity": normalization_parity,
    "unsupported_layer": unsupported_layer,
    "unsupported_option": unsupported_option,
}
WITH_PARITY = {"normalization_parity", "iris"}


def parity(model: keras.Sequential, rng: np.random.Generator) -> dict:
    n_in = model.input_shape[-1]
    weights = {}
    for layer in model.layers:
        for var in layer.weights:
            name = var.path.split("/")[-1]
            shape = tuple(var.shape)
            if name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)  # must stay positive
            else:
                value = rng.normal(0.0, 0.5, shape)
            var.assign(value.astype("float32"))
            weights[f"{layer.name}/{name}"] = var.numpy().tolist()
    x = rng.normal(0.0, 1.0, (5, n_in)).astype("float32")
    y = model.predict(x, verbose=0)  # inference mode: dropout off, moving statistics used
    return {"weights": weights, "inputs": x.tolist(), "outputs": np.asarray(y).tolist()}


def write_fixtures() -> None:
    rng = np.random.default_rng(0)
    for name, make in MODELS.items():
        keras.backend.clear_session()  # layer names restart at dense, dense_1, ... per model
        model = make()
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        record = {
            "keras_version": keras.__version__,
            "model_json": model.to_json(),
            "count_params": model.count_params(),
            "trainable_params": trainable,
            "non_trainable_params": model.count_params() - trainable,
            "layer_params": {layer.name: layer.count_params() for layer in model.layers},
        }
        if name in WITH_PARITY:
            record["parity"] = parity(model, rng)
        (HERE / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {record['count_params']} params")


def check_exports(paths: list[str]) -> None:
    for path in paths:
        model = keras.models.model_from_json(Path(path).read_text())
        print(f"{path}: keras loaded {len(model.layers)} layers, {model.count_params()} params")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check-export"]:
        check_exports(sys.argv[2:])
    else:
        write_fixtures()
