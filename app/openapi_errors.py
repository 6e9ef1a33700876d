"""The OpenAPI document's errors as fitserve answers them (app/errors.py raises and handles them;
the /v2 routes answer in the Open Inference Protocol's shape, app/services/oip.py)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from app.schemas import ErrorResponse
from app.services.oip import InferenceRequest, InferenceResponse, OipError

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document tell the truth about errors, in place.

    FastAPI documents its validation errors as HTTPValidationError (`detail` a list), but the
    handler above answers every error as ErrorResponse (`detail` a message). And some statuses
    come from layers no route declares: 400 for a body Starlette can't read (a broken multipart
    form), 413 and 422 from app/limits.py for any request body, 503 from the database handler.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "ErrorResponse",
        ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"),
    )
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            _no_null_parameters(operation)
            responses = operation["responses"]
            if path == "/v2" or path.startswith("/v2/"):
                _document_oip_errors(responses, components, body="requestBody" in operation)
                continue
            for response in responses.values():
                media = response.get("content", {}).get("application/json", {})
                if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    media["schema"] = _ERROR_REF
                    response["description"] = (
                        "The request is invalid; `errors` locates each problem."
                    )
            if "requestBody" in operation:
                responses.setdefault(
                    "400", _error_response("The body could not be read (e.g. a broken form).")
                )
                responses.setdefault(
                    "413", _error_response("The body is larger than FITSERVE_MAX_BODY_BYTES.")
                )
                responses.setdefault(
                    "422", _error_response("The body is invalid (e.g. NaN, or a misspelt field).")
                )
            responses.setdefault("503", _error_response("The database is not answering."))
    # Drop FastAPI's validation-error models once nothing refers to them.
    text = json.dumps(schema["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'/{unused}"' not in text:
            components.pop(unused, None)
    return schema


def _no_null_parameters(operation: dict[str, Any]) -> None:
    """An optional header or query parameter is left out, never sent as null: FastAPI writes
    `str | None` as anyOf [string, null], which invites clients to send the text "null"."""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        options = schema.get("anyOf", [])
        if parameter.get("in") in ("header", "query") and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del schema["anyOf"]
            if len(rest) == 1:
                schema.update(rest[0])
            else:
                schema["anyOf"] = rest


def _document_oip_errors(
    responses: dict[str, Any], components: dict[str, Any], *, body: bool
) -> None:
    """/v2 answers its errors as OIP's {"error": message}, and 400 where /v1 says 422
    (app/api/v2.py's OipErrorMiddleware)."""
    # the infer routes read their body and write their answer themselves (JSON or binary)
    for model in (OipError, InferenceRequest, InferenceResponse):
        document = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(document.pop("$defs", {}))
        components.setdefault(model.__name__, document)
    oip_ref = {"$ref": "#/components/schemas/OipError"}

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": oip_ref}}}

    responses.pop("422", None)
    for response in responses.values():
        media = response.get("content", {}).get("application/json", {})
        if (
            media.get("schema", {})
            .get("$ref", "")
            .endswith(("/ErrorResponse", "/HTTPValidationError"))
        ):
            media["schema"] = oip_ref
    responses.setdefault("400", error("The request is invalid; the message says what to fix."))
    if body:
        responses.setdefault("413", error("The body is larger than FITSERVE_MAX_BODY_BYTES."))
    responses.setdefault("503", error("The database is not answering."))


def install_error_documentation(app: FastAPI) -> None:
    """Have `app.openapi()` return the document with its errors told as they are answered."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_errors(build())  # build() caches the document in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
