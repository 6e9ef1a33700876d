"""fitserve's deep-learning core: Keras-style specs, PyTorch networks, training and weights.

Pure PyTorch: never imports app, fastapi or sqlalchemy (tests/models/test_boundary.py checks).
"""

from models.build import Summary, build, check_compatible, count_params, summary
from models.errors import ModelsError, SpecError, StopTraining, TrainingError, WeightsError
from models.spec import NetworkSpec, TrainingConfig

__all__ = [
    "ModelsError",
    "NetworkSpec",
    "SpecError",
    "StopTraining",
    "Summary",
    "TrainingConfig",
    "TrainingError",
    "WeightsError",
    "build",
    "check_compatible",
    "count_params",
    "summary",
]
