"""The Open Inference Protocol V2 (KServe, Triton, Seldon MLServer) over fitserve's models.

One input tensor "input" [-1, n_features] of any numeric datatype; outputs "output" FP32
[-1, units] (the final activation's values, as /v1 predict returns them) and, for
classification, "label" BYTES [-1]. The tensors are decoded by app/oip_tensors.py (JSON or the
binary tensor data extension) and the rows run by `app.services.predict`: the same owner check,
limits, checks and model cache as /v1 predict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import BadRequest, Unprocessable, validation_message
from app.inference import ModelCacheT, ServedModel
from app.oip_tensors import (
    Output,
    TensorError,
    binary_sections,
    input_array,
    output_json,
    split_body,
)
from app.services import predict, registry

INPUT = "input"
OUTPUT = "output"
LABEL = "label"
PLATFORM = "pytorch"
SERVER_NAME = "fitserve"
EXTENSIONS = ["binary_tensor_data"]

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
EXAMPLE_ID = "3f2c0e6a9b8d4c1e8f7a6b5c4d3e2f10"
OUTPUT_TENSOR = {"name": OUTPUT, "datatype": "FP32", "shape": [-1, 3]}
# $parameters: names to a string, number or boolean (the spec's Parameters section)
Parameters = dict[str, str | int | float | bool]


class OipError(BaseModel):
    error: str = Field(
        description="What is wrong and how to fix it.", examples=["model 'iris' not found"]
    )


class ServerMetadata(BaseModel):
    name: str = Field(description="The server's name.", examples=[SERVER_NAME])
    version: str = Field(description="fitserve's version.", examples=["0.1.0"])
    extensions: list[str] = Field(
        description="The protocol extensions served.", examples=[EXTENSIONS]
    )


class MetadataTensor(BaseModel):
    name: str = Field(description="Tensor name.", examples=[INPUT])
    datatype: str = Field(description="OIP datatype.", examples=["FP32"])
    shape: list[int] = Field(
        description="Shape; -1 is the variable batch size.", examples=[[-1, 4]]
    )


class ModelMetadata(BaseModel):
    name: str = Field(description="The model's name (or id) as asked for.", examples=[EXAMPLE_ID])
    versions: list[str] = Field(
        description="The versions that /versions/{version} accepts.", examples=[["1"]]
    )
    platform: str = Field(description="What runs the model.", examples=[PLATFORM])
    inputs: list[MetadataTensor] = Field(
        description="The one input tensor; any numeric datatype is accepted for it.",
        examples=[[{"name": INPUT, "datatype": "FP32", "shape": [-1, 4]}]],
    )
    outputs: list[MetadataTensor] = Field(
        description="Output tensors; label for classification models.",
        examples=[[OUTPUT_TENSOR, {"name": LABEL, "datatype": "BYTES", "shape": [-1]}]],
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RequestInput(_Request):
    name: str = Field(max_length=64, description="Must be 'input'.", examples=[INPUT])
    shape: list[int] = Field(
        min_length=2,
        max_length=2,
        description="[rows, n_features]: rows >= 1, n_features the model's input width.",
        examples=[[2, 4]],
    )
    datatype: str = Field(
        max_length=16,
        description="Any numeric OIP datatype (BOOL, INT8-64, UINT8-64, FP16, FP32, FP64); "
        "each value must fit it. BYTES is refused: features are numbers.",
        examples=["FP32"],
    )
    parameters: Parameters | None = Field(
        None,
        description="binary_data_size: the tensor's byte count in the binary section "
        "(binary tensor data extension), in place of data.",
        examples=[None],
    )
    data: list[Any] | None = Field(
        None,
        description="The values in row-major order, flat or nested as the shape; numbers "
        "(true/false for BOOL). Left out when sent as binary data.",
        examples=[[5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]],
        json_schema_extra={
            "items": {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "array"}]}
        },
    )


class RequestOutput(_Request):
    name: str = Field(max_length=64, description="'output' or 'label'.", examples=[OUTPUT])
    parameters: Parameters | None = Field(
        None,
        description="binary_data: true to receive this output in the binary section.",
        examples=[None],
    )


class InferenceRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [IRIS_INFER]})

    id: str | None = Field(
        None, max_length=256, description="Echoed in the response.", examples=["request-1"]
    )
    parameters: Parameters | None = Field(
        None,
        description="binary_data_output: true to receive every output in the binary section.",
        examples=[None],
    )
    inputs: list[RequestInput] = Field(
        min_length=1,
        max_length=1,
        description="Exactly one tensor, 'input'.",
        examples=[IRIS_INFER["inputs"]],
    )
    outputs: list[RequestOutput] | None = Field(
        None,
        description="The outputs to return; all of them when left out.",
        examples=[[{"name": OUTPUT}]],
    )


class ResponseOutput(BaseModel):
    name: str = Field(description="Tensor name.", examples=[OUTPUT])
    shape: list[int] = Field(description="[rows, units] or [rows].", examples=[[2, 3]])
    datatype: str = Field(description="OIP datatype: FP32 or BYTES.", examples=["FP32"])
    parameters: dict[str, int] | None = Field(
        None,
        description="binary_data_size when the output is in the binary section.",
        examples=[None],
    )
    data: list[float] | list[str] | None = Field(
        None,
        description="Values, flattened in row-major order (absent when sent as binary).",
        examples=[[0.98, 0.02, 0.0, 0.0, 0.03, 0.97]],
    )


class InferenceResponse(BaseModel):
    model_name: str = Field(description="The model as asked for.", examples=[EXAMPLE_ID])
    model_version: str = Field(description="The version that answered.", examples=["1"])
    id: str | None = Field(None, description="The request's id.", examples=["request-1"])
    outputs: list[ResponseOutput] = Field(
        description="The requested outputs.",
        examples=[[{**OUTPUT_TENSOR, "shape": [2, 3], "data": [0.98, 0.02, 0.0, 0.0, 0.03, 0.97]}]],
    )


@dataclass(frozen=True)
class Reply:
    """An inference answer: the JSON header, and the binary section after it (maybe empty)."""

    header: bytes
    binary: bytes


def server_metadata(version: str) -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=version, extensions=EXTENSIONS)


def _resolve(
    session: Session, *, owner: str | None, name: str, version: str | None, cache: ModelCacheT
) -> tuple[ServedModel, str]:
    """(the model, its version) for a model id or name and an optional version or alias. A
    model id has the one version "1"."""
    model_id, resolved = registry.resolve(session, owner=owner, ref=name, version=version)
    return predict.get_model(session, cache=cache, owner=owner, model_id=model_id), resolved


def _versions(session: Session, *, owner: str | None, name: str) -> list[str]:
    registered = registry.find(session, owner=owner, name=name.partition("@")[0])
    if registered is None:
        return ["1"]
    return [str(v.version) for v in registry.versions(session, registered)]


def _output_tensors(model: ServedModel) -> list[MetadataTensor]:
    units = model.predictor.n_outputs
    tensors = [MetadataTensor(name=OUTPUT, datatype="FP32", shape=[-1, units])]
    if model.labelled:
        tensors.append(MetadataTensor(name=LABEL, datatype="BYTES", shape=[-1]))
    return tensors


def metadata(
    session: Session, *, owner: str | None, name: str, version: str | None, cache: ModelCacheT
) -> ModelMetadata:
    model, _ = _resolve(session, owner=owner, name=name, version=version, cache=cache)
    return ModelMetadata(
        name=name,
        versions=_versions(session, owner=owner, name=name),
        platform=PLATFORM,
        inputs=[_input_tensor(model)],
        outputs=_output_tensors(model),
    )


def _input_tensor(model: ServedModel) -> MetadataTensor:
    """FP32 [-1, n_features]; for a category_encoding model INT64 [-1, -1]: each row a document's
    token ids, shorter documents padded with -1 (as the ONNX export takes them)."""
    if model.predictor.takes_tokens:
        return MetadataTensor(name=INPUT, datatype="INT64", shape=[-1, -1])
    return MetadataTensor(name=INPUT, datatype="FP32", shape=[-1, model.predictor.n_features])


def ready(
    session: Session, *, owner: str | None, name: str, version: str | None, cache: ModelCacheT
) -> None:
    """Returns when the model is loaded (in the model cache): the next /infer needs no load."""
    _resolve(session, owner=owner, name=name, version=version, cache=cache)


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The request's JSON header, validated, and its binary section."""
    try:
        header, binary = split_body(body, header_length)
    except TensorError as exc:
        raise BadRequest(str(exc)) from None
    if not header.strip():
        raise BadRequest("the body is empty; send an inference request (see /docs)")
    try:
        return InferenceRequest.model_validate_json(header), binary
    except ValidationError as exc:
        raise BadRequest(validation_message([dict(e) for e in exc.errors()])) from None


def _binary_size(tensor: RequestInput, index: int) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"inputs[{index}].parameters.binary_data_size must be a byte count")
    return size


def _features(body: InferenceRequest, binary: bytes, width: int | None) -> np.ndarray:
    """The input tensor as a (rows, width) float64 array; `width` None: any (token ids)."""
    tensor = body.inputs[0]
    if tensor.name != INPUT:
        raise BadRequest(f"the model's input tensor is named {INPUT!r}, not {tensor.name!r}")
    rows, columns = tensor.shape
    if width is None and (rows < 1 or columns < 1):
        raise BadRequest(
            f"shape {tensor.shape} does not fit the model's input [-1, -1] of token ids: send "
            "[rows, length] with rows, length >= 1, shorter documents padded with -1"
        )
    if width is not None and (columns != width or rows < 1):
        raise BadRequest(
            f"shape {tensor.shape} does not fit the model's input [-1, {width}]: send "
            f"[rows, {width}] with rows >= 1"
        )
    try:
        (section,) = binary_sections([_binary_size(tensor, 0)], binary)
        return input_array(
            datatype=tensor.datatype,
            shape=tensor.shape,
            data=tensor.data,
            binary=section,
            where="inputs[0]",
        )
    except TensorError as exc:
        raise BadRequest(str(exc)) from None


def _wanted(body: InferenceRequest, available: list[str]) -> list[tuple[str, bool]]:
    """(output name, sent as binary) for each output to return, in the request's order."""
    default_binary = bool((body.parameters or {}).get("binary_data_output", False))
    if not body.outputs:
        return [(name, default_binary) for name in available]
    wanted = []
    for i, output in enumerate(body.outputs):
        if output.name not in available:
            raise BadRequest(
                f"the model has no output {output.name!r}; its outputs are {', '.join(available)}"
            )
        parameters = output.parameters or {}
        if parameters.get("class_count"):
            raise BadRequest(
                f"outputs[{i}].parameters.class_count: the classification extension is not "
                f"served; ask for {LABEL!r}, the predicted class"
            )
        wanted.append((output.name, bool(parameters.get("binary_data", default_binary))))
    return wanted


def infer(
    session: Session,
    *,
    owner: str | None,
    name: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
    settings: Settings,
    cache: ModelCacheT,
) -> Reply:
    """The model's outputs for a request body (JSON, or a JSON header of `header_length` bytes
    and binary tensors). The model is found first: an unknown one is a 404 whatever the body."""
    model, served_version = _resolve(session, owner=owner, name=name, version=version, cache=cache)
    request, binary = parse_request(body, header_length)
    tensors = _output_tensors(model)
    wanted = _wanted(request, [t.name for t in tensors])
    tokens = model.predictor.takes_tokens
    x = _features(request, binary, None if tokens else model.predictor.n_features)
    predict.check_rows(len(x), settings)
    try:
        # token ids: each row's -1 slots are padding, as in the ONNX export
        rows_in: Any = [row[row != -1] for row in x] if tokens else x
        values, labels = predict.predict(model, rows_in)
    except Unprocessable as exc:
        raise BadRequest(exc.message) from None
    rows = len(values)
    outputs = {
        OUTPUT: Output(OUTPUT, "FP32", [rows, values.shape[1]], values),
        LABEL: Output(LABEL, "BYTES", [rows], [str(label) for label in labels or []]),
    }
    entries, sections = [], []
    for output_name, as_binary in wanted:
        entry, raw = output_json(outputs[output_name], binary=as_binary)
        entries.append(entry)
        sections.append(raw)
    response: dict[str, Any] = {"model_name": name, "model_version": served_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    return Reply(orjson.dumps(response), b"".join(sections))
