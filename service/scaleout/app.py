"""The Serve application builder: ``serve run service.scaleout.app:build_app`` or a config
file's ``import_path``, with :class:`~service.scaleout.options.ScaleOutOptions` as ``args``.

Every replica reads the same registry and blob store, so the settings must name a shared
``redis_url`` and a ``data_dir`` on a shared volume; ``csft serve --replicas`` on one
machine provides both (its embedded Redis over loopback TCP, a local directory).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from service.scaleout.ingress import Ingress
from service.scaleout.model import PairModel
from service.scaleout.options import ScaleOutOptions, settings_args


def build_app(args: dict[str, Any] | ScaleOutOptions | None = None) -> Application:
    options = args if isinstance(args, ScaleOutOptions) else ScaleOutOptions(**(args or {}))
    settings = options.replica_settings()
    if not settings.redis_url:
        raise ValueError(
            "the replicas need one shared registry: set REDIS_URL (or settings.redis_url); "
            "`csft serve --replicas N` shares its embedded Redis by itself"
        )
    model = PairModel.options(**options.model_deployment_options()).bind(
        settings_args(settings), options.replicas, options.pairs_per_replica
    )
    ingress_settings = settings_args(settings)
    return Ingress.options(
        num_replicas=options.ingress_replicas, max_ongoing_requests=options.ingress_max_ongoing_requests
    ).bind(model, ingress_settings, options.routing)
