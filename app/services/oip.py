"""The Open Inference Protocol V2 (KServe, Triton, Seldon MLServer) over fitserve's models.

One input tensor "input" FP32 [-1, n_features]; outputs "output" FP32 [-1, units] (the final
activation's values, as /v1 predict returns them) and, for classification, "label" BYTES [-1].
The tensors are translated to and from /v1 predict's request and response, and the work is
done by `app.services.models.predict`: the same owner check, limits, checks and predictor cache.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Unprocessable
from app.inference import ModelCache
from app.schemas import PredictRequest
from app.services import models as model_service

INPUT = "input"
OUTPUT = "output"
LABEL = "label"
PLATFORM = "pytorch"
# JSON numbers carry both exactly enough; the network computes in float32 either way.
INPUT_DATATYPES = ("FP32", "FP64")

IRIS_INFER: dict[str, Any] = {
    "inputs": [
        {
            "name": INPUT,
            "shape": [2, 4],
            "datatype": "FP32",
            "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
        }  # fmt: skip
    ]
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


EXAMPLE_ID = "3f2c0e6a9b8d4c1e8f7a6b5c4d3e2f10"
OUTPUT_TENSOR = {"name": OUTPUT, "datatype": "FP32", "shape": [-1, 3]}


class MetadataTensor(BaseModel):
    name: str = Field(description="Tensor name.", examples=[INPUT])
    datatype: str = Field(description="OIP datatype.", examples=["FP32"])
    shape: list[int] = Field(
        description="Shape; -1 is the variable batch size.", examples=[[-1, 4]]
    )


class ModelMetadata(BaseModel):
    name: str = Field(description="The model id.", examples=[EXAMPLE_ID])
    versions: list[str] = Field(
        description="fitserve models have one version, 1.", examples=[["1"]]
    )
    platform: str = Field(description="What runs the model.", examples=[PLATFORM])
    inputs: list[MetadataTensor] = Field(
        description="The one input tensor.",
        examples=[[{"name": INPUT, "datatype": "FP32", "shape": [-1, 4]}]],
    )
    outputs: list[MetadataTensor] = Field(
        description="Output tensors; label for classification models.",
        examples=[[OUTPUT_TENSOR, {"name": LABEL, "datatype": "BYTES", "shape": [-1]}]],
    )


class ModelReady(BaseModel):
    name: str = Field(description="The model id.", examples=[EXAMPLE_ID])
    ready: bool = Field(
        description="True once the model is loaded and answers /infer.", examples=[True]
    )


class RequestInput(_Request):
    name: str = Field(max_length=64, description="Must be 'input'.", examples=[INPUT])
    shape: list[int] = Field(
        min_length=2, max_length=2, description="[rows, n_features].", examples=[[2, 4]]
    )
    datatype: str = Field(max_length=16, description="FP32 (or FP64).", examples=["FP32"])
    parameters: dict[str, Any] | None = Field(
        None, description="Accepted and ignored.", examples=[None]
    )
    data: list[float] | list[list[float]] = Field(
        description="The values in row-major order, flat or nested as the shape.",
        examples=[[5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]],
    )


class RequestOutput(_Request):
    name: str = Field(max_length=64, description="'output' or 'label'.", examples=[OUTPUT])
    parameters: dict[str, Any] | None = Field(
        None, description="Accepted and ignored.", examples=[None]
    )


class InferenceRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [IRIS_INFER]})

    id: str | None = Field(
        None, max_length=256, description="Echoed in the response.", examples=["request-1"]
    )
    parameters: dict[str, Any] | None = Field(
        None, description="Accepted and ignored.", examples=[None]
    )
    inputs: list[RequestInput] = Field(
        min_length=1, description="Exactly one tensor, 'input'.", examples=[IRIS_INFER["inputs"]]
    )
    outputs: list[RequestOutput] | None = Field(
        None,
        description="The outputs to return; all of them when left out.",
        examples=[[{"name": OUTPUT}]],
    )


class ResponseOutput(BaseModel):
    name: str = Field(description="Tensor name.", examples=[OUTPUT])
    shape: list[int] = Field(description="[rows, units] or [rows].", examples=[[2, 3]])
    datatype: Literal["FP32", "BYTES"] = Field(description="OIP datatype.", examples=["FP32"])
    data: list[float] | list[str] = Field(
        description="Values, flattened in row-major order.",
        examples=[[0.98, 0.02, 0.0, 0.0, 0.03, 0.97]],
    )


class InferenceResponse(BaseModel):
    model_name: str = Field(description="The model id.", examples=[EXAMPLE_ID])
    model_version: str = Field("1", description="Always 1.", examples=["1"])
    id: str | None = Field(None, description="The request's id.", examples=["request-1"])
    outputs: list[ResponseOutput] = Field(
        description="The requested outputs.",
        examples=[[{**OUTPUT_TENSOR, "shape": [2, 3], "data": [0.98, 0.02, 0.0, 0.0, 0.03, 0.97]}]],
    )


def _output_tensors(task: str, classes: list[Any] | None, units: int) -> list[MetadataTensor]:
    tensors = [MetadataTensor(name=OUTPUT, datatype="FP32", shape=[-1, units])]
    if task == "classification" and classes:
        tensors.append(MetadataTensor(name=LABEL, datatype="BYTES", shape=[-1]))
    return tensors


def metadata(
    session: Session, *, owner: str | None, model_id: str, cache: ModelCache
) -> ModelMetadata:
    model = model_service.get_model(session, owner=owner, model_id=model_id, cache=cache)
    units = model.summary.layers[-1].output_shape[-1]
    assert units is not None
    return ModelMetadata(
        name=model.id,
        versions=["1"],
        platform=PLATFORM,
        inputs=[MetadataTensor(name=INPUT, datatype="FP32", shape=[-1, model.input_dim])],
        outputs=_output_tensors(model.task, model.classes, units),
    )


def ready(session: Session, *, owner: str | None, model_id: str, cache: ModelCache) -> ModelReady:
    # get_model loads the predictor into the cache: ready means the next /infer needs no load
    model = model_service.get_model(session, owner=owner, model_id=model_id, cache=cache)
    return ModelReady(name=model.id, ready=True)


def _rows(tensor: RequestInput, width: int) -> list[list[float]]:
    """The input tensor as rows of `width` values; the message says what doesn't fit."""
    loc = ("body", "inputs", 0)
    if tensor.name != INPUT:
        raise Unprocessable(
            f"the model's input tensor is named {INPUT!r}, not {tensor.name!r}",
            loc=(*loc, "name"),
        )
    if tensor.datatype not in INPUT_DATATYPES:
        raise Unprocessable(
            f"datatype {tensor.datatype!r} is not supported; send the features as FP32",
            loc=(*loc, "datatype"),
        )
    rows, columns = tensor.shape
    if columns != width or rows < 1:
        raise Unprocessable(
            f"shape {tensor.shape} does not fit the model's input [-1, {width}]: send "
            f"[rows, {width}] with rows >= 1",
            loc=(*loc, "shape"),
        )
    data = tensor.data
    if data and isinstance(data[0], list):
        nested: list[list[float]] = data  # type: ignore[assignment]
        if len(nested) != rows or any(len(row) != width for row in nested):
            raise Unprocessable(
                f"the nested data is not {rows} rows of {width} values, as the shape says",
                loc=(*loc, "data"),
            )
        return nested
    flat: list[float] = data  # type: ignore[assignment]
    if len(flat) != rows * width:
        raise Unprocessable(
            f"shape {tensor.shape} needs {rows * width} values, data has {len(flat)}",
            loc=(*loc, "data"),
        )
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def infer(
    session: Session,
    *,
    owner: str | None,
    model_id: str,
    body: InferenceRequest,
    settings: Settings,
    cache: ModelCache,
) -> InferenceResponse:
    model = model_service.get_model(session, owner=owner, model_id=model_id, cache=cache)
    if len(body.inputs) != 1:
        raise Unprocessable(
            f"the model takes one input tensor ({INPUT!r}), the request has {len(body.inputs)}",
            loc=("body", "inputs"),
        )
    units = model.summary.layers[-1].output_shape[-1]
    assert units is not None
    available = [t.name for t in _output_tensors(model.task, model.classes, units)]
    wanted = [o.name for o in body.outputs] if body.outputs else available
    for i, name in enumerate(wanted):
        if name not in available:
            raise Unprocessable(
                f"the model has no output {name!r}; its outputs are {', '.join(available)}",
                loc=("body", "outputs", i, "name"),
            )
    rows = _rows(body.inputs[0], model.input_dim)
    values, labels = model_service.predict_arrays(
        session,
        owner=owner,
        model_id=model_id,
        body=PredictRequest(inputs=rows),
        settings=settings,
        cache=cache,
    )
    outputs = []
    for name in wanted:
        if name == OUTPUT:
            flat = values.ravel().tolist()
            outputs.append(
                ResponseOutput(name=OUTPUT, shape=[len(rows), units], datatype="FP32", data=flat)
            )
        else:
            outputs.append(
                ResponseOutput(
                    name=LABEL,
                    shape=[len(rows)],
                    datatype="BYTES",
                    data=[str(label) for label in labels or []],
                )
            )
    return InferenceResponse(model_name=model.id, model_version="1", id=body.id, outputs=outputs)
