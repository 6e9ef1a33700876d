"""The whole GPU measurement in one script (≤ 5 minutes on one H100/H200), for bench/RESULTS.md.

Run on a machine with a CUDA GPU, from the repository root, with only the repo and its venv:

    .venv/bin/python bench/gpu.py [--rounds 3] [--skip-tests]

It prints, as Markdown to paste into bench/RESULTS.md:

0. the CUDA tests of tests/speed (graph capture, dropout masks per replay, capture-failure
   fallback, precision) — they skip on machines without a GPU, so this is where they run;
1. CUDA start-up in a fresh process (checks models/placement.py's GPU_STARTUP_SECONDS bound) and
   where `device="auto"` puts the three workloads;
2. training steps/s on CUDA for iris (4-8-8-3, batch 10), the Reuters-shaped dropout model
   (10000-256-128-46, batch 128, 8,982 rows) and the large MLP (1024-4x4096-10, batch 4096):
   models.fit vs the naive DataLoader loop vs the tight loop vs a hand-written CUDA-graph replay
   (bench/train_speed.py's code), fp32, interleaved rounds, medians of the training loop's time;
3. the large MLP in fp32, tf32 and bf16 through fit and the tight loop, and each one's speed-up
   over its own fp32;
4. a real job end to end through the queue on CUDA: a SQLite file, `fitserve serve --workers 0`
   and one `fitserve worker --device cuda` process; the iris job submitted over HTTP, its device
   and precision as recorded on the job, submit-to-running latency, and its steps/s through the
   worker (epoch time from its metrics rows, and whole-job time) against the hand-written replay.

Acceptance (issue 7): iris and Reuters through fit >= 0.8x the hand-written replay's steps/s;
the MLP through fit >= 0.9x the tight loop in fp32; tf32 or bf16 >= 3x fit's own fp32 rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from bench import train_speed as ts  # noqa: E402
from models import placement  # noqa: E402
from models.spec import NetworkSpec, TrainingConfig  # noqa: E402

IRIS_TRAINING = {"loss": "sparse_categorical_crossentropy", "optimizer": "adam", "batch_size": 10,
                 "epochs": 100, "seed": 0}  # fmt: skip


# The jobs end_to_end runs: iris in fp32 and tf32, and with batch/layer normalization in bf16 (the
# statistics in float32 under bf16 autocast, models/layers.py).
IRIS_NORM_NET = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "batch_normalization"},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "layer_normalization"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
E2E_JOBS = [
    ("iris 4-8-8-3", ts.IRIS_NET, "fp32"),
    ("iris 4-8-8-3", ts.IRIS_NET, "tf32"),
    ("iris 4-8-BN-8-LN-3", IRIS_NORM_NET, "bf16"),
]


def say(line: str = "") -> None:
    print(line, flush=True)


def cuda_problem() -> str | None:
    """Why no CUDA device is usable here, or None when one is."""
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build; install a CUDA build of the same "
            "version into .venv (README, 'On a GPU machine')"
        )
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"
    return None


def cuda_tests() -> str:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "FITSERVE_REQUIRE_CUDA": "1"},
    )  # fmt: skip
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-3:]
    return f"exit {proc.returncode} in {time.perf_counter() - started:.0f} s: " + " / ".join(tail)


STARTUP = r"""
import time, json
t0 = time.perf_counter()
import torch
t_import = time.perf_counter()
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t_context = time.perf_counter()
import numpy as np, models
x = np.random.default_rng(0).standard_normal((150, 4), dtype=np.float32)
y = np.random.default_rng(0).integers(0, 3, 150)
net = {"layers": [{"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
                  {"type": "dense", "units": 3, "activation": "softmax"}]}
t_fit = time.perf_counter()
models.fit(net, {"loss": "sparse_categorical_crossentropy", "optimizer": "adam",
                 "batch_size": 10, "epochs": 1}, x, y, device="cuda")
torch.cuda.synchronize()
print(json.dumps({"import": t_import - t0, "context": t_context - t_import,
                  "first_fit": time.perf_counter() - t_fit}))
"""


def startup() -> list[str]:
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", STARTUP], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, check=True)  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    context = statistics.median(r["context"] for r in runs)
    first = statistics.median(r["first_fit"] for r in runs)
    imported = statistics.median(r["import"] for r in runs)
    ok = "holds" if context >= placement.GPU_STARTUP_SECONDS else "does NOT hold: lower it"
    return [
        f"CUDA start-up in a fresh process (median of 3): context {context:.2f} s, then a first "
        f"1-epoch fit {first:.2f} s (torch import {imported:.2f} s not counted). "
        f"models/placement.py assumes >= {placement.GPU_STARTUP_SECONDS} s: {ok}.",
    ]


def auto_placement(workloads: list[ts.Workload]) -> list[str]:
    lines = []
    for w in workloads:
        choice = placement.choose(
            NetworkSpec.model_validate(w.network),
            TrainingConfig.model_validate(ts.training(w)),
            n_features=w.x.shape[1],
            n_train=len(w.x),
            batch_size=w.batch_size,
            epochs=w.epochs,
            n_params=models.count_params(w.network),
            cuda_available=True,
        )
        lines.append(f"- device=auto, {w.name}, {w.epochs} epochs: {choice.reason}")
    return lines


def gpu_workloads(smoke: bool = False) -> list[ts.Workload]:
    ix, iy = ts.iris_data()
    if smoke:  # --cpu-smoke: the same code paths at sizes a CPU finishes in seconds
        rx, ry = ts.reuters_like(512)
        mx, my = ts.mlp_data(512)
        mlp = {"layers": [*ts.MLP_NET["layers"][:2], ts.MLP_NET["layers"][-1]]}
        return [
            ts.Workload("iris 4-8-8-3, batch 10", ts.IRIS_NET, ix, iy, 10, 5),
            ts.Workload("reuters 10000-256-128-46, batch 128", ts.REUTERS_NET, rx, ry, 128, 1),
            ts.Workload("mlp 1024-2x4096-10, batch 256 (smoke)", mlp, mx, my, 256, 1),
        ]
    rx, ry = ts.reuters_like(8982)
    mx, my = ts.mlp_data(4 * 4096)
    return [
        ts.Workload("iris 4-8-8-3, batch 10", ts.IRIS_NET, ix, iy, 10, 100),
        ts.Workload("reuters 10000-256-128-46, batch 128", ts.REUTERS_NET, rx, ry, 128, 3),
        ts.Workload("mlp 1024-4x4096-10, batch 4096", ts.MLP_NET, mx, my, 4096, 5),
    ]


def training_table(
    workloads: list[ts.Workload], rounds: int, dev: torch.device
) -> tuple[list[str], dict[str, Any]]:
    ref = "graph" if dev.type == "cuda" else "tight"
    methods = ["fit", "naive", "tight"] + (["graph"] if dev.type == "cuda" else [])
    results = {w.name: ts.interleaved(w, methods, dev, rounds, log=say) for w in workloads}
    lines = ts.table(results, methods, ref)
    lines.append("")
    for w in workloads[:2]:
        r = results[w.name]
        ratio = r["fit"].steps_per_second / r[ref].steps_per_second
        what = "hand-written graph replay" if ref == "graph" else "tight loop (no GPU: smoke)"
        lines.append(f"- {w.name}: fit / {what} = {ratio:.2f}x (needs >= 0.8)")
    mlp = results[workloads[2].name]
    ratio = mlp["fit"].steps_per_second / mlp["tight"].steps_per_second
    lines.append(f"- {workloads[2].name}, fp32: fit / tight loop = {ratio:.2f}x (needs >= 0.9)")
    return lines, results


def precision_table(w: ts.Workload, rounds: int, dev: torch.device) -> list[str]:
    rates: dict[tuple[str, str], float] = {}
    for precision in ("fp32", "tf32", "bf16"):
        got = ts.interleaved(w, ["fit", "tight"], dev, rounds, precision, log=say)
        for m, t in got.items():
            rates[(m, precision)] = t.steps_per_second
    # the model's multiply-adds: 6 per parameter per row (forward + backward), per step
    flops = 6 * models.count_params(w.network) * w.batch_size
    lines = [f"| {w.name} | fit steps/s | x own fp32 | fit TFLOP/s | tight steps/s | x own fp32 |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in ("fp32", "tf32", "bf16"):
        f, t = rates[("fit", p)], rates[("tight", p)]
        f32, t32 = rates[("fit", "fp32")], rates[("tight", "fp32")]
        lines.append(f"| {p} | {f:,.1f} | {f / f32:.2f} | {f * flops / 1e12:.0f} | {t:,.1f} | "
                     f"{t / t32:.2f} |")  # fmt: skip
    best = max(rates[("fit", "tf32")], rates[("fit", "bf16")]) / rates[("fit", "fp32")]
    lines.append("")
    lines.append(f"- fit, best of tf32/bf16 over its own fp32: {best:.2f}x (needs >= 3)")
    return lines


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def end_to_end(graph_iris_rate: float | None, device: str = "cuda") -> list[str]:
    """The E2E_JOBS over HTTP through one `fitserve worker --device cuda` on a SQLite file;
    raises when one does not succeed or, on CUDA, records another device or precision."""
    fitserve = shutil.which("fitserve", path=str(Path(sys.executable).parent)) or "fitserve"
    tmp = Path(tempfile.mkdtemp(prefix="fitserve-gpu-"))
    db = tmp / "gpu.db"
    env = {**os.environ, "FITSERVE_DATABASE_URL": f"sqlite:///{db}"}
    subprocess.run([fitserve, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    port = _port()
    procs = [
        subprocess.Popen([fitserve, "serve", "--workers", "0", "--port", str(port)], env=env,
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([fitserve, "worker", "--device", device], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=open(tmp / "worker.log", "w")),
    ]  # fmt: skip
    lines: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("fitserve serve did not answer within 60 s")
                time.sleep(0.3)
            time.sleep(3)  # let the worker probe its device and reach its idle poll
            rows = []
            for label, network, precision in E2E_JOBS:
                spec = {"name": f"{label} on {device}, {precision}", "dataset": "iris",
                        "network": network,
                        "training": {**IRIS_TRAINING, "precision": precision}}  # fmt: skip
                submitted = time.time()
                job = http.post("/v1/jobs", json=spec)
                assert job.status_code == 202, job.text
                job_id = job.json()["id"]
                deadline = time.monotonic() + 180
                while True:
                    body = http.get(f"/v1/jobs/{job_id}").json()
                    if body["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"job {job_id} still {body['status']} after 180 s")
                    time.sleep(0.2)
                if body["status"] != "succeeded":
                    raise RuntimeError(f"job {job_id} {body['status']}: {body.get('error')}")
                metrics = http.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
                with sqlite3.connect(db) as con:
                    ran_on, recorded, mode, why = con.execute(
                        "SELECT device, precision, step_mode, step_mode_reason FROM jobs "
                        "WHERE id = ?", (job_id,)
                    ).fetchone()  # fmt: skip
                if device == "cuda" and (not ran_on.startswith("cuda") or recorded != precision):
                    raise RuntimeError(f"job {job_id} ({label}, {precision}) recorded device "
                                       f"{ran_on}, precision {recorded}")  # fmt: skip
                steps_per_epoch = -(-150 // IRIS_TRAINING["batch_size"])
                epoch_s = statistics.median(m["seconds"] for m in metrics[1:])  # 1st: capture
                whole = _ts(body["finished_at"]) - _ts(body["started_at"])
                predict = http.post(f"/v1/models/{body['model_id']}/predict",
                                    json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})  # fmt: skip
                rows.append((f"{label}, {precision}", ran_on, recorded,
                             mode if why is None else f"{mode}: {why}",
                             _ts(body["started_at"]) - submitted,
                             steps_per_epoch / epoch_s,
                             IRIS_TRAINING["epochs"] * steps_per_epoch / whole,
                             metrics[-1].get("accuracy"), predict.status_code))  # fmt: skip
        lines += ["| job | device (recorded) | precision (recorded) | step mode (recorded) "
                  "| submit to running s "
                  "| steps/s, epoch loop | steps/s, whole job | final accuracy | predict |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for p, ran_on, recorded, mode, latency, loop_rate, whole_rate, acc, status in rows:
            lines.append(f"| {p}, batch 10, 100 epochs | {ran_on} | {recorded} | {mode} | "
                         f"{latency:.2f} | {loop_rate:,.0f} | {whole_rate:,.0f} | {acc:.3f} | "
                         f"{status} |")  # fmt: skip
        if graph_iris_rate:
            ratio = rows[0][5] / graph_iris_rate
            lines.append("")
            lines.append(f"- through the worker (fp32, epoch loop) / hand-written graph replay: "
                         f"{ratio:.2f}x (needs >= 0.8); the whole-job rate adds the per-epoch "
                         "metrics row + checkpoint the worker writes")  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--check-cuda",
        action="store_true",
        help="only check that a CUDA device is usable: exit 0, or 2 saying why not",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the jobs through the queue fail or record another device or precision "
        "(make test-gpu)",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="check this script's plumbing on a CPU at tiny sizes (no GPU figures)",
    )
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if args.check_cuda or not smoke:
        problem = cuda_problem()
        if problem:
            say(f"No usable CUDA device: {problem}. Nothing measured.")
            sys.exit(2)
        if args.check_cuda:
            say(f"CUDA device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
            return
    dev = torch.device("cpu" if smoke else "cuda")
    began = time.perf_counter()
    if smoke:
        out = ["### CPU SMOKE RUN of bench/gpu.py: plumbing only, not GPU figures", ""]
    else:
        props = torch.cuda.get_device_properties(0)
        out = [f"### GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), "
               f"torch {torch.__version__}, CUDA {torch.version.cuda}; "
               f"{datetime.now():%Y-%m-%d %H:%M} local; "
               f"{args.rounds} interleaved rounds, medians", ""]  # fmt: skip
    if not args.skip_tests:
        out += [f"tests/speed on this GPU: {cuda_tests()}", ""]
    if not smoke:
        out += startup()
    workloads = gpu_workloads(smoke)
    out += ["", *auto_placement(workloads), ""]
    say("training table ...")
    lines, results = training_table(workloads, args.rounds, dev)
    out += [f"Training steps/s on {dev.type} (the training loop; set-up excluded):", "", *lines,
            ""]  # fmt: skip
    say("precision table ...")
    out += ["Large MLP by precision:", "", *precision_table(workloads[2], args.rounds, dev), ""]
    say("end to end through the queue ...")
    ref = "tight" if smoke else "graph"
    graph_rate = results[workloads[0].name][ref].steps_per_second
    failed = None
    try:
        e2e = end_to_end(graph_rate, device=dev.type)
        out += [f"A real job through the queue on {dev.type}:", "", *e2e, ""]
    except Exception as exc:  # noqa: BLE001 - report it with the rest of the figures
        failed = f"End to end through the queue FAILED: {type(exc).__name__}: {exc}"
        out += [failed, ""]
    out.append(f"(bench/gpu.py took {time.perf_counter() - began:.0f} s)")
    say("\n" + "\n".join(out))
    if failed and args.strict:
        say(failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
