"""Import and export composable-sft ``pytorch_diff.bin`` files (the LT-SFT reference code).

The reference (cambridgeltl/composable-sft, ``src/sft/sft.py``) ``torch.save``s
``{"diffs": {name: {"size", "index_steps", "values"}}, "abs": {name: tensor}}`` where

* names are the *task model's* names (``bert.encoder...``, ``roberta.encoder...``);
* flat indices are **column-major** (``multipliers = cumprod([1] + size[:-1])``, so the first
  dimension is fastest), sorted and gap-coded: ``index_steps[0]`` is absolute, the rest are
  differences. ``index_steps`` is a Python *list* whose first item is a numpy int64 scalar
  (``indices[0]`` of a numpy array) and whose other items are ints (``.tolist()``), which is
  why ``torch.load(weights_only=True)`` refuses these files;
* ``values`` follow that column-major order;
* ``abs`` holds whole tensors of parameters that were trained densely, in practice the head
  (``classifier.*``, ``qa_outputs.*``, the MLM head ``cls.predictions.*`` / ``lm_head.*``).
  On a CPU-trained model they are pickled as ``nn.Parameter``.

A pickle is code, so these files are read by :class:`RestrictedUnpickler`, which reads the
torch zip archive itself and resolves only a handful of globals. There is no fallback to
ordinary unpickling. Everything imported then passes the same gate as a native diff
(:func:`diffs_store.validate.validate_diff_bytes`).
"""

from __future__ import annotations

import codecs
import collections
import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch._utils
from pydantic import ValidationError

from diffs_store import errors
from diffs_store.base import BaseSpec, build_task_model
from diffs_store.format import DEFAULT_MAX_FILE_BYTES, DENSE_DTYPES, SparseDiff, SparseTensorDiff
from diffs_store.heads import head_layout
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType
from diffs_store.validate import validate_diff_bytes

REFERENCE_FILE_NAME = "pytorch_diff.bin"
RECIPE = {"imported_from": "composable-sft pytorch_diff.bin"}

# numpy 2 moved numpy.core to numpy._core; files written under either name must load.
_NP_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
# Legacy storage class names torch.save writes into persistent ids, mapped to dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
}


def _refuse(message: str) -> errors.DiffError:
    return errors.DiffError(errors.BAD_REFERENCE, message)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``; allow only that."""
    if encoding != "latin1":
        raise _refuse(f"refused pickle global _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, hooks: Any,
                    metadata: Any = None) -> torch.Tensor:
    """torch's own rebuild, refusing views that claim more bytes than their storage holds: a
    zero stride would otherwise turn a few stored bytes into terabytes further on."""
    t = torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata)
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        raise _refuse(f"a tensor of shape {tuple(t.shape)} claims more data than its storage holds")
    return t


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.Tensor:
    """``abs`` tensors of a CPU-trained model are pickled as ``nn.Parameter``, with their
    Python attributes (transformers marks ``_is_hf_initialized``) when they have any. Only
    the data is wanted: attributes and hooks are dropped, never set."""
    if not isinstance(data, torch.Tensor):
        raise _refuse(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: only the dtype, nothing callable."""

    dtype: torch.dtype


# Everything the reference layout needs, and nothing else.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip archive through a whitelist of globals.

    Tensor storages are read from the archive here (always onto the CPU), so torch.load,
    with its TorchScript and legacy-tar code paths, is never involved.
    """

    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self._archive, self._root = archive, root
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) not in _ALLOWED:
            raise _refuse(f"refused pickle global {module}.{name}: only tensors, torch.Size and numpy "
                          "integer scalars may appear in a pytorch_diff.bin")
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> torch.storage.TypedStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _refuse(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}data/{key}")
            if len(raw) != numel * stype.dtype.itemsize:
                raise _refuse(f"storage {key!r} has {len(raw)} bytes, expected {numel} x {stype.dtype}")
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=stype.dtype, _internal=True)
        return self._storages[key]


def load_reference_pickle(data: bytes, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Any:
    """The object stored in a torch zip archive, via :class:`RestrictedUnpickler` only."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _refuse("not a torch zip archive (torch.save >= 1.6); legacy formats are not supported") from None
    with archive:
        names = archive.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise _refuse(f"expected one <archive>/data.pkl in the zip, found {len(pkls)}")
        root = pkls[0][: -len("data.pkl")]
        if sum(info.file_size for info in archive.infolist()) > max_bytes:  # zip bombs
            raise errors.DiffError(errors.FILE_TOO_LARGE, f"archive unpacks to more than {max_bytes} bytes")
        if root + "byteorder" in names and archive.read(root + "byteorder") != b"little":
            raise _refuse("big-endian archives are not supported")
        try:
            return RestrictedUnpickler(io.BytesIO(archive.read(pkls[0])), archive, root).load()
        except errors.DiffError:
            raise
        except Exception as exc:  # malformed pickle or arguments: never retried another way
            raise _refuse(f"cannot unpickle {pkls[0]}: {type(exc).__name__}: {exc}") from None


def _strides(shape: Sequence[int], order: str) -> list[int]:
    """Element strides of a contiguous tensor: "C" row-major (last dim fastest), "F" column-major."""
    dims = list(shape) if order == "F" else list(reversed(shape))
    strides, acc = [], 1
    for d in dims:
        strides.append(acc)
        acc *= d
    return strides if order == "F" else strides[::-1]


def _reflatten(flat: torch.Tensor, shape: Sequence[int], src: str, dst: str) -> torch.Tensor:
    """Flat indices in ``src`` order -> multi-index -> flat indices in ``dst`` order."""
    out = torch.zeros_like(flat)
    for d, s_src, s_dst in zip(shape, _strides(shape, src), _strides(shape, dst)):
        out += (flat // s_src) % d * s_dst
    return out


def _float_tensor(where: str, obj: Any) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor) or obj.layout is not torch.strided:
        raise _refuse(f"{where} is {type(obj).__name__}, expected a dense tensor")
    if obj.dtype not in DENSE_DTYPES.values():
        raise errors.DiffError(errors.BAD_DTYPE, f"{where} has dtype {obj.dtype}; expected float32/16 or bfloat16")
    return obj.detach()


def _index_steps(where: str, obj: Any) -> torch.Tensor:
    """``index_steps`` as int64: the reference's list (numpy scalar + ints) or an int tensor."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 1 and obj.dtype in (torch.int32, torch.int64):
            return obj.detach().to(torch.int64)
    # Items are checked first: nested lists shared through the pickle memo could be tiny on
    # disk yet enormous once numpy expands them.
    elif isinstance(obj, (list, tuple)) and all(type(s) is int or isinstance(s, np.integer) for s in obj):
        try:
            return torch.from_numpy(np.asarray(obj, dtype=np.int64))
        except (OverflowError, ValueError):
            pass
    raise _refuse(f"{where} index_steps must be a 1-D list or tensor of integers")


def _decode(name: str, enc: Any, shape: tuple[int, ...]) -> SparseTensorDiff:
    """One reference encoding -> sorted row-major indices and the values moved with them."""
    if not isinstance(enc, dict) or set(enc) != {"size", "index_steps", "values"}:
        raise _refuse(f"diffs entry {name!r} must hold exactly size, index_steps and values")
    if not isinstance(enc["size"], (tuple, list)) or tuple(enc["size"]) != shape:
        raise _refuse(f"diffs entry {name!r} has size {enc['size']!r}, the base parameter is {shape}")
    steps = _index_steps(name, enc["index_steps"])
    values = _float_tensor(f"values of {name!r}", enc["values"])
    if values.dim() != 1 or values.numel() != steps.numel():
        raise errors.DiffError(errors.LENGTH_MISMATCH, f"{name!r} has {steps.numel()} index steps "
                               f"but values of shape {tuple(values.shape)}")
    numel = math.prod(shape)
    if steps.numel():
        # Bounding every step keeps the cumulative sum far from int64 overflow.
        if int(steps[0]) < 0 or int(steps.max()) >= numel:
            raise errors.DiffError(errors.INDEX_OUT_OF_RANGE, f"{name!r} has an index step outside [0, {numel})")
        if bool((steps[1:] <= 0).any()):
            raise errors.DiffError(errors.UNSORTED_INDICES, f"{name!r} index steps after the first must be positive")
    column_major = torch.cumsum(steps, 0)
    if column_major.numel() and int(column_major[-1]) >= numel:
        raise errors.DiffError(errors.INDEX_OUT_OF_RANGE,
                               f"{name!r} has index {int(column_major[-1])} but the parameter has {numel} entries")
    row_major = _reflatten(column_major, shape, src="F", dst="C")
    order = torch.argsort(row_major)
    return SparseTensorDiff(row_major[order], values[order])


def _model_prefix(spec: BaseSpec, task_type: TaskType | None, names: Sequence[str]) -> str:
    """The task model's base prefix (``bert``, ``roberta``, ``distilbert``): the reference
    names parameters as the task model does. Falls back to the diffs' common first component."""
    try:
        return build_task_model(spec.config, task_type or TaskType.FILL_MASK, device="meta").base_model_prefix
    except Exception:  # an architecture without that head class
        firsts = {n.split(".", 1)[0] for n in names}
        if len(firsts) != 1:
            raise _refuse("cannot tell the base-model prefix from the file; pass base_model_prefix") from None
        return firsts.pop()


def _base_has_mlm_head(spec: BaseSpec) -> bool:
    """Whether the base checkpoint alone completes a fill-mask head (mBERT, XLM-R)."""
    try:
        return not head_layout(spec, TaskType.FILL_MASK).required
    except Exception:  # an architecture without a masked-LM class
        return False


def fetch_reference(name_or_path: str | Path) -> Path:
    """A local ``pytorch_diff.bin`` (or its directory), else a model-hub repository id
    (``cambridgeltl/xlmr-lang-sft-sw-small``) fetched with ``huggingface_hub``, which
    uses the user's cache and honours ``HF_HUB_OFFLINE``. Raises ``FileNotFoundError``
    with one line naming what was tried."""
    path = Path(name_or_path)
    if path.exists():
        return path / REFERENCE_FILE_NAME if path.is_dir() else path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(hf_hub_download(repo_id=str(name_or_path), filename=REFERENCE_FILE_NAME))
    except HFValidationError:
        raise FileNotFoundError(f"{name_or_path} is neither a file, a directory nor a model-hub name") from None
    except Exception as exc:  # offline and not cached, no such repository, network errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FileNotFoundError(f"cannot fetch {REFERENCE_FILE_NAME} of {name_or_path!r} from the model hub: {first}") from None


def import_reference(
    data_or_path: bytes | str | Path,
    spec: BaseSpec,
    *,
    kind: DiffKind,
    language: str | None = None,
    task: str | None = None,
    task_type: TaskType | None = None,
    labels: Sequence[str] = (),
    base_model_prefix: str | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> SparseDiff:
    """Convert a composable-sft SFT (file, its directory, or bytes) into a validated diff.

    ``abs`` entries become ``dense/`` heads. A language SFT gets task_type fill-mask when
    it brings MLM head tensors or the base checkpoint has a pretrained MLM head: the head is
    then what ``SFT.apply(AutoModelForMaskedLM.from_pretrained(base))`` gives, the tensors
    the SFT lacks coming from the checkpoint (see :mod:`diffs_store.heads`). ``abs`` entries under the base prefix are refused: the reference only puts
    heads there, and a whole base tensor is not a sparse delta.
    """
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        data = bytes(data_or_path)
    else:
        path = Path(data_or_path)
        path = path / REFERENCE_FILE_NAME if path.is_dir() else path
        if path.stat().st_size > max_bytes:
            raise errors.DiffError(errors.FILE_TOO_LARGE, f"{path} is above the cap of {max_bytes} bytes")
        data = path.read_bytes()
    tree = load_reference_pickle(data, max_bytes=max_bytes)
    if not isinstance(tree, dict) or not set(tree) <= {"diffs", "abs"}:
        raise _refuse("the file must hold a dict with keys 'diffs' and/or 'abs'")
    diffs, abs_ = tree.get("diffs", {}), tree.get("abs", {})
    if not all(isinstance(d, dict) and all(isinstance(k, str) for k in d) for d in (diffs, abs_)):
        raise _refuse("'diffs' and 'abs' must be dicts keyed by parameter name")
    if kind is DiffKind.LANGUAGE and task_type is None and (abs_ or _base_has_mlm_head(spec)):
        task_type = TaskType.FILL_MASK  # the reference's SFT.apply on the masked-LM model
    prefix = (base_model_prefix or _model_prefix(spec, task_type, list(diffs))).rstrip(".") + "."

    sparse: dict[str, SparseTensorDiff] = {}
    for name, enc in diffs.items():
        if not name.startswith(prefix):
            raise _refuse(f"diffs entry {name!r} is outside the base model ({prefix!r}); "
                          "heads can only be imported whole, from 'abs'")
        base_name = name[len(prefix):]
        if base_name not in spec.param_shapes:
            raise errors.DiffError(errors.UNKNOWN_TENSOR, f"parameter {base_name!r} does not exist in the base model")
        sparse[base_name] = _decode(name, enc, spec.param_shapes[base_name])
    dense: dict[str, torch.Tensor] = {}
    for name, value in abs_.items():
        if name.startswith(prefix):
            raise _refuse(f"abs entry {name!r} is a whole base-model tensor; only heads are imported")
        dense[name] = _float_tensor(f"abs entry {name!r}", value)

    try:
        meta = DiffMetadata(
            kind=kind, base_model=spec.name, base_fingerprint=spec.fingerprint,
            nnz=sum(len(s) for s in sparse.values()), language=language, task=task,
            task_type=task_type, labels=tuple(labels), recipe=dict(RECIPE),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise errors.DiffError(errors.BAD_METADATA, f"{'.'.join(map(str, first['loc'])) or 'metadata'}: "
                               f"{first['msg']}") from None
    # Through the bytes, so an import is exactly what the store would later read back.
    return validate_diff_bytes(SparseDiff(meta, sparse, dense).to_bytes(), spec, max_bytes=max_bytes)


def export_reference(diff: SparseDiff, base_model_prefix: str, param_shapes: Mapping[str, Sequence[int]]) -> bytes:
    """``diff`` in the reference layout, as ``torch.save`` bytes (metadata is not carried).

    ``param_shapes`` (e.g. ``spec.param_shapes``) is needed because column-major positions
    depend on the shape. ``index_steps`` is written as an int64 tensor, which the reference's
    ``np.cumsum`` decodes like its own list and which ``weights_only`` loading accepts.
    """
    prefix = base_model_prefix.rstrip(".") + "."
    diffs: dict[str, dict[str, Any]] = {}
    for name, part in sorted(diff.sparse.items()):
        if name not in param_shapes:
            raise errors.DiffError(errors.UNKNOWN_TENSOR, f"parameter {name!r} does not exist in the base model")
        shape = tuple(param_shapes[name])
        column_major = _reflatten(part.indices.to(torch.int64), shape, src="C", dst="F")
        order = torch.argsort(column_major)
        column_major = column_major[order]
        steps = torch.cat([column_major[:1], column_major[1:] - column_major[:-1]])
        diffs[prefix + name] = {"size": torch.Size(shape), "index_steps": steps, "values": part.values[order]}
    # clone: torch.save writes a view's whole storage.
    tree = {"diffs": diffs, "abs": {name: t.detach().clone() for name, t in sorted(diff.dense.items())}}
    buf = io.BytesIO()
    torch.save(tree, buf)
    return buf.getvalue()
