"""FastAPI application factory. The lifespan loads the base model, connects the registry and
starts the model worker; routes get them through dependencies (service.api.deps)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import console
from service.api import admin, catalog, health, info, predict
from service.config import Settings

log = logging.getLogger(__name__)


def build_engine(settings: Settings):
    from diffs_store.blobs import LocalBlobStore
    from diffs_store.redis_connection import connect
    from diffs_store.registry import Registry
    from service.engine import Engine
    from service.model_host import ModelHost

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(connect(settings.redis_url, settings.data_dir), LocalBlobStore(settings.data_dir / "blobs"))
    host = ModelHost(settings.base_model, settings.resolved_device(), settings.dtype)
    return Engine(settings, host, registry)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = build_engine(settings)
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

    app = FastAPI(
        title="Composable sparse fine-tuning server",
        version="0.1.0",
        description="One base model; per request, a language diff and a task diff patched in place and restored exactly.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    for module in (predict, catalog, admin, health, info):
        app.include_router(module.router)
    console.mount(app)
    return app
