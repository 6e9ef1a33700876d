"""/v1/registered-models: model names, their versions and aliases (MLflow's model registry)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Response

from app.api.deps import OwnerDep, SessionDep
from app.schemas import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    UNAUTHORIZED,
    AliasMove,
    ErrorResponse,
    ModelVersionRead,
    RegisteredModelList,
    RegisteredModelRead,
    RegisterVersion,
)
from app.services import registry as service

router = APIRouter(prefix="/v1/registered-models", tags=["model names"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such name, version or alias (or not yours)."},
}
NameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="The model name.")]
AliasParam = Annotated[
    str, Path(pattern=ALIAS_PATTERN, description="The alias, e.g. production or staging.")
]


@router.get("", response_model=RegisteredModelList, summary="Your model names", responses=_ERRORS)
def list_names(session: SessionDep, owner: OwnerDep) -> RegisteredModelList:
    names = service.list_names(session, owner=owner)
    return RegisteredModelList(items=[service.view(session, r) for r in names])


@router.get(
    "/{name}",
    response_model=RegisteredModelRead,
    summary="A model name: its versions and aliases",
    responses=_ERRORS,
)
def get_name(name: NameParam, session: SessionDep, owner: OwnerDep) -> RegisteredModelRead:
    return service.view(session, service.get(session, owner=owner, name=name))


@router.post(
    "/{name}/versions",
    status_code=201,
    response_model=ModelVersionRead,
    summary="Register a trained model as the name's next version (the name is made if new)",
    responses={**_ERRORS, 422: {"model": ErrorResponse, "description": "A name that can't be."}},
)
def register(
    name: NameParam, body: RegisterVersion, session: SessionDep, owner: OwnerDep
) -> ModelVersionRead:
    version = service.register(session, owner=owner, name=name, model_id=body.model_id)
    session.refresh(version)
    return ModelVersionRead(
        version=version.version, model_id=version.model_id, created_at=version.created_at
    )


@router.put(
    "/{name}/aliases/{alias}",
    response_model=RegisteredModelRead,
    summary="Point an alias at a version (made, or moved atomically)",
    responses=_ERRORS,
)
def set_alias(
    name: NameParam,
    alias: AliasParam,
    body: Annotated[AliasMove, Body()],
    session: SessionDep,
    owner: OwnerDep,
) -> RegisteredModelRead:
    registered = service.set_alias(
        session, owner=owner, name=name, alias=alias, version=body.version
    )
    return service.view(session, registered)


@router.delete(
    "/{name}/aliases/{alias}", status_code=204, summary="Remove an alias", responses=_ERRORS
)
def delete_alias(
    name: NameParam, alias: AliasParam, session: SessionDep, owner: OwnerDep
) -> Response:
    service.delete_alias(session, owner=owner, name=name, alias=alias)
    return Response(status_code=204)
