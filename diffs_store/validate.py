"""Checks that need the base model: names, ranges, head shapes, fingerprint.

``validate_diff_bytes`` is the one gate every diff passes before it is stored, published,
patched into a model or merged: parse (no pickle, see :mod:`diffs_store.format`) and then
check against the base's :class:`~diffs_store.base.BaseSpec`.
"""

from __future__ import annotations

import math

from diffs_store import errors
from diffs_store.base import BaseSpec
from diffs_store.format import DEFAULT_MAX_FILE_BYTES, SparseDiff, parse_diff
from diffs_store.heads import head_layout
from diffs_store.metadata import DiffKind, TaskType


def check_against_base(diff: SparseDiff, spec: BaseSpec, *, check_fingerprint: bool = True) -> None:
    meta = diff.meta
    if check_fingerprint and meta.base_fingerprint != spec.fingerprint:
        raise errors.DiffError(
            errors.FINGERPRINT_MISMATCH,
            f"diff was made for base {meta.base_model!r} ({meta.base_fingerprint[:19]}...), "
            f"not for the loaded base {spec.name!r} ({spec.fingerprint[:19]}...)",
        )
    for name, part in diff.sparse.items():
        shape = spec.param_shapes.get(name)
        if shape is None:
            raise errors.DiffError(errors.UNKNOWN_TENSOR, f"parameter {name!r} does not exist in the base model")
        numel = math.prod(shape)
        if len(part) and int(part.indices[-1]) >= numel:
            raise errors.DiffError(
                errors.INDEX_OUT_OF_RANGE,
                f"{name!r} has index {int(part.indices[-1])} but the parameter has {numel} entries",
            )

    if meta.task_type is None:
        if diff.dense:  # (head_from_base without task_type is refused by the metadata itself)
            raise errors.DiffError(errors.BAD_METADATA, "the diff has dense head tensors but no task_type to build them for")
        if meta.kind is DiffKind.TASK:
            raise errors.DiffError(errors.BAD_LAYOUT, "a task diff must carry its head under dense/")
        return
    layout = head_layout(spec, meta.task_type, max(len(meta.labels), 2))
    for name, t in diff.dense.items():
        expected = layout.shapes.get(name)
        if expected is None:
            raise errors.DiffError(
                errors.UNKNOWN_TENSOR, f"dense tensor {name!r} is not a {meta.task_type.value} head parameter"
            )
        if tuple(t.shape) != expected:
            raise errors.DiffError(
                errors.HEAD_SHAPE, f"dense tensor {name!r} has shape {tuple(t.shape)}, the head needs {expected}"
            )
    for name, source in meta.head_from_base.items():
        if name in diff.dense or name not in layout.shapes:
            raise errors.DiffError(
                errors.BAD_METADATA, f"head_from_base names {name!r}, which is stored or not a {meta.task_type.value} head parameter"
            )
        if spec.param_shapes.get(source) != layout.shapes[name]:
            raise errors.DiffError(
                errors.HEAD_SHAPE, f"head_from_base: base parameter {source!r} does not exist or does not have {name!r}'s shape"
            )
    missing = sorted(layout.required - diff.dense.keys() - meta.head_from_base.keys())
    if missing:
        provided = " (the base checkpoint provides no pretrained head)" if meta.task_type is TaskType.FILL_MASK else ""
        raise errors.DiffError(
            errors.BAD_LAYOUT, f"the {meta.task_type.value} head is missing {missing[0]!r}{provided}"
        )


def validate_diff_bytes(
    data: bytes, spec: BaseSpec, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, check_fingerprint: bool = True
) -> SparseDiff:
    """Parse and fully validate a diff for ``spec``; raises :class:`errors.DiffError`."""
    diff = parse_diff(data, max_bytes=max_bytes)
    check_against_base(diff, spec, check_fingerprint=check_fingerprint)
    return diff
