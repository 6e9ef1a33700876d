"""The app factory. Nothing happens at import: `create_app()` builds an app, and its lifespan
builds the engine, the sessionmaker and the model cache, and registers the built-in datasets.

    uvicorn --factory app.main:create_app      # settings from the environment (FITSERVE_*)
    create_app(Settings(database_url=...))      # tests: one app per database
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import exc as sa_exc

from app import intake
from app.access import AccessMiddleware
from app.api import include_routers
from app.api.models import CSV_PARSERS
from app.auth import VerifiedKeys
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.errors import install_error_handlers
from app.inference import ModelCache, ServedModel
from app.limits import RequestLimitsMiddleware
from app.openapi_errors import install_error_documentation

log = logging.getLogger("fitserve")

DESCRIPTION = """Train Keras-style feed-forward networks over HTTP and serve their predictions.

Post a network spec and a dataset to `/v1/jobs`; a worker trains it and writes per-epoch metrics;
the finished model answers `/v1/models/{id}/predict` with dropout off. Errors are
`{"detail": message, "code": ...}`.
"""


def _register_builtins(app: FastAPI) -> None:
    from app.services.datasets import register_builtins

    try:
        with app.state.sessionmaker.begin() as session:
            added = register_builtins(session)
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.InterfaceError) as exc:
        # The API still starts (and /health says 503) so an operator can see what's wrong.
        log.warning(
            "could not register the built-in datasets (%s); is the database up and migrated? "
            "run `fitserve migrate`",
            exc.__class__.__name__,
        )
        return
    if added:
        log.info("registered built-in datasets: %s", ", ".join(added))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_engine(settings.database_url)
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.model_cache = ModelCache[ServedModel](settings.model_cache_size)
    app.state.csv_parsers = anyio.CapacityLimiter(CSV_PARSERS)
    await run_in_threadpool(_register_builtins, app)
    # What exists now (modules, torch, the app) lives as long as the process: kept out of the
    # cyclic GC's full collections, which otherwise walked its ~260k objects every few large
    # requests (a 10,000-row JSON prediction makes 10,000 lists: 14 ms of CPU a request on
    # average, 1.9 ms without; bench/RESULTS.md, issue 19). Undone at shutdown, so an app built
    # and stopped per test leaves nothing uncollectable.
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        engine.dispose()
        intake.close()  # the spare dataset-parsing helper, if a big upload started one


def create_app(settings: Settings | None = None) -> FastAPI:
    from app.api import datasets, health, jobs, models, networks, registry, studies
    from app.api.v2 import OipErrorMiddleware

    app = FastAPI(
        title="fitserve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served from local assets by install_offline_docs: FastAPI's own pages use a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings if settings is not None else Settings()
    app.state.verified_keys = VerifiedKeys()
    install_error_handlers(app)
    install_error_documentation(app)
    # Oversized or non-finite bodies are refused before any parsing.
    app.add_middleware(RequestLimitsMiddleware)
    # The key (and, keyless, Host and Origin) is checked before any body is read.
    app.add_middleware(AccessMiddleware)
    app.add_middleware(OipErrorMiddleware)  # outermost: /v2 errors of the layers inside too
    routers = (health, datasets, networks, jobs, models, studies, registry)
    # /v1/models matched first (predictions), documented in this order
    include_routers(app, [module.router for module in routers], first=models.router)
    models.document_predict_body(app)
    _install_extras(app)
    return app


def _install_extras(app: FastAPI) -> None:
    """What users reach for beside the REST API: Open Inference Protocol V2, the dashboard,
    /metrics and the offline docs."""
    from app.api import prometheus, v2
    from app.dashboard import SignInRequired, sign_in_response
    from app.dashboard import router as dashboard_router
    from app.docs import install_offline_docs
    from app.prometheus import install_metrics

    app.include_router(v2.router)  # Open Inference Protocol V2
    app.include_router(dashboard_router)
    app.add_exception_handler(SignInRequired, sign_in_response)
    install_metrics(app)
    app.include_router(prometheus.router)
    install_offline_docs(app)
