"""Choosing a runtime: which fast path, backend and encoder reuse run a bundle on this machine.

Fast paths, chosen when a runtime starts (``open_runtime(bundle, backend, fast_path=...)``,
``--fast-path`` on the command line) and built on the machine that serves, because what they
build is specific to it:

- ``exact``: the onnx backend on ONNX Runtime's CPU provider runs ``runtimes.exact``'s rewrite of
  the bundle's graph (bit-identical scores, about a second to build).
- ``bf16``: the torch backend on the CPU runs ``runtimes.bf16``'s bfloat16 encoder (lossy; the
  compile takes tens of seconds and needs a C++ compiler).

Which architectures have them is their registry entry's ``fast_paths`` (``models.registry``):
``optimize_onnx`` is exact for any graph, but on the other architectures it rewires nothing, and
``compile_bf16`` rebuilds AASIST's encoder. The third, int8, is no start-up option but a bundle of
its own (``voicescreen optimize --int8``), since its calibration needs training data and the
result is a portable ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from voicescreen.models.cpu import CpuInfo, cpu_info
from voicescreen.models.registry import Architecture, get_architecture
from voicescreen.runtimes.local import AUTO, wants_gpu

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

FAST_PATHS = {
    "exact": "ONNX graph rewritten for this CPU (optimize_onnx), exact",
    "bf16": "bfloat16 encoder compiled by torch inductor (compile_bf16), lossy",
}
FAST_BACKEND = {"exact": "onnx", "bf16": "torch"}
NO_FAST_PATH = "none"
FAST_PATH_CHOICES = (AUTO, *FAST_PATHS, NO_FAST_PATH)


class FastPathError(ValueError):
    """A fast path that cannot run here or on this bundle, with the reason and what to do."""


def capabilities(bundle: Bundle) -> Architecture:
    """The registry entry of ``bundle``'s architecture: what the runtimes can do with it."""
    return get_architecture(bundle.architecture)


def check_fast_path(bundle: Bundle, fast_path: str, backend: str | None = None) -> None:
    """Raise ``FastPathError`` unless ``fast_path`` can run ``bundle`` (on ``backend``)."""
    if fast_path not in FAST_PATHS:
        raise FastPathError(f"unknown fast path {fast_path!r}; use one of {list(FAST_PATHS)}")
    if fast_path not in capabilities(bundle).fast_paths:
        raise FastPathError(
            f"{bundle.name}: the fast paths are written for AASIST and AASIST-L; "
            f"{bundle.architecture} has none (on it, `exact` would rewire nothing and `bf16` "
            "does not apply): leave out --fast-path"
        )
    if bundle.quantized:
        raise FastPathError(
            f"{bundle.name}: this bundle's model.onnx is int8 already (voicescreen optimize "
            "--int8); the fast paths start from the fp32 model: leave out --fast-path, or use "
            "the fp32 bundle it was made from"
        )
    want = FAST_BACKEND[fast_path]
    if backend is not None and backend != want:
        raise FastPathError(
            f"--fast-path {fast_path} runs on the {want} backend, not {backend}: add "
            f"--backend {want}"
            + (", or use --fast-path bf16 with --backend torch" if want == "onnx" else "")
        )


def with_fast_path(bundle: Bundle, fast_path: str | None, backend: str | None = None) -> Bundle:
    """``bundle``, its runtimes taking ``fast_path`` (None: the plain model). Raises
    ``FastPathError`` (a ``ValueError``) when the path does not apply to it (on ``backend``)."""
    if fast_path is not None:
        check_fast_path(bundle, fast_path, backend)
    return replace(bundle, fast_path=fast_path, plan=None)


def compiler_problem() -> str | None:
    """Why torch inductor (``--fast-path bf16``) would find no C++ compiler here, or None (also
    when it cannot tell)."""
    try:
        from torch._inductor import cpp_builder, exc
    except ImportError:
        return None
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler as e:
        return str(e)
    except Exception:  # a private API: if it changes, the compile itself will tell
        return None
    return None


@dataclass(frozen=True)
class RuntimePlan:
    """How a bundle's model runs in this process (``backend``, ``fast_path``, ``reuse``), and
    ``why``, in words, for the log and ``/v1/models``. ``forced``: the fast path was asked for
    by flag, not chosen."""

    backend: str = "onnx"
    fast_path: str | None = None
    reuse: bool = False
    why: str = ""
    forced: bool = False
    # A fusion served member by member (``runtimes.members``): each member's own plan.
    members: tuple[RuntimePlan, ...] = ()

    def for_files(self) -> RuntimePlan:
        """The plan for scoring whole files beside the streams (``POST /v1/score``): no reuse,
        and the exact graph instead of a chosen bf16 path (its minute of compiling pays for
        streams, not for an upload); a fusion: its own graph."""
        if self.members:
            return RuntimePlan("onnx", None, False, "whole files: the fusion's graph")
        if self.fast_path == "bf16" and not self.forced:
            return RuntimePlan("onnx", "exact", False, "whole files: the exact ONNX graph")
        return replace(self, reuse=False)


def plan_runtime(
    bundle: Bundle,
    *,
    backend: str = AUTO,
    fast_path: str | None = AUTO,
    reuse: bool | None = None,
    streams: bool = True,
    providers: Sequence[str] | str | None = AUTO,
    cpu: CpuInfo | None = None,
) -> RuntimePlan:
    """The fastest runtime that keeps the bundle's scores, for this machine, unless flags force
    one: ``backend`` ``auto``/``onnx``/``torch``, ``fast_path`` ``auto``/``exact``/``bf16``/
    ``none``, ``reuse`` None (auto)/True/False; ``streams``: for live streams (reuse applies,
    and a start-up compile pays) or for whole files.

    Chosen for architectures with both fast paths and encoder reuse (the AASIST family, fp32
    bundles) on the CPU: encoder reuse for streams, on the bf16 encoder where the CPU has AVX-512
    BF16 or AMX (lossy within the bf16 bound, about 2x; never when ``--backend onnx`` or
    ``--fast-path exact`` asks otherwise), else on ONNX Runtime's exact graph rewrite. A fusion
    with such a member, for streams on the CPU: each member on its own plan (``members``,
    ``runtimes.members``; a forced fast path goes to the members it applies to), unless reuse
    is turned off. On a GPU,
    and for other architectures and int8 bundles: the bundle's own ONNX graph, batched. Raises
    ``FastPathError`` for a combination that cannot run (``--fast-path exact --backend torch``,
    a fast path on an LCNN, ...)."""
    cpu = cpu or cpu_info()
    arch = capabilities(bundle)
    fits = set(FAST_PATHS) <= set(arch.fast_paths) and not bundle.quantized
    gpu = backend != "torch" and wants_gpu(providers)
    why: list[str] = []
    forced = fast_path not in (AUTO, None)
    if arch.name == "fusion" and streams and not gpu and reuse is not False:
        members = plan_members(
            bundle, backend=backend, fast_path=fast_path, providers=providers, cpu=cpu
        )
        if members is not None:
            return members
    if forced:
        chosen = None if fast_path == NO_FAST_PATH else fast_path
        if chosen is not None:
            check_fast_path(bundle, chosen, None if backend == AUTO else backend)
        why.append(f"--fast-path {fast_path}")
    elif not fits:
        chosen = None
        why.append(
            "an int8 bundle runs as it is"
            if bundle.quantized
            else f"{bundle.architecture}: its own graph (the fast paths are AASIST's)"
        )
    elif backend == "torch":
        chosen = None
        why.append("--backend torch: eager PyTorch (--fast-path bf16 compiles it)")
    elif gpu:
        chosen = None
        why.append("a GPU provider: the bundle's graph, batched")
    elif streams and backend == AUTO and cpu.native_bf16 and compiler_problem() is None:
        chosen = "bf16"
        why.append(
            f"this CPU has {'AMX' if 'amx_bf16' in cpu.flags else 'AVX-512 BF16'}: the bf16 "
            "encoder (lossy, about 2x; compiled at start-up)"
        )
    else:
        chosen = "exact"
        if backend == "onnx":
            because = "--backend onnx"
        elif not streams:
            because = "whole files"
        elif not cpu.native_bf16:
            because = f"no AVX-512 BF16 or AMX ({cpu.isa})"
        else:
            because = "no C++ compiler for bf16"
        why.append(f"{because}: the exact ONNX graph rewrite")
    runs_on = FAST_BACKEND[chosen] if chosen else ("onnx" if backend == AUTO else backend)
    if not streams:
        reused = False
    elif reuse is not None:
        reused = reuse
        why.append("--reuse" if reuse else "--no-reuse")
    else:
        reused = fits and arch.reuse and not gpu and (runs_on == "onnx" or chosen == "bf16")
        if reused:
            why.append("encoder reuse (same scores, hop on the encoder's grid)")
    return RuntimePlan(runs_on, chosen, reused, "; ".join(why), forced)


def plan_members(
    bundle: Bundle,
    *,
    backend: str,
    fast_path: str | None,
    providers: Sequence[str] | str | None,
    cpu: CpuInfo,
) -> RuntimePlan | None:
    """A fusion's plan for streams: each member planned as if served alone (a forced fast path
    goes to the members it applies to), when one of them reuses its encoder (else None: the
    fusion's own graph is as fast, and one run)."""
    from voicescreen.models.fusion import member_bundles

    if backend not in (AUTO, "onnx"):
        return None
    members = member_bundles(bundle)
    plans = []
    for m in members:
        own = fast_path in (AUTO, None, NO_FAST_PATH) or fast_path in capabilities(m).fast_paths
        plans.append(
            plan_runtime(
                m,
                backend=backend,
                fast_path=fast_path if own else AUTO,
                providers=providers,
                cpu=cpu,
                streams=True,
            )
        )
    if not any(p.reuse for p in plans):
        return None
    why = "a fusion, member by member: " + "; ".join(
        f"{m.name}: {p.why}" for m, p in zip(members, plans, strict=True)
    )
    return RuntimePlan("onnx", None, True, why, members=tuple(plans))


def describe(runtime: Any) -> dict[str, Any]:
    """Where a runtime (local or remote) runs, for logs and ``/v1/models``: backend, providers,
    fast path (``exact``, ``bf16``, ``int8`` or None), encoder reuse, and why it was chosen
    (``RuntimePlan.why``; None for a runtime made without a plan)."""
    out = {
        "backend": getattr(runtime, "backend", "?"),
        "providers": list(getattr(runtime, "providers", [])),
        "fast_path": getattr(runtime, "fast_path", None),
        "reuse": bool(getattr(runtime, "reuse", False)),
        "why": getattr(runtime, "why", None),
    }
    members = getattr(runtime, "describe_members", None)
    if members is not None:  # a fusion served member by member
        out["members"] = members()
    return out


def describe_text(runtime: Any) -> str:
    """``describe`` in words: ``onnx on CPUExecutionProvider, fast path exact``."""
    d = describe(runtime)
    text = f"{d['backend']} on {', '.join(d['providers'])}"
    text += f", fast path {d['fast_path']}" if d["fast_path"] else ""
    text += ", encoder reuse" if d["reuse"] else ""
    return text + (f" (chosen: {d['why']})" if d["why"] else "")
