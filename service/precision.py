"""Which floating-point precision serving runs in when ``CSFT_DTYPE=auto``.

Half precision halves the bytes every forward pass and every patch moves, but only pays
where the hardware computes in it natively: bfloat16 on CPUs with bf16 dot-product
instructions (x86 AVX512-BF16 or AMX; Arm's BF16 extension), float16 on CUDA, float32
everywhere else (emulated bf16 matmuls are slower than fp32). The patcher restores the
base bit-exactly in each of the three (``tests/test_patcher.py``).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _torch_cpu_flag(name: str) -> bool:
    """torch's own cpuinfo probe (``torch.cpu._is_*_supported``); private, so absent is False."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # a probe that cannot run on this build says nothing
        return False


def _arm_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Arm Linux lists the BF16 extension as the ``bf16`` feature; torch has no probe for it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.lower().startswith("features") and "bf16" in line.split(":", 1)[-1].split()
               for line in text.splitlines())


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matrix products in hardware."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return _torch_cpu_flag("_is_avx512_bf16_supported") or _torch_cpu_flag("_is_amx_tile_supported")
    if machine in ("aarch64", "arm64"):
        return _arm_bf16()
    return False


def auto_dtype(device: str) -> str:
    """The serving dtype ``auto`` stands for on ``device`` ("cpu" or "cuda[:n]")."""
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def resolve_dtype(setting: str, device: str) -> str:
    """``setting`` itself unless it is ``auto``; then :func:`auto_dtype` (logged, so the
    choice is visible in the server's log as well as in ``/v1/info``)."""
    if setting != "auto":
        return setting
    chosen = auto_dtype(device)
    log.info("CSFT_DTYPE=auto: serving in %s on %s", chosen, device)
    return chosen
