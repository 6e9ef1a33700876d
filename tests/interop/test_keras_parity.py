"""fitserve trains as real Keras 3 trains: every case of tests/interop/keras_parity.py, live.

Keras (torch backend) and `models.fit` train the same network from the same initial weights;
every epoch's loss, val_loss and metric and the final weights must agree to the bar in
keras_parity.py (1e-5). docs/keras-parity.md is the table these cases produce.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import models
from tests.interop import keras_parity as kp
from tests.interop.keras_parity import keras

CASES = {case.id: case for case in kp.cases()}


@pytest.mark.parametrize("case_id", list(CASES))
def test_training_matches_keras(case_id: str) -> None:
    case = CASES[case_id]
    d = kp.compare(case)
    assert d.epochs[0] == d.epochs[1], f"Keras trained {d.epochs[0]} epochs, fitserve {d.epochs[1]}"
    if case.differs is not None:  # a documented difference: it must still be there, measured
        assert not d.passed, f"{case_id} now matches Keras: update its note ({case.differs})"
        return
    assert d.loss_rel <= kp.LOSS_RTOL, f"loss differs by {d.loss_rel:.2e} relative"
    if d.val_loss_rel is not None:
        assert d.val_loss_rel <= kp.LOSS_RTOL, f"val_loss differs by {d.val_loss_rel:.2e}"
    assert d.metric_abs <= kp.METRIC_ATOL, f"metric differs by {d.metric_abs:.2e}"
    assert d.weights_abs <= kp.WEIGHT_ATOL, f"final weights differ by {d.weights_abs:.2e}"


def test_every_case_is_in_the_parity_document() -> None:
    text = (kp.ROOT / "docs" / "keras-parity.md").read_text()
    missing = [case_id for case_id in CASES if f"| `{case_id}` |" not in text]
    assert not missing, f"regenerate docs/keras-parity.md (see its header); missing {missing}"


# ---------------------------------------------------------------- dropout

DROPOUT_NET = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


def _same_weights() -> tuple[Any, Any]:
    model = kp.keras_model(DROPOUT_NET, seed=3)
    spec = kp.with_keras_weights(DROPOUT_NET, model)
    return model, models.build(spec)


def test_dropout_is_off_at_inference_in_both() -> None:
    model, module = _same_weights()
    x, _ = kp._iris()
    module.eval()
    with torch.inference_mode():
        ours = module(torch.from_numpy(x)).numpy()
    theirs = np.asarray(model(x, training=False).detach().cpu())
    assert np.max(np.abs(ours - theirs)) < 1e-6
    assert np.array_equal(ours, module(torch.from_numpy(x)).detach().numpy())  # deterministic


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_in_training_drops_the_rate_and_scales_as_keras(rate: float) -> None:
    # The masks come from different random streams; what must agree is the rule: each input is
    # zeroed with probability `rate` and the kept ones are scaled by 1 / (1 - rate).
    n = 200_000
    ones = np.ones((1, n), dtype=np.float32)
    keras.utils.set_random_seed(0)
    theirs = np.asarray(keras.layers.Dropout(rate)(ones, training=True).detach().cpu())
    spec = {"layers": [{"type": "dropout", "rate": rate, "input_dim": n}]}
    module = models.build(spec, seed=0).train()
    torch.manual_seed(0)
    with torch.no_grad():
        ours = module(torch.from_numpy(ones)).numpy()
    sigma = 5 * np.sqrt(rate * (1 - rate) / n)  # 5 standard errors of a binomial fraction
    for out in (ours, theirs):
        assert abs(np.mean(out == 0) - rate) < sigma
        assert np.allclose(out[out != 0], 1 / (1 - rate), rtol=1e-6)
