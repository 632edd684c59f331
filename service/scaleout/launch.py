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
import math
import signal
import socket
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

from service.config import Settings
from service.readiness import wait_ready
from service.scaleout.options import ScaleOutOptions, settings_args

log = logging.getLogger(__name__)

APP_NAME = "csft"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


def deploy(options: ScaleOutOptions, host: str, port: int, *, blocking_ready_s: float = 300.0,
           keep_alive_timeout_s: float | None = None) -> None:
    """Start Serve's HTTP proxy on host:port and run the application (ray.init done).
    ``keep_alive_timeout_s`` is CSFT_KEEP_ALIVE_TIMEOUT_S, the one connection limit Serve's
    proxy offers (it has no head or body deadline: see docs/RELIABILITY.md)."""
    from ray import serve

    from service.scaleout.app import build_app

    http_options: dict = {"host": host, "port": port}
    if keep_alive_timeout_s is not None:
        http_options["keep_alive_timeout_s"] = math.ceil(keep_alive_timeout_s)  # Serve takes whole seconds
    serve.start(http_options=http_options)
    serve.run(build_app(options), name=APP_NAME, route_prefix="/", blocking=False)
    wait_ready(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", blocking_ready_s)


class _Hurry(BaseException):
    """A second stop signal while Serve shuts down gracefully: skip the rest of that."""


class _StopSignals:
    """SIGINT and SIGTERM handling for the driver, so that every way an operator stops it
    (Ctrl-C, ``kill``, ``docker stop``, Ctrl-C and then SIGTERM) runs the whole shutdown.

    The first signal raises KeyboardInterrupt in the main thread, wherever it is (waiting,
    or still deploying); :func:`run` then stops the embedded Redis, Serve and Ray in that
    order. A second signal only cuts Serve's graceful shutdown short; at any other time
    further signals are logged and ignored.

    Why this order and these handlers. Ctrl-C reaches Ray's own processes too (one process
    group); once the raylet was gone the driver was seen to end about 5 s later, wherever
    its shutdown had got to, with no ``finally`` or ``atexit`` run (Ray's core worker exits
    a driver whose raylet died).
    And ``ray.init`` installs a SIGTERM handler that kills Ray's processes and calls
    ``sys.exit`` from whatever the main thread is doing. Either way the embedded Redis was
    left running, orphaned, on its TCP port. It is stopped first now (milliseconds), before
    anything of Ray's can end the process; the replicas lose it only as they stop.
    """

    def __init__(self) -> None:
        self.phase = "running"  # -> "registry" -> "serve" (graceful, may be cut short) -> "ray"

    def install(self) -> None:
        """(Re)install the handlers: call again after ``ray.init``, which sets its own."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.phase == "running":
            self.phase = "registry"
            log.info("%s: stopping the registry, Serve and Ray", name)
            raise KeyboardInterrupt
        if self.phase == "serve":
            self.phase = "ray"
            log.warning("%s again: skipping the rest of Serve's graceful shutdown", name)
            raise _Hurry
        log.warning("%s: already stopping (%s); this takes a few seconds", name, self.phase)


def run(settings: Settings, options: ScaleOutOptions, host: str, port: int, ray_address: str | None) -> None:
    """Blocks until interrupted (SIGINT or SIGTERM), then stops the embedded Redis, Serve and
    Ray (when started here), whatever further signals arrive (:class:`_StopSignals`)."""
    import ray
    from ray import serve

    stop = _StopSignals()
    stop.install()
    registry = ExitStack()
    try:
        shared = registry.enter_context(shared_registry(settings))
        options = options.model_copy(update={"settings": {**settings_args(shared), **options.settings}})
        ray.init(address=ray_address, include_dashboard=False)
        stop.install()
        deploy(options, host, port, keep_alive_timeout_s=settings.keep_alive_timeout_s)
        log.info("serving on http://%s:%d with %d model replicas", host, port, options.replicas)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop.phase = "registry"
        registry.close()
        try:
            if ray.is_initialized():
                stop.phase = "serve"
                serve.shutdown()
        except _Hurry:
            pass
        finally:
            stop.phase = "ray"
            ray.shutdown()
