"""Response bodies of the catalog, info and admin routes, as the OpenAPI schema shows them.

The routes build plain dicts (from registry entries); these models are their declared
``response_model``, so the schema and the answers cannot drift apart: FastAPI validates every
answer against them. Error bodies are :class:`service.api.errors.ErrorResponse`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DiffEntry(BaseModel):
    """One published diff, as the registry records it."""

    id: str = Field(..., description="sha256 of the file bytes")
    kind: str = Field(..., description="'language' or 'task'")
    key: str = Field(..., description="the language tag or the task name")
    version: int
    base_fingerprint: str
    base_model: str = Field(..., description="the base as the diff's producer named it (informative)")
    language: str | None
    task: str | None
    task_type: str | None
    labels: list[str]
    nnz: int
    size: int = Field(..., description="file size in bytes")
    created_at: str
    published_at: str
    metrics: dict[str, Any] = Field(default_factory=dict, description="the producer's recorded figures (dev scores "
                                    "under 'dev'), as the diff's metadata carries them")


class DiffList(BaseModel):
    base_fingerprint: str
    diffs: list[DiffEntry]


class Retired(BaseModel):
    retired: DiffEntry


class Languages(BaseModel):
    base_fingerprint: str
    languages: list[str]


class TaskInfo(BaseModel):
    task: str
    task_type: str | None
    labels: list[str]
    latest_version: int
    id: str
    source_language: str | None = Field(None, description="the language the task diff was trained on (None: several "
                                        "or unknown)")
    dev_metrics: dict[str, Any] = Field(default_factory=dict, description="the dev scores its producer recorded")


class Tasks(BaseModel):
    base_fingerprint: str
    tasks: list[TaskInfo]


class Pair(BaseModel):
    language: str | None
    task: str | None
    inference_path: str = Field(..., description="the pair's Hugging Face Inference API route")
    inference_url: str = Field(..., description="the same, absolute: give it to InferenceClient(model=...)")


class Pairs(BaseModel):
    base_fingerprint: str
    pairs: list[Pair] = Field(..., description="Every (language, task) a request can name and be served: a language "
                              "alone only with an MLM head (fill-mask), a task alone on the bare base, and no pair "
                              "whose diff file is missing from the blob store.")


class LanguageRow(BaseModel):
    language: str
    latest_version: int
    id: str
    task_type: str | None = Field(..., description="'fill-mask' when the language answers alone (it has an MLM head)")
    dev_metrics: dict[str, Any] = Field(default_factory=dict, description="the dev scores its producer recorded")


class Catalog(BaseModel):
    base_fingerprint: str
    languages: list[LanguageRow]
    tasks: list[TaskInfo]


class PlanCacheInfo(BaseModel):
    bytes: int
    budget: int
    entries: int
    hot_pairs: int
    hot_bytes: int


class Info(BaseModel):
    base_model: str
    base_fingerprint: str
    device: str
    dtype: str
    mask_token: str | None
    admin_enabled: bool
    plan_cache: PlanCacheInfo
    queue_depth: int
    requests_total: float
    switches_total: float
    uptime_s: float
