"""The ingress deployment: the single-process HTTP API (same routes, same app factory) with
an engine whose ``predict`` goes to the model deployment instead of a local worker.

The ingress resolves names against the registry (404s, 503s and catalog answers never reach
a model replica), validates and publishes uploads, and tokenizes; it loads the base on CPU
only for the fingerprint, the tokenizer and upload validation, and never runs a forward.
Each answer says which replica served it: ``X-CSFT-Replica`` and ``X-CSFT-Replica-Switches``
headers, and the same per replica in ``/metrics`` (with the replica's queue depth).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from service import metrics
from service.config import Settings
from service.engine import Composition, Engine
from service.scaleout.pairs import PairReply, pair_id

# Header a client (the benchmark) may send to bypass pair affinity for one request.
ROUTING_HEADER = "x-csft-routing"
REPLICA_HEADER = "x-csft-replica"
SWITCHES_HEADER = "x-csft-replica-switches"
# A replica that dies with the request in flight: tried again on another, this many times.
ATTEMPTS = 3

_route: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("csft_route", default=None)


class RoutedEngine(Engine):
    """The engine with its worker replaced by the model deployment: resolution, the
    registry watcher, the breaker and input preparation are the inherited ones."""

    def __init__(self, settings: Settings, model, routing: str) -> None:
        from service.app import open_registry
        from service.model_host import ModelHost

        # The ingress never patches: no pristine copy, CPU only.
        settings = settings.model_copy(update={"device": "cpu", "pristine_copy": False})
        host = ModelHost(settings.base_model, "cpu", settings.resolved_dtype("cpu"))
        super().__init__(settings, host, open_registry(settings))
        self.model = model
        self.routing = routing

    async def predict(self, comp: Composition, windows: list) -> list[list[dict]]:
        route = _route.get() or {}
        if (route.get("routing") or self.routing) == "affinity":
            handle = self.model.options(multiplexed_model_id=pair_id(*_names(comp)))
        else:
            handle = self.model
        for attempt in range(ATTEMPTS):
            response = handle.predict.remote(comp, windows)
            try:
                reply: PairReply = await asyncio.wait_for(response, self.settings.request_timeout_s)
                break
            except (RayActorError, ActorUnavailableError):
                if attempt == ATTEMPTS - 1:
                    raise
            except (asyncio.TimeoutError, asyncio.CancelledError):
                response.cancel()
                raise
        route["replica"], route["switches"] = reply.replica, reply.switches
        metrics.REPLICA_REQUESTS.labels(reply.replica).inc()
        metrics.REPLICA_SWITCHES.labels(reply.replica).set(reply.switches)
        metrics.REPLICA_QUEUE.labels(reply.replica).set(reply.queue_depth)
        return reply.predictions


def _names(comp: Composition) -> tuple[str | None, str | None]:
    return (comp.language.key if comp.language else None, comp.task.key if comp.task else None)


class ReplicaHeaders:
    """ASGI middleware: reads the routing override, and adds the serving replica's headers
    to the answer (the route itself is the shared one and knows nothing of replicas)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        route: dict[str, Any] = {"routing": headers.get(ROUTING_HEADER.encode(), b"").decode() or None}
        token = _route.set(route)

        async def send_with_replica(message) -> None:
            if message["type"] == "http.response.start" and "replica" in route:
                extra = [(REPLICA_HEADER.encode(), route["replica"].encode()),
                         (SWITCHES_HEADER.encode(), str(route["switches"]).encode())]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            _route.reset(token)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    def __init__(self, model, settings_values: dict[str, Any], routing: str = "affinity") -> None:
        self.model = model
        self.settings = Settings(**settings_values)
        self.routing = routing

    def __serve_build_asgi_app__(self):
        from service.app import create_app

        app = create_app(self.settings, make_engine=lambda s: RoutedEngine(s, self.model, self.routing))
        app.add_middleware(ReplicaHeaders)
        return app
