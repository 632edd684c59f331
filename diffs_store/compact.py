"""A compact, lossy-by-declaration transport form of a diff, for shipping diffs inside the
repository (the demo's): about 3 bytes an entry instead of 8, decoded into an ordinary diff
file (:mod:`diffs_store.format`) before anything validates, stores or serves it.

Encoding, per sparse parameter:

* indices: the gaps between consecutive sorted indices (the first gap is the first index),
  as little-endian uint32, split into 4 byte planes (all lowest bytes, then the next...):
  most gaps fit one byte, so the upper planes are runs of zeros the compressor removes;
* values: float16 of ``value * 2**shift``, ``shift`` the power of two that puts the
  parameter's largest magnitude just under float16's largest finite number, so the small
  deltas of a diff keep float16's 11 significant bits instead of falling into its
  subnormals (bf16 would keep 8); scaling by a power of two is exact both ways. Split into
  2 byte planes. Dense head tensors are kept as they are (exact).

The planes, shifts and the diff's own metadata go into one safetensors file (no pickle),
compressed with LZMA (the standard library's ``lzma``, xz container). Decoding is
deterministic, so a compact file always yields the same diff bytes and the same diff id.
The precision lost is the float16 rounding of each value: a relative error of at most
2**-11 (about 0.05%) of the value for values within 2**14 of the parameter's largest.
"""

from __future__ import annotations

import json
import lzma

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from diffs_store import errors
from diffs_store.format import SparseDiff, SparseTensorDiff
from diffs_store.metadata import DiffMetadata

MAGIC = "csft-compact-1"
_F16_MAX_EXP = 15  # float16's largest finite number is just under 2**16; aim below 2**15
MAX_DECODED_BYTES = 1024**3  # a compact file never expands beyond this (decompression bomb)


def _planes(a: np.ndarray) -> np.ndarray:
    """(n,) little-endian words -> (width * n,) bytes, grouped by byte position."""
    width = a.dtype.itemsize
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<")).view(np.uint8).reshape(-1, width).T).reshape(-1)


def _unplanes(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    return np.ascontiguousarray(raw.reshape(width, -1).T).view(np.dtype(dtype).newbyteorder("<")).reshape(-1)


def _shift(values: np.ndarray) -> int:
    """The power of two scaling ``values`` into float16's range with headroom."""
    top = float(np.abs(values).max()) if values.size else 0.0
    if top == 0.0:
        return 0
    return _F16_MAX_EXP - int(np.floor(np.log2(top))) - 1


def encode(diff: SparseDiff, *, preset: int = 9) -> bytes:
    """The compact bytes of ``diff`` (its metadata travels unchanged)."""
    arrays: dict[str, np.ndarray] = {}
    shifts: dict[str, int] = {}
    for name, part in sorted(diff.sparse.items()):
        idx = part.indices.to(torch.int64).numpy()
        gaps = np.diff(idx, prepend=0)
        if gaps.size and int(gaps.max()) >= 2**32:
            raise ValueError(f"{name}: an index gap does not fit 32 bits")
        values = part.values.to(torch.float32).numpy()
        shifts[name] = s = _shift(values)
        arrays[f"gaps/{name}"] = _planes(gaps.astype(np.uint32))
        arrays[f"values/{name}"] = _planes(np.ldexp(values, s).astype(np.float16).view(np.uint16))
    for name, t in sorted(diff.dense.items()):
        arrays[f"dense/{name}"] = t.to(torch.float32).numpy()
    header = {"format": MAGIC, "meta": json.dumps(diff.meta.to_header(), sort_keys=True),
              "shifts": json.dumps(shifts, sort_keys=True)}
    return lzma.compress(np_save(arrays, metadata=header), preset=preset)


def decode(data: bytes) -> SparseDiff:
    """The diff a compact file holds, values in float32 (the float16 values, unscaled).
    Malformed input raises :class:`errors.DiffError`; the caller still validates the
    result against its base like any other diff."""
    try:
        raw = lzma.LZMADecompressor().decompress(data, max_length=MAX_DECODED_BYTES)
    except lzma.LZMAError as exc:
        raise errors.DiffError(errors.BAD_LAYOUT, f"not a compact diff (xz): {exc}") from None
    try:
        arrays = np_load(raw)
        header = _metadata(raw)
        if header.get("format") != MAGIC:
            raise errors.DiffError(errors.BAD_METADATA, f"compact format {header.get('format')!r}, expected {MAGIC!r}")
        meta = DiffMetadata.from_header(json.loads(header["meta"]))
        shifts = {k: int(v) for k, v in json.loads(header["shifts"]).items()}
    except (SafetensorError, KeyError, ValueError) as exc:
        raise errors.DiffError(errors.BAD_LAYOUT, f"not a compact diff: {exc}") from None
    sparse: dict[str, SparseTensorDiff] = {}
    for name, s in shifts.items():
        gaps = _unplanes(arrays[f"gaps/{name}"], np.uint32).astype(np.int64)
        halves = _unplanes(arrays[f"values/{name}"], np.uint16).view(np.float16)
        values = np.ldexp(halves.astype(np.float32), -s).astype(np.float32)
        sparse[name] = SparseTensorDiff(torch.from_numpy(np.cumsum(gaps)), torch.from_numpy(values))
    dense = {k.removeprefix("dense/"): torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith("dense/")}
    return SparseDiff(meta=meta, sparse=sparse, dense=dense)


def _metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
