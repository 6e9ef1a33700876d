"""Numbers checked by hand: a textbook backprop step, exact L1/L2 penalties, stable fused losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build, fit
from models.losses import make_objective


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_textbook_backprop_step_matches_hand_computation() -> None:
    """Mazur's 2-2-2 sigmoid example, no biases: MSE, SGD lr 0.5, one sample, float64 by hand."""
    x = np.array([0.05, 0.10])
    t = np.array([0.01, 0.99])
    w1 = np.array([[0.15, 0.25], [0.20, 0.30]])  # Keras layout [inputs][units]
    w2 = np.array([[0.40, 0.50], [0.45, 0.55]])
    lr = 0.5

    h = sigmoid(x @ w1)
    o = sigmoid(h @ w2)
    # Keras MSE is mean over the 2 outputs: E = ((o1-t1)^2 + (o2-t2)^2) / 2, so dE/do = (o - t)
    delta_o = (o - t) * o * (1 - o)  # dE/dnet_o
    grad_w2 = np.outer(h, delta_o)
    delta_h = (w2 @ delta_o) * h * (1 - h)  # back through the old w2
    grad_w1 = np.outer(x, delta_h)
    new_w1, new_w2 = w1 - lr * grad_w1, w2 - lr * grad_w2

    net = {
        "layers": [
            {
                "type": "dense",
                "units": 2,
                "activation": "sigmoid",
                "use_bias": False,
                "input_dim": 2,
                "kernel": w1.tolist(),
            },
            {
                "type": "dense",
                "units": 2,
                "activation": "sigmoid",
                "use_bias": False,
                "kernel": w2.tolist(),
            },
        ]
    }
    cfg = {
        "loss": "mse",
        "optimizer": {"name": "sgd", "learning_rate": lr},
        "batch_size": 1,
        "epochs": 1,
        "shuffle": False,
    }
    result = fit(
        net, cfg, x[None, :].astype(np.float32), t[None, :].astype(np.float32), device="cpu"
    )
    got_w1 = result.module.layers.dense.weight.detach().double().numpy().T
    got_w2 = result.module.layers.dense_1.weight.detach().double().numpy().T
    np.testing.assert_allclose(got_w1, new_w1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_w2, new_w2, atol=1e-6, rtol=0)
    assert not np.allclose(new_w1, w1, atol=1e-5)  # the step moved the first layer measurably
    # the loss reported for the epoch is the one before the step
    assert result.history[0].loss == pytest.approx(np.mean((o - t) ** 2), abs=1e-7)


@pytest.mark.parametrize(("l1", "l2"), [(0.01, 0.0), (0.0, 0.02), (0.003, 0.004)])
def test_l1_l2_penalties_add_exactly(l1: float, l2: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.normal(size=(20, 2)).astype(np.float32)
    k1 = rng.normal(size=(3, 4)).round(3)
    b1 = rng.normal(size=4).round(3)
    k2 = rng.normal(size=(4, 2)).round(3)

    def spec(reg: dict[str, float] | None) -> dict[str, object]:
        return {
            "layers": [
                {
                    "type": "dense",
                    "units": 4,
                    "activation": "tanh",
                    "input_dim": 3,
                    "kernel": k1.tolist(),
                    "bias": b1.tolist(),
                    "kernel_regularizer": reg,
                    "bias_regularizer": reg,
                },
                {"type": "dense", "units": 2, "kernel": k2.tolist(), "kernel_regularizer": reg},
            ]
        }

    cfg = {"loss": "mse", "optimizer": "sgd", "batch_size": "full", "epochs": 1}
    plain = fit(spec(None), cfg, x, y, device="cpu").history[0].loss
    reg = fit(spec({"l1": l1, "l2": l2}), cfg, x, y, device="cpu").history[0].loss
    penalty = sum(l1 * np.abs(w).sum() + l2 * (w**2).sum() for w in (k1, b1, k2))
    assert reg - plain == pytest.approx(penalty, rel=1e-5, abs=1e-6)
    assert penalty > 0


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_fused_categorical_is_finite_at_extreme_logits(scale: float) -> None:
    obj = make_objective(
        "categorical_crossentropy", output_activation="softmax", output_units=3, classification=True
    )
    logits = torch.tensor([[scale, -scale, 0.0], [0.0, scale, -scale]], requires_grad=True)
    target = torch.tensor([1, 0])  # the wrong class gets the extreme logit
    loss = obj.loss(logits, target)
    loss.backward()
    l64 = logits.detach().double()
    expected = (torch.logsumexp(l64, -1) - l64[torch.arange(2), target]).mean().item()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected, rel=1e-6)
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    # the unfused form, log(softmax(x)), is not finite here: that is why the loss uses logits
    naive = -torch.log(torch.softmax(logits.detach(), -1))[torch.arange(2), target].mean()
    assert not torch.isfinite(naive)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_fused_binary_is_finite_at_extreme_logits(scale: float) -> None:
    obj = make_objective(
        "binary_crossentropy", output_activation="sigmoid", output_units=1, classification=True
    )
    logits = torch.tensor([[scale], [-scale]], requires_grad=True)
    target = torch.tensor([[0.0], [1.0]])
    loss = obj.loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(logits.grad).all())  # type: ignore[arg-type]
    expected = 1e4 if scale > 0 else 0.0
    assert loss.item() == pytest.approx(expected, abs=1e-3)


def test_training_at_extreme_logits_stays_finite() -> None:
    net = {
        "layers": [
            {
                "type": "dense",
                "units": 3,
                "activation": "softmax",
                "input_dim": 2,
                "kernel": [[1e4, -1e4, 0.0], [0.0, 1e4, -1e4]],
                "bias": [0.0, 0.0, 0.0],
            }
        ]
    }
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    y = np.array([1, 2])
    result = fit(
        net,
        {"loss": "categorical_crossentropy", "optimizer": "sgd", "epochs": 2},
        x,
        y,
        device="cpu",
    )
    assert all(np.isfinite(h.loss) and np.isfinite(h.grad_norm) for h in result.history)


def test_predictions_are_probabilities() -> None:
    net = build(
        {"layers": [{"type": "dense", "units": 4, "activation": "softmax", "input_dim": 3}]}, seed=0
    )
    with torch.inference_mode():
        p = net(torch.randn(6, 3) * 50)
    assert torch.allclose(p.sum(-1), torch.ones(6)) and bool((p >= 0).all())
