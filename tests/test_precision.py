"""CSFT_DTYPE=auto: bf16 only where the CPU computes it natively, fp16 on CUDA, else fp32;
an explicit setting always wins."""

from __future__ import annotations

import pytest

from service import precision
from service.config import Settings


@pytest.fixture()
def cpu(monkeypatch):
    """Pretend to be a given CPU: machine name, torch's x86 probes, Arm's cpuinfo flags."""
    def set_cpu(machine: str, flags: set[str] = frozenset(), arm_features: str = "fp asimd"):
        monkeypatch.setattr(precision.platform, "machine", lambda: machine)
        monkeypatch.setattr(precision, "_torch_cpu_flag", lambda name: name in flags)
        monkeypatch.setattr(precision, "_arm_bf16", lambda: "bf16" in arm_features.split())
    return set_cpu


@pytest.mark.parametrize("machine, flags, arm, want", [
    ("x86_64", {"_is_avx512_bf16_supported"}, "", "bfloat16"),
    ("x86_64", {"_is_amx_tile_supported"}, "", "bfloat16"),
    ("x86_64", {"_is_avx512_supported", "_is_avx2_supported"}, "", "float32"),  # AVX-512 without BF16
    ("x86_64", set(), "", "float32"),
    ("aarch64", set(), "fp asimd sve bf16", "bfloat16"),
    ("aarch64", set(), "fp asimd", "float32"),
    ("riscv64", {"_is_avx512_bf16_supported"}, "bf16", "float32"),
])
def test_auto_on_cpu(cpu, machine, flags, arm, want):
    cpu(machine, flags, arm)
    assert precision.auto_dtype("cpu") == want
    assert Settings(dtype="auto", device="cpu").resolved_dtype() == want


def test_auto_on_cuda_is_half(cpu):
    cpu("x86_64", {"_is_avx512_bf16_supported"})
    assert precision.auto_dtype("cuda") == "float16" and precision.auto_dtype("cuda:1") == "float16"


@pytest.mark.parametrize("explicit", ["float32", "float16", "bfloat16"])
def test_explicit_setting_wins(cpu, explicit):
    cpu("x86_64", {"_is_avx512_bf16_supported"})
    assert Settings(dtype=explicit, device="cpu").resolved_dtype() == explicit


def test_default_setting_is_auto(monkeypatch):
    monkeypatch.delenv("CSFT_DTYPE", raising=False)
    assert Settings().dtype == "auto"


def test_arm_cpuinfo_is_parsed(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\n")
    assert precision._arm_bf16(info)
    info.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n")
    assert not precision._arm_bf16(info)
    assert not precision._arm_bf16(tmp_path / "absent")


def test_the_real_probe_agrees_with_cpuinfo():
    """On x86 Linux, torch's probe and the kernel's flags name the same capability."""
    from pathlib import Path

    if precision.platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists():
        pytest.skip("x86 Linux only")
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_tile" in flags
    assert precision.cpu_has_native_bf16() == native
