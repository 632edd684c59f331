"""``csft serve --replicas N``: the Serve application on a local Ray instance (or an existing
cluster with ``--ray-address``), HTTP on ``--host``/``--port``.

Without ``REDIS_URL`` the embedded Redis starts here, in the driver, and also listens on a
loopback port that every replica is given as its ``REDIS_URL``: one registry for the
machine. The driver supervises it the way a single-process server does (a dead server is
restarted on its AOF, on the same port). That only works on one machine: a cluster of
machines needs ``REDIS_URL`` and a ``data_dir`` on a shared volume.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from service.config import Settings
from service.readiness import free_port, wait_ready
from service.scaleout.options import ScaleOutOptions, settings_args

log = logging.getLogger(__name__)

APP_NAME = "csft"


@contextmanager
def shared_registry(settings: Settings) -> Iterator[Settings]:
    """``settings`` with a ``redis_url`` every local process can reach: the given one, or
    the embedded server shared over loopback TCP (supervised, and stopped on exit)."""
    if settings.redis_url:
        yield settings
        return
    from diffs_store.redis_connection import share_embedded, shutdown_embedded
    from service.app import open_registry
    from service.registry_watch import RegistryWatch

    url = share_embedded(settings.data_dir, free_port())
    watch = RegistryWatch(open_registry(settings), lambda counter: None,
                          poll_s=settings.registry_poll_ms / 1000, embedded_dir=settings.data_dir)
    watch.start()
    try:
        yield settings.model_copy(update={"redis_url": url})
    finally:
        watch.stop()
        shutdown_embedded(settings.data_dir)


def deploy(options: ScaleOutOptions, host: str, port: int, *, blocking_ready_s: float = 300.0) -> None:
    """Start Serve's HTTP proxy on host:port and run the application (ray.init done)."""
    from ray import serve

    from service.scaleout.app import build_app

    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(options), name=APP_NAME, route_prefix="/", blocking=False)
    wait_ready(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", blocking_ready_s)


def run(settings: Settings, options: ScaleOutOptions, host: str, port: int, ray_address: str | None) -> None:
    """Blocks until interrupted, then shuts Serve, Ray (when started here) and Redis down."""
    import ray
    from ray import serve

    with shared_registry(settings) as shared:
        options = options.model_copy(update={"settings": {**settings_args(shared), **options.settings}})
        ray.init(address=ray_address, include_dashboard=False)
        try:
            deploy(options, host, port)
            log.info("serving on http://%s:%d with %d model replicas", host, port, options.replicas)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
            ray.shutdown()
