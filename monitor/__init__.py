"""voicescreen.monitor: screen a local input device live, from the terminal.

    source ──▶ Session (resample, VAD gate, windows, shared worker, smoothing) ──▶ events ──▶ sink
    (sound card via stream.mic, or a file)                             spoof turns ──▶ alerts

The monitor only chooses where audio comes from and where events go; everything between is the
same ``voicescreen.stream.Session`` and ``InferenceWorker`` the server uses. One module per part:
``sources`` (the sound card, or a file standing in for it), ``view`` (what the terminal shows),
``sinks`` (the live view, plain lines, JSON lines), ``alerts`` (``--alert-cmd``) and ``loop``
(``monitor``: one stream from a source to a sink). The ``voicescreen monitor`` command is
``voicescreen.cli.monitor``; ``python -m voicescreen.monitor ARGS`` runs it on its own.
"""

from voicescreen.monitor.alerts import ALERT_WAIT, Alerts
from voicescreen.monitor.loop import (
    EXIT_BAD_AUDIO,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SPOOF,
    Outcome,
    monitor,
)
from voicescreen.monitor.sinks import JsonLines, LiveView, PlainLines, Sink
from voicescreen.monitor.sources import FileSource, Source, open_mic
from voicescreen.monitor.view import (
    CLIP_LEVEL,
    METER_FLOOR_DB,
    METER_WIDTH,
    REFRESH_HZ,
    SPARK_BARS,
    SPARK_RANGE,
    SPARK_WINDOWS,
    ModelView,
    MonitorState,
    clock,
    level_dbfs,
    meter,
    render,
    sparkline,
    summary_lines,
)

__all__ = [
    "ALERT_WAIT",
    "CLIP_LEVEL",
    "EXIT_BAD_AUDIO",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SPOOF",
    "METER_FLOOR_DB",
    "METER_WIDTH",
    "REFRESH_HZ",
    "SPARK_BARS",
    "SPARK_RANGE",
    "SPARK_WINDOWS",
    "Alerts",
    "FileSource",
    "JsonLines",
    "LiveView",
    "ModelView",
    "MonitorState",
    "Outcome",
    "PlainLines",
    "Sink",
    "Source",
    "clock",
    "level_dbfs",
    "meter",
    "monitor",
    "open_mic",
    "render",
    "sparkline",
    "summary_lines",
]
