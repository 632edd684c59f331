"""The compact transport form: indices exact, values float16-rounded (relative error at
most 2**-11 for values within 2**14 of the largest), heads exact, metadata unchanged, the
decoded diff deterministic (same id every time), malformed input refused."""

from __future__ import annotations

import lzma

import pytest
import torch

from diffs_store import compact, errors
from diffs_store.format import SparseDiff, SparseTensorDiff, diff_id, parse_diff
from diffs_store.metadata import DiffMetadata


def _diff(seed: int = 0) -> SparseDiff:
    g = torch.Generator().manual_seed(seed)
    sparse = {}
    for name, numel, k in (("encoder.w", 5_000_000, 40_000), ("embeddings.word", 3_000_000, 20_000), ("empty", 10, 0)):
        idx = torch.randperm(numel, generator=g)[:k].sort().values
        sparse[name] = SparseTensorDiff(idx, torch.randn(k, generator=g) * 10 ** torch.empty(k).uniform_(-5, -2, generator=g))
    meta = DiffMetadata(kind="task", language="en", task="ner", task_type="token-classification", labels=("O", "B-PER"),
                        base_model="b", base_fingerprint="sha256:" + "a" * 64, nnz=60_000, tags=("demo",))
    return SparseDiff(meta, sparse, {"classifier.weight": torch.randn(2, 8, generator=g)})


def test_round_trip():
    d = _diff()
    data = compact.encode(d)
    back = compact.decode(data)
    assert back.meta == d.meta and back.dense.keys() == d.dense.keys()
    assert torch.equal(back.dense["classifier.weight"], d.dense["classifier.weight"])
    for name, part in d.sparse.items():
        got = back.sparse[name]
        assert torch.equal(got.indices, part.indices.to(torch.int64)) and got.values.dtype == torch.float32
        if len(part):
            top = part.values.abs().max()
            close = part.values.abs() >= top * 2.0**-14
            rel = ((got.values - part.values).abs() / part.values.abs())[close]
            assert float(rel.max()) <= 2.0**-11
            assert float((got.values - part.values).abs().max()) <= float(top) * 2.0**-11  # at most half an ulp of the top
    assert len(data) < 3.5 * d.nnz  # vs 8 bytes an entry in the ordinary file


def test_decoding_is_deterministic_and_valid():
    data = compact.encode(_diff())
    a, b = compact.decode(data).to_bytes(), compact.decode(data).to_bytes()
    assert a == b and diff_id(a) == diff_id(b)
    parse_diff(a)  # an ordinary, valid diff file


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],
    lambda data: b"not xz at all",
    lambda data: lzma.compress(b"\x00" * 64),
])
def test_malformed_input_is_refused(damage):
    with pytest.raises(errors.DiffError):
        compact.decode(damage(compact.encode(_diff())))
