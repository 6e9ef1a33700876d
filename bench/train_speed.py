"""Training steps/s: `models.fit` against a naive DataLoader loop, a tight loop and (on CUDA) a
hand-written CUDA-graph replay, for three networks.

Workloads (Keras-style specs, Adam lr 1e-3 eps 1e-7, sparse categorical cross-entropy):

- iris:    4-8-8-3, batch 10, the real 150 rows
- reuters: 10000-256-128-46 with dropout 0.5 after each hidden layer, batch 128, synthetic
           multi-hot rows shaped like Keras' Reuters newswires (8,982 on CUDA; fewer on the CPU)
- mlp:     1024-4096-4096-4096-4096-10, batch 4096, random rows

Methods (each builds its network from the spec with the same seed, and its time includes its own
set-up — data to the device, building, the optimizer — as a user would pay it):

- fit:      `models.fit(...)` exactly as the worker calls it (metrics, per-layer gradient norms,
            and on CUDA the CUDA-graph path of models/cuda_graph.py)
- naive:    TensorDataset + DataLoader(shuffle=True), torch's default Adam, `loss.item()` a step
- tight:    data as device tensors, randperm slices, the optimizer fit builds (fused Adam), the
            loss summed on the device and read once an epoch; CPU thread count as fit sets it
- graph:    (CUDA only) the tight loop's full-batch step captured by hand in one CUDA graph with
            a capturable Adam and replayed; full batches only

Runs are interleaved (one of each method per round, the order rotating) and the medians
reported, because the machine may be shared. Steps/s = optimizer steps / wall seconds.

    python bench/train_speed.py [--rounds 3]           # the CPU table for bench/RESULTS.md
    (bench/gpu.py runs the same code on CUDA)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402


def _dense(units: int, activation: str, **kw: Any) -> dict[str, Any]:
    return {"type": "dense", "units": units, "activation": activation, **kw}


IRIS_NET = {"layers": [_dense(8, "relu", input_dim=4), _dense(8, "relu"), _dense(3, "softmax")]}
REUTERS_NET = {
    "layers": [
        _dense(256, "relu", input_dim=10000),
        {"type": "dropout", "rate": 0.5},
        _dense(128, "relu"),
        {"type": "dropout", "rate": 0.5},
        _dense(46, "softmax"),
    ]
}
MLP_NET = {
    "layers": [_dense(4096, "relu", input_dim=1024)]
    + [_dense(4096, "relu") for _ in range(3)]
    + [_dense(10, "softmax")]
}


@dataclass
class Workload:
    name: str
    network: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    epochs: int

    @property
    def steps(self) -> int:
        return self.epochs * math.ceil(len(self.x) / self.batch_size)

    @property
    def full_steps(self) -> int:
        return self.epochs * (len(self.x) // self.batch_size)


def iris_data() -> tuple[np.ndarray, np.ndarray]:
    """The real iris table shipped in app/data, standardized; species as sorted class indices."""
    path = Path(__file__).resolve().parents[1] / "app" / "data" / "iris.csv"
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str)
    x = raw[:, :4].astype(np.float32)
    _, y = np.unique(raw[:, 4], return_inverse=True)
    return (x - x.mean(0)) / x.std(0), y.astype(np.int64)


def reuters_like(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot rows over a 10,000-word vocabulary (~145 words a newswire, Reuters' mean),
    46 topics, each topic favouring its own words so that there is something to learn."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 46, size=rows)
    x = np.zeros((rows, 10000), dtype=np.float32)
    topic_words = rng.integers(0, 10000, size=(46, 40))
    r = np.repeat(np.arange(rows), 120)
    x[r, rng.integers(0, 10000, size=rows * 120)] = 1.0
    r = np.repeat(np.arange(rows), 25)
    x[r, topic_words[np.repeat(y, 25), rng.integers(0, 40, size=rows * 25)]] = 1.0
    return x, y.astype(np.int64)


def mlp_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 1024), dtype=np.float32)
    return x, rng.integers(0, 10, size=rows).astype(np.int64)


def training(w: Workload, precision: str = "fp32") -> dict[str, Any]:
    return {"loss": "sparse_categorical_crossentropy", "optimizer": "adam",
            "batch_size": w.batch_size, "epochs": w.epochs, "seed": 0,
            "precision": precision}  # fmt: skip


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _threads(w: Workload) -> int | None:
    # the rule fit applies on the CPU (models/train.py _SINGLE_THREAD_FLOPS)
    return 1 if 6 * w.batch_size * models.count_params(w.network) < (1 << 23) else None


def _autocast(dev: torch.device, precision: str) -> Any:
    if dev.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class _Precision:
    """TF32 on for tf32 and bf16 (as fit does), restored after."""

    def __init__(self, dev: torch.device, precision: str) -> None:
        self.on = dev.type == "cuda" and precision != "fp32"

    def __enter__(self) -> None:
        self.previous = torch.backends.cuda.matmul.allow_tf32
        if self.on:
            torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.previous


Run = tuple[int, float, str]  # (optimizer steps, seconds of the training loop alone, note)


def run_fit(w: Workload, dev: torch.device, precision: str = "fp32") -> Run:
    result = models.fit(w.network, training(w, precision), w.x, w.y, device=str(dev))
    assert math.isfinite(result.history[-1].loss)
    loop = sum(r.seconds for r in result.history)  # each epoch's steps, up to its host sync
    return w.steps, loop, result.step_mode


def run_tight(w: Workload, dev: torch.device, precision: str = "fp32") -> Run:
    previous = torch.get_num_threads()
    threads = _threads(w) if dev.type == "cpu" else None
    if threads:
        torch.set_num_threads(threads)
    try:
        module = models.build(w.network, seed=0).to(dev)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=1e-7, fused=True)
        x, y = torch.from_numpy(w.x).to(dev), torch.from_numpy(w.y).to(dev)
        n, bs = x.shape[0], w.batch_size
        g = torch.Generator(device=dev).manual_seed(0)
        module.train()
        _sync(dev)
        t0 = time.perf_counter()
        with _Precision(dev, precision):
            for _ in range(w.epochs):
                total = torch.zeros((), device=dev)
                perm = torch.randperm(n, generator=g, device=dev)
                for start in range(0, n, bs):
                    idx = perm[start : start + bs]
                    with _autocast(dev, precision):
                        loss = F.cross_entropy(module.logits(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.detach()
                assert math.isfinite(float(total))  # the epoch's one host sync
        _sync(dev)
        loop = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    return w.steps, loop, ""


def run_naive(w: Workload, dev: torch.device, precision: str = "fp32") -> Run:
    module = models.build(w.network, seed=0).to(dev)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=1e-7)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(w.x), torch.from_numpy(w.y)),
        batch_size=w.batch_size,
        shuffle=True,
    )
    module.train()
    _sync(dev)
    t0 = time.perf_counter()
    with _Precision(dev, precision):
        for _ in range(w.epochs):
            for xb, yb in loader:
                xb, yb = xb.to(dev), yb.to(dev)
                with _autocast(dev, precision):
                    loss = F.cross_entropy(module.logits(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                assert math.isfinite(loss.item())
    _sync(dev)
    return w.steps, time.perf_counter() - t0, ""


def run_graph(w: Workload, dev: torch.device, precision: str = "fp32") -> Run:
    """The hand-written CUDA-graph replay (torch docs' whole-network capture), full batches."""
    assert dev.type == "cuda", "CUDA graphs need a GPU"
    module = models.build(w.network, seed=0).to(dev)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=1e-7, capturable=True)
    x, y = torch.from_numpy(w.x).to(dev), torch.from_numpy(w.y).to(dev)
    n, bs = x.shape[0], w.batch_size
    xs, ys = x[:bs].clone(), y[:bs].clone()
    total = torch.zeros((), device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        if precision == "bf16"
        else nullcontext()
    )

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(module.logits(xs), ys)
        loss.backward()
        opt.step()
        total.add_(loss.detach())

    module.train()
    _sync(dev)
    t0 = time.perf_counter()
    with _Precision(dev, precision):
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up steps count: they train like the others
                opt.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream(dev).wait_stream(side)
        opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        steps = 3
        for _ in range(w.epochs):
            perm = torch.randperm(n, generator=g, device=dev)
            for start in range(0, n - bs + 1, bs):
                idx = perm[start : start + bs]
                torch.index_select(x, 0, idx, out=xs)
                torch.index_select(y, 0, idx, out=ys)
                graph.replay()
                steps += 1
            assert math.isfinite(float(total))
    _sync(dev)
    return steps, time.perf_counter() - t0, ""


METHODS: dict[str, Callable[..., Run]] = {
    "fit": run_fit,
    "naive": run_naive,
    "tight": run_tight,
    "graph": run_graph,
}


@dataclass
class Timing:
    seconds: list[float]  # the whole call: set-up and training
    loop_seconds: list[float]  # the training loop alone
    steps: int
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def loop_median(self) -> float:
        return statistics.median(self.loop_seconds)

    @property
    def steps_per_second(self) -> float:
        """Steps per second of the training loop (set-up excluded)."""
        return self.steps / self.loop_median


def interleaved(
    w: Workload,
    methods: list[str],
    dev: torch.device,
    rounds: int,
    precision: str = "fp32",
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Timing]:
    """Each method once a round, the order rotating; one unmeasured warm-up run of each first."""
    timings: dict[str, Timing] = {}
    for m in methods:
        METHODS[m](w, dev, precision)
    for r in range(rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            _sync(dev)
            t0 = time.perf_counter()
            steps, loop, note = METHODS[m](w, dev, precision)
            seconds = time.perf_counter() - t0
            timing = timings.setdefault(m, Timing([], [], steps, note))
            timing.seconds.append(seconds)
            timing.loop_seconds.append(loop)
            log(f"  {w.name} {precision} round {r + 1} {m}: {steps / loop:,.2f} steps/s "
                f"({seconds:.2f} s with set-up)")  # fmt: skip
    return timings


def _rate(steps_per_second: float) -> str:
    return f"{steps_per_second:,.0f}" if steps_per_second >= 10 else f"{steps_per_second:.2f}"


def table(results: dict[str, dict[str, Timing]], methods: list[str], ref: str) -> list[str]:
    """Steps/s of each method's training loop; fit's time over `ref`'s, loop and whole call."""
    head = " | ".join(f"{m} steps/s" for m in methods)
    lines = [f"| workload | {head} | fit / {ref} steps/s | fit / {ref} time, loop "
             f"| fit / {ref} time, whole call | fit's step path |",
             "|---|" + "---:|" * (len(methods) + 3) + "---|"]  # fmt: skip
    for name, timings in results.items():
        cells = " | ".join(_rate(timings[m].steps_per_second) for m in methods)
        fit, other = timings["fit"], timings[ref]
        lines.append(f"| {name} | {cells} | {fit.steps_per_second / other.steps_per_second:.2f} | "
                     f"{fit.loop_median / other.loop_median:.2f} | {fit.median / other.median:.2f} "
                     f"| {fit.note} |")  # fmt: skip
    return lines


def cpu_workloads(scale: float = 1.0) -> list[Workload]:
    ix, iy = iris_data()
    rx, ry = reuters_like(int(2048 * scale))
    # At batch 4096 one step of the MLP is 1.3 TFLOP: minutes on a shared 2-core machine. The
    # CPU row runs it at batch 256 (a step is still ~84 GFLOP); bench/gpu.py runs batch 4096.
    mx, my = mlp_data(256)
    return [
        Workload("iris 4-8-8-3, batch 10", IRIS_NET, ix, iy, 10, 40),
        Workload(
            f"reuters 10000-256-128-46, batch 128, {len(rx)} rows", REUTERS_NET, rx, ry, 128, 1
        ),  # fmt: skip
        Workload("mlp 1024-4x4096-10, batch 256", MLP_NET, mx, my, 256, 1),
    ]


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"(torch threads {torch.get_num_threads()}), torch {torch.__version__}, "
            f"Python {platform.python_version()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
            f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=None, help="run one workload (iris, reuters, mlp)")
    args = parser.parse_args()
    dev = torch.device("cpu")
    methods = ["fit", "naive", "tight"]
    results = {}
    for w in cpu_workloads():
        if args.only and not w.name.startswith(args.only):
            continue
        results[w.name] = interleaved(w, methods, dev, args.rounds)
    print(f"\nCPU: {machine()}; {args.rounds} interleaved rounds, medians\n")
    print("\n".join(table(results, methods, "tight")))


if __name__ == "__main__":
    main()
