"""The built-in datasets: real data shipped with fitserve as plain CSV (see README.md here)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Builtin:
    name: str
    file: str
    target: str
    task: str
    description: str

    def read_bytes(self) -> bytes:
        return resources.files(__name__).joinpath(self.file).read_bytes()


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "iris",
            "iris.csv",
            "species",
            "classification",
            "Fisher's iris: 150 flowers, 4 measurements, 3 species",
        ),
        Builtin(
            "wine",
            "wine.csv",
            "class",
            "classification",
            "UCI wine recognition: 178 wines, 13 chemical measurements, 3 cultivars",
        ),
        Builtin(
            "breast_cancer",
            "breast_cancer.csv",
            "diagnosis",
            "classification",
            "Wisconsin diagnostic breast cancer: 569 tumours, 30 features, benign/malignant",
        ),
        Builtin(
            "diabetes",
            "diabetes.csv",
            "progression",
            "regression",
            "Efron et al. diabetes: 442 patients, 10 baseline variables, progression after a year",
        ),
        Builtin(
            "digits",
            "digits.csv",
            "digit",
            "classification",
            "UCI optical digits: 1797 8x8 images, 64 pixel intensities, digits 0-9",
        ),
    )
}
