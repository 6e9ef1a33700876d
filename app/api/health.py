"""GET /health: 200 when the database answers, 503 when it doesn't."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from app.db import connect_read_only
from app.errors import ServiceUnavailable
from app.schemas import ErrorResponse, Health

router = APIRouter(tags=["health"])


def server_version() -> str:
    try:
        return version("fitserve")
    except PackageNotFoundError:
        return "0.0.0"


@router.get(
    "/health",
    response_model=Health,
    summary="Is the service up?",
    responses={503: {"model": ErrorResponse, "description": "The database is not answering."}},
)
def health(request: Request) -> Health:
    engine = request.app.state.engine
    try:
        with connect_read_only(engine) as connection:
            connection.execute(text("SELECT 1"))
    except sa_exc.SQLAlchemyError:
        raise ServiceUnavailable(
            "the database is not answering; check FITSERVE_DATABASE_URL and that the database is up"
        ) from None
    return Health(status="ok", database=engine.dialect.name, version=server_version())
