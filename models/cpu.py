"""What this CPU can run fast: the instruction sets that the runtimes' choices depend on.

Read once per process from ``/proc/cpuinfo`` and from PyTorch's own kernel dispatch level. That
level can be lowered, never raised, by ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``,
``avx512``): ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 machine makes voicescreen choose, and its
tests skip, as on an AVX2-only one (torch and inductor then emit AVX2 code too; ONNX Runtime keeps
its own kernels, chosen by the CPU alone).

- ``native_bf16``: AVX-512 BF16 (Zen 4, Cooper Lake and later Xeons) or AMX-BF16 (Sapphire Rapids
  and later), at an AVX-512 dispatch level. Without it, bfloat16 runs on emulated kernels: correct,
  but slower than float32, and inductor's bf16 compile takes minutes instead of seconds.
- ``vnni``: AVX-512 VNNI or AVX-VNNI, the int8 dot products that make an int8 bundle fast.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The flags named in logs, cards and benchmark tables, in the order they are named.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
_AVX512_ONLY = ("avx512", "amx")  # flags an AVX2 dispatch level does not use


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, the ``FLAGS`` it has (as used at ``dispatch``), and torch's kernel
    dispatch level (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""

    model: str
    flags: frozenset[str]
    dispatch: str
    lowered: bool = False  # ATEN_CPU_CAPABILITY took flags away

    @property
    def native_bf16(self) -> bool:
        return self.dispatch.startswith("AVX512") and bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni"} & self.flags)

    @property
    def isa(self) -> str:
        """The class of CPU benchmarks and choices are stated for: ``avx512-bf16``, ``avx512``,
        ``avx2`` or ``baseline``."""
        if self.native_bf16:
            return "avx512-bf16"
        if "avx512f" in self.flags:
            return "avx512"
        return "avx2" if "avx2" in self.flags else "baseline"

    def describe(self) -> str:
        """``AMD EPYC (avx2, fma; torch AVX2)``: the model, the flags, the dispatch level."""
        flags = ", ".join(f for f in FLAGS if f in self.flags) or "no vector extensions"
        lowered = ", lowered by ATEN_CPU_CAPABILITY" if self.lowered else ""
        return f"{self.model} ({flags}; torch {self.dispatch}{lowered})"


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def parse_cpuinfo(text: str, dispatch: str) -> CpuInfo:
    """``CpuInfo`` from the text of ``/proc/cpuinfo`` and torch's dispatch level."""
    model, names = "", set()
    for line in text.splitlines():  # the first processor's lines: all are alike
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not names:
            names = set(value.split())
    model = model or platform.processor() or platform.machine()
    flags = frozenset(f for f in FLAGS if f in names)
    dispatch = dispatch.upper()
    if dispatch.startswith("AVX512"):
        kept = flags
    elif dispatch == "AVX2":
        kept = frozenset(f for f in flags if not f.startswith(_AVX512_ONLY))
    else:
        kept = frozenset()
    return CpuInfo(model=model, flags=kept, dispatch=dispatch, lowered=kept != flags)


def _dispatch() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


@cache
def cpu_info() -> CpuInfo:
    """This machine's ``CpuInfo`` (read once per process)."""
    return parse_cpuinfo(_cpuinfo_text(), _dispatch())
