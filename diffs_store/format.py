"""The sparse diff file: tensors + metadata in one safetensors file.

Layout (see docs/FORMAT.md):

* ``indices/<param>``: 1-D int32 (int64 for tensors of 2**31 entries or more), flat
  **row-major** positions in the base parameter ``<param>``, strictly increasing.
* ``values/<param>``: 1-D float32 (float16/bfloat16 allowed), the additive delta at those
  positions; same length as the indices.
* ``dense/<name>``: a tensor that *replaces* a head parameter (classifier, QA outputs, MLM
  head). Head names are the task model's own names outside the base-model prefix.

``<param>`` is the base-model name (``encoder.layer.0.attention.self.query.weight``, no
``bert.``/``roberta.`` prefix) so the same diff applies to any task model built on that base.

The diff id is the sha256 of the file bytes. This module parses and checks everything that
can be checked without a base model; :mod:`diffs_store.validate` checks the rest.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from diffs_store import errors
from diffs_store.blobs import blob_id
from diffs_store.json_limits import MAX_DEPTH, nesting_depth
from diffs_store.metadata import DiffMetadata

INDEX_PREFIX = "indices/"
VALUE_PREFIX = "values/"
DENSE_PREFIX = "dense/"

INDEX_DTYPES = {"I32": torch.int32, "I64": torch.int64}
VALUE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DENSE_DTYPES = VALUE_DTYPES

MAX_HEADER_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 2 * 1024**3


@dataclass
class SparseTensorDiff:
    """Additive delta for one base parameter at flat row-major ``indices``."""

    indices: torch.Tensor
    values: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())


@dataclass
class SparseDiff:
    """One language or task diff, in memory."""

    meta: DiffMetadata
    sparse: dict[str, SparseTensorDiff] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return sum(len(s) for s in self.sparse.values())

    def to_bytes(self) -> bytes:
        """Serialise; indices are stored as int32 when the parameter allows it."""
        tensors: dict[str, torch.Tensor] = {}
        for name, part in sorted(self.sparse.items()):
            idx = part.indices.to(torch.int64)
            small = idx.numel() == 0 or int(idx.max()) < 2**31
            tensors[INDEX_PREFIX + name] = idx.to(torch.int32 if small else torch.int64).contiguous()
            tensors[VALUE_PREFIX + name] = part.values.contiguous()
        for name, t in sorted(self.dense.items()):
            tensors[DENSE_PREFIX + name] = t.contiguous()
        meta = self.meta.model_copy(update={"nnz": self.nnz})
        return _canonical_header(st_save(tensors, metadata=meta.to_header()))

    def save(self, path: str | Path) -> str:
        """Write the file and return its diff id."""
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return diff_id(data)


def _canonical_header(data: bytes) -> bytes:
    """Rewrite the header with sorted keys so equal diffs give equal bytes (and ids).

    safetensors writes ``__metadata__`` in hash-map order, which changes from run to run;
    a content-addressed store wants one byte string per diff. Offsets are unchanged.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # keep the tensor data 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def diff_id(data: bytes) -> str:
    """A diff's id: the id of its file's blob (content addressing is the blob store's rule)."""
    return blob_id(data)


def _read_header(data: bytes, max_bytes: int) -> dict:
    """Parse the safetensors header ourselves so each malformation gets its own message."""
    if len(data) > max_bytes:
        raise errors.DiffError(errors.FILE_TOO_LARGE, f"file is {len(data)} bytes, above the cap of {max_bytes}")
    if len(data) < 8:
        raise errors.DiffError(errors.NOT_SAFETENSORS, f"file is {len(data)} bytes, too short to be safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise errors.DiffError(errors.HEADER_TOO_LARGE, f"header claims {n} bytes, above {MAX_HEADER_BYTES}")
    if 8 + n > len(data):
        raise errors.DiffError(errors.TRUNCATED, f"header claims {n} bytes but the file has {len(data) - 8}")
    raw = data[8 : 8 + n]
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:  # refused before parsing: the parser would recurse that deep
        raise errors.DiffError(
            errors.NESTED_TOO_DEEP, f"the header nests JSON {depth} levels deep; the limit is {MAX_DEPTH}"
        )
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.DiffError(errors.NOT_SAFETENSORS, "header is not JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise errors.DiffError(errors.NOT_SAFETENSORS, "header is not a JSON object: not a safetensors file")
    body = len(data) - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise errors.DiffError(errors.NOT_SAFETENSORS, f"tensor {name!r} has no data_offsets") from None
        if end > body:
            raise errors.DiffError(errors.TRUNCATED, f"tensor {name!r} ends at byte {end} but the data has {body}")
    return header


def _check_dtype(name: str, dtype: str, allowed: dict[str, torch.dtype], what: str) -> None:
    if dtype not in allowed:
        raise errors.DiffError(
            errors.BAD_DTYPE, f"{name!r} has dtype {dtype}; {what} must be one of {', '.join(allowed)}"
        )


def parse_diff(data: bytes, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> SparseDiff:
    """Parse and check a diff without a base model. Never unpickles anything.

    Checks: size cap, safetensors framing, metadata, tensor naming and pairing, dtypes,
    lengths, indices strictly increasing and non-negative, values finite, nnz.
    """
    header = _read_header(data, max_bytes)
    meta_header = header.get("__metadata__")
    meta = DiffMetadata.from_header(meta_header)

    # Dtypes from the header, before materialising anything.
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if name.startswith(INDEX_PREFIX):
            _check_dtype(name, dtype, INDEX_DTYPES, "indices")
        elif name.startswith(VALUE_PREFIX):
            _check_dtype(name, dtype, VALUE_DTYPES, "values")
        elif name.startswith(DENSE_PREFIX):
            _check_dtype(name, dtype, DENSE_DTYPES, "dense tensors")
        else:
            raise errors.DiffError(
                errors.BAD_LAYOUT, f"tensor {name!r} is not under indices/, values/ or dense/"
            )

    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise errors.DiffError(errors.NOT_SAFETENSORS, f"safetensors refused the file: {exc}") from None

    index_names = {k[len(INDEX_PREFIX) :] for k in tensors if k.startswith(INDEX_PREFIX)}
    value_names = {k[len(VALUE_PREFIX) :] for k in tensors if k.startswith(VALUE_PREFIX)}
    if index_names != value_names:
        odd = sorted(index_names ^ value_names)[0]
        raise errors.DiffError(errors.BAD_LAYOUT, f"parameter {odd!r} has indices or values but not both")

    sparse: dict[str, SparseTensorDiff] = {}
    for name in sorted(index_names):
        idx = tensors[INDEX_PREFIX + name]
        val = tensors[VALUE_PREFIX + name]
        if idx.dim() != 1 or val.dim() != 1:
            raise errors.DiffError(errors.BAD_LAYOUT, f"indices and values of {name!r} must be 1-D")
        if idx.numel() != val.numel():
            raise errors.DiffError(
                errors.LENGTH_MISMATCH,
                f"{name!r} has {idx.numel()} indices but {val.numel()} values",
            )
        idx = idx.to(torch.int64)
        if idx.numel():
            if int(idx[0]) < 0:
                raise errors.DiffError(errors.INDEX_OUT_OF_RANGE, f"{name!r} has a negative index {int(idx[0])}")
            steps = idx[1:] - idx[:-1]
            if steps.numel() and bool((steps <= 0).any()):
                pos = int(torch.nonzero(steps <= 0)[0, 0]) + 1
                raise errors.DiffError(
                    errors.UNSORTED_INDICES,
                    f"{name!r} indices must be strictly increasing (sorted, unique); position {pos} is not",
                )
        if not bool(torch.isfinite(val).all()):
            raise errors.DiffError(errors.NON_FINITE, f"values of {name!r} contain NaN or infinity")
        sparse[name] = SparseTensorDiff(idx, val)

    dense: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.startswith(DENSE_PREFIX):
            if not bool(torch.isfinite(t).all()):
                raise errors.DiffError(errors.NON_FINITE, f"{key!r} contains NaN or infinity")
            dense[key[len(DENSE_PREFIX) :]] = t

    diff = SparseDiff(meta=meta, sparse=sparse, dense=dense)
    if diff.nnz != meta.nnz:
        raise errors.DiffError(
            errors.BAD_METADATA, f"metadata nnz is {meta.nnz} but the file holds {diff.nnz} entries"
        )
    return diff


def load_diff(path: str | Path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> SparseDiff:
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise errors.DiffError(errors.FILE_TOO_LARGE, f"{p} is {size} bytes, above the cap of {max_bytes}")
    return parse_diff(p.read_bytes(), max_bytes=max_bytes)


def read_metadata(data: bytes, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> DiffMetadata:
    """Metadata only (cheap: no tensor is materialised)."""
    return DiffMetadata.from_header(_read_header(data, max_bytes).get("__metadata__"))
