"""Processes that never outlive their parent: the one place fitserve calls PR_SET_PDEATHSIG."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: signal.Signals, *, parent_pid: int | None = None) -> None:
    """Have Linux send `sig` to this process when its parent dies (a no-op where prctl is
    missing). With `parent_pid`, a parent that died before the call took effect — this process
    was already handed to init — ends this one at once."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
