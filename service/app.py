"""FastAPI application factory. The lifespan loads the base model, connects the registry and
starts the model worker; routes get them through dependencies (service.api.deps)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import console
from service.api import admin, catalog, errors, health, inference, info, predict
from service.api.auth_limit import FailedAuthLimiter
from service.api.body_guard import BodyGuard
from service.config import Settings

log = logging.getLogger(__name__)


def open_registry(settings: Settings):
    """The registry the settings name (embedded Redis started if needed), with a blob store
    cleared of temporary files that writers killed mid-write left behind."""
    from diffs_store.blobs import LocalBlobStore
    from diffs_store.redis_connection import connect
    from diffs_store.registry import Registry

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = LocalBlobStore(settings.data_dir / "blobs")
    for path in blobs.clean_stale_temp():
        log.warning("removed %s, left by a writer that died mid-write", path)
    return Registry(connect(settings.redis_url, settings.data_dir, settings.redis_timeout_s), blobs)


def _rebuild_if_empty(registry) -> None:
    from diffs_store.rebuild import rebuild_if_empty
    from service.engine import REGISTRY_DOWN

    try:
        rebuild_if_empty(registry)
    except REGISTRY_DOWN as exc:  # Redis down at start: serve what comes, rebuild by hand later
        log.warning("could not check whether the registry needs a rebuild: %s", exc)


def build_engine(settings: Settings):
    from service.engine import Engine
    from service.model_host import ModelHost

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    registry = open_registry(settings)
    if settings.rebuild_on_start:
        _rebuild_if_empty(registry)
    host = ModelHost(settings.base_model, settings.resolved_device(), settings.dtype)
    return Engine(settings, host, registry, embedded_dir=None if settings.redis_url else settings.data_dir)


def create_app(settings: Settings | None = None, *, make_engine: Callable[[Settings], object] = build_engine) -> FastAPI:
    """The HTTP API around an engine. ``make_engine`` is the one seam the Ray Serve ingress
    (service.scaleout) uses to put a routing engine behind the same routes."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(settings)
        engine.start()
        app.state.engine = engine
        try:
            yield
        finally:
            app.state.engine = None
            engine.stop()
            if not settings.redis_url:
                from diffs_store.redis_connection import shutdown_embedded

                shutdown_embedded(settings.data_dir)

    # Swagger UI's assets come from the fastapi-offline package, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="Composable sparse fine-tuning server",
        version="0.1.0",
        description="One base model; per request, a language diff and a task diff patched in place and restored exactly.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.auth_limiter = FailedAuthLimiter(settings.auth_failures_per_window, settings.auth_failure_window_s)
    app.state.engine = None
    for module in (predict, inference, catalog, admin, health, info):
        app.include_router(module.router)
    console.mount(app)
    errors.install(app)
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes, exempt=admin.STREAMED_UPLOADS)
    return app
