"""The models held for prediction: `ServedModel` (a loaded Predictor with what its row says) and
`ModelCache`, an LRU of them by model id shared by the event loop and the request threads.

Loading is done outside the lock (it parses safetensors and builds a module), so one slow load
never blocks predictions from other cached models; two threads that miss the same id at once may
both load it, and the first to finish wins — cheaper than a per-key lock for networks this size.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

import models

T = TypeVar("T")


@dataclass(frozen=True)
class ServedModel:
    """A model loaded for prediction, with what its row says about it."""

    id: str
    owner_id: str | None
    task: str
    classes: list[Any] | None  # as stored with the weights; None for regression
    feature_names: list[str]  # the training dataset's columns, in input order
    target_names: list[str]
    predictor: models.Predictor

    @property
    def labelled(self) -> bool:
        return self.task == "classification" and bool(self.classes)

    def labels(self, outputs: np.ndarray) -> list[Any] | None:
        """The predicted class label per row of outputs (rows, units), or None (regression)."""
        if not self.labelled:
            return None
        if outputs.shape[1] == 1:
            # One sigmoid unit: the probability of class 1, as Keras' binary accuracy thresholds it.
            index = (outputs[:, 0] >= 0.5).astype(np.int64)
        else:
            index = outputs.argmax(axis=1)
        return self._class_array[index].tolist()  # type: ignore[no-any-return]

    @functools.cached_property
    def _class_array(self) -> np.ndarray:
        """The classes as an object array (str or int labels kept as they are), made once."""
        labels = np.empty(len(self.classes or ()), dtype=object)
        labels[:] = self.classes
        return labels


class ModelCache(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_id: str, load: Callable[[], T]) -> T:
        """The cached value for `model_id`, or `load()`'s, kept (an exception keeps nothing)."""
        with self._lock:
            if model_id in self._items:
                self._items.move_to_end(model_id)
                self.hits += 1
                return self._items[model_id]
            self.misses += 1
        value = load()
        with self._lock:
            if model_id in self._items:  # another thread loaded it meanwhile
                self._items.move_to_end(model_id)
                return self._items[model_id]
            self._items[model_id] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value

    def discard(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


ModelCacheT = ModelCache[ServedModel]
