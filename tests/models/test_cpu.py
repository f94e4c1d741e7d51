"""What the CPU can run: flags from /proc/cpuinfo, masked by torch's dispatch level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from voicescreen.models.cpu import cpu_info, parse_cpuinfo

ZEN4 = "fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vbmi2"
ZEN3 = "fpu sse2 avx avx2 fma bmi2 sha_ni"
SAPPHIRE = "avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8 avx_vnni"
SKYLAKE = "avx2 fma avx512f avx512bw avx512vl"


def cpuinfo(flags: str, model: str = "AMD EPYC 9R14") -> str:
    one = f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    return one + one.replace(": 0", ": 1")


def test_zen4_has_native_bf16_and_vnni():
    cpu = parse_cpuinfo(cpuinfo(ZEN4), "AVX512")
    assert cpu.native_bf16 and cpu.vnni and cpu.isa == "avx512-bf16" and not cpu.lowered
    assert cpu.describe() == (
        "AMD EPYC 9R14 (avx2, fma, avx512f, avx512_vnni, avx512_bf16; torch AVX512)"
    )


def test_avx2_only_has_neither():
    cpu = parse_cpuinfo(cpuinfo(ZEN3, "AMD EPYC 7R13"), "AVX2")
    assert not cpu.native_bf16 and not cpu.vnni and cpu.isa == "avx2"
    assert cpu.flags == {"avx2", "fma"}


def test_amx_counts_as_native_bf16_and_plain_avx512_does_not():
    assert parse_cpuinfo(cpuinfo(SAPPHIRE), "AVX512").native_bf16
    skylake = parse_cpuinfo(cpuinfo(SKYLAKE), "AVX512")
    assert not skylake.native_bf16 and skylake.isa == "avx512"


def test_a_lowered_dispatch_level_hides_the_flags_it_does_not_use():
    cpu = parse_cpuinfo(cpuinfo(ZEN4), "AVX2")  # ATEN_CPU_CAPABILITY=avx2 on a Zen 4
    assert cpu.lowered and cpu.isa == "avx2" and not cpu.native_bf16 and not cpu.vnni
    assert "lowered by ATEN_CPU_CAPABILITY" in cpu.describe()
    baseline = parse_cpuinfo(cpuinfo(ZEN4), "DEFAULT")
    assert baseline.isa == "baseline" and not baseline.flags


def test_this_machine_and_the_environment_override():
    here = cpu_info()
    assert here.model and here.dispatch
    # A process started with ATEN_CPU_CAPABILITY=avx2 sees an AVX2 machine, whatever this one is.
    code = (
        "from voicescreen.models.cpu import cpu_info; c = cpu_info(); print(c.isa, c.native_bf16)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(), "AVX2").flags
    want = "avx2" if "avx2" in flags else "baseline"
    assert out == [want, "False"]
