"""The scale-out application's options: replica count or autoscaling bounds, resources per
replica, and the service settings every replica starts from.

One model serves ``csft serve --replicas``, ``serve run``/``serve deploy`` config files
(the application's ``args``) and the benchmark, so the three cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic import SecretStr

from service.config import Settings


class ScaleOutOptions(BaseModel):
    replicas: int = Field(2, ge=1, description="Model replicas (the initial count when autoscaling).")
    min_replicas: int | None = Field(None, ge=0, description="Autoscaling lower bound; set with max_replicas.")
    max_replicas: int | None = Field(None, ge=1, description="Autoscaling upper bound; unset: a fixed replica count.")
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="Autoscaling target of in-flight requests per model replica."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests a model replica accepts at once (Serve queues the rest). Keep it at least "
        "the ingress's: a request Serve cannot place on its pair's replica within its matching timeout goes to "
        "another replica, which then loads the pair too, and affinity erodes.",
    )
    replica_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica (also its torch threads).")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (1 on a GPU cluster).")
    ingress_replicas: int = Field(1, ge=1, description="Ingress replicas (HTTP parsing, resolution, uploads).")
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one ingress replica holds at once; Serve's default (5) starves the model "
        "replicas' micro-batching and the pair affinity that feeds it.",
    )
    pairs_per_replica: int | None = Field(
        None, ge=1, description="Most pairs one model replica keeps loaded for routing (Serve's multiplexed LRU); "
        "unset: its share of the catalog, pairs x 1.25 / replicas, and never more than its plan cache holds.",
    )
    routing: Literal["affinity", "random"] = Field(
        "affinity", description="affinity: multiplexed by pair; random: Serve's default replica choice (for comparison)."
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="Service settings (Settings fields) for every replica.")

    @model_validator(mode="after")
    def _bounds(self) -> "ScaleOutOptions":
        if self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            if not low <= self.replicas <= self.max_replicas:
                raise ValueError(f"need min_replicas <= replicas <= max_replicas, got {low}, {self.replicas}, {self.max_replicas}")
        return self

    def model_deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` of the model deployment."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
        }
        if self.max_replicas is None:
            opts["num_replicas"] = self.replicas
        else:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                "initial_replicas": self.replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return opts

    def replica_settings(self) -> Settings:
        """What a model replica runs with: the given settings plus, unless set, one torch
        thread per reserved CPU (replicas sharing a host must not each take every core)."""
        values = dict(self.settings)
        if values.get("torch_threads") is None and self.replica_cpus >= 1:
            values["torch_threads"] = int(self.replica_cpus)
        return Settings(**values)


# Pairs a replica holds beyond its even share of the catalog: room for a pair in transit
# between replicas (and for hot pairs on two) without evicting one still in use.
SHARE_SLACK = 1.25


def catalog_size(combos: list[tuple[str | None, str | None]]) -> int:
    """The pairs traffic is expected to spread over: a registry's L languages x T tasks
    (``Registry.pairs`` also lists each language and task alone; those count only when
    there are more of them than pairs, e.g. a catalog of languages only)."""
    full = sum(1 for language, task in combos if language is not None and task is not None)
    return max(full, len(combos) - full)


def pair_capacity(
    *, budget_pairs: int, catalog_pairs: int, replicas: int, pairs_per_replica: int | None = None
) -> int:
    """How many pairs one model replica reports loaded, so that Serve routes each pair to
    the replica that holds it.

    The plan cache's byte budget alone is a loose bound: with small plans a replica can hold
    the whole catalog, and then every fallback (a request Serve places on another replica
    because the pair's own was busy past the matching timeout) leaves that pair loaded on
    two replicas for good, so affinity erodes over time. Capped at its share of the catalog
    (with some slack, or ``pairs_per_replica``), a replica drops its least recently used
    pair instead and the partition heals. Never more than the budget holds. An unknown
    catalog (0: the registry was down) leaves the budget alone in charge.
    """
    if not pairs_per_replica and catalog_pairs <= 0:
        return max(1, budget_pairs)
    share = pairs_per_replica or math.ceil(SHARE_SLACK * catalog_pairs / max(1, replicas))
    return max(1, min(budget_pairs, share))


def settings_args(settings: Settings) -> dict[str, Any]:
    """Settings as plain values that survive Ray's serialisation and a YAML config file
    (secrets revealed, paths absolute so replicas with another working directory agree)."""
    out: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = str(value.resolve())
        out[name] = value
    if Path(settings.base_model).exists():  # a local directory, not a hub name
        out["base_model"] = str(Path(settings.base_model).resolve())
    return out
