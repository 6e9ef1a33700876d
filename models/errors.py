"""The errors models/ raises, drawn once.

    Exception
    ├── ModelsError                 base of everything below except StopTraining
    │   ├── SpecError (ValueError)  the spec/config can't work (with this data); carries `loc`
    │   ├── TrainingError (RuntimeError)  training failed, e.g. a non-finite loss; carries `epoch`
    │   └── WeightsError (ValueError)     weights/checkpoint bytes that don't match their spec
    └── StopTraining                a signal, not a failure: raise it from a callback to end
                                    training cleanly; `fit` returns normally

Every message says what is wrong and how to fix it, because the service shows it to the user as is.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of the errors models/ raises."""


class SpecError(ModelsError, ValueError):
    """A network spec or training config that can't work (with this data).

    `loc` points into the request the way pydantic's locations do, e.g. ("network", "layers", 0).
    """

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = tuple(loc)


class TrainingError(ModelsError, RuntimeError):
    """Training could not go on; `epoch` is 1-based, None when it failed before the first epoch."""

    def __init__(self, message: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.epoch = epoch


class WeightsError(ModelsError, ValueError):
    """Serialized weights or a checkpoint that are corrupt or don't match the spec they carry."""


class StopTraining(Exception):  # noqa: N818 - Keras/skorch vocabulary: a signal, not an error
    """Raise from a callback hook to stop training after the current step or epoch."""
