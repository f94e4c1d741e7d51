"""The validation set the default bundle's candidates are chosen on, and its figures.

Why: the dev split of ``../shared/data`` has one bona fide voice, so its EER says little about a
new human voice. The validation set is that dev split plus the dev split of the extra corpus
(``train.extra_data`` holds six ktuberling languages out of training: six voices, each with a
Griffin-Lim or LPC spoof of every clip). Every clip's first window is scored clean and through
the product's channels ``mulaw`` (8 kHz G.711) and ``mobile`` (GSM 06.10 then mu-law), as
calibration pools them; the eval split is never read.

Figures (``validation_figures``): the EER of all scores pooled over the channels, and per
channel; then, at each of several thresholds, the share of bona fide accepted overall and per
voice, and of spoofs rejected (overall and per attack). The thresholds:

- ``card``: the bundle's own (only for a bundle);
- ``dev``: the EER threshold of the shared dev split pooled over the channels (what the trainer
  calibrates on without ``extra_dev``);
- ``pooled``: the EER threshold of the whole validation set pooled over the channels (what it
  calibrates on with ``extra_dev``); figures at it are in-sample;
- ``lovo``: leave one voice out: each voice's clips judged at the ``pooled`` threshold of the set
  without that voice's clips, the honest estimate for ``pooled`` on a voice not calibrated on.

Scores: a bundle's by ONNX Runtime on the full graph (``bundle_scores``); a ``frozen_blocks`` run's
checkpoints' (``checkpoint_scores``, train/frozen.py) from cached frozen-part features of the
validation windows (float16, as training sees them), so an epoch costs seconds once the features
exist; a run whose recipe has ``extra_dev`` set to the same corpus already cached them.

    python scripts/validate_default.py --bundle models/default --extra EXTRA --out runs/val/default
    python scripts/validate_default.py --run runs/c1/train --extra EXTRA    # every checkpoint
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voicescreen.runtimes import open_runtime
from voicescreen.train.data import Utterance, load_split
from voicescreen.train.metrics import eer

CHANNELS = ("clean", "mulaw", "mobile")


def validation_set(data_root: str | Path, extra: Sequence[str | Path]) -> list[Utterance]:
    """The dev split of ``data_root`` followed by the dev splits of the ``extra`` corpora (the
    order the trainer's ``extra_dev`` uses, so that cached features are shared)."""
    utts = load_split(data_root, "dev")
    for root in extra:
        utts += load_split(root, "dev")
    return utts


@dataclass
class AtThreshold:
    """Decisions at one threshold (accept = score >= threshold), rates as fractions."""

    threshold: float | None  # None for ``lovo`` (one threshold per voice)
    bonafide_accepted: float
    held_out_accepted: float  # the extra corpus's voices only
    spoof_rejected: float
    per_voice: dict[str, float] = field(default_factory=dict)  # bona fide accepted
    per_attack: dict[str, float] = field(default_factory=dict)  # spoofs rejected


@dataclass
class Validation:
    clips: int
    voices: dict[str, int]  # bona fide clips per voice
    eer: float  # all channels pooled
    eer_per_channel: dict[str, float]
    eer_held_out: float  # the extra corpus's clips only, pooled
    at: dict[str, AtThreshold]

    def to_dict(self) -> dict:
        return asdict(self)


def _at(
    scores: np.ndarray,
    bona: np.ndarray,
    speakers: np.ndarray,
    attacks: np.ndarray,
    held_out: np.ndarray,
    threshold: np.ndarray | float,
    value: float | None,
) -> AtThreshold:
    accept = scores >= threshold
    return AtThreshold(
        threshold=value,
        bonafide_accepted=float(accept[bona].mean()),
        held_out_accepted=float(accept[bona & held_out].mean()) if (bona & held_out).any() else 0,
        spoof_rejected=float((~accept[~bona]).mean()),
        per_voice={
            v: float(accept[bona & (speakers == v)].mean()) for v in sorted(set(speakers[bona]))
        },
        per_attack={
            a: float((~accept[~bona & (attacks == a)]).mean()) for a in sorted(set(attacks[~bona]))
        },
    )


def validation_figures(
    utts: Sequence[Utterance],
    scores: dict[str, np.ndarray],
    card_threshold: float | None = None,
    held_out_prefix: str = "XT_",
) -> Validation:
    """The figures of one model from its scores per channel (each in the order of ``utts``).

    Held-out clips: those whose file name starts with ``held_out_prefix`` (the extra corpus's)."""
    channels = list(scores)
    s = np.concatenate([scores[ch] for ch in channels])
    bona = np.array([u.is_bonafide for u in utts] * len(channels))
    speakers = np.array([u.speaker for u in utts] * len(channels), dtype=object)
    attacks = np.array([u.attack for u in utts] * len(channels), dtype=object)
    held_out = np.array([u.file.startswith(held_out_prefix) for u in utts] * len(channels))
    shared = ~held_out
    thresholds: dict[str, float] = {}
    if card_threshold is not None:
        thresholds["card"] = float(card_threshold)
    thresholds["dev"] = eer(s[bona & shared], s[~bona & shared])[1]
    thresholds["pooled"] = eer(s[bona], s[~bona])[1]
    at = {name: _at(s, bona, speakers, attacks, held_out, t, t) for name, t in thresholds.items()}
    # Leave one voice out: every clip carrying the voice (its bona fide and, in the extra
    # corpus, its spoofs) is left out of the threshold it is judged at.
    per_clip = np.empty_like(s)
    for v in sorted(set(speakers[bona])):
        mine = speakers == v
        rest = ~mine
        per_clip[mine] = eer(s[bona & rest], s[~bona & rest])[1]
    left = ~np.isin(speakers, list(set(speakers[bona])))  # spoofs of no voice (the SYS_* ones)
    if left.any():
        per_clip[left] = thresholds["pooled"]
    at["lovo"] = _at(s, bona, speakers, attacks, held_out, per_clip, None)
    return Validation(
        clips=len(utts),
        voices={
            v: int(np.sum(bona[: len(utts)] & (speakers[: len(utts)] == v)))
            for v in sorted(set(speakers[bona]))
        },
        eer=eer(s[bona], s[~bona])[0],
        eer_per_channel={
            ch: eer(scores[ch][bona[: len(utts)]], scores[ch][~bona[: len(utts)]])[0]
            for ch in channels
        },
        eer_held_out=eer(s[bona & held_out], s[~bona & held_out])[0] if held_out.any() else 0.0,
        at=at,
    )


# --- scoring ------------------------------------------------------------------------------------


def bundle_scores(
    bundle_path: str | Path,
    utts: Sequence[Utterance],
    channels: Sequence[str] = CHANNELS,
    threads: int | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Scores per channel by the bundle's ONNX graph (as ``voicescreen eval``), and its
    threshold."""
    from voicescreen.models.bundle import load_bundle
    from voicescreen.train.evaluate import score_utterances

    bundle = load_bundle(bundle_path)
    runtime = open_runtime(bundle, "onnx", threads=threads)
    scores = {
        ch: score_utterances(lambda x: runtime(x)[1], utts, bundle.input_samples, ch)
        for ch in channels
    }
    return scores, bundle.score.threshold


def checkpoint_scores(
    run: str | Path,
    utts: Sequence[Utterance],
    channels: Sequence[str] = CHANNELS,
    cache: str | Path | None = None,
) -> dict[int, dict[str, np.ndarray]]:
    """Scores per channel of every ``checkpoints/epoch-NNN.pt`` of a ``frozen_blocks`` run, from
    cached frozen-part features (``cache``, default the run's ``features/``, under the key
    train/frozen.py gives its dev features)."""
    import torch

    from voicescreen.audio import load_audio
    from voicescreen.models.bundle import score_from_logits
    from voicescreen.models.registry import get_architecture
    from voicescreen.train.checkpoints import load_checkpoint
    from voicescreen.train.dataset import files_digest
    from voicescreen.train.evaluate import first_window
    from voicescreen.train.frozen import check_frozen, feature_cache, head_scores
    from voicescreen.train.recipes import Recipe
    from voicescreen.train.start import build_model

    run = Path(run)
    paths = sorted((run / "checkpoints").glob("epoch-*.pt"))
    if not paths:
        raise SystemExit(f"{run}/checkpoints: no epoch checkpoints")
    recipe = Recipe.from_dict(load_checkpoint(paths[0])["recipe"])
    arch = get_architecture(recipe.architecture)
    samples = arch.input_samples(recipe.model_config())
    device = torch.device("cpu")
    model, origin = build_model(recipe, device)
    k = check_frozen(recipe, model)
    features = feature_cache(
        Path(cache) if cache else run / "features", recipe, model, origin, k, samples, device
    )
    files = files_digest(utts)
    cached = {}
    for ch in channels:

        def window(i: int, ch: str = ch) -> np.ndarray:
            return first_window(load_audio(utts[i].path), samples, ch)

        cached[ch] = features.get(f"dev-{ch}", len(utts), window, extra={"files": files})
    out = {}
    for path in paths:
        state = load_checkpoint(path)
        model.load_state_dict(state["model"], strict=True)
        out[int(state["epoch"])] = {
            ch: score_from_logits(torch.from_numpy(head_scores(model, k, f)), arch.score)
            .numpy()
            .astype(np.float64)
            for ch, f in cached.items()
        }
    return out


# --- printing -----------------------------------------------------------------------------------


def table(rows: dict[str, Validation], threshold: str) -> list[str]:
    """A Markdown table, one row per model: EERs, then rates at ``threshold``."""
    first = next(iter(rows.values()))
    voices = list(first.voices)
    head = (
        "| model | EER | EER held-out | bona fide acc. | held-out acc. | "
        + " | ".join(voices)
        + " | spoof rej. |"
    )
    lines = [head, "|" + "---|" * (6 + len(voices))]
    for name, v in rows.items():
        if threshold not in v.at:
            continue
        a = v.at[threshold]
        lines.append(
            f"| {name} | {100 * v.eer:.1f} | {100 * v.eer_held_out:.1f} | "
            f"{100 * a.bonafide_accepted:.1f} | {100 * a.held_out_accepted:.1f} | "
            + " | ".join(f"{100 * a.per_voice[x]:.0f}" for x in voices)
            + f" | {100 * a.spoof_rejected:.1f} |"
        )
    return lines


__all__ = [
    "CHANNELS",
    "AtThreshold",
    "Validation",
    "bundle_scores",
    "checkpoint_scores",
    "table",
    "validation_figures",
    "validation_set",
]
