"""An LRU cache of eval-mode predictors by model id, shared by the request threads.

Loading is done outside the lock (it parses safetensors and builds a module), so one slow load
never blocks predictions from other cached models; two threads that miss the same id at once may
both load it, and the first to finish wins — cheaper than a per-key lock for networks this size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson


@dataclass(frozen=True)
class ModelFacts:
    """What a prediction needs from a model's row besides its weights; rows never change, so
    once a predictor is cached these answer its later requests without a query."""

    owner_id: str | None
    task: str
    classes: list[Any] | None


class ModelCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._facts: dict[str, ModelFacts] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_id: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if model_id in self._items:
                self._items.move_to_end(model_id)
                self.hits += 1
                return self._items[model_id]
            self.misses += 1
        predictor = load()
        with self._lock:
            if model_id in self._items:  # another thread loaded it meanwhile
                self._items.move_to_end(model_id)
                return self._items[model_id]
            self._items[model_id] = predictor
            while len(self._items) > self.capacity:
                evicted, _ = self._items.popitem(last=False)
                self._facts.pop(evicted, None)
            return predictor

    def lookup(self, model_id: str) -> tuple[Any, ModelFacts] | None:
        """(predictor, facts) when both are cached; counts as a hit."""
        with self._lock:
            facts = self._facts.get(model_id)
            if facts is None or model_id not in self._items:
                return None
            self._items.move_to_end(model_id)
            self.hits += 1
            return self._items[model_id], facts

    def remember(self, model_id: str, facts: ModelFacts) -> None:
        """Keep `facts` beside a cached predictor (dropped with it)."""
        with self._lock:
            if model_id in self._items:
                self._facts[model_id] = facts

    def discard(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)
            self._facts.pop(model_id, None)

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def encode_predictions(outputs: np.ndarray, predictions: list[Any] | None) -> bytes:
    """PredictResponse's JSON, {"outputs": [[...]], "predictions": [...] | null}, in one orjson
    call over the array. The float32 outputs are widened to float64 first so each number prints
    as `float(value)` does — the digits pydantic wrote before — not float32's shorter form."""
    body = {"outputs": np.ascontiguousarray(outputs, dtype=np.float64), "predictions": predictions}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
