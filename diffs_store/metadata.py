"""The metadata every diff carries in its safetensors header.

safetensors headers hold ``str -> str`` only, so scalar fields are stored as strings and
structured ones (labels, recipe, metrics) as JSON. The field list and meaning are documented
in docs/FORMAT.md; this module is the single source of truth for them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffs_store import errors
from diffs_store.json_limits import MAX_DEPTH, nesting_depth, non_standard_constant

FORMAT_NAME = "csft-sparse-diff"
FORMAT_VERSION = 1


class DiffKind(str, Enum):
    LANGUAGE = "language"
    TASK = "task"


class TaskType(str, Enum):
    TOKEN_CLASSIFICATION = "token-classification"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    QUESTION_ANSWERING = "question-answering"
    FILL_MASK = "fill-mask"


# BCP-47 subset: a 2-3 letter primary language subtag (ISO 639-1 or 639-3), an optional
# 4-letter script subtag and an optional region subtag (2 letters or 3 digits).
_LANG_RE = re.compile(r"^([a-z]{2,3})(?:-([a-z]{4}))?(?:-([a-z]{2}|[0-9]{3}))?$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def normalise_language(code: str) -> str:
    """Normalise a language tag to BCP-47 casing: ``hau``, ``pt-BR``, ``sr-Latn-RS``.

    Underscores become hyphens, case is fixed per subtag. Anything outside the supported
    subset raises ``ValueError`` naming the tag.
    """
    raw = code.strip().replace("_", "-").lower()
    m = _LANG_RE.match(raw)
    if not m:
        raise ValueError(
            f"language {code!r} is not a language tag (expected ISO 639-1/639-3 with optional "
            "script and region, e.g. 'hau', 'sw', 'pt-BR')"
        )
    primary, script, region = m.groups()
    parts = [primary]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def normalise_task(name: str) -> str:
    """Task names are lowercase slugs (``ner``, ``pos``, ``xnli``)."""
    slug = name.strip().lower()
    if not _NAME_RE.match(slug):
        raise ValueError(f"task name {name!r} must be a slug of [a-z0-9._-], at most 64 characters")
    return slug


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class DiffMetadata(BaseModel):
    """Validated metadata of one diff. ``nnz`` is checked against the tensors by the loader."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    kind: DiffKind
    base_model: str = Field(min_length=1)
    base_fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    nnz: int = Field(ge=0)
    language: str | None = None
    task: str | None = None
    task_type: TaskType | None = None
    labels: tuple[str, ...] = ()
    # Head tensors equal to a base parameter at theta0 (head name -> base parameter name),
    # recorded instead of stored: the frozen MLM decoder of a language diff is the base's
    # input embeddings, a vocab x hidden tensor the base already has.
    head_from_base: dict[str, str] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=utc_now)

    @field_validator("format_version")
    @classmethod
    def _supported_version(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(f"format_version {v} is not supported (this build reads {FORMAT_VERSION})")
        return v

    @field_validator("language")
    @classmethod
    def _lang(cls, v: str | None) -> str | None:
        return None if v is None else normalise_language(v)

    @field_validator("task")
    @classmethod
    def _task(cls, v: str | None) -> str | None:
        return None if v is None else normalise_task(v)

    @field_validator("created_at")
    @classmethod
    def _timestamp(cls, v: str) -> str:
        datetime.fromisoformat(v)  # raises ValueError on garbage
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DiffMetadata":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels contain duplicates")
        if self.head_from_base and self.task_type is None:
            raise ValueError("head_from_base names head tensors, but the diff has no task_type")
        if self.kind is DiffKind.LANGUAGE:
            if self.language is None:
                raise ValueError("a language diff needs 'language'")
            if self.task is not None:
                raise ValueError("a language diff must not name a task")
            if self.task_type not in (None, TaskType.FILL_MASK):
                raise ValueError("a language diff's task_type can only be 'fill-mask'")
            if self.labels:
                raise ValueError("a language diff has no labels")
        else:
            if self.task is None or self.task_type is None:
                raise ValueError("a task diff needs 'task' and 'task_type'")
            if self.task_type is TaskType.FILL_MASK:
                raise ValueError("a task diff cannot have task_type 'fill-mask'")
            needs_labels = self.task_type in (TaskType.TOKEN_CLASSIFICATION, TaskType.SEQUENCE_CLASSIFICATION)
            if needs_labels and len(self.labels) < 2:
                raise ValueError(f"a {self.task_type.value} task diff needs at least two labels")
            if not needs_labels and self.labels:
                raise ValueError("a question-answering task diff has no labels")
        return self

    @property
    def key(self) -> str:
        """The registry key within a base: the language for language diffs, the task otherwise."""
        return self.language if self.kind is DiffKind.LANGUAGE else self.task  # type: ignore[return-value]

    # -- header encoding -------------------------------------------------------------------

    def to_header(self) -> dict[str, str]:
        out = {"format": FORMAT_NAME}
        for name, value in self.model_dump(mode="json").items():
            if value is None or (name == "head_from_base" and not value):
                continue  # absent optional fields keep older files' bytes (and ids) unchanged
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        return out

    @classmethod
    def from_header(cls, header: Any) -> "DiffMetadata":
        """Validate the ``__metadata__`` of a file: untrusted input, refused with
        :class:`errors.DiffError` whatever its shape."""
        if not header:
            raise errors.DiffError(errors.BAD_METADATA, "the file has no metadata header")
        if not isinstance(header, dict) or not all(isinstance(v, str) for v in header.values()):
            raise errors.DiffError(errors.BAD_METADATA, "the metadata header must map names to strings")
        if header.get("format") != FORMAT_NAME:
            raise errors.DiffError(
                errors.BAD_METADATA, f"metadata 'format' is {header.get('format')!r}, expected {FORMAT_NAME!r}"
            )
        fields: dict[str, Any] = {}
        for name, raw in header.items():
            if name == "format":
                continue
            if name in ("labels", "head_from_base", "recipe", "metrics"):
                fields[name] = _json_field(name, raw)
            else:
                fields[name] = raw
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "metadata"
            raise errors.DiffError(errors.BAD_METADATA, f"{where}: {first['msg']}") from None


def _json_field(name: str, raw: str) -> Any:
    """A metadata value holding JSON, parsed only once its nesting is known to be bounded."""
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise errors.DiffError(
            errors.NESTED_TOO_DEEP, f"metadata '{name}' nests JSON {depth} levels deep; the limit is {MAX_DEPTH}"
        )
    if (constant := non_standard_constant(raw)) is not None:
        raise errors.DiffError(errors.BAD_METADATA, f"metadata '{name}' holds {constant}, which JSON does not allow")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.DiffError(errors.BAD_METADATA, f"metadata '{name}' is not JSON: {exc}") from None
