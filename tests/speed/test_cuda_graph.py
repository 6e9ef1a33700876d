"""The CUDA-graph training path (models/cuda_graph.py): when it is taken, when and how it falls
back, and that it trains exactly as the eager loop does.

On the CPU the path runs "emulated" (FITSERVE_CUDA_GRAPHS=emulate): the captured body is called
eagerly where the graph would be replayed, so the batch gather by device counter, the fixed
accumulators, warm-up, hooks and the eager last partial batch are all checked against the eager
loop here. The tests that capture a real graph skip without CUDA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import models
from models import cuda_graph
from models.optim import KerasAdam
from models.train import Trainer

DROPOUT_NET = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
NORM_NET = {
    "layers": [
        {
            "type": "dense",
            "units": 12,
            "activation": "tanh",
            "input_dim": 4,
            "kernel_regularizer": {"l2": 0.01},
        },
        {"type": "batch_normalization"},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "layer_normalization"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
BASE = {"loss": "sparse_categorical_crossentropy", "seed": 3, "standardize": True}
# 120 training rows after the split: full batches plus a partial last one in every config
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "adam+clipnorm+dropout+validation": (
        DROPOUT_NET,
        {"optimizer": "adam", "batch_size": 16, "epochs": 6, "clipnorm": 1.0,
         "validation_split": 0.2},
    ),
    "sgd-nesterov+norm-layers+l2+no-shuffle": (
        NORM_NET,
        {"optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
         "batch_size": 11, "epochs": 4, "shuffle": False, "global_clipnorm": 2.0},
    ),
    "rmsprop+clipvalue": (
        DROPOUT_NET, {"optimizer": "rmsprop", "batch_size": 32, "epochs": 12, "clipvalue": 0.5}
    ),
    "adagrad": (NORM_NET, {"optimizer": "adagrad", "batch_size": 10, "epochs": 4}),
}  # fmt: skip


def _fit(iris: Any, network: dict[str, Any], training: dict[str, Any], **kw: Any) -> Any:
    x, y = iris
    return models.fit(network, {**BASE, **training}, x, y, device="cpu", **kw)


def _same_training(a: models.FitResult, b: models.FitResult) -> None:
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        da, db = ra.as_dict(), rb.as_dict()
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert da.get(key) == db.get(key), (ra.epoch, key)
        # per-layer norms: the same values summed in another order (float32 mv vs mm)
        assert da["grad_norm"] == pytest.approx(db["grad_norm"], rel=1e-5)
        for name, value in da["layer_grad_norms"].items():
            assert value == pytest.approx(db["layer_grad_norms"][name], rel=1e-5)
    for (name, pa), (_, pb) in zip(
        a.module.state_dict().items(), b.module.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("case", list(CASES))
def test_graph_path_trains_exactly_as_the_eager_loop(iris: Any, graphs: Any, case: str) -> None:
    network, training = CASES[case]
    graphs("0")
    eager = _fit(iris, network, training)
    graphs("emulate")
    graphed = _fit(iris, network, training)
    assert eager.step_mode == "eager: FITSERVE_CUDA_GRAPHS=0"
    assert graphed.step_mode == "cuda_graph (emulated)"
    _same_training(eager, graphed)


class _StopAt(models.Callback):
    def __init__(self, step: int) -> None:
        self.stop_step = step

    def on_batch_end(self, trainer: Trainer) -> None:
        if trainer.step == self.stop_step:
            raise models.StopTraining


def test_a_batch_hook_stops_both_paths_after_the_same_step(iris: Any, graphs: Any) -> None:
    network, training = CASES["adam+clipnorm+dropout+validation"]
    results = []
    for mode in ("0", "emulate"):
        graphs(mode)
        results.append(_fit(iris, network, training, callbacks=[_StopAt(19)]))
    eager, graphed = results
    assert eager.stopped_epoch == graphed.stopped_epoch == 3  # step 19 is in epoch 3 (8 a epoch)
    _same_training(eager, graphed)


class _HalveLearningRate(models.Callback):
    def on_epoch_end(self, trainer: Trainer, record: models.EpochRecord) -> None:
        if record.epoch == 2:
            for group in trainer.optimizer.param_groups:
                group["lr"] /= 2


def test_a_learning_rate_changed_after_capture_falls_back(iris: Any, graphs: Any) -> None:
    # a captured optimizer step has the learning rate baked in: the path must notice and stop
    network, training = CASES["adam+clipnorm+dropout+validation"]
    graphs("0")
    eager = _fit(iris, network, training, callbacks=[_HalveLearningRate()])
    graphs("emulate")
    graphed = _fit(iris, network, training, callbacks=[_HalveLearningRate()])
    assert graphed.step_mode == "eager (fallback): the learning rate changed after capture"
    assert graphed.history[-1].learning_rate == pytest.approx(0.0005)
    _same_training(eager, graphed)


def _trainer(iris: Any, training: dict[str, Any], **kw: Any) -> Trainer:
    x, y = iris
    return Trainer(DROPOUT_NET, {**BASE, **training}, x, y, device="cpu", **kw)


def _eligibility(trainer: Trainer) -> str | None:
    inputs, epochs = trainer.epoch_inputs(), trainer.config.epochs
    return cuda_graph.eligibility(inputs, epochs_left=epochs, require_cuda=False)


def _plan(trainer: Trainer) -> tuple[cuda_graph.GraphEpochs | None, str]:
    inputs, epochs = trainer.epoch_inputs(), trainer.config.epochs
    return cuda_graph.plan(inputs, epochs_left=epochs, precision="fp32")


def test_the_cpu_trains_eagerly_and_says_why(iris: Any, graphs: Any) -> None:
    graphs("1")
    result = _fit(iris, DROPOUT_NET, {"optimizer": "adam", "batch_size": 8, "epochs": 3})
    assert result.step_mode == "eager: not on CUDA"
    assert _plan(_trainer(iris, {"optimizer": "adam", "epochs": 3})) == (None, result.step_mode)


def test_too_few_steps_to_pay_for_a_capture(iris: Any, graphs: Any) -> None:
    graphs("emulate")
    # 150 rows / 64 = 2 full batches an epoch, 3 epochs: 6 steps
    trainer = _trainer(iris, {"optimizer": "adam", "batch_size": 64, "epochs": 3})
    reason = _eligibility(trainer)
    assert reason is not None and "only 6 full-batch steps" in reason
    assert _plan(trainer) == (None, f"eager: {reason}")
    # batch gradient descent: one full batch an epoch, so it takes many epochs to qualify
    many = _trainer(iris, {"optimizer": "adam", "batch_size": "full", "epochs": 200})
    assert _eligibility(many) is None


def test_an_optimizer_not_made_for_capture_trains_eagerly(iris: Any, graphs: Any) -> None:
    graphs("emulate")
    trainer = _trainer(iris, {"optimizer": "adam", "batch_size": 8, "epochs": 5})
    assert _eligibility(trainer) is None
    trainer.optimizer = torch.optim.Adadelta(trainer.params)  # host-side step counter
    reason = _eligibility(trainer)
    assert reason == "Adadelta can't step under CUDA graph capture"


def test_the_switch_turns_the_path_off(iris: Any, graphs: Any) -> None:
    graphs("off")
    assert cuda_graph.switch() == "off"
    trainer = _trainer(iris, {"optimizer": "adam", "batch_size": 8, "epochs": 5})
    assert _eligibility(trainer) == "FITSERVE_CUDA_GRAPHS=0"
    graphs("emulate")
    assert cuda_graph.switch() == "emulate"
    assert _eligibility(trainer) is None


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.cuda
def test_dropout_masks_differ_between_replays() -> None:
    # the mechanism the CUDA-graph path relies on: the default CUDA generator is registered with the
    # capture, and each replay advances its Philox offset
    ones = torch.ones(4096, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mask = torch.nn.functional.dropout(ones, 0.5, training=True)
    masks = []
    for _ in range(3):
        graph.replay()
        masks.append(mask.clone())
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert 0.4 < float((masks[0] == 0).float().mean()) < 0.6


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(CASES))
def test_captured_training_matches_eager_on_cuda(iris: Any, graphs: Any, case: str) -> None:
    network, training = CASES[case]
    x, y = iris
    graphs("0")
    eager = models.fit(network, {**BASE, **training}, x, y, device="cuda")
    graphs("1")
    graphed = models.fit(network, {**BASE, **training}, x, y, device="cuda")
    assert graphed.step_mode == "cuda_graph", graphed.step_mode
    for ra, rb in zip(eager.history, graphed.history, strict=True):
        # same math and the same Philox offsets per step; kernels may differ in the last bits
        assert rb.loss == pytest.approx(ra.loss, rel=1e-3, abs=1e-6)
        assert rb.metrics == pytest.approx(ra.metrics, abs=0.02)


class _SyncingAdam(KerasAdam):
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if torch.cuda.is_current_stream_capturing():
            float(self.param_groups[0]["params"][0].sum())  # a host sync: capture must fail
        return super().step(closure)


@pytest.mark.cuda
def test_a_capture_failure_falls_back_to_eager_training(iris: Any, graphs: Any) -> None:
    graphs("1")
    x, y = iris
    trainer = Trainer(
        DROPOUT_NET, {**BASE, "optimizer": "adam", "batch_size": 8, "epochs": 4}, x, y,
        device="cuda",
    )  # fmt: skip
    trainer.optimizer = _SyncingAdam(
        trainer.params, lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
        weight_decay=None,
    )  # fmt: skip
    result = trainer.run()
    assert result.step_mode.startswith("eager (fallback): CUDA graph capture failed"), (
        result.step_mode
    )
    assert len(result.history) == 4 and np.isfinite(result.history[-1].loss)


def test_token_lists_take_the_graph_path_with_a_fixed_batch_and_train_as_eagerly(
    graphs: Any,
) -> None:
    # documents of uneven length (some empty): every graph step gathers a (batch, longest) id
    # matrix padded with -1 and encodes it into the same (batch, num_tokens) buffer
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 150)
    docs = [rng.integers(0, 30, int(rng.integers(0, 9))).tolist() for _ in y]
    network = {"layers": [{"type": "category_encoding", "num_tokens": 40, "output_mode": "count"},
                          *DROPOUT_NET["layers"][1:]]}  # fmt: skip
    training = {"loss": "sparse_categorical_crossentropy", "seed": 3, "optimizer": "rmsprop",
                "batch_size": 16, "epochs": 6, "validation_split": 0.2}  # fmt: skip
    graphs("0")
    eager = models.fit(network, training, docs, y, device="cpu")
    graphs("emulate")
    graphed = models.fit(network, training, docs, y, device="cpu")
    assert graphed.step_mode == "cuda_graph (emulated)"
    graph, _ = _plan(Trainer(network, training, docs, y, device="cpu"))
    assert graph is not None and graph.token_width == max(map(len, docs[:120]))
    _same_training(eager, graphed)
