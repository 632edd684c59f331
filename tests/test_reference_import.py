"""Import/export of composable-sft ``pytorch_diff.bin`` files (diffs_store.reference_import).

Reference files are written here by the tests with ``torch.save``, encoded as composable-sft's
``encode_sparse_tensor`` does (column-major flat indices, sorted, gap-coded, the first step a
numpy int64 scalar and the rest Python ints, task-model names with the ``bert.``/``roberta.``
prefix), and decoded independently (numpy, Fortran order) to check positions.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle

import numpy as np
import pytest
import torch
from tests.support import random_diff, tiny_base, tiny_xlmr_config

from diffs_store import errors
from diffs_store.format import SparseDiff, SparseTensorDiff
from diffs_store.metadata import DiffKind, TaskType
from diffs_store.reference_import import RECIPE, export_reference, import_reference

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
WEIGHT = "encoder.layer.0.intermediate.dense.weight"  # shape (32, 16): not square


# -- the reference layout, written and read by the tests themselves -------------------------


def reference_encode(delta: torch.Tensor) -> dict:
    """A dense delta as the reference stores it (see the module docstring)."""
    sp = delta.to_sparse().coalesce()
    multipliers = np.cumprod([1] + list(delta.shape)[:-1], dtype=np.int64)  # first dim fastest
    flat = multipliers @ sp.indices().numpy().astype(np.int64)
    perm = np.argsort(flat, kind="stable")
    flat = flat[perm]
    steps = (flat[1:] - flat[:-1]).tolist()
    if len(flat):
        steps = [flat[0]] + steps  # np.int64, as in the reference
    return {"size": delta.size(), "index_steps": steps, "values": sp.values()[torch.from_numpy(perm)]}


def reference_dense(enc: dict) -> torch.Tensor:
    """Decode an encoding without our code: cumulative sum, then a Fortran-order unravel."""
    flat = np.cumsum(np.asarray(enc["index_steps"], dtype=np.int64))
    coords = np.unravel_index(flat, tuple(enc["size"]), order="F")
    out = torch.zeros(tuple(enc["size"]), dtype=enc["values"].dtype)
    out[tuple(torch.from_numpy(c) for c in coords)] = enc["values"]
    return out


def our_dense(part: SparseTensorDiff, shape) -> torch.Tensor:
    out = torch.zeros(int(np.prod(shape)), dtype=part.values.dtype)
    out[part.indices.to(torch.int64)] = part.values
    return out.view(tuple(shape))


def save_tree(tree) -> bytes:
    buf = io.BytesIO()
    torch.save(tree, buf)
    return buf.getvalue()


def to_reference(diff: SparseDiff, spec, prefix: str, parameter_heads: bool = False) -> bytes:
    """What composable-sft would save for ``diff``: encoded dense deltas plus ``abs`` heads
    (as ``nn.Parameter`` when ``parameter_heads``, as a CPU-trained model gives)."""
    diffs = {prefix + n: reference_encode(our_dense(p, spec.param_shapes[n])) for n, p in diff.sparse.items()}
    wrap = torch.nn.Parameter if parameter_heads else (lambda t: t)
    return save_tree({"diffs": diffs, "abs": {n: wrap(t.clone()) for n, t in diff.dense.items()}})


def load_tree(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)  # only for files the tests wrote


def assert_same(a: SparseDiff, b: SparseDiff) -> None:
    """Same positions, bit-identical values of the same dtype, same heads."""
    assert a.sparse.keys() == b.sparse.keys()
    for name, pa in a.sparse.items():
        pb = b.sparse[name]
        assert torch.equal(pa.indices.to(torch.int64), pb.indices.to(torch.int64)), name
        assert pa.values.dtype == pb.values.dtype, name
        assert torch.equal(pa.values.contiguous().view(torch.uint8), pb.values.contiguous().view(torch.uint8)), name
    assert a.dense.keys() == b.dense.keys()
    for name, t in a.dense.items():
        assert t.dtype == b.dense[name].dtype and torch.equal(t, b.dense[name]), name


@pytest.fixture(scope="module")
def bert():
    return tiny_base()


@pytest.fixture(scope="module")
def xlmr():
    return tiny_base(tiny_xlmr_config())


# -- positions and values ---------------------------------------------------------------------


def test_column_major_entries_land_at_row_major_positions(bert):
    _, spec = bert
    d0, d1 = spec.param_shapes[WEIGHT]
    assert (d0, d1) == (32, 16)
    # (3, 5) -> column-major 3 + 32*5 = 163; (30, 1) -> 30 + 32*1 = 62. Stored sorted: 62, 163.
    enc = {"size": torch.Size((d0, d1)), "index_steps": [np.int64(62), 163 - 62], "values": torch.tensor([-2.0, 7.0])}
    diff = import_reference(save_tree({"diffs": {"bert." + WEIGHT: enc}, "abs": {}}), spec,
                            kind=DiffKind.LANGUAGE, language="hau")
    part = diff.sparse[WEIGHT]
    assert part.indices.tolist() == [3 * d1 + 5, 30 * d1 + 1]  # row-major, sorted
    assert part.values.tolist() == [7.0, -2.0]  # moved with their positions
    assert diff.meta.task_type is None and diff.meta.recipe == RECIPE and diff.dense == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("parameter_heads", [False, True])
def test_language_sft_with_mlm_head(bert, dtype, parameter_heads):
    model, spec = bert
    original = random_diff(model, spec, DiffKind.LANGUAGE, language="hau")
    original.sparse = {n: SparseTensorDiff(p.indices, p.values.to(dtype)) for n, p in original.sparse.items()}
    assert any(n.startswith("cls.predictions.") for n in original.dense)
    data = to_reference(original, spec, "bert.", parameter_heads)
    tree = load_tree(data)
    assert all(n.startswith("bert.") for n in tree["diffs"])
    assert isinstance(next(iter(tree["diffs"].values()))["index_steps"][0], np.int64)

    diff = import_reference(data, spec, kind=DiffKind.LANGUAGE, language="hau")
    assert diff.meta.task_type is TaskType.FILL_MASK
    assert (diff.meta.base_model, diff.meta.base_fingerprint) == (spec.name, spec.fingerprint)
    assert diff.meta.nnz == original.nnz
    assert_same(diff, original)
    for name, enc in tree["diffs"].items():
        base_name = name.removeprefix("bert.")
        assert torch.equal(reference_dense(enc), our_dense(diff.sparse[base_name], enc["size"])), name


def test_task_sft_xlmr_roberta_prefix_from_directory(xlmr, tmp_path):
    model, spec = xlmr
    original = random_diff(model, spec, DiffKind.TASK, task="ner", labels=LABELS)
    (tmp_path / "pytorch_diff.bin").write_bytes(to_reference(original, spec, "roberta."))
    diff = import_reference(tmp_path, spec, kind=DiffKind.TASK, task="ner", language="hau",
                            task_type=TaskType.TOKEN_CLASSIFICATION, labels=LABELS)
    assert set(diff.dense) == {"classifier.weight", "classifier.bias"}
    assert diff.meta.labels == LABELS
    assert_same(diff, original)


def test_xlmr_language_sft_with_lm_head(xlmr):
    model, spec = xlmr
    original = random_diff(model, spec, DiffKind.LANGUAGE, language="sw")
    assert any(n.startswith("lm_head.") for n in original.dense)
    diff = import_reference(to_reference(original, spec, "roberta."), spec, kind=DiffKind.LANGUAGE, language="sw")
    assert diff.meta.task_type is TaskType.FILL_MASK
    assert_same(diff, original)


# -- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bert-task", "bert-language", "xlmr-language"])
def test_export_import_round_trip(bert, xlmr, case):
    (model, spec), prefix = (xlmr, "roberta") if case.startswith("xlmr") else (bert, "bert")
    if case.endswith("task"):
        kw = dict(kind=DiffKind.TASK, task="ner", language="hau", task_type=TaskType.TOKEN_CLASSIFICATION, labels=LABELS)
        original = random_diff(model, spec, DiffKind.TASK, task="ner", labels=LABELS)
    else:
        kw = dict(kind=DiffKind.LANGUAGE, language="hau")
        original = random_diff(model, spec, DiffKind.LANGUAGE, language="hau")
    data = export_reference(original, prefix, spec.param_shapes)

    tree = torch.load(io.BytesIO(data), weights_only=True)  # exports need no unsafe loading
    assert set(tree["abs"]) == set(original.dense)
    for name, enc in tree["diffs"].items():
        assert name.startswith(prefix + ".") and enc["index_steps"].dtype == torch.int64
        part = original.sparse[name.removeprefix(prefix + ".")]
        assert torch.equal(reference_dense(enc), our_dense(part, enc["size"])), name

    back = import_reference(data, spec, **kw)
    assert_same(back, original)
    assert (back.meta.kind, back.meta.task_type, back.meta.labels) == (
        original.meta.kind, original.meta.task_type, original.meta.labels)


# -- the restricted loader ----------------------------------------------------------------------


def test_weights_only_refuses_the_reference_layout(bert):
    """The reason for the restricted unpickler: torch's safe loader will not read these files."""
    model, spec = bert
    data = to_reference(random_diff(model, spec, DiffKind.LANGUAGE, with_head=False), spec, "bert.")
    with pytest.raises(pickle.UnpicklingError, match="scalar"):
        torch.load(io.BytesIO(data), weights_only=True)
    assert import_reference(data, spec, kind=DiffKind.LANGUAGE, language="hau").nnz > 0


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func,refused", [(os.system, f"{os.system.__module__}.system"), (builtins.exec, "__builtin__.exec")])
def test_forbidden_global_is_refused_without_side_effect(bert, tmp_path, func, refused):
    """Protocol 2 (torch.save's) spells builtins as __builtin__; either way nothing runs."""
    _, spec = bert
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    data = save_tree({"diffs": {}, "abs": {"classifier.weight": _Evil(func, arg)}})
    with pytest.raises(errors.DiffError) as exc:
        import_reference(data, spec, kind=DiffKind.LANGUAGE, language="hau")
    assert exc.value.code == errors.BAD_REFERENCE
    assert refused in exc.value.message
    assert not marker.exists()


# -- refusals -------------------------------------------------------------------------------------


def _enc(steps, values=None, size=(32, 16)):
    values = torch.ones(len(steps)) if values is None else values
    return {"size": torch.Size(size), "index_steps": steps, "values": values}


@pytest.mark.parametrize(
    "tree,code",
    [
        ({"diffs": {}, "abs": {"bert.embeddings.word_embeddings.weight": torch.zeros(120, 16)}}, errors.BAD_REFERENCE),
        ({"diffs": {"classifier.weight": _enc([np.int64(0)], size=(5, 16))}}, errors.BAD_REFERENCE),
        ({"diffs": {"bert." + WEIGHT: _enc([np.int64(0)], size=(16, 32))}}, errors.BAD_REFERENCE),
        ({"diffs": {"bert.encoder.layer.7.output.dense.bias": _enc([np.int64(0)], size=(16,))}}, errors.UNKNOWN_TENSOR),
        ({"diffs": {"bert." + WEIGHT: _enc([np.int64(4), 0])}}, errors.UNSORTED_INDICES),
        ({"diffs": {"bert." + WEIGHT: _enc([np.int64(500), 12])}}, errors.INDEX_OUT_OF_RANGE),
        ({"diffs": {"bert." + WEIGHT: _enc([np.int64(1), 2], torch.ones(3))}}, errors.LENGTH_MISMATCH),
        ({"diffs": {"bert." + WEIGHT: _enc([np.int64(1)], torch.ones(1, dtype=torch.float64))}}, errors.BAD_DTYPE),
        ({"diffs": {"bert." + WEIGHT: _enc([1.5])}}, errors.BAD_REFERENCE),
        ({"diffs": {}, "optimizer": {}}, errors.BAD_REFERENCE),
        ({"diffs": {}, "abs": {"classifier.weight": torch.zeros(5, 16)}}, errors.UNKNOWN_TENSOR),
        # 4 stored bytes viewed as 16 GB: refused before anything is allocated
        ({"diffs": {}, "abs": {"cls.predictions.bias": torch.zeros(1).expand(2**32)}}, errors.BAD_REFERENCE),
        ({"diffs": {"bert." + WEIGHT: _enc([np.int64(1), [2]])}}, errors.BAD_REFERENCE),
    ],
    ids=["abs-base-param", "sparse-head", "size", "unknown", "duplicate", "range", "length", "float64",
         "float-steps", "extra-key", "head-of-wrong-task", "stride-0-bomb", "nested-steps"],
)
def test_malformed_reference_files_are_refused(bert, tree, code):
    _, spec = bert
    with pytest.raises(errors.DiffError) as exc:
        import_reference(save_tree(tree), spec, kind=DiffKind.LANGUAGE, language="hau")
    assert exc.value.code == code, exc.value


def test_non_zip_and_bad_metadata_are_refused(bert):
    _, spec = bert
    with pytest.raises(errors.DiffError) as exc:
        import_reference(pickle.dumps({"diffs": {}}), spec, kind=DiffKind.LANGUAGE, language="hau")
    assert exc.value.code == errors.BAD_REFERENCE
    with pytest.raises(errors.DiffError) as exc:  # a task diff needs a task
        import_reference(save_tree({"diffs": {}}), spec, kind=DiffKind.TASK, task_type=TaskType.QUESTION_ANSWERING)
    assert exc.value.code == errors.BAD_METADATA
