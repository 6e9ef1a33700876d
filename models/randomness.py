"""Each epoch's random draws, derived from (the run's seed, the epoch): nothing to checkpoint.

A generator's saved state is device-specific (a CUDA generator's is 16 bytes, the CPU's 5,056),
so a checkpoint that kept one could not be resumed on the other kind of device. Instead every
epoch starts from seeds derived from the run's stream seed and the epoch's index: the shuffle
permutation is drawn by a CPU generator and moved to the training device, and the device's
dropout generator is reseeded. A run resumed after epoch k — on any device — draws exactly what
the uninterrupted run drew from epoch k + 1 on (bit for bit on the same kind of device).
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_seed(stream_seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (0-based) in one of the run's streams."""
    return int(np.random.SeedSequence([stream_seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def epoch_permutation(stream_seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """Epoch `epoch`'s row order: drawn on the CPU whatever the device, then moved to it."""
    g = torch.Generator().manual_seed(epoch_seed(stream_seed, epoch))
    return torch.randperm(n, generator=g).to(device)


def seed_dropout(stream_seed: int, epoch: int, device: torch.device) -> None:
    """Reseed the generator dropout draws from on `device` for epoch `epoch`. Directly: torch's
    manual_seed also queues seeds for every other backend (milliseconds per call)."""
    seed = epoch_seed(stream_seed, epoch)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
