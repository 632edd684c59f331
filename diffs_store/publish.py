"""The one gate into the registry: validate against the base, then publish.

Used by the admin upload, ``csft diff push`` and the trainer's ``--push``. Nothing is
stored unless the whole file passed validation.
"""

from __future__ import annotations

from diffs_store.base import BaseSpec
from diffs_store.format import DEFAULT_MAX_FILE_BYTES
from diffs_store.registry import Entry, Registry
from diffs_store.validate import validate_diff_bytes


def validate_and_publish(
    registry: Registry, data: bytes, spec: BaseSpec, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Entry:
    diff = validate_diff_bytes(data, spec, max_bytes=max_bytes)
    return registry.publish(data, diff.meta)
