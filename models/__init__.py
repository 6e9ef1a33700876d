"""fitserve's deep-learning core: Keras-style specs, PyTorch networks, training and weights.

Pure PyTorch: never imports app, fastapi or sqlalchemy (tests/models/test_boundary.py checks).
"""

from models.build import Summary, build, check_compatible, count_params, summary
from models.data import Standardization
from models.early_stopping import EarlyStopping
from models.errors import ModelsError, SpecError, StopTraining, TrainingError, WeightsError
from models.predict import Predictor
from models.results import EpochRecord, FitResult
from models.spec import NetworkSpec, TrainingConfig
from models.train import Callback, Trainer, fit
from models.weights import Checkpoint, LoadedModel, load_model, save_model

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "EpochRecord",
    "FitResult",
    "LoadedModel",
    "ModelsError",
    "NetworkSpec",
    "Predictor",
    "SpecError",
    "Standardization",
    "StopTraining",
    "Summary",
    "Trainer",
    "TrainingConfig",
    "TrainingError",
    "WeightsError",
    "build",
    "check_compatible",
    "count_params",
    "fit",
    "load_model",
    "save_model",
    "summary",
]
