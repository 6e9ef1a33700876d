"""The course's Reuters model on token lists: epoch time and peak memory against the dense way.

Data: app/data/reuters_like.py (seed 20): 8,982 training wires over a 10,000-word vocabulary,
1,000 of them held out for validation as in the course. Model: category_encoding(10000,
multi_hot) -> Dense(256, relu) -> Dropout(0.5) -> Dense(128, relu) -> Dropout(0.5) ->
Dense(46, softmax); rmsprop, categorical cross-entropy, batch 512.

Training (each run in a fresh process, so its peak RSS is its own; runs interleaved, the order
rotating each round, because the machine is shared):

- fit-tokens:  models.fit on the token lists, as the worker runs it (each batch encoded on the fly)
- fit-dense:   models.fit on the pre-densified 8,982 x 10,000 float32 matrix (Dense input_dim 10000)
- tight-dense: a hand-written loop over the same pre-densified matrix: the same network and
               optimizer (models.build, models.optim.make_optimizer), randperm batches, the loss
               summed on the device, the 1,000 validation rows evaluated each epoch like fit's

Epoch time is the median over epochs 2.. of each run (epoch 1 pays allocator and optimizer set-up).

API upload (a fresh `uvicorn` process per upload, VmHWM read from /proc after the 201):

- sequences JSON: the POST /v1/datasets body app.data.reuters_like writes (token lists)
- dense Parquet:  the same wires as a 10,000-column float32 Parquet file (the densest form the API
                  takes at all: the dense CSV is ~180 MB, over the 64 MiB body cap), with the
                  cell and body limits raised so it is accepted

    python bench/reuters_tokens.py [--rounds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NUM_TOKENS = 10_000
VALIDATION_SPLIT = 0.1113  # the last 1,000 rows: split_rows floors 8,982 x 0.8887 = 7,982.3
HIDDEN: list[dict[str, Any]] = [
    {"type": "dense", "units": 256, "activation": "relu"},
    {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 128, "activation": "relu"},
    {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 46, "activation": "softmax"},
]
TOKEN_NET = {"layers": [{"type": "category_encoding", "num_tokens": NUM_TOKENS}, *HIDDEN]}
DENSE_NET = {"layers": [{**HIDDEN[0], "input_dim": NUM_TOKENS}, *HIDDEN[1:]]}
VARIANTS = ("fit-tokens", "fit-dense", "tight-dense")
# the floor under every run's peak: python, torch and models imported, the token arrays loaded
IMPORTS_ONLY = "imports-only"


def training(epochs: int) -> dict[str, Any]:
    return {"loss": "categorical_crossentropy", "optimizer": "rmsprop", "batch_size": 512,
            "epochs": epochs, "validation_split": VALIDATION_SPLIT, "seed": 1}  # fmt: skip


def densify(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Keras' Tokenizer.sequences_to_matrix(mode="binary"): the multi-hot matrix the course
    builds before training."""
    rows = offsets.shape[0] - 1
    x = np.zeros((rows, NUM_TOKENS), dtype=np.float32)
    x[np.repeat(np.arange(rows), np.diff(offsets)), values] = 1.0
    return x


# ---------------------------------------------------------------- one training run (a child)


def child(variant: str, data: Path, epochs: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import models
    from models.optim import make_optimizer
    from models.spec import TrainingConfig, split_rows
    from models.tokens import TokenLists
    from models.train import cpu_threads_for

    values, offsets = np.load(data / "values.npy"), np.load(data / "offsets.npy")
    y = np.load(data / "labels.npy")
    cfg = training(epochs)
    cpu0 = time.process_time()
    seconds: list[float] = []
    loss = 0.0
    if variant == IMPORTS_ONLY:
        pass
    elif variant == "fit-tokens":
        result = models.fit(
            TOKEN_NET, cfg, TokenLists.from_arrays(values, offsets), y, device="cpu"
        )
        seconds = [r.seconds for r in result.history]
        loss = result.history[-1].loss
    elif variant == "fit-dense":
        result = models.fit(DENSE_NET, cfg, densify(values, offsets), y, device="cpu")
        seconds = [r.seconds for r in result.history]
        loss = result.history[-1].loss
    else:
        x = torch.from_numpy(densify(values, offsets))
        yt = torch.from_numpy(y)
        n_train = split_rows(x.shape[0], VALIDATION_SPLIT)
        xs, ys, xv, yv = x[:n_train], yt[:n_train], x[n_train:], yt[n_train:]
        module = models.build(DENSE_NET, seed=0)
        params = list(module.parameters())
        opt = make_optimizer(TrainingConfig.model_validate(cfg).optimizer_config, params)
        threads = cpu_threads_for(512, sum(p.numel() for p in params))  # fit's rule
        if threads is not None:
            torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            t0 = time.perf_counter()
            module.train()
            perm = torch.randperm(n_train, generator=g)
            total = torch.zeros((), dtype=torch.float64)
            for start in range(0, n_train, 512):
                idx = perm[start : start + 512]
                loss_t = F.cross_entropy(module.logits(xs[idx]), ys[idx])
                opt.zero_grad(set_to_none=True)
                loss_t.backward()
                opt.step()
                total.add_(loss_t.detach(), alpha=idx.shape[0])
            module.eval()
            with torch.inference_mode():
                val = F.cross_entropy(module.logits(xv), yv)
            loss = total.item() / n_train
            float(val)
            seconds.append(time.perf_counter() - t0)
    cpu_per_epoch = (time.process_time() - cpu0) / epochs  # set-up included, as a user pays it
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
    peak_mb = _vm(os.getpid(), "VmHWM")
    return {"variant": variant, "seconds": seconds, "loss": loss, "peak_mb": peak_mb,
            "cpu_per_epoch": cpu_per_epoch}  # fmt: skip


# ---------------------------------------------------------------- the API during an upload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": f"sqlite:///{tmp}/api-{port}.db",
        "FITSERVE_MAX_BODY_BYTES": str(512 * 1024 * 1024),
        "FITSERVE_MAX_DATASET_CELLS": str(100_000_000),
    }
    code = (
        "import uvicorn; from app.main import create_app; "
        f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')"
    )
    migrate = (
        "import os; from app.db import upgrade_head; "
        "upgrade_head(os.environ['FITSERVE_DATABASE_URL'])"
    )
    subprocess.run([sys.executable, "-c", migrate], env=env, cwd=ROOT, check=True)
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def upload_peak(tmp: Path, what: str, payload: Path) -> dict[str, Any]:
    import httpx

    port = _free_port()
    server = _server(tmp, port)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            if server.poll() is not None:
                raise RuntimeError(f"the API server exited with {server.returncode}")
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        idle = _vm(server.pid, "VmHWM")
        t0 = time.perf_counter()
        if what == "sequences JSON":
            response = httpx.post(
                f"{base}/v1/datasets", content=payload.read_bytes(),
                headers={"content-type": "application/json"}, timeout=600,
            )  # fmt: skip
        else:
            response = httpx.post(
                f"{base}/v1/datasets", files={"file": ("dense.parquet", payload.read_bytes())},
                data={"target": "topic", "name": "dense"}, timeout=600,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        assert response.status_code == 201, response.text[:500]
        return {"what": what, "bytes": payload.stat().st_size, "idle_mb": idle,
                "peak_mb": _vm(server.pid, "VmHWM"), "seconds": seconds}  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)


# ---------------------------------------------------------------- the parent


def prepare(tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from app.data.reuters_like import generate

    data = generate()
    docs, labels = data.train.sequences, data.train.labels
    lengths = np.array([len(d) for d in docs])
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    values = np.fromiter((v for d in docs for v in d), dtype=np.int64, count=int(offsets[-1]))
    np.save(tmp / "values.npy", values)
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "labels.npy", np.array(labels, dtype=np.int64))
    body = {"name": "reuters-like", "task": "classification", "sequences": docs, "targets": labels}
    (tmp / "sequences.json").write_text(json.dumps(body, separators=(",", ":")))
    dense = densify(values, offsets)
    columns = {f"w{i}": pa.array(dense[:, i]) for i in range(NUM_TOKENS)}
    columns["topic"] = pa.array(labels)
    pq.write_table(pa.table(columns), tmp / "dense.parquet")
    csv_bytes = dense.shape[0] * (2 * NUM_TOKENS + 3)  # "0," per cell, a label and a newline
    (tmp / "dense_csv_bytes.txt").write_text(str(csv_bytes))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", choices=(*VARIANTS, IMPORTS_ONLY))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--skip-api", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.epochs)))
        return
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        prepare(tmp)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for variant in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", variant, "--data", str(tmp),
                     "--epochs", str(args.epochs)],
                    check=True, capture_output=True, text=True, cwd=ROOT,
                )  # fmt: skip
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs[variant].append(run)
                epoch = statistics.median(run["seconds"][1:] or run["seconds"])
                seconds = [round(s, 2) for s in run["seconds"]]
                print(
                    f"round {r + 1} {variant}: epochs {seconds} (median {epoch:.2f} s), "
                    f"peak RSS {run['peak_mb']:.0f} MB",
                    flush=True,
                )
        floor = subprocess.run(
            [sys.executable, __file__, "--child", IMPORTS_ONLY, "--data", str(tmp)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        floor_mb = json.loads(floor.stdout.strip().splitlines()[-1])["peak_mb"]
        print(f"imports only: peak RSS {floor_mb:.0f} MB")
        uploads = []
        if not args.skip_api:
            uploads = [upload_peak(tmp, "sequences JSON", tmp / "sequences.json"),
                       upload_peak(tmp, "dense Parquet", tmp / "dense.parquet")]  # fmt: skip
            for u in uploads:
                print(
                    f"upload {u['what']}: {u['bytes'] / 1e6:.1f} MB body, API peak RSS "
                    f"{u['peak_mb']:.0f} MB (idle {u['idle_mb']:.0f} MB), {u['seconds']:.1f} s"
                )
        csv_bytes = int((tmp / "dense_csv_bytes.txt").read_text())
        print(report(runs, uploads, csv_bytes, floor_mb, args))


def report(
    runs: dict[str, list[dict[str, Any]]],
    uploads: list[dict[str, Any]],
    csv_bytes: int,
    floor_mb: float,
    args: Any,
) -> str:
    def epochs(v: str) -> list[float]:
        return [statistics.median(r["seconds"][1:] or r["seconds"]) for r in runs[v]]

    ref = statistics.median(epochs("tight-dense"))
    cpu_ref = statistics.median(r["cpu_per_epoch"] for r in runs["tight-dense"])
    lines = [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other developers' test runs; {args.rounds} rounds x "
        f"{args.epochs} epochs, each run a fresh process, order rotating",
        "",
        "| run | epoch s (median of rounds) | spread (min-max) | vs tight-dense "
        "| CPU s per epoch | vs tight-dense (CPU) | peak RSS MB (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        e = epochs(v)
        peak = statistics.median(r["peak_mb"] for r in runs[v])
        cpu = statistics.median(r["cpu_per_epoch"] for r in runs[v])
        lines.append(
            f"| {v} | {statistics.median(e):.2f} | {min(e):.2f}-{max(e):.2f} "
            f"| {statistics.median(e) / ref:.2f}x | {cpu:.2f} | {cpu / cpu_ref:.2f}x | {peak:.0f} |"
        )
    lines.append(f"| (imports and arrays only) | | | | | | {floor_mb:.0f} |")
    if uploads:
        lines += [
            "",
            "| upload | body MB | API peak RSS MB (idle) | seconds |",
            "|---|---|---|---|",
        ]
        for u in uploads:
            lines.append(f"| {u['what']} | {u['bytes'] / 1e6:.1f} | {u['peak_mb']:.0f} "
                         f"({u['idle_mb']:.0f}) | {u['seconds']:.1f} |")  # fmt: skip
        lines.append(
            f"| dense CSV (not sent) | {csv_bytes / 1e6:.0f} | over the 64 MiB body cap: 413 | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
