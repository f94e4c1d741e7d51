"""CPUs for the runtime planner's tests (``runtimes.plan``): parsed from ``/proc/cpuinfo`` lines,
so a test plans for a machine class whatever machine it runs on."""

from __future__ import annotations

from voicescreen.models.cpu import parse_cpuinfo
from voicescreen.runtimes import local
from voicescreen.runtimes import plan as planning

AVX2 = parse_cpuinfo("flags : avx2 fma\n", "AVX2")  # Zen 3 class
ZEN4 = parse_cpuinfo("flags : avx2 fma avx512f avx512_vnni avx512_bf16\n", "AVX512")
SKYLAKE = parse_cpuinfo("flags : avx2 fma avx512f\n", "AVX512")  # AVX-512 without BF16


def pretend_cpu_machine(monkeypatch) -> None:
    """No GPU and a C++ compiler, whatever this machine has."""
    monkeypatch.setattr(local, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(planning, "compiler_problem", lambda: None)
