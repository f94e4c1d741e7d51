"""``--alert-cmd``: a shell command run each time a verdict turns spoof."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from voicescreen.stream import VerdictEvent

log = logging.getLogger(__name__)

ALERT_WAIT = 10.0  # seconds alert commands may still run when the monitor ends


class Alerts:
    """``--alert-cmd``: run a shell command each time a model's verdict turns ``spoof``, with the
    verdict event as one JSON line on its stdin and ``VOICESCREEN_*`` variables in its environment.
    Commands run alongside the monitor; their output is kept out of the view and logged when they
    fail."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.started = 0
        self.failed = 0
        self._tasks: set[asyncio.Task] = set()

    def fire(self, event: VerdictEvent) -> None:
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._run(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, event: VerdictEvent) -> None:
        env = {
            **os.environ,
            "VOICESCREEN_EVENT": event.type,
            "VOICESCREEN_STREAM": event.stream,
            "VOICESCREEN_MODEL": event.model,
            "VOICESCREEN_VERDICT": event.verdict,
            "VOICESCREEN_TIME": f"{event.time:.3f}",
        }
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group, so a stuck one can be ended
            )
        except OSError as e:
            self.failed += 1
            log.warning("--alert-cmd could not start: %s", e)
            return
        try:
            _, err = await proc.communicate((event.to_json() + "\n").encode())
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
            raise
        if proc.returncode != 0:
            self.failed += 1
            tail = err.decode(errors="replace").strip()[-500:]
            log.warning("--alert-cmd exited with status %s: %s", proc.returncode, tail)

    async def wait(self, timeout: float = ALERT_WAIT) -> None:
        """Let running commands finish; end those still running after ``timeout`` seconds."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            log.warning("--alert-cmd still running after %.0f s; stopping it", timeout)
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
