"""Network use cases that read no rows: a spec's summary, Keras JSON in and out."""

from __future__ import annotations

from typing import Any

import models
from app.config import Settings
from app.errors import Unprocessable
from app.schemas import KerasImport, NetworkSummary
from app.services.jobs import check_params
from models.keras_export import to_keras_config
from models.keras_json import from_keras_json


def summarize(network: models.NetworkSpec, settings: Settings) -> NetworkSummary:
    """Keras' model.summary() for a spec (refused when it is over the parameter limit)."""
    check_params(network, settings)
    return NetworkSummary.model_validate(models.summary(network).model_dump())


def import_keras(keras_model: dict[str, Any] | str, settings: Settings) -> KerasImport:
    """A Keras Sequential `to_json()` as a fitserve spec; what can't be reproduced is a 422."""
    try:
        network = from_keras_json(keras_model)
    except models.SpecError as exc:
        raise Unprocessable.from_spec_error(exc) from None
    return KerasImport(
        network=network.model_dump(mode="json", exclude_none=True),
        summary=summarize(network, settings),
    )


def export_keras(network: models.NetworkSpec) -> dict[str, Any]:
    return to_keras_config(network)
