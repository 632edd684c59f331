"""The diff file: round trips and one test per refusal class."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from diffs_store import errors
from diffs_store.format import SparseDiff, SparseTensorDiff, diff_id, parse_diff, read_metadata
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType, normalise_language
from diffs_store.validate import validate_diff_bytes
from tests.support import random_diff, tiny_base

PARAM = "encoder.layer.0.attention.self.query.weight"  # 16 x 16 in the tiny base


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def header_of(diff: SparseDiff) -> dict[str, str]:
    return diff.meta.to_header()


def raw_file(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> bytes:
    """Write a safetensors file bypassing our serialiser, to craft malformed diffs."""
    return st_save(tensors, metadata=header)


def good_task(base) -> SparseDiff:
    model, spec = base
    return random_diff(model, spec, DiffKind.TASK, seed=7)


def task_with(base, sparse: dict, dense: dict | None = None, **meta_updates) -> bytes:
    good = good_task(base)
    tensors: dict[str, torch.Tensor] = {}
    for name, (idx, val) in sparse.items():
        tensors[f"indices/{name}"] = idx
        tensors[f"values/{name}"] = val
    for name, t in (good.dense if dense is None else dense).items():
        tensors[f"dense/{name}"] = t
    nnz = sum(v[0].numel() for v in sparse.values())
    header = header_of(good)
    header["nnz"] = str(nnz)
    header.update(meta_updates)
    return raw_file(tensors, header)


# -- round trips -------------------------------------------------------------------------------


def test_round_trip_language_and_task(base):
    model, spec = base
    for diff in (random_diff(model, spec), good_task(base)):
        data = diff.to_bytes()
        back = validate_diff_bytes(data, spec)
        assert back.meta == diff.meta.model_copy(update={"nnz": diff.nnz})
        assert back.sparse.keys() == diff.sparse.keys()
        for name, part in diff.sparse.items():
            assert torch.equal(back.sparse[name].indices, part.indices)
            assert torch.equal(back.sparse[name].values, part.values)
        for name, t in diff.dense.items():
            assert torch.equal(back.dense[name], t)
        assert diff_id(data) == diff_id(back.to_bytes())  # stable bytes -> stable id


@settings(max_examples=40, deadline=None)
@given(
    numel=st.integers(1, 300),
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_round_trip_random_sparse(base, numel, data, dtype):
    _, spec = base
    positions = data.draw(st.lists(st.integers(0, numel - 1), unique=True, max_size=numel))
    idx = torch.tensor(sorted(positions), dtype=torch.int64)
    vals = torch.tensor(
        data.draw(st.lists(st.floats(-1e3, 1e3, width=16), min_size=len(positions), max_size=len(positions))),
        dtype=torch.float32,
    ).to(dtype)
    meta = DiffMetadata(kind=DiffKind.LANGUAGE, language="sw", base_model="x", base_fingerprint=spec.fingerprint, nnz=0)
    diff = SparseDiff(meta, {"p": SparseTensorDiff(idx, vals)})
    raw = diff.to_bytes()
    back = parse_diff(raw)
    assert back.sparse["p"].indices.tolist() == idx.tolist()
    assert back.sparse["p"].values.dtype == dtype
    assert torch.equal(back.sparse["p"].values, vals)
    assert read_metadata(raw).nnz == len(positions)


def test_language_tags_are_normalised():
    assert normalise_language("HAU") == "hau"
    assert normalise_language("pt_br") == "pt-BR"
    assert normalise_language("sr-latn-rs") == "sr-Latn-RS"
    with pytest.raises(ValueError, match="not a language tag"):
        normalise_language("english!")


# -- refusals: one per class ------------------------------------------------------------------


def refused(data: bytes, spec, code: str, **kw) -> errors.DiffError:
    with pytest.raises(errors.DiffError) as info:
        validate_diff_bytes(data, spec, **kw)
    assert info.value.code == code, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def test_refuses_not_safetensors(base):
    refused(b"\x10\x00\x00\x00\x00\x00\x00\x00this is no json!", base[1], errors.NOT_SAFETENSORS)
    refused(b"tiny", base[1], errors.NOT_SAFETENSORS)


def test_refuses_truncated(base):
    data = good_task(base).to_bytes()
    refused(data[:-10], base[1], errors.TRUNCATED)
    refused(data[:20], base[1], errors.TRUNCATED)


def test_refuses_oversized_header(base):
    refused(struct.pack("<Q", 1 << 40) + b"{}", base[1], errors.HEADER_TOO_LARGE)


def test_refuses_file_above_cap(base):
    data = good_task(base).to_bytes()
    err = refused(data, base[1], errors.FILE_TOO_LARGE, max_bytes=len(data) - 1)
    assert str(len(data) - 1) in str(err)


def test_refuses_unknown_tensor(base):
    data = task_with(base, {"encoder.layer.9.nope.weight": (torch.tensor([0], dtype=torch.int32), torch.ones(1))})
    assert "encoder.layer.9.nope.weight" in str(refused(data, base[1], errors.UNKNOWN_TENSOR))


def test_refuses_index_out_of_range(base):
    data = task_with(base, {PARAM: (torch.tensor([3, 256], dtype=torch.int32), torch.ones(2))})
    refused(data, base[1], errors.INDEX_OUT_OF_RANGE)
    data = task_with(base, {PARAM: (torch.tensor([-1, 3], dtype=torch.int32), torch.ones(2))})
    refused(data, base[1], errors.INDEX_OUT_OF_RANGE)


def test_refuses_unsorted_and_duplicate_indices(base):
    refused(task_with(base, {PARAM: (torch.tensor([5, 3], dtype=torch.int32), torch.ones(2))}), base[1], errors.UNSORTED_INDICES)
    refused(task_with(base, {PARAM: (torch.tensor([3, 3], dtype=torch.int32), torch.ones(2))}), base[1], errors.UNSORTED_INDICES)


def test_refuses_length_mismatch(base):
    refused(task_with(base, {PARAM: (torch.tensor([1, 2, 3], dtype=torch.int32), torch.ones(2))}), base[1], errors.LENGTH_MISMATCH)


def test_refuses_head_of_wrong_shape(base):
    good = good_task(base)
    dense = dict(good.dense)
    dense["classifier.weight"] = torch.zeros(3, 16)  # the task has 5 labels
    refused(task_with(base, {}, dense), base[1], errors.HEAD_SHAPE)


def test_refuses_non_finite(base):
    refused(task_with(base, {PARAM: (torch.tensor([1], dtype=torch.int32), torch.tensor([float("nan")]))}), base[1], errors.NON_FINITE)
    dense = dict(good_task(base).dense)
    dense["classifier.bias"] = torch.full_like(dense["classifier.bias"], float("inf"))
    refused(task_with(base, {}, dense), base[1], errors.NON_FINITE)


def test_refuses_disallowed_dtypes(base):
    refused(task_with(base, {PARAM: (torch.tensor([1]).to(torch.float32), torch.ones(1))}), base[1], errors.BAD_DTYPE)
    refused(task_with(base, {PARAM: (torch.tensor([1], dtype=torch.int32), torch.ones(1, dtype=torch.float64))}), base[1], errors.BAD_DTYPE)


def test_refuses_fingerprint_mismatch(base):
    other_model, other_spec = tiny_base(seed=99)
    data = random_diff(other_model, other_spec).to_bytes()
    err = refused(data, base[1], errors.FINGERPRINT_MISMATCH)
    assert "tiny-bert" in str(err)


def test_refuses_missing_metadata(base):
    refused(st_save({"indices/x": torch.tensor([1], dtype=torch.int32), "values/x": torch.ones(1)}), base[1], errors.BAD_METADATA)
    header = header_of(good_task(base))
    del header["base_fingerprint"]
    refused(raw_file({}, header), base[1], errors.BAD_METADATA)


@pytest.mark.parametrize(
    "update, fragment",
    [
        ({"kind": "language", "task": "ner"}, "language"),
        ({"task_type": "fill-mask"}, "fill-mask"),
        ({"labels": json.dumps(["O", "O"])}, "duplicates"),
        ({"labels": "not json"}, "JSON"),
        ({"nnz": "12345"}, "nnz"),
        ({"format_version": "9"}, "format_version"),
        ({"language": "english!"}, "language"),
        ({"kind": "adapter"}, "kind"),
    ],
)
def test_refuses_contradictory_metadata(base, update, fragment):
    data = task_with(base, {PARAM: (torch.tensor([1], dtype=torch.int32), torch.ones(1))}, **update)
    assert fragment in str(refused(data, base[1], errors.BAD_METADATA))


def test_refuses_stray_and_unpaired_tensors(base):
    header = header_of(good_task(base))
    header["nnz"] = "1"
    refused(raw_file({"weights/x": torch.ones(1)}, header), base[1], errors.BAD_LAYOUT)
    refused(raw_file({f"indices/{PARAM}": torch.tensor([1], dtype=torch.int32)}, header), base[1], errors.BAD_LAYOUT)


def test_task_diff_needs_its_head(base):
    refused(task_with(base, {}, dense={}), base[1], errors.BAD_LAYOUT)


def test_metadata_only_read_does_not_touch_tensors(base):
    data = good_task(base).to_bytes()
    meta = read_metadata(data)
    assert meta.task == "ner" and meta.task_type is TaskType.TOKEN_CLASSIFICATION
    assert meta.labels == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
