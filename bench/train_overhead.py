"""How much does `models.fit` cost over a hand-written PyTorch loop?

Four ways to train the same network from the same initial weights:

- fit:        `models.fit` as the worker calls it (metrics, per-layer gradient norms, hooks)
- tight:      a hand-written loop: data as one tensor, randperm slicing, loss accumulated on the
              device and read once per epoch, torch's own multi-tensor Adam (foreach, eps 1e-7),
              same thread count as fit: the difference is fit's bookkeeping and its optimizer
              (Keras' Adam rule, models/optim.py)
- fit_fused:  `models.fit`'s loop with the optimizer fit built before it followed Keras' rules
              (torch's fused Adam, eps 1e-7) swapped in: the cost of the Keras rule, side by side
- plain:      the same tight loop written the way a PyTorch user would: nn.Sequential of
              nn.Linear/nn.ReLU/nn.Dropout (same initial weights) and torch.optim.Adam with
              Keras' epsilon but torch's default implementation for CPU tensors
- dataloader: the naive loop: TensorDataset + DataLoader(shuffle=True), torch's default Adam,
              `loss.item()` every step (for reference)

Workloads: the iris model (4-8-8-3, batch 10) and the Reuters-shaped dropout model
(10000-256-128-46, 8,982 rows of synthetic multi-hot data, batch 128).

The machine may be shared, so the runs are interleaved (one of each per round, in rotating order)
and the medians reported, in wall-clock and process CPU seconds.

    python bench/train_overhead.py [--rounds 5] [--iris-epochs 30] [--reuters-epochs 2]
        [--runners fit,tight,fit_fused]   (default: all five)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import models
from models.train import Trainer, cpu_threads_for

IRIS_NET = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
REUTERS_NET = {
    "layers": [
        {"type": "dense", "units": 256, "activation": "relu", "input_dim": 10000},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 128, "activation": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 46, "activation": "softmax"},
    ]
}


def iris_data() -> tuple[np.ndarray, np.ndarray]:
    """The real iris table shipped in app/data, standardized; species as sorted class indices."""
    path = Path(__file__).resolve().parents[1] / "app" / "data" / "iris.csv"
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str)
    x = raw[:, :4].astype(np.float32)
    _, y = np.unique(raw[:, 4], return_inverse=True)
    return (x - x.mean(0)) / x.std(0), y.astype(np.int64)


def reuters_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8,982 multi-hot rows over a 10,000-word vocabulary (~145 distinct words per newswire, as
    Reuters' mean), 46 topics; each topic prefers its own words so the task is learnable."""
    rng = np.random.default_rng(seed)
    rows, vocab, topics = 8982, 10000, 46
    y = rng.integers(0, topics, size=rows)
    x = np.zeros((rows, vocab), dtype=np.float32)
    topic_words = rng.integers(0, vocab, size=(topics, 40))
    for i in range(rows):
        x[i, rng.integers(0, vocab, size=120)] = 1.0
        x[i, topic_words[y[i], rng.integers(0, 40, size=25)]] = 1.0
    return x, y


def run_fit(net: dict, x: np.ndarray, y: np.ndarray, bs: int, epochs: int) -> float:
    cfg = {"loss": "categorical_crossentropy", "optimizer": "adam", "batch_size": bs,
           "epochs": epochs, "seed": 0}  # fmt: skip
    result = models.fit(net, cfg, x, y, device="cpu")
    return result.history[-1].loss


def run_fit_fused(net: dict, x: np.ndarray, y: np.ndarray, bs: int, epochs: int) -> float:
    cfg = {"loss": "categorical_crossentropy", "optimizer": "adam", "batch_size": bs,
           "epochs": epochs, "seed": 0}  # fmt: skip
    trainer = Trainer(net, cfg, x, y, device="cpu")
    trainer.optimizer = torch.optim.Adam(trainer.params, lr=1e-3, eps=1e-7, fused=True)
    return trainer.run().history[-1].loss


def run_tight(net: dict, x: np.ndarray, y: np.ndarray, bs: int, epochs: int) -> float:
    module = models.build(net, seed=0)
    params = list(module.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-7, foreach=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads_for(bs, sum(p.numel() for p in params)) or threads)
    try:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        n = xt.shape[0]
        g = torch.Generator().manual_seed(0)
        module.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            total = torch.zeros((), dtype=torch.float64)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                loss = F.cross_entropy(module.logits(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total.add_(loss.detach(), alpha=idx.shape[0])
            epoch_loss = total.item() / n
    finally:
        torch.set_num_threads(threads)
    return epoch_loss


def plain_module(net: dict) -> torch.nn.Sequential:
    """The network as stock PyTorch modules, with models.build's initial weights (logits out)."""
    built = models.build(net, seed=0)
    layers: list[torch.nn.Module] = []
    for spec, layer in zip(net["layers"], built.layers, strict=True):
        if spec["type"] == "dropout":
            layers.append(torch.nn.Dropout(spec["rate"]))
            continue
        linear = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(layer.weight)
            linear.bias.copy_(layer.bias)
        layers.append(linear)
        if spec.get("activation") == "relu":
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def run_plain(net: dict, x: np.ndarray, y: np.ndarray, bs: int, epochs: int) -> float:
    model = plain_module(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    threads = torch.get_num_threads()
    torch.set_num_threads(
        cpu_threads_for(bs, sum(p.numel() for p in model.parameters())) or threads
    )
    try:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        n = xt.shape[0]
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n)
            total = torch.zeros((), dtype=torch.float64)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total.add_(loss.detach(), alpha=idx.shape[0])
            epoch_loss = total.item() / n
    finally:
        torch.set_num_threads(threads)
    return epoch_loss


def run_dataloader(net: dict, x: np.ndarray, y: np.ndarray, bs: int, epochs: int) -> float:
    module = plain_module(net)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=bs, shuffle=True
    )
    module.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            loss = F.cross_entropy(module(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            count += len(xb)
    return total / count


RUNNERS: dict[str, Callable[..., float]] = {
    "fit": run_fit,
    "tight": run_tight,
    "fit_fused": run_fit_fused,
    "plain": run_plain,
    "dataloader": run_dataloader,
}


def measure(
    name: str,
    net: dict,
    x: np.ndarray,
    y: np.ndarray,
    bs: int,
    epochs: int,
    rounds: int,
    runners: list[str],
) -> dict:
    for key in runners:  # warm-up: first optimizer import, allocator, caches
        RUNNERS[key](net, x[: bs * 2], y[: bs * 2], bs, 1)
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        for key in order[r % len(order) :] + order[: r % len(order)]:  # rotate who goes first
            w0, c0 = time.perf_counter(), time.process_time()
            RUNNERS[key](net, x, y, bs, epochs)
            wall[key].append(time.perf_counter() - w0)
            cpu[key].append(time.process_time() - c0)
        print(
            f"  {name} round {r + 1}: " + ", ".join(f"{k} {wall[k][-1]:.2f}s" for k in order),
            flush=True,
        )
    steps = epochs * -(-x.shape[0] // bs)
    return {
        "name": name,
        "epochs": epochs,
        "steps": steps,
        "wall": {k: statistics.median(v) for k, v in wall.items()},
        "cpu": {k: statistics.median(v) for k, v in cpu.items()},
        "spread": {k: (min(v), max(v)) for k, v in wall.items()},
    }


def report(results: list[dict], rounds: int) -> str:
    runners = list(results[0]["wall"])
    # ratios against the tight loop (and the plain one) for whichever runners were measured
    ratios = [(a, b) for b in ("tight", "plain") for a in ("fit", "fit_fused")
              if a in runners and b in runners]  # fmt: skip
    lines = [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads available; "
        f"{rounds} interleaved rounds, medians (min-max)",
        "",
        "| workload | steps | "
        + " | ".join(f"{k} (s)" for k in runners)
        + " | "
        + " | ".join(f"{a} / {b} (wall) | {a} / {b} (CPU)" for a, b in ratios)
        + " |",
        "|---|---|" + "---|" * (len(runners) + 2 * len(ratios)),
    ]
    for r in results:
        w, c, spread = r["wall"], r["cpu"], r["spread"]
        cells = [f"{w[k]:.2f} ({spread[k][0]:.2f}-{spread[k][1]:.2f})" for k in runners]
        cells += [f"{w[a] / w[b]:.3f} | {c[a] / c[b]:.3f}" for a, b in ratios]
        lines.append(
            f"| {r['name']} ({r['epochs']} epochs) | {r['steps']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iris-epochs", type=int, default=30)
    parser.add_argument("--reuters-epochs", type=int, default=2)
    parser.add_argument("--only", choices=["iris", "reuters"])
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset")
    args = parser.parse_args()
    runners = args.runners.split(",")
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runners {sorted(unknown)}; choose from {', '.join(RUNNERS)}")
    results = []
    if args.only in (None, "iris"):
        x, y = iris_data()
        results.append(
            measure(
                "iris 4-8-8-3, batch 10",
                IRIS_NET,
                x,
                y,
                10,
                args.iris_epochs,
                args.rounds,
                runners,
            )  # fmt: skip
        )
        if args.only is None:  # the iris table survives an interrupted Reuters run
            print(report(results, args.rounds), flush=True)
    if args.only in (None, "reuters"):
        x, y = reuters_like()
        results.append(
            measure(
                "reuters-shaped 10000-256-128-46, batch 128",
                REUTERS_NET,
                x,
                y,
                128,
                args.reuters_epochs,
                args.rounds,
                runners,
            )  # fmt: skip
        )
    print(report(results, args.rounds))


if __name__ == "__main__":
    main()
