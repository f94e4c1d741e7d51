"""A fusion bundle served member by member: each member on the runtime its own plan gives it, and
the regression on their raw scores.

A fusion's ``model.onnx`` is one graph: every member runs on whole windows. On a live stream
that throws away what encoder reuse gives an AASIST member (its encoder sees 39 % of each
window, ``runtimes.reuse``). So for streams on the CPU, ``plan_runtime`` plans each member as if
it were served alone (AASIST-L: reuse on the exact graph, or on the bf16 encoder where the CPU
has AVX-512 BF16 or AMX; a Whisper member: its own graph), and ``MemberRuntime`` runs them
side by side on each batch (one thread each), then fuses::

    jobs (windows with their stream positions)
      -> member i's runtime (reuse: the jobs; others: the stacked windows) -> score_i (B,)
      -> parts (B, K) -> fused (B,) = bias + parts @ weights -> logits [0, fused]

The fused score is the fusion graph's, to float rounding on the exact path (the tests compare
them) and within the bf16 bound where a member runs in bf16. Whole files (``POST /v1/score``,
``voicescreen score``) keep the fusion's graph: with nothing to reuse, one graph is as fast.

Members come out of the fusion's files (``models.fusion.member_bundles``): each is a ``Bundle``
in memory with its slice of the weights and, where a runtime needs one (no reuse), its ONNX
graph: the copy ``voicescreen fuse`` stored in the fusion (``member-<i>.onnx``, checksummed in
its card), or for an older fusion one exported at start-up from those weights (seconds; logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.runtimes.local import check_batch

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle
    from voicescreen.runtimes.plan import RuntimePlan
    from voicescreen.runtimes.reuse import Job

log = logging.getLogger(__name__)


def with_graph(member: Bundle) -> Bundle:
    """``member`` with its ONNX graph: the one the fusion holds, or else exported from its
    weights (as ``export_bundle`` does; a fusion written before ``voicescreen fuse`` stored its
    members' graphs)."""
    from voicescreen.models.bundle import ONNX_FILE, export_onnx

    if ONNX_FILE in member.files:
        return member
    start = time.perf_counter()
    graph = export_onnx(member.build_torch(), member.score.convention, member.input_samples)
    log.info(
        "%s: exported the fusion member's graph in %.1f s",
        member.name,
        time.perf_counter() - start,
    )
    return replace(member, files={**member.files, ONNX_FILE: graph})


class MemberRuntime:
    """A fusion served member by member (module docstring). Called like any runtime, with
    (B, input_samples) windows, or, when a member reuses its encoder (``takes_jobs``), with the
    worker's ``Job``s; ``score_parts`` gives the members' raw scores beside the fused one."""

    def __init__(
        self,
        bundle: Bundle,
        plans: Sequence[RuntimePlan],
        *,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
    ) -> None:
        from voicescreen.models.fusion import FusionConfig, member_bundles
        from voicescreen.runtimes import open_runtime

        config = FusionConfig.from_dict(bundle.config)
        members = member_bundles(bundle)
        if len(plans) != len(members):
            raise ValueError(f"{len(members)} fusion members but {len(plans)} plans")
        self.name = bundle.name
        self.input_samples = bundle.input_samples
        self.members = []
        for member, plan in zip(members, plans, strict=True):
            if not plan.reuse:  # a graph runs it: the member's own, exported now
                member = with_graph(member)
            options: dict[str, Any] = {"threads": threads}
            if plan.backend == "onnx":
                options["providers"] = providers
            self.members.append(open_runtime(member.with_plan(plan), plan.backend, **options))
        self.part_names = tuple(m.name for m in members)
        self.weights = np.asarray(config.weights, dtype=np.float32)
        self.bias = np.float32(config.bias)
        self.takes_jobs = any(getattr(r, "takes_jobs", False) for r in self.members)
        strides = {r.stride for r in self.members if getattr(r, "takes_jobs", False)}
        if len(strides) > 1:
            raise ValueError(f"{self.name}: members reuse on different grids {sorted(strides)}")
        self.stride = strides.pop() if strides else None
        self.reuse = self.takes_jobs
        self.fast_path = None
        backends = dict.fromkeys(r.backend for r in self.members)
        self.backend = "+".join(backends)
        self.providers = list(dict.fromkeys(p for r in self.members for p in r.providers))
        self._pool = ThreadPoolExecutor(len(self.members), thread_name_prefix=f"{self.name} member")

    def describe_members(self) -> list[dict[str, Any]]:
        """Where each member runs (``plan.describe`` of its runtime), by name."""
        from voicescreen.runtimes.plan import describe

        return [
            {"name": name, **describe(r)}
            for name, r in zip(self.part_names, self.members, strict=True)
        ]

    def score_parts(self, batch: np.ndarray | list[Job]) -> tuple[np.ndarray, np.ndarray]:
        """The fused scores (B,) and the members' raw scores (B, K) of windows or jobs."""
        if isinstance(batch, np.ndarray):
            jobs, windows = None, check_batch(batch, self.input_samples)
        else:
            jobs, windows = batch, np.stack([job.samples for job in batch])

        def member(runtime: Any) -> np.ndarray:
            reuses = jobs is not None and getattr(runtime, "takes_jobs", False)
            return np.asarray(runtime(jobs if reuses else windows)[1], np.float32)

        # The members at once: each releases the GIL in its kernels, and one alone leaves cores
        # idle between its operators; the batch's latency is then the slowest member's.
        parts = np.stack(list(self._pool.map(member, self.members)), axis=1)
        return self.bias + parts @ self.weights, parts

    def __call__(self, batch: np.ndarray | list[Job]) -> tuple[np.ndarray, np.ndarray]:
        score = self.score_parts(batch)[0]
        return np.stack([np.zeros_like(score), score], axis=1), score
