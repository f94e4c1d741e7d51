"""The batched inference worker: one per loaded model, shared by every stream.

Streams ``submit`` windows and await the returned futures. The worker's batching task, on the
event loop, collects queued windows from all streams into one batch, up to ``max_batch`` windows
or until the oldest has waited ``max_wait_ms``, whichever comes first, and hands the batch to its
runtime in a thread (ONNX Runtime and PyTorch release the GIL; a remote runtime waits on the
network), so the event loop keeps serving streams meanwhile. Results come back in submission order.

The runtime is the one pluggable part: any callable from (B, input_samples) windows to
``(logits, score)`` — the bundle's ONNX Runtime or PyTorch model in this process, or a client of
remote replicas (``voicescreen.runtimes``: Ray Serve, Triton). A runtime with a
``concurrency`` attribute gets that many batches in flight at once (one per replica, say); the
in-process ones run one batch at a time. Queues, shedding and metrics are the same for all.

The queue is bounded and fair between clients and, within a client, between its streams. Each
stream (``open_stream(channel, client)``) has its own queue; a batch takes windows round-robin,
one per client in turn (and one per stream of that client in turn), and first from the streams
that keep real time: a stream whose audio arrives faster than it plays (a file sent as fast as
the network allows, say) gets what the live ones leave (``PACE_SLACK``). When the queue is full,
the client holding the most windows loses the oldest one of its fullest stream, or, if that is
the submitting client, the new window is shed at once (``submit`` returns None): a client that
floods the worker, with one stream or many, sheds its own windows, not everyone's. A stream
reports what it lost as overloaded; a remote runtime that refuses a batch for want of capacity
raises ``Overloaded``, and those windows are shed (and reported) the same way.

A ``Cascade`` has the same interface: a cheap model scores every window and an expensive one
re-scores only the windows whose cheap calibrated score lies within ``band`` of the threshold.

A session scores through ``open_stream(channel)``: a handle per stream that takes whole
``StreamWindow``s and calibrates their scores for the stream's channel (``wideband`` or
``narrowband``: the bundle's calibration for that kind of audio, ``ScoreSpec.for_channel``). For
most runtimes it just submits the samples; a runtime that reuses each stream's encoder
frames across overlapping windows (``takes_jobs``: ``runtimes.reuse``) is handed, per window,
its samples, where it starts and that stream's frames, and needs window starts on its ``stride``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from voicescreen.audio import SAMPLE_RATE
from voicescreen.models.bundle import POOLED, ScoreSpec
from voicescreen.runtimes import open_runtime
from voicescreen.runtimes.remote import Overloaded
from voicescreen.runtimes.reuse import Job, StreamFrames

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle
    from voicescreen.stream.windows import StreamWindow

log = logging.getLogger(__name__)

# (B, samples) windows -> (logits or None, score): the one call that differs between backends
Runtime = Callable[[np.ndarray], tuple[np.ndarray | None, np.ndarray]]
LATENCY_SAMPLES = 10_000  # recent latencies kept for percentiles
# A stream whose audio is this many seconds ahead of the wall clock since its first window is
# faster than real time: its windows wait until those of the streams keeping real time are taken.
PACE_SLACK = 2.0


@dataclass(frozen=True)
class BatchOptions:
    """``max_batch`` windows per model call; ``max_wait_ms`` the longest the oldest queued window
    waits for company; ``max_queue`` windows waiting (not yet in a batch) before new ones are
    shed."""

    max_batch: int = 16
    max_wait_ms: float = 20.0
    max_queue: int = 256
    # A window still queued this long after it was submitted is shed when the next batch is
    # formed (an ``overloaded`` event): its verdict would come too late to matter, and scoring
    # it would make every later window later still. 0: no limit (every window waits its turn).
    max_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if (
            self.max_batch < 1
            or self.max_queue < 1
            or self.max_wait_ms < 0
            or self.max_delay_ms < 0
        ):
            raise ValueError(f"impossible batch options {self}")


@dataclass(frozen=True)
class Result:
    """The score of one window."""

    model: str  # the scorer the window was submitted to (a worker or a cascade)
    scored_by: str  # the model that produced this score
    raw: float
    calibrated: float  # > 0 is bona fide
    batch: int  # windows in the model call
    screen: float | None = None  # cascade: the cheap model's calibrated score
    calibration: str = POOLED  # the bundle's calibration applied: a channel's, or pooled
    parts: dict[str, float] | None = None  # a fusion: its members' raw scores, by name


class StreamScorer(Protocol):
    """One stream's handle on a scorer: windows in, in stream order."""

    def submit(self, window: StreamWindow) -> asyncio.Future[Result] | None: ...


class Scorer(Protocol):
    """What a session submits windows to: an ``InferenceWorker`` or a ``Cascade``. ``stride``:
    window starts a multiple of it let the scorer reuse work across windows (None: any hop)."""

    name: str
    input_samples: int
    stride: int | None

    def submit(
        self, samples: np.ndarray, channel: str | None = None
    ) -> asyncio.Future[Result] | None: ...

    def open_stream(self, channel: str | None = None) -> StreamScorer: ...

    def calibration(self, channel: str | None) -> tuple[ScoreSpec, str]: ...


@dataclass
class WorkerMetrics:
    """Counters for /metrics. Every submitted window ends as scored, shed, failed or cancelled."""

    submitted: int = 0
    scored: int = 0
    shed: int = 0
    failed: int = 0
    cancelled: int = 0
    batches: int = 0
    busy_s: float = 0.0  # seconds spent in model calls
    batch_sizes: Counter[int] = field(default_factory=Counter)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def snapshot(self) -> dict[str, Any]:
        def pct(p: float) -> float | None:
            q = percentile(self.latencies, p)
            return None if q is None else 1000 * q

        return {
            "submitted": self.submitted,
            "scored": self.scored,
            "shed": self.shed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "batches": self.batches,
            "busy_s": self.busy_s,
            "mean_batch": self.scored / self.batches if self.batches else None,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
        }


@dataclass
class _Item:
    samples: np.ndarray | Job
    future: asyncio.Future[Result]
    submitted: float  # loop time
    spec: ScoreSpec  # calibrates its score
    calibration: str  # the name of that calibration
    ahead: bool = False  # its stream runs faster than real time


class _Pace:
    """How far a stream's audio runs ahead of the wall clock, from its first window on."""

    def __init__(self, audio: float, now: float) -> None:
        self.audio0, self.t0 = audio, now

    def ahead(self, audio: float, now: float) -> bool:
        return (audio - self.audio0) - (now - self.t0) > PACE_SLACK


class WorkerStream:
    """A stream's handle on a worker (``InferenceWorker.open_stream``)."""

    def __init__(
        self, worker: InferenceWorker, channel: str | None = None, client: object = None
    ) -> None:
        self.worker = worker
        self.channel = channel
        self.client = client
        self.frames = StreamFrames() if worker.takes_jobs else None

    def submit(self, window: StreamWindow) -> asyncio.Future[Result] | None:
        at = window.end / SAMPLE_RATE  # stream seconds: how far its audio has come
        who = {"stream": self, "audio": at, "client": self.client}
        if self.frames is None:
            return self.worker.submit(window.samples, self.channel, **who)
        audio = window.end - window.start  # less than the window when it is repeat-padded
        padded = audio if audio < window.samples.size else None
        job = Job(window.samples, window.start, self.frames, padded)
        return self.worker.submit(job, self.channel, **who)


class InferenceWorker:
    """Batches windows from all streams into calls of one runtime, off the event loop: at most
    ``runtime.concurrency`` calls at once (1 when the runtime does not say)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        name: str,
        input_samples: int,
        score: ScoreSpec,
        options: BatchOptions | None = None,
    ) -> None:
        self.runtime = runtime
        self.concurrency = max(1, int(getattr(runtime, "concurrency", 1)))
        self.takes_jobs = bool(getattr(runtime, "takes_jobs", False))
        self.stride: int | None = getattr(runtime, "stride", None) if self.takes_jobs else None
        self.name = name
        self.input_samples = input_samples
        self.score_spec = score
        self.options = options or BatchOptions()
        self.metrics = WorkerMetrics()
        # A fusion's runtime scores its members too (``score_parts``) and names them.
        self._score_parts = getattr(runtime, "score_parts", None)
        names = tuple(getattr(runtime, "part_names", None) or ())
        self._part_names = names if self._score_parts is not None else ()
        self._specs: dict[str | None, tuple[ScoreSpec, str]] = {}
        # one queue per stream (None: windows submitted without one), in round-robin order,
        # and the client each queued stream belongs to (itself, when none was given)
        self._queues: dict[object, deque[_Item]] = {}
        self._client_of: dict[object, object] = {}
        self._queued = 0
        self._paces: weakref.WeakKeyDictionary[object, _Pace] = weakref.WeakKeyDictionary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None  # set when the queue reaches _want windows
        self._want = 1
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None  # model calls that may run at once
        self._calls: set[asyncio.Task] = set()
        self._closed = False

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        backend: str = "onnx",
        options: BatchOptions | None = None,
        name: str | None = None,
        **runtime_options: Any,
    ) -> InferenceWorker:
        return cls(
            open_runtime(bundle, backend, **runtime_options),
            name=name or bundle.name,
            input_samples=bundle.input_samples,
            score=bundle.score,
            options=options,
        )

    @property
    def queued(self) -> int:
        return self._queued

    def open_stream(self, channel: str | None = None, client: object = None) -> WorkerStream:
        """A handle for one stream's windows (it holds what the runtime reuses between them),
        whose scores are calibrated for ``channel``; ``client``: who opened it (any hashable
        key, e.g. an address), so that the streams of one client share one turn."""
        return WorkerStream(self, channel, client)

    def calibration(self, channel: str | None) -> tuple[ScoreSpec, str]:
        """The spec that calibrates ``channel``'s scores, and its name (``for_channel``)."""
        found = self._specs.get(channel)
        if found is None:
            found = self._specs[channel] = self.score_spec.for_channel(channel)
        return found

    def submit(
        self,
        samples: np.ndarray | Job,
        channel: str | None = None,
        *,
        stream: object | None = None,
        audio: float | None = None,
        client: object = None,
    ) -> asyncio.Future[Result] | None:
        """Queue one (input_samples,) window (or, for a runtime that ``takes_jobs``, a ``Job``),
        its score to be calibrated for ``channel``; None when the queue is full and it was shed.
        ``stream``: whose window it is (any weak-referenceable handle: the queues are fair
        between streams; see the module
        docstring), and ``audio``: the stream seconds its audio reaches, which tell a stream
        keeping real time from one sent faster. ``client``: who sent it; the streams of one
        client share one turn (None: the stream is a client of its own).

        Call from the event loop's thread. Cancel the future to withdraw a window not yet run.
        """
        if self._closed:
            raise RuntimeError(f"worker {self.name} is closed")
        job = samples if isinstance(samples, Job) else Job(samples)
        if job.samples.shape != (self.input_samples,):
            raise ValueError(
                f"{self.name} scores ({self.input_samples},) windows, got {job.samples.shape}"
            )
        self._ensure_started()
        self.metrics.submitted += 1
        client = stream if client is None else client
        if self._queued >= self.options.max_queue and not self._make_room(stream, client):
            self.metrics.shed += 1
            return None
        now = self._loop.time()
        ahead = False
        if stream is not None and audio is not None:
            pace = self._paces.get(stream)
            if pace is None:
                pace = self._paces[stream] = _Pace(audio, now)
            ahead = pace.ahead(audio, now)
        future = self._loop.create_future()
        payload = job if self.takes_jobs else job.samples
        spec, calibration = self.calibration(channel)
        queue = self._queues.get(stream)
        if queue is None:
            queue = self._queues[stream] = deque()
            self._client_of[stream] = client
        queue.append(_Item(payload, future, now, spec, calibration, ahead))
        self._queued += 1
        if self._wake is not None and not self._wake.done() and self._queued >= self._want:
            self._wake.set_result(None)
        return future

    def _make_room(self, stream: object | None, client: object) -> bool:
        """The queue is full: shed the oldest window of the client holding the most (from its
        fullest stream), unless that is ``client`` (or no other holds more than it would): then
        False, the new window is shed."""
        held: Counter[object] = Counter()
        for key, queue in self._queues.items():
            held[self._client_of[key]] += len(queue)
        biggest = max(held, key=held.__getitem__)
        if biggest == client or held[biggest] <= held[client] + 1:
            return False
        mine = [k for k in self._queues if self._client_of[k] == biggest]
        item = self._pop(max(mine, key=lambda k: len(self._queues[k])))
        self.metrics.shed += 1
        if not item.future.done():
            item.future.set_exception(Overloaded(f"{self.name}: queue full", "queue full"))
        log.info("%s: queue full; shed the oldest window of the stream holding most", self.name)
        return True

    def _pop(self, key: object) -> _Item:
        queue = self._queues[key]
        item = queue.popleft()
        self._queued -= 1
        if not queue:
            del self._queues[key]
            del self._client_of[key]
        return item

    async def score(self, samples: np.ndarray, channel: str | None = None) -> Result:
        """Score one window, waiting for it; raises ``Overloaded`` when it was shed."""
        future = self.submit(samples, channel)
        if future is None:
            raise Overloaded(self.name, "queue full")
        return await future

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            raise RuntimeError(f"worker {self.name} already runs on another event loop")
        if self._loop is not loop:
            self._queues.clear()  # futures of a closed loop can never be awaited
            self._queued = 0
            self._paces.clear()
        self._loop = loop
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.concurrency, thread_name_prefix=f"voicescreen-{self.name}"
            )
        self._slots = asyncio.Semaphore(self.concurrency)
        self._task = loop.create_task(self._run(), name=f"voicescreen worker {self.name}")

    async def _wait_for(self, count: int, deadline: float | None) -> None:
        """Until the queue holds ``count`` windows (or the loop time reaches ``deadline``)."""
        if self._queued >= count or (deadline is not None and deadline <= self._loop.time()):
            return
        self._want = count
        self._wake = self._loop.create_future()
        try:
            if deadline is None:
                await self._wake
            else:
                async with asyncio.timeout_at(deadline):
                    await self._wake
        except TimeoutError:
            pass
        finally:
            self._wake = None

    def _oldest(self) -> float:
        """When the longest-waiting queued window was submitted (loop time)."""
        return min(q[0].submitted for q in self._queues.values())

    def _next_batch(self) -> list[_Item]:
        """Up to ``max_batch`` windows, one per client in turn and, within a client, one per
        stream in turn (a stream served moves to the back of the turn): first the windows of
        streams keeping real time, then the others."""
        batch: list[_Item] = []
        max_delay = self.options.max_delay_ms / 1000
        stale_before = self._loop.time() - max_delay if max_delay > 0 else None
        stale = 0
        for live_only in (True, False):
            while len(batch) < self.options.max_batch:
                took = False
                served: set[object] = set()  # clients served in this round
                for key in list(self._queues):
                    if len(batch) >= self.options.max_batch:
                        break
                    queue = self._queues.get(key)
                    if not queue or (live_only and queue[0].ahead):
                        continue
                    client = self._client_of[key]
                    if client in served:
                        continue
                    served.add(client)
                    item = self._pop(key)
                    if key in self._queues:  # served: to the back of the turn
                        self._queues[key] = self._queues.pop(key)
                    took = True
                    if item.future.cancelled():
                        self.metrics.cancelled += 1
                    elif stale_before is not None and item.submitted < stale_before:
                        stale += 1
                        item.future.set_exception(
                            Overloaded(
                                f"{self.name}: waited over {self.options.max_delay_ms:g} ms",
                                "too late",
                            )
                        )
                    else:
                        batch.append(item)
                if not took:
                    break
        if stale:
            self.metrics.shed += stale
            log.warning(
                "%s: %d windows shed after waiting over %g ms", self.name, stale, 1000 * max_delay
            )
        return batch

    async def _run(self) -> None:
        max_wait = self.options.max_wait_ms / 1000
        slots = self._slots
        while True:
            await self._wait_for(1, None)
            await self._wait_for(self.options.max_batch, self._oldest() + max_wait)
            await slots.acquire()  # while every call is busy, the queue fills (and sheds)
            batch = self._next_batch()
            if not batch:
                slots.release()
                continue
            call = self._loop.create_task(
                self._call(batch, slots), name=f"voicescreen {self.name} call"
            )
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[_Item], slots: asyncio.Semaphore) -> None:
        """One model call: score ``batch`` and settle its futures; always frees its slot."""
        loop = self._loop
        try:
            if self.takes_jobs:
                x = [item.samples for item in batch]
            else:
                x = np.stack([item.samples for item in batch])
            t0 = loop.time()
            parts = None
            try:
                if self._part_names:  # a fusion: its members' scores come from the same run
                    raw, parts = await loop.run_in_executor(self._executor, self._score_parts, x)
                    parts = np.asarray(parts, dtype=np.float64).reshape(len(batch), -1)
                else:
                    _, raw = await loop.run_in_executor(self._executor, self.runtime, x)
                raw = np.asarray(raw, dtype=np.float64).reshape(len(batch))
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise
            except Overloaded as e:
                log.warning("%s: %d windows shed: %s", self.name, len(batch), e)
                self.metrics.shed += len(batch)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(Overloaded(f"{self.name}: {e}", e.reason))
                return
            except Exception as e:
                log.exception("%s: model call failed on a batch of %d", self.name, len(batch))
                self.metrics.failed += len(batch)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ModelError(f"{self.name}: {e}"))
                return
            now = loop.time()
            self.metrics.batches += 1
            self.metrics.batch_sizes[len(batch)] += 1
            self.metrics.busy_s += now - t0
            for i, (item, r) in enumerate(zip(batch, raw, strict=True)):
                if item.future.done():  # cancelled while it ran
                    self.metrics.cancelled += 1
                    continue
                self.metrics.scored += 1
                self.metrics.latencies.append(now - item.submitted)
                calibrated = float(item.spec.calibrate(r))
                item.future.set_result(
                    Result(
                        self.name,
                        self.name,
                        float(r),
                        calibrated,
                        len(batch),
                        calibration=item.calibration,
                        parts=None
                        if parts is None
                        else dict(zip(self._part_names, map(float, parts[i]), strict=True)),
                    )
                )
        finally:
            slots.release()

    async def close(self) -> None:
        """Stop batching; windows still queued are cancelled."""
        self._closed = True
        while self._queues:
            item = self._pop(next(iter(self._queues)))
            if item.future.cancel():
                self.metrics.cancelled += 1
        tasks = [t for t in (self._task, *self._calls) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> InferenceWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ModelError(RuntimeError):
    """The model call of a batch failed."""


@dataclass
class CascadeMetrics:
    submitted: int = 0
    escalated: int = 0  # windows sent on to the expensive model
    escalations_shed: int = 0  # escalations the expensive model's queue refused (cheap score kept)


class Cascade:
    """A cheap model scores every window; the expensive one only those the cheap one finds close:
    ``|cheap calibrated score| <= band``. Its result is the expensive model's when it ran."""

    def __init__(
        self, screen: InferenceWorker, expert: InferenceWorker, band: float, name: str | None = None
    ) -> None:
        if screen.input_samples != expert.input_samples:
            raise ValueError(
                f"cascade models take different windows ({screen.name}: {screen.input_samples}, "
                f"{expert.name}: {expert.input_samples} samples)"
            )
        if band < 0:
            raise ValueError(f"cascade band must be >= 0, got {band}")
        self.screen, self.expert, self.band = screen, expert, float(band)
        self.name = name or f"{screen.name}>{expert.name}"
        self.input_samples = screen.input_samples
        self.metrics = CascadeMetrics()

    @property
    def stride(self) -> int | None:
        return self.expert.stride

    @property
    def score_spec(self) -> ScoreSpec:
        """The expert's: a cascade's verdicts are on the expert's calibrated scale."""
        return self.expert.score_spec

    def calibration(self, channel: str | None) -> tuple[ScoreSpec, str]:
        """The expert's calibration for ``channel``."""
        return self.expert.calibration(channel)

    def submit(
        self, samples: np.ndarray, channel: str | None = None
    ) -> asyncio.Future[Result] | None:
        return self._route(
            lambda: self.screen.submit(samples, channel),
            lambda: self.expert.submit(samples, channel),
        )

    def open_stream(self, channel: str | None = None, client: object = None) -> CascadeStream:
        return CascadeStream(self, channel, client)

    def _route(
        self,
        screen: Callable[[], asyncio.Future[Result] | None],
        expert: Callable[[], asyncio.Future[Result] | None],
    ) -> asyncio.Future[Result] | None:
        """Submit a window to the screen (``screen()``), and to the expert (``expert()``) when
        the screen finds it close."""
        first = screen()
        if first is None:
            return None
        self.metrics.submitted += 1
        out: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def relay(r: Result, final: asyncio.Future[Result]) -> None:
            if final.cancelled():
                out.cancel()
            elif isinstance(final.exception(), Overloaded):  # refused downstream: keep the cheap
                self.metrics.escalations_shed += 1
                out.set_result(replace(r, model=self.name, screen=r.calibrated))
            elif final.exception() is not None:
                out.set_exception(final.exception())
            else:
                e = final.result()
                out.set_result(replace(e, model=self.name, screen=r.calibrated))

        def screened(f: asyncio.Future[Result]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.cancel()
                return
            if f.exception() is not None:
                out.set_exception(f.exception())
                return
            r = f.result()
            if abs(r.calibrated) > self.band:
                out.set_result(replace(r, model=self.name, screen=r.calibrated))
                return
            second = expert()
            if second is None:
                self.metrics.escalations_shed += 1
                out.set_result(replace(r, model=self.name, screen=r.calibrated))
                return
            self.metrics.escalated += 1
            second.add_done_callback(lambda g: None if out.done() else relay(r, g))
            out.add_done_callback(lambda o: second.cancel() if o.cancelled() else None)

        first.add_done_callback(screened)
        out.add_done_callback(lambda o: first.cancel() if o.cancelled() else None)
        return out


class CascadeStream:
    """A stream's handle on a cascade: a handle on each of its two workers (each calibrating for
    the stream's channel, so the screen's band is judged on its channel's scale too)."""

    def __init__(self, cascade: Cascade, channel: str | None = None, client: object = None) -> None:
        self.cascade = cascade
        self.screen = cascade.screen.open_stream(channel, client)
        self.expert = cascade.expert.open_stream(channel, client)

    def submit(self, window: StreamWindow) -> asyncio.Future[Result] | None:
        return self.cascade._route(
            lambda: self.screen.submit(window), lambda: self.expert.submit(window)
        )


def percentile(values: list[float] | deque[float], p: float) -> float | None:
    """The ``p`` quantile (0..1) of ``values``, linearly interpolated; None when empty."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), p)) if len(values) else None
