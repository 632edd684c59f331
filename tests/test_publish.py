"""The gate into the registry: every refusal class leaves Redis and the blob store untouched."""

from __future__ import annotations

import struct

import pytest
import torch

from diffs_store import errors
from diffs_store.publish import validate_and_publish
from diffs_store.registry import Registry
from tests.support import random_diff, tiny_base
from tests.test_format import PARAM, good_task, task_with

I32 = torch.int32


def bad_files(base) -> dict[str, tuple[bytes, str]]:
    good = good_task(base).to_bytes()
    other_model, other_spec = tiny_base(seed=99)
    dense = dict(good_task(base).dense)
    wrong_head = {**dense, "classifier.weight": torch.zeros(3, 16)}
    return {
        "not safetensors": (b"\x10" + b"\x00" * 7 + b"this is no json!", errors.NOT_SAFETENSORS),
        "truncated": (good[:-10], errors.TRUNCATED),
        "oversized header": (struct.pack("<Q", 1 << 40) + b"{}", errors.HEADER_TOO_LARGE),
        "unknown tensor": (task_with(base, {"encoder.nope.weight": (torch.tensor([0], dtype=I32), torch.ones(1))}), errors.UNKNOWN_TENSOR),
        "out of range": (task_with(base, {PARAM: (torch.tensor([256], dtype=I32), torch.ones(1))}), errors.INDEX_OUT_OF_RANGE),
        "unsorted": (task_with(base, {PARAM: (torch.tensor([5, 3], dtype=I32), torch.ones(2))}), errors.UNSORTED_INDICES),
        "duplicated": (task_with(base, {PARAM: (torch.tensor([3, 3], dtype=I32), torch.ones(2))}), errors.UNSORTED_INDICES),
        "length mismatch": (task_with(base, {PARAM: (torch.tensor([1, 2], dtype=I32), torch.ones(3))}), errors.LENGTH_MISMATCH),
        "head shape": (task_with(base, {}, wrong_head), errors.HEAD_SHAPE),
        "non-finite": (task_with(base, {PARAM: (torch.tensor([1], dtype=I32), torch.tensor([float("inf")]))}), errors.NON_FINITE),
        "dtype": (task_with(base, {PARAM: (torch.tensor([1], dtype=I32), torch.ones(1, dtype=torch.float64))}), errors.BAD_DTYPE),
        "fingerprint": (random_diff(other_model, other_spec).to_bytes(), errors.FINGERPRINT_MISMATCH),
        "contradictory metadata": (task_with(base, {}, kind="language"), errors.BAD_METADATA),
    }


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def snapshot(registry: Registry, tmp_path) -> tuple:
    keys = sorted(registry.redis.keys("*"))
    dump = {k: registry.redis.dump(k) for k in keys}
    blobs = sorted(str(p) for p in (tmp_path / "blobs").rglob("*") if p.is_file())
    return dump, blobs


def test_every_refusal_class_stores_nothing(base, registry, tmp_path):
    _, spec = base
    validate_and_publish(registry, random_diff(*base, seed=3).to_bytes(), spec)  # something already there
    before = snapshot(registry, tmp_path)
    cases = bad_files(base)
    for label, (data, code) in cases.items():
        with pytest.raises(errors.DiffError) as info:
            validate_and_publish(registry, data, spec)
        assert info.value.code == code, f"{label}: {info.value}"
        assert snapshot(registry, tmp_path) == before, label
    with pytest.raises(errors.DiffError) as info:
        good = good_task(base).to_bytes()
        validate_and_publish(registry, good, spec, max_bytes=len(good) - 1)
    assert info.value.code == errors.FILE_TOO_LARGE
    assert snapshot(registry, tmp_path) == before
