"""The scale-out application's options: replica count or autoscaling bounds, resources per
replica, and the service settings every replica starts from.

One model serves ``csft serve --replicas``, ``serve run``/``serve deploy`` config files
(the application's ``args``) and the benchmark, so the three cannot drift apart.
"""

from __future__ import annotations

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
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a model replica accepts at once (Serve queues the rest).")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica (also its torch threads).")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (1 on a GPU cluster).")
    ingress_replicas: int = Field(1, ge=1, description="Ingress replicas (HTTP parsing, resolution, uploads).")
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one ingress replica holds at once; Serve's default (5) starves the model "
        "replicas' micro-batching and the pair affinity that feeds it.",
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
