"""Evaluate a bundle on a split: EER, min t-DCF, per-attack EER, rates at the card's threshold.

Scoring follows the reference evaluation loaders: one window per utterance, its first
``input_samples`` samples, repeat-padded when shorter (``voicescreen.audio.pad_repeat``), scored by
the bundle's runtime (ONNX Runtime by default, or PyTorch) in batches. That first window is also
window 0 of ``voicescreen score --windows`` on the same file. A ``channel`` (e.g. ``mulaw``) passes
each window's audio through a codec first, to measure the product's channel.

``evaluate()`` writes into its output folder:

- ``report.md``: the figures, with the plots beside it;
- ``scores.txt``: the ASVspoof 2019 CM score file (``FILE ATTACK LABEL SCORE``, attack ``-`` for
  bona fide), readable by the organisers' scripts;
- ``scores.csv``: the same with a header and the calibrated score and decision;
- ``metrics.json``: every figure of the report, for machines;
- ``hist.png`` (scores per class and per attack), ``det.png`` (DET curve), ``training.png``
  (training curves, when the bundle's card has them).

The min t-DCF needs the ASVspoof 2019 organisers' ASV scores; on a corpus other than ASVspoof 2019
LA it is still computable (the ASV side's error rates are fixed numbers) but it then mixes that ASV
system's error rates on ASVspoof with our countermeasure on this corpus, and the report says so.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicescreen.audio import load_audio, measure_channel, pad_repeat
from voicescreen.models.bundle import ScoreSpec
from voicescreen.runtimes import open_runtime
from voicescreen.train.augment import channel as apply_channel
from voicescreen.train.augment import describe_channel
from voicescreen.train.data import Utterance, balanced_subset, find_split, load_split
from voicescreen.train.folds import POOL_SPLITS, Fold, group_of, known_kinds, read_sources
from voicescreen.train.grouped import BootstrapOptions, group_figures, markdown_table, rows_by_value
from voicescreen.train.metrics import det_curve, eer, min_tdcf, read_asv_scores

log = logging.getLogger(__name__)

ASV_SCORE_FILE = "ASVspoof2019.LA.asv.{split}.gi.trl.scores.txt"
BATCH = 16


# --- windows and scores ------------------------------------------------------------------------


def first_window(x: np.ndarray, samples: int, channel: str = "clean") -> np.ndarray:
    """The evaluation window of a clip: its first ``samples`` samples, through ``channel``,
    repeat-padded to ``samples`` (the channel sees only real audio, never the padding)."""
    return pad_repeat(apply_channel(np.asarray(x[:samples], np.float32), channel), samples)


def iter_windows(
    utts: Sequence[Utterance],
    samples: int,
    channel: str = "clean",
    batch: int = BATCH,
    kinds: list[str] | None = None,
) -> Iterator[np.ndarray]:
    """Batches (B, samples) of the utterances' evaluation windows, in order. ``kinds``: a list
    to append each window's kind of audio to (``audio.measure_channel`` of its audio through
    ``channel``, before the padding, whose seams would read as wideband)."""
    for i in range(0, len(utts), batch):
        out = []
        for u in utts[i : i + batch]:
            x = apply_channel(load_audio(u.path)[:samples], channel)
            if kinds is not None:
                kinds.append(measure_channel(x))
            out.append(pad_repeat(x, samples))
        yield np.stack(out)


def score_utterances(
    score_fn: Callable[[np.ndarray], np.ndarray],
    utts: Sequence[Utterance],
    samples: int,
    channel: str = "clean",
    batch: int = BATCH,
    progress: bool = False,
    desc: str = "scoring",
    kinds: list[str] | None = None,
) -> np.ndarray:
    """Raw scores (higher = bona fide) of each utterance's first window; ``score_fn`` maps a
    (B, samples) float32 batch to (B,) scores. ``kinds``: filled with each window's kind of
    audio (``iter_windows``)."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(utts), desc=desc, unit="clip", disable=not progress, leave=False) as bar:
        for x in iter_windows(utts, samples, channel, batch, kinds):
            out.append(np.asarray(score_fn(x), dtype=np.float64).reshape(-1))
            bar.update(len(x))
    return np.concatenate(out) if out else np.zeros(0)


# --- figures -----------------------------------------------------------------------------------


def find_asv_scores(data_root: str | Path, split: str) -> Path | None:
    """The organisers' ASV score file for ``split`` (dev or eval), looked for in the published
    layout (``ASVspoof2019_LA_asv_scores/``), in ``$VOICESCREEN_ASV_SCORES``, and in
    ``reference/asvspoof2019/`` beside the data root (the ``../shared`` layout)."""
    if split not in ("dev", "eval"):
        return None
    name = ASV_SCORE_FILE.format(split=split)
    root = Path(data_root)
    candidates = [root / "ASVspoof2019_LA_asv_scores" / name]
    if os.environ.get("VOICESCREEN_ASV_SCORES"):
        candidates.append(Path(os.environ["VOICESCREEN_ASV_SCORES"]) / name)
    candidates.append(root.resolve().parent / "reference" / "asvspoof2019" / name)
    return next((p for p in candidates if p.is_file()), None)


def is_asvspoof2019(data_root: str | Path, split: str) -> bool:
    protocol, _ = find_split(data_root, split)
    return protocol.name.startswith("ASVspoof2019.LA.")


@dataclass
class Figures:
    """The metrics of one scored split (rates are fractions)."""

    n_bonafide: int
    n_spoof: int
    eer: float
    eer_threshold: float
    threshold: float  # the card's threshold (pooled over channels)
    bonafide_accepted: float  # at the card's threshold (each clip's channel's, where given)
    spoof_rejected: float
    accuracy: float  # of the decisions at the card's threshold
    per_attack: dict[str, dict[str, float]] = field(default_factory=dict)
    min_tdcf: float | None = None
    tdcf_asv: str | None = None  # the ASV score file used
    tdcf_note: str | None = None
    # clips judged at each of the card's calibrations (pooled, wideband, narrowband) and its
    # threshold; empty when one threshold judged them all
    calibrations: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def headline(self) -> dict[str, Any]:
        """The figures a card records: EER, min t-DCF, the rates and accuracy at the card's
        threshold and each attack's EER."""
        return {
            "eer": self.eer,
            "min_tdcf": self.min_tdcf,
            "bonafide_accepted": self.bonafide_accepted,
            "spoof_rejected": self.spoof_rejected,
            "accuracy": self.accuracy,
            "per_attack_eer": {a: v["eer"] for a, v in self.per_attack.items()},
        }


def compute_figures(
    utts: Sequence[Utterance],
    scores: np.ndarray,
    threshold: float,
    asv_scores: str | Path | None = None,
    tdcf_note: str | None = None,
    *,
    calibrations: Sequence[tuple[str, float]] | None = None,
) -> Figures:
    """EER (and its threshold), rates and accuracy at ``threshold``, per-attack EER and spoof
    rejection, and min t-DCF when ``asv_scores`` is given. ``calibrations``: per clip, the
    name and threshold of the card's calibration that judges it (a channel's own), which then
    stand in for ``threshold`` in the rates."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.array([u.is_bonafide for u in utts])
    bona, spoof = scores[labels], scores[~labels]
    value, eer_threshold = eer(bona, spoof)
    cut = np.full(scores.shape, float(threshold))
    used: dict[str, dict[str, float]] = {}
    if calibrations is not None:
        cut = np.array([t for _, t in calibrations], dtype=np.float64)
        for name, t in calibrations:
            used.setdefault(name, {"clips": 0, "threshold": t})["clips"] += 1
    accept = scores >= cut
    accuracy = float(np.mean(accept == labels))
    attacks = np.array([u.attack for u in utts])
    per_attack = {}
    for attack in sorted(set(attacks[~labels])):
        mine = attacks == attack
        per_attack[attack] = {
            "n": int(mine.sum()),
            "eer": eer(bona, scores[mine])[0],
            "spoof_rejected": float(np.mean(~accept[mine])),
        }
    tdcf = None
    if asv_scores is not None:
        tdcf = min_tdcf(bona, spoof, read_asv_scores(asv_scores))
    return Figures(
        n_bonafide=int(bona.size),
        n_spoof=int(spoof.size),
        eer=value,
        eer_threshold=eer_threshold,
        threshold=float(threshold),
        bonafide_accepted=float(np.mean(accept[labels])),
        spoof_rejected=float(np.mean(~accept[~labels])),
        accuracy=accuracy,
        per_attack=per_attack,
        calibrations=used,
        min_tdcf=tdcf,
        tdcf_asv=str(asv_scores) if asv_scores is not None else None,
        tdcf_note=tdcf_note if asv_scores is not None else None,
    )


# --- a cascade ---------------------------------------------------------------------------------

CASCADE_BANDS = (0.5, 1.0, 2.0, 4.0)  # the bands ``eval --screen`` tries (calibrated units)


def cascade_figures(
    utts: Sequence[Utterance],
    expert: np.ndarray,
    screen: np.ndarray,
    bands: Sequence[float],
    channels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What ``serve --screen SCREEN --band B`` decides on these windows, for each band: the
    screen's calibrated score where ``|screen| > B``, else the expert's (``stream.worker.Cascade``),
    judged at 0 (each model's own calibration for the window's kind of audio). ``expert`` and
    ``screen`` are calibrated scores, one per row of ``utts``; ``channels``, one per row, adds
    each band's EER per channel. Each entry: EER, bona fide accepted and spoofs rejected at 0, and
    ``escalated``, the share of windows the expert scored (its cost relative to running it on
    every window); ``screen`` and ``expert`` alone, the same figures."""
    labels = np.array([u.is_bonafide for u in utts])
    expert = np.asarray(expert, dtype=np.float64)
    screen = np.asarray(screen, dtype=np.float64)

    def judge(cal: np.ndarray) -> dict[str, Any]:
        accept = cal >= 0
        out: dict[str, Any] = {
            "eer": eer(cal[labels], cal[~labels])[0],
            "bonafide_accepted": float(np.mean(accept[labels])),
            "spoof_rejected": float(np.mean(~accept[~labels])),
        }
        if channels is not None:
            ch = np.asarray(channels)
            out["eer_per_channel"] = {
                c: eer(cal[(ch == c) & labels], cal[(ch == c) & ~labels])[0]
                for c in dict.fromkeys(channels)
            }
        return out

    rows = []
    for band in bands:
        escalate = np.abs(screen) <= band
        rows.append(
            {
                "band": float(band),
                "escalated": float(np.mean(escalate)),
                **judge(np.where(escalate, expert, screen)),
            }
        )
    return {"screen_alone": judge(screen), "expert_alone": judge(expert), "bands": rows}


def _cascade_lines(cascade: Mapping[str, Any], expert_name: str) -> list[str]:
    screen = cascade["screen"]
    lines = [
        f"`{screen['name']}` ({screen['architecture']}) scores every window; `{expert_name}` "
        "only those whose screen score lies within the band (calibrated units, 0 = each "
        "model's threshold for the window's kind of audio), as `serve --screen` does. EER on "
        "the calibrated scores the cascade would act on; rates at 0.",
        "",
        "| | windows the expert scores | EER | bona fide accepted | spoofs rejected |"
        + "".join(f" EER {c} |" for c in cascade["expert_alone"].get("eer_per_channel", {})),
        "|---|---|---|---|---|" + "---|" * len(cascade["expert_alone"].get("eer_per_channel", {})),
    ]

    def row(label: str, share: str, f: Mapping[str, Any]) -> str:
        per = "".join(f" {_pct(v)} |" for v in f.get("eer_per_channel", {}).values())
        return (
            f"| {label} | {share} | {_pct(f['eer'])} | {_pct(f['bonafide_accepted'])} | "
            f"{_pct(f['spoof_rejected'])} |{per}"
        )

    lines.append(row(f"`{expert_name}` alone", "100 %", cascade["expert_alone"]))
    lines.append(row(f"`{screen['name']}` alone", "0 %", cascade["screen_alone"]))
    for b in cascade["bands"]:
        lines.append(row(f"cascade, band {b['band']:g}", _pct(b["escalated"]), b))
    return lines


# --- score files -------------------------------------------------------------------------------


def write_score_file(path: str | Path, utts: Sequence[Utterance], scores: np.ndarray) -> None:
    """The ASVspoof 2019 CM score file: one ``FILE ATTACK LABEL SCORE`` line per utterance."""
    lines = [
        f"{u.file} {u.attack} {u.label} {float(s):.9g}" for u, s in zip(utts, scores, strict=True)
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def read_score_file(path: str | Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Files, attacks, labels and scores of an ASVspoof 2019 CM score file."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != 4]
    if bad:
        raise ValueError(f"{path}: lines {bad[:5]} are not 'FILE ATTACK LABEL SCORE'")
    return (
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        np.array([float(r[3]) for r in rows]),
    )


def write_csv(
    path: str | Path,
    utts: Sequence[Utterance],
    scores: np.ndarray,
    specs: Sequence[tuple[ScoreSpec, str]],
    channels: Sequence[str] | None = None,
    columns: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Scores, calibrated by each clip's calibration (``specs``: a spec and its name per clip);
    ``channels`` (one per row) adds a ``channel`` column, ``columns`` more numeric ones (name
    -> one value per row)."""
    columns = dict(columns or {})
    extra = [[c] for c in channels] if channels is not None else [[] for _ in utts]
    for name, values in columns.items():
        if len(values) != len(utts):
            raise ValueError(f"column {name}: {len(values)} values for {len(utts)} rows")
        for row, v in zip(extra, values, strict=True):
            row.append(f"{float(v):.9g}")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["file", "speaker", "attack", "label", "score", "calibrated", "decision", "calibration"]
            + (["channel"] if channels is not None else [])
            + list(columns)
        )
        for u, s, (spec, name), more in zip(utts, scores, specs, extra, strict=True):
            cal = float(spec.calibrate(float(s)))
            w.writerow(
                [
                    u.file,
                    u.speaker,
                    u.attack,
                    u.label,
                    f"{float(s):.9g}",
                    f"{cal:.9g}",
                    "bonafide" if cal >= 0 else "spoof",
                    name,
                    *more,
                ]
            )


# --- plots -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(
    path: str | Path,
    utts: Sequence[Utterance],
    scores: np.ndarray,
    threshold: float,
    title: str = "",
) -> None:
    """Score histograms: bona fide against all spoofs, and against each attack."""
    plt = _pyplot()
    scores = np.asarray(scores)
    labels = np.array([u.label for u in utts])
    attacks = np.array([u.attack for u in utts])
    bins = np.linspace(scores.min(), scores.max() + 1e-9, 41)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.hist(scores[labels == "bonafide"], bins, alpha=0.6, label="bona fide", color="tab:green")
    ax.hist(scores[labels == "spoof"], bins, alpha=0.6, label="spoof", color="tab:red")
    ax.set_title("per class")
    ax = axes[1]
    ax.hist(
        scores[labels == "bonafide"],
        bins,
        histtype="step",
        lw=2,
        label="bona fide",
        color="tab:green",
    )
    palette = [
        "tab:red",
        "tab:blue",
        "tab:orange",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:gray",
        "tab:olive",
        "tab:cyan",
    ]  # no green: that is bona fide
    for i, attack in enumerate(sorted(set(attacks[labels == "spoof"]))):
        ax.hist(
            scores[attacks == attack],
            bins,
            histtype="step",
            lw=1.5,
            label=attack,
            color=palette[i % len(palette)],
        )
    ax.set_title("per attack")
    for ax in axes:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:+.3f}")
        ax.set_xlabel("score (higher = bona fide)")
        ax.set_ylabel("clips")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_det(
    path: str | Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str = "",
) -> None:
    """DET curves (miss vs false alarm on normal-deviate axes); ``curves`` maps a label to
    (bona fide scores, spoof scores)."""
    from scipy.stats import norm

    plt = _pyplot()
    ticks = np.array([0.1, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 99]) / 100
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for label, (bona, spoof) in curves.items():
        miss, fa, _ = det_curve(bona, spoof)
        lo = 0.5 / max(len(bona), len(spoof))
        x = norm.ppf(np.clip(fa, lo, 1 - lo))
        y = norm.ppf(np.clip(miss, lo, 1 - lo))
        value, _ = eer(bona, spoof)
        ax.plot(x, y, lw=1.5, label=f"{label} (EER {100 * value:.2f} %)")
    ax.plot(norm.ppf([1e-3, 0.999]), norm.ppf([1e-3, 0.999]), "k:", lw=0.8)
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(norm.ppf([1e-3, 0.99]))
    ax.set_ylim(norm.ppf([1e-3, 0.99]))
    ax.set_xlabel("false alarm: spoofs accepted (%)")
    ax.set_ylabel("miss: bona fide rejected (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(path: str | Path, history: Sequence[dict[str, Any]], title: str = "") -> bool:
    """Loss, accuracy and dev EER per epoch from a training history; False when there is none."""
    keys = ("train_loss", "train_acc", "dev_loss", "dev_acc", "dev_eer")
    rows = [h for h in history if "epoch" in h and any(k in h for k in keys)]
    if not rows:
        return False  # e.g. LFCC-GMM: one fit, no curves
    plt = _pyplot()
    epochs = [h["epoch"] for h in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in [
        (axes[0], "loss", "loss"),
        (axes[1], "acc", "accuracy"),
        (axes[2], "eer", "EER"),
    ]:
        for split, style in (("train", "-o"), ("dev", "--s")):
            values = [h.get(f"{split}_{key}") for h in rows]
            if any(v is not None for v in values):
                xs = [e for e, v in zip(epochs, values, strict=True) if v is not None]
                ax.plot(xs, [v for v in values if v is not None], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- the report --------------------------------------------------------------------------------


@dataclass
class EvalResult:
    out_dir: Path
    figures: Figures
    scores: np.ndarray
    utts: list[Utterance]  # one per score: each clip once per channel scored
    files: dict[str, Path]
    groups: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    cascade: dict[str, Any] | None = None  # with a screen: ``cascade_figures`` and the screen


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def evaluate(
    bundle_path: str | Path,
    data_root: str | Path,
    split: str | None,
    out_dir: str | Path,
    *,
    backend: str = "onnx",
    channel: str = "clean",
    asv_scores: str | Path | None = None,
    subset: int | None = None,
    per_attack: bool = False,
    seed: int = 0,
    threads: int | None = None,
    progress: bool | None = None,
    command: str | None = None,
    channels: Sequence[str] | None = None,
    by: Sequence[str] = (),
    folds: Sequence[Fold] | None = None,
    bootstrap: BootstrapOptions | None = None,
    screen: str | Path | None = None,
    bands: Sequence[float] = CASCADE_BANDS,
) -> EvalResult:
    """Score ``split`` of the corpus at ``data_root`` with a bundle and write the report.

    Grouped evaluation (any of these given): ``channels`` scores every clip through each of
    several channels (the summary pools them); ``folds`` scores the folds' held-out parts (drawn
    from the train and dev splits; ``split`` must then be None: the eval split is never in a
    fold); ``by`` names the groups reported, each with bootstrap intervals (``bootstrap``, seeded
    from ``seed`` by default): ``fold``, ``channel``, ``attack`` and the kinds of
    ``voicescreen.train.folds`` that the corpus knows (``family``, ``system``, ``language``,
    ``package``, ``speaker``), plus ``recording`` (``sources.tsv``'s recording chain).

    ``screen``: a cheaper bundle put in front, as ``serve --screen``: the same windows are also
    scored with it, and the report adds what the cascade would decide at each of ``bands``
    (``cascade_figures``); the main figures stay the bundle's own."""
    from voicescreen.models.bundle import load_bundle

    grouped = bool(channels) or bool(by) or bool(folds)
    if folds and split is not None:
        raise ValueError(
            f"folds are drawn from the train and dev splits; scoring them takes no split "
            f"(got {split!r})"
        )
    if not folds and split is None:
        raise ValueError("name a split, or give folds")
    channels = list(channels or [channel])
    by = list(dict.fromkeys(by or (("fold", "channel") if folds else ("channel",))))
    sources = read_sources(data_root) if grouped else None
    if grouped:
        _check_groups(by, sources, folds)
        codecs = {c: describe_channel(c) for c in channels}  # raises for a missing codec
    bundle = load_bundle(bundle_path)
    screen_bundle = load_bundle(screen) if screen is not None else None
    if screen_bundle is not None and screen_bundle.input_samples != bundle.input_samples:
        raise ValueError(
            f"a cascade's models take the same windows: {screen_bundle.name} takes "
            f"{screen_bundle.input_samples} samples, {bundle.name} {bundle.input_samples}"
        )
    if folds:
        utts = _held_out_parts(data_root, folds)
        split_name = "folds"
    else:
        utts = load_split(data_root, split)
        split_name = split
    if subset:
        utts = sorted(balanced_subset(utts, subset, seed, per_attack), key=lambda u: u.file)
    progress = sys.stderr.isatty() if progress is None else progress
    runtime = open_runtime(bundle, backend, threads=threads)
    screened: list[np.ndarray] = []  # the screen's raw scores of the same windows, in order
    if screen_bundle is not None:
        screen_runtime = open_runtime(screen_bundle, backend, threads=threads)

        def score_fn(x: np.ndarray) -> np.ndarray:
            screened.append(np.asarray(screen_runtime(x)[1], dtype=np.float64).reshape(-1))
            return runtime(x)[1]
    else:

        def score_fn(x: np.ndarray) -> np.ndarray:
            return runtime(x)[1]

    spec = bundle.score
    kinds: list[str] = []  # each window's kind of audio, whose calibration judges it
    per_channel = [
        score_utterances(
            score_fn,
            utts,
            bundle.input_samples,
            ch,
            progress=progress,
            desc=f"{split_name} ({ch})",
            kinds=kinds,
        )
        for ch in channels
    ]
    scores = np.concatenate(per_channel)
    rows = [u for _ in channels for u in utts]  # one row per clip and channel
    specs = [spec.for_channel(k) for k in kinds]

    asv = None
    if not folds:
        asv = Path(asv_scores) if asv_scores else find_asv_scores(data_root, split)
    note = None
    if asv is not None and not is_asvspoof2019(data_root, split):
        note = (
            "this corpus is not ASVspoof 2019 LA: the t-DCF uses the ASVspoof 2019 organisers' "
            "ASV system's fixed error rates (from their scores) with our countermeasure's rates "
            "on this corpus; compare it only with other figures computed the same way"
        )
    figures = compute_figures(
        rows,
        scores,
        spec.threshold,
        asv,
        note,
        calibrations=[(name, s.threshold) for s, name in specs] if spec.channels else None,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report": out / "report.md",
        "scores": out / "scores.txt",
        "csv": out / "scores.csv",
        "metrics": out / "metrics.json",
        "hist": out / "hist.png",
        "det": out / "det.png",
    }
    write_score_file(files["scores"], rows, scores)
    row_channels = [ch for ch in channels for _ in utts]
    screen_columns = {}
    if screen_bundle is not None:  # the screen's scores of the same windows, at its calibration
        first = np.concatenate(screened)
        theirs = np.array(
            [
                screen_bundle.score.for_channel(k)[0].calibrate(x)
                for k, x in zip(kinds, first, strict=True)
            ]
        )
        screen_columns = {"screen_score": first, "screen_calibrated": theirs}
    write_csv(files["csv"], rows, scores, specs, row_channels if grouped else None, screen_columns)
    title = f"{bundle.name} on {split_name} ({', '.join(channels)})"
    most = Counter(name for _, name in specs).most_common(1)[0][0]
    plot_histograms(files["hist"], rows, scores, spec.for_channel(most)[0].threshold, title)
    labels = np.array([u.is_bonafide for u in rows])
    curves = {bundle.name: (scores[labels], scores[~labels])}
    if len(channels) > 1:
        n = len(utts)
        curves = {
            ch: (s[labels[:n]], s[~labels[:n]]) for ch, s in zip(channels, per_channel, strict=True)
        }
    plot_det(files["det"], curves, title)
    training = bundle.card.get("training") or {}
    if plot_training(out / "training.png", training.get("history") or [], bundle.name):
        files["training"] = out / "training.png"

    meta = {
        "bundle": {
            "name": bundle.name,
            "path": str(bundle_path),
            "architecture": bundle.architecture,
            "threshold": spec.threshold,
            "scale": spec.scale,
            "convention": spec.convention,
            "onnx_sha256": bundle.card["files"]["model.onnx"]["sha256"],
        },
        "data": {
            "root": str(data_root),
            "split": split_name,
            "clips": len(utts),
            "subset": subset,
            "per_attack": per_attack,
            "attacks": dict(sorted(Counter(u.attack for u in utts).items())),
        },
        "scoring": {
            "backend": backend,
            "channel": channel if not grouped else ",".join(channels),
            "window": f"first {bundle.input_samples} samples, repeat-padded",
        },
        "figures": figures.to_dict(),
    }
    if grouped:
        boot = bootstrap or BootstrapOptions(seed=seed)
        meta["scoring"]["channels"] = codecs
        meta["data"]["bonafide"] = sum(u.is_bonafide for u in utts)
        meta["data"]["spoof"] = len(utts) - meta["data"]["bonafide"]
        if folds:
            meta["folds"] = {
                f.name: {"kind": f.kind, "value": f.value, "train": len(f.train),
                         "held_out": len(f.held_out)}
                for f in folds
            }  # fmt: skip
        meta["bootstrap"] = {
            "resamples": boot.resamples,
            "confidence": boot.confidence,
            "seed": boot.seed,
            "unit": "clip, resampled within each class of a group (its channels with it)",
        }
        meta["groups"] = _groups(rows, scores, specs, row_channels, by, sources, folds, boot)
    if screen_bundle is not None:
        own = [s.calibrate(x) for (s, _), x in zip(specs, scores, strict=True)]
        meta["cascade"] = {
            "screen": {
                "name": screen_bundle.name,
                "path": str(screen),
                "architecture": screen_bundle.architecture,
            },
            **cascade_figures(
                rows, np.array(own), theirs, bands, row_channels if grouped else None
            ),
        }
    files["metrics"].write_text(json.dumps(meta, indent=2) + "\n")
    files["report"].write_text(_report_markdown(meta, figures, bundle.card, files, command))
    log.info("wrote %s (EER %.2f %%)", files["report"], 100 * figures.eer)
    return EvalResult(
        out, figures, scores, rows, files, meta.get("groups", {}), meta.get("cascade")
    )


# --- grouped evaluation ------------------------------------------------------------------------

SPOOF_ONLY = {"family", "system", "attack"}  # their bona fide value is the reference, not a group


def _check_groups(
    by: Sequence[str],
    sources: Mapping[str, Mapping[str, str]] | None,
    folds: Sequence[Fold] | None,
) -> None:
    known = ["channel", "attack", *known_kinds(sources)]
    if folds:
        known.insert(0, "fold")
    if sources is not None:
        known.append("recording")
    bad = [k for k in by if k not in known]
    if bad:
        why = "" if folds or "fold" not in bad else " (fold needs folds)"
        raise ValueError(f"cannot group by {bad}{why}; this corpus gives {known}")


def _held_out_parts(data_root: str | Path, folds: Sequence[Fold]) -> list[Utterance]:
    """The clips of the folds' held-out parts (each once), sorted by name."""
    wanted = {n for f in folds for n in f.held_out}
    utts = {u.file: u for split in POOL_SPLITS for u in load_split(data_root, split)}
    return [utts[n] for n in sorted(wanted)]


def _groups(
    rows: Sequence[Utterance],
    scores: np.ndarray,
    specs: Sequence[tuple[ScoreSpec, str]],
    row_channels: Sequence[str],
    by: Sequence[str],
    sources: Mapping[str, Mapping[str, str]] | None,
    folds: Sequence[Fold] | None,
    boot: BootstrapOptions,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``group_figures`` for each kind in ``by``."""
    labels = np.array([u.is_bonafide for u in rows])
    cuts = np.array([s.threshold for s, _ in specs], dtype=np.float64)
    names = np.array([u.file for u in rows], dtype=object)
    clips = np.unique(names, return_inverse=True)[1]
    out = {}
    for kind in by:
        if kind == "fold":
            groups = {f.name: np.flatnonzero(np.isin(names, f.held_out)) for f in folds or ()}
        else:
            if kind == "channel":
                values = list(row_channels)
            elif kind == "attack":
                values = [u.attack for u in rows]
            elif kind == "recording":
                values = [group_of(u, "channel", sources) for u in rows]
            else:
                values = [group_of(u, kind, sources) for u in rows]
            groups = rows_by_value(values)
            if kind == "channel":  # in the order asked
                groups = {c: groups[c] for c in dict.fromkeys(row_channels)}
            if kind in SPOOF_ONLY:
                groups = {v: r for v, r in groups.items() if not labels[r].all()}
        out[kind] = group_figures(scores, labels, cuts, clips, groups, boot, kind)
    return out


def _grouped_markdown(meta: dict) -> list[str]:
    boot = meta["bootstrap"]
    lines = ["", "## Channels", "", "| channel | codec | implementation | rate | bit rate |"]
    lines.append("|---|---|---|---|---|")
    for name, c in meta["scoring"]["channels"].items():
        rate = f"{c['bit_rate']} b/s" if c["bit_rate"] else "-"
        lines.append(f"| {name} | {c['codec']} | {c['implementation']} | {c['rate']} Hz | {rate} |")
    if "folds" in meta:
        lines += [
            "",
            "## Folds",
            "",
            "Each fold holds out one group of the train and dev splits (never eval); its "
            "held-out part was scored here. Train a model on a fold's train part to rank it on "
            "what it has not heard.",
            "",
            "| fold | train clips | held-out clips |",
            "|---|---|---|",
            *(f"| {n} | {f['train']} | {f['held_out']} |" for n, f in meta["folds"].items()),
        ]
    for kind, groups in meta["groups"].items():
        lines += ["", f"## By {kind}", "", *markdown_table(kind, groups)]
    lines += [
        "",
        f"Intervals: {100 * boot['confidence']:g} % percentile bootstrap, {boot['resamples']} "
        f"resamples of the clips within each group and class (seed {boot['seed']}); rates at "
        "the card's threshold (each clip's channel's calibration where the card has one). "
        "(all): a group of one class measured against every scored clip of the other.",
    ]
    return lines


def _clips(d: Mapping[str, Any]) -> str:
    """``{"clips": 370, "bonafide": 185, "spoof": 185, ...}`` in words."""
    n, bona, spoof = (d.get(k, "?") for k in ("clips", "bonafide", "spoof"))
    return f"{n} clips ({bona} bona fide, {spoof} spoof)"


def _data_lines(data: Mapping[str, Any]) -> list[str]:
    """A card's ``training.data`` as report lines (not a JSON dump)."""
    if not data:
        return []
    lines = [f"- Data: `{data.get('root')}` ({data.get('corpus', 'corpus')})"]
    for key, what in (("train", "trained on"), ("dev", "calibrated on (dev)")):
        if not data.get(key):
            continue
        extra = ", ".join(f"`{e.get('root')}` {_clips(e)}" for e in data.get(f"extra_{key}") or [])
        lines.append(
            f"  - {what}: {_clips(data[key])}"
            + (f", of which from the extra corpora: {extra}" if extra else "")
        )
    return lines


def _fusion_lines(card: Mapping[str, Any]) -> list[str]:
    """A fusion card's members, regression and the data it was fitted on, as report lines."""
    training, config = card["training"], card["config"]
    fusion = training["fusion"]
    terms = " ".join(
        f"{w:+.4f} x `{m['name']}` ({m['architecture']})"
        for w, m in zip(config["weights"], config["members"], strict=True)
    )
    data = training.get("data") or {}
    lines = [
        f"- Fused score: {config['bias']:+.4f} {terms} (raw member scores)",
        f"- Fitted on {training.get('clips')} clips of {data.get('corpora') or data} "
        f"through {', '.join(training.get('channels') or [])}: {fusion.get('scores')} scores",
    ]
    for who, eers in (fusion.get("figures") or {}).items():
        cells = ", ".join(f"{k} {_pct(v)}" for k, v in eers.items())
        lines.append(f"  - EER of {who}: {cells}")
    return lines


def _report_markdown(
    meta: dict, f: Figures, card: dict, files: dict[str, Path], command: str | None
) -> str:
    b, d, s = meta["bundle"], meta["data"], meta["scoring"]
    lines = [
        f"# {b['name']} on the {d['split']} split"
        if d["split"] != "folds"
        else f"# {b['name']} on the folds' held-out parts",
        "",
        f"- Bundle: `{b['path']}` ({b['architecture']}, score `{b['convention']}`, "
        f"threshold {b['threshold']:+.6f}, scale {b['scale']:.4g})",
        f"- Data: `{d['root']}`, split `{d['split']}`, {d['clips']} clips "
        f"({d.get('bonafide', f.n_bonafide)} bona fide, {d.get('spoof', f.n_spoof)} spoof)"
        + (f", seeded subset of {d['subset']}" if d["subset"] else "")
        + (
            " (spoofs spread evenly over the attacks)"
            if d["subset"] and d.get("per_attack")
            else ""
        )
        + (
            f"; each through {len(s['channels'])} channels: {f.n_bonafide + f.n_spoof} "
            "scored rows, which the figures below count"
            if len(s.get("channels", ())) > 1
            else ""
        ),
        f"- Scoring: {s['window']} of each clip, channel `{s['channel']}`, {s['backend']} runtime",
    ]
    if command:
        lines.append(f"- Command: `{command}`")
    lines += [
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
        f"| EER | {_pct(f.eer)} |",
        f"| EER threshold | {f.eer_threshold:+.6f} |",
        "| min t-DCF | "
        + ("n/a (no ASV scores)" if f.min_tdcf is None else f"{f.min_tdcf:.4f}")
        + (" (see note)" if f.tdcf_note else "")
        + " |",
        f"| bona fide accepted at the card's threshold | {_pct(f.bonafide_accepted)} |",
        f"| spoofs rejected at the card's threshold | {_pct(f.spoof_rejected)} |",
        f"| accuracy at the card's threshold | {_pct(f.accuracy)} |",
        *(
            f"| clips judged at the {name} calibration (threshold {c['threshold']:+.4f}) | "
            f"{c['clips']} |"
            for name, c in f.calibrations.items()
        ),
        "",
        "## Per attack",
        "",
        "| attack | clips | EER (vs all bona fide) | rejected at threshold |",
        "|---|---|---|---|",
    ]
    for attack, a in f.per_attack.items():
        lines.append(f"| {attack} | {a['n']} | {_pct(a['eer'])} | {_pct(a['spoof_rejected'])} |")
    if f.min_tdcf is not None:
        lines += ["", f"ASV scores for the t-DCF: `{f.tdcf_asv}`."]
        if f.tdcf_note:
            lines += ["", f"**Note on the t-DCF:** {f.tdcf_note}."]
    if "groups" in meta:
        lines += _grouped_markdown(meta)
    if "cascade" in meta:
        lines += ["", "## Cascade", "", *_cascade_lines(meta["cascade"], b["name"])]
    lines += [
        "",
        "## Plots",
        "",
        f"![score histograms]({files['hist'].name})",
        "",
        f"![DET curve]({files['det'].name})",
    ]
    if "training" in files:
        lines += ["", f"![training curves]({files['training'].name})"]
    training = card.get("training") or {}
    if training.get("fusion"):
        lines += ["", "## Fusion (from the bundle's card)", "", *_fusion_lines(card)]
    elif training:
        recipe = training.get("recipe", {})
        lines += [
            "",
            "## Training (from the bundle's card)",
            "",
            f"- Recipe `{recipe.get('name')}`: {recipe.get('epochs')} epochs, batch "
            f"{recipe.get('batch_size')}, lr {recipe.get('lr')}, scheduler "
            f"{recipe.get('scheduler')}, seed {recipe.get('seed')}, init `{recipe.get('init')}`",
            *_data_lines(training.get("data") or {}),
        ]
        dev = (card.get("metrics") or {}).get("dev")
        if dev:
            data = training.get("data") or {}
            extra = [e.get("root") for e in data.get("extra_dev") or []]
            what = "the dev split" + (f" + the dev splits of {', '.join(extra)}" if extra else "")
            clips = (data.get("dev") or {}).get("clips")
            lines.append(
                f"- Calibrated on {what}"
                + (f" ({clips} clips)" if clips else "")
                + f" through {', '.join(dev.get('channels', []))}: EER {_pct(dev.get('eer'))} "
                f"(first channel), threshold {dev.get('threshold', 0):+.6f}"
            )
    lines += [
        "",
        "## Files",
        "",
        f"- `{files['scores'].name}`: ASVspoof 2019 CM score file (`FILE ATTACK LABEL SCORE`)",
        f"- `{files['csv'].name}`: scores with calibrated values and decisions",
        f"- `{files['metrics'].name}`: every figure above",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "EvalResult",
    "Figures",
    "compute_figures",
    "evaluate",
    "find_asv_scores",
    "first_window",
    "iter_windows",
    "plot_det",
    "plot_histograms",
    "plot_training",
    "read_score_file",
    "score_utterances",
    "write_score_file",
]
