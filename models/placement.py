"""Where `device="auto"` trains: the CPU when the whole run would be over before a GPU is ready.

A CUDA run pays a fixed start-up before its first step — context creation, loading the kernels it
uses, cuBLAS workspaces, the graph capture — and for a network like iris (139 parameters) the
whole run on the CPU takes less than that. The rule is deliberately one-sided: the CPU is chosen
only when a short *measured* probe of CPU steps, times the run's step count, comes in under
GPU_STARTUP_SECONDS, a lower bound of that start-up; the GPU's per-step speed never enters, so
the rule can't pick the CPU for a run the GPU would finish first (bench/gpu.py measures the real
start-up on a GPU machine, to check the bound).

Networks whose step is large (PROBE_MAX_FLOPS) skip the probe: the GPU is chosen outright.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from models.build import build
from models.optim import make_optimizer
from models.spec import NetworkSpec, TrainingConfig

# Seconds from a fresh training process to its first CUDA step; a lower bound (context creation
# alone is typically 0.1-0.5 s, plus lazy kernel loading and capture). Checked by bench/gpu.py.
GPU_STARTUP_SECONDS = 0.5
# Steps above this many multiply-adds (6 * batch * params) take milliseconds each on a CPU:
# any run of them that the CPU finishes within GPU_STARTUP_SECONDS is a handful of steps.
PROBE_MAX_FLOPS = 2e8
_SINGLE_THREAD_FLOPS = 1 << 23
_PROBE_SECONDS = 0.05  # wall-clock budget of the probe
_PROBE_MAX_STEPS = 20
_PROBE_DOCUMENT_TOKENS = 128  # ids per probe document for a category_encoding network


@dataclass(frozen=True)
class Placement:
    device: torch.device
    reason: str
    cpu_step_seconds: float | None = None  # the probe's measurement, when it ran
    steps: int | None = None


def run_steps(n_train: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n_train / batch_size) if n_train else 0


def decide(*, cpu_step_seconds: float, steps: int) -> bool:
    """True: the CPU finishes all `steps` before a GPU would have started."""
    return cpu_step_seconds * steps < GPU_STARTUP_SECONDS


def probe_cpu_step(
    network: NetworkSpec,
    training: TrainingConfig,
    *,
    n_features: int,
    batch_size: int,
    threads: int | None,
) -> float:
    """Median seconds of one CPU training step (forward, backward, optimizer) of this network at
    this batch size, on a throwaway copy with random inputs."""
    module = build(network, seed=0)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = make_optimizer(training.optimizer_config, params)
    g = torch.Generator().manual_seed(0)
    encoding = network.encoding
    xb = (
        # documents of _PROBE_DOCUMENT_TOKENS ids: the encoding's cost is the dense batch it fills
        torch.randint(0, encoding.num_tokens, (batch_size, _PROBE_DOCUMENT_TOKENS), generator=g)
        if encoding is not None
        else torch.randn(batch_size, n_features, generator=g)
    )
    previous = torch.get_num_threads()
    times: list[float] = []
    # dropout in the probe draws from the global generator: leave the caller's stream untouched
    with torch.random.fork_rng(devices=[]):
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            module.train()
            deadline = time.perf_counter() + _PROBE_SECONDS
            for i in range(_PROBE_MAX_STEPS + 2):
                t0 = time.perf_counter()
                loss = module.logits(xb).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i >= 2:  # the first steps allocate the optimizer state
                    times.append(time.perf_counter() - t0)
                if len(times) >= 3 and time.perf_counter() > deadline:
                    break
        finally:
            torch.set_num_threads(previous)
    times.sort()
    return times[len(times) // 2]


def choose(
    network: NetworkSpec,
    training: TrainingConfig,
    *,
    n_features: int,
    n_train: int,
    batch_size: int,
    epochs: int,
    n_params: int,
    cuda_available: bool,
) -> Placement:
    """The device for `fit(device="auto")`, with the reason recorded on the result."""
    if not cuda_available:
        return Placement(torch.device("cpu"), "auto: CUDA is not available")
    cuda = torch.device("cuda")
    flops = 6 * batch_size * n_params
    if flops > PROBE_MAX_FLOPS:
        return Placement(cuda, f"auto: {flops:.2g} multiply-adds per step is GPU work")
    steps = run_steps(n_train, batch_size, epochs)
    # the thread count train.py would use on the CPU (its _SINGLE_THREAD_FLOPS rule)
    threads = 1 if flops < _SINGLE_THREAD_FLOPS else None
    per_step = probe_cpu_step(
        network, training, n_features=n_features, batch_size=batch_size, threads=threads
    )
    estimate = per_step * steps
    measured = f"{steps} steps x {per_step * 1e6:.0f} us measured on the CPU = {estimate:.2f} s"
    if decide(cpu_step_seconds=per_step, steps=steps):
        return Placement(
            torch.device("cpu"),
            f"auto: cpu, {measured}, less than a CUDA start-up (>= {GPU_STARTUP_SECONDS} s)",
            per_step,
            steps,
        )
    return Placement(cuda, f"auto: cuda, {measured}", per_step, steps)
