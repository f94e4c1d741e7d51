"""Where AASIST looks: heatmaps of its graph-attention weights for one clip.

AASIST builds two graphs from its encoder output: spectral nodes (one per group of three mel-spaced
sinc filters, 23 for a 70-filter front-end) and temporal nodes (one per ~137 ms of the window at the
default depth). Each graph attention layer (GAT-S, GAT-T) has an (N, N) attention map, rows summing
to 1: row i says how much node i draws from every node j. Graph pooling then keeps the top nodes,
and the heterogeneous layers (HS-GAL) attend over the kept temporal and spectral nodes together,
with a master node attending to all of them. (In the official AASIST and AASIST-L weights the
HS-GAL attention vectors are zero or nearly so, e.g. every ``att_weight*`` of AASIST-L: at
temperature 100 their gradients vanish and weight decay takes them to 0, so those maps are uniform;
the informative maps are GAT-S, GAT-T and the graph-pooling choices.)

``explain(file, bundle, out_dir)`` scores the clip's first window (as ``voicescreen eval`` does),
records every map and writes:

- ``overview.png``: the window's spectrogram with the attention each temporal node receives (GAT-T,
  column means) along time and each spectral node receives (GAT-S) along frequency;
- ``gat_spectral.png``, ``gat_temporal.png``: the two (N, N) maps, axes in Hz and seconds;
- ``hsgal.png``: the four HS-GAL maps with the kept nodes' original indices, and the master node's
  attention;
- ``attention.npz``: every map as arrays, and ``explain.json``: the clip's score and verdict.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicescreen.audio import SAMPLE_RATE, load_audio, pad_repeat
from voicescreen.stream.vad import speech_before
from voicescreen.verdict import SmoothingOptions, summarise

log = logging.getLogger(__name__)

HSGAL_LAYERS = (
    "HtrgGAT_layer_ST11",
    "HtrgGAT_layer_ST12",
    "HtrgGAT_layer_ST21",
    "HtrgGAT_layer_ST22",
)


class ExplainError(ValueError):
    """A bundle or clip that cannot be explained (e.g. not an AASIST model)."""


def spectral_node_bands(n_filters: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_filters // 3, 2) frequency band in Hz of each spectral node: the band edges of its three
    mel-spaced sinc filters (AASIST spaces n + 1 edges evenly on the mel scale, 0 to Nyquist)."""
    top = 2595 * np.log10(1 + (sample_rate / 2) / 700)
    edges = 700 * (10 ** (np.linspace(0, top, n_filters + 1) / 2595) - 1)
    n = n_filters // 3
    return np.stack([edges[3 * np.arange(n)], edges[3 * np.arange(n) + 3]], axis=1)


@dataclass
class Explanation:
    file: str
    score: float
    calibrated: float
    verdict: str
    maps: dict[str, np.ndarray]  # name -> (N, N) or (N,) for one clip
    window: np.ndarray  # the scored window
    files: dict[str, Path]


def attention_maps(model: Any, window: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run an AASIST model (eval mode) on one window; (logits (2,), maps for that window)."""
    import torch

    if not hasattr(model, "record_attention"):
        raise ExplainError("graph-attention maps exist for AASIST models only")
    model.eval().record_attention(True)
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(window[None].astype(np.float32)))[0].numpy()
        maps = {k: v[0].float().numpy() for k, v in model.attention_maps().items()}
    finally:
        model.record_attention(False)
    return logits, maps


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmap(
    ax,
    m: np.ndarray,
    title: str,
    labels: list[str] | None = None,
    split: int = 0,
    relative: bool = False,
):
    """An attention map; ``relative`` shows ``N * a_ij - 1``, the departure from uniform
    attention (HS-GAL's temperature of 100 makes its maps nearly uniform)."""
    if relative:
        m = m * m.shape[-1] - 1
        lim = max(float(np.abs(m).max()), 1e-12)
        im = ax.imshow(
            m, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest"
        )
    else:
        im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("attends to (node j)", fontsize=8)
    ax.set_ylabel("node i", fontsize=8)
    if labels is not None:
        step = max(1, len(labels) // 12)
        ticks = list(range(0, len(labels), step))
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=6)
        ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=6)
    if split:
        for f in (ax.axhline, ax.axvline):
            f(split - 0.5, color="w", lw=1)
    return im


def _hsgal_labels(
    maps: dict[str, np.ndarray], branch: str, depth: str, n: int
) -> tuple[list[str], int]:
    """Names of an HS-GAL layer's nodes by origin (T<i>, S<i>), and how many are temporal.

    Layer 1 of a branch sees the nodes kept by pool_T and pool_S; layer 2 those of them that the
    branch's pool_hT / pool_hS kept (indices into layer 1's nodes)."""
    kept_t, kept_s = maps.get("pool_T.indices"), maps.get("pool_S.indices")
    if kept_t is None or kept_s is None:
        return [str(j) for j in range(n)], 0
    kept_t, kept_s = kept_t.astype(int), kept_s.astype(int)
    if depth == "2":
        kept_t = kept_t[maps[f"pool_hT{branch}.indices"].astype(int)]
        kept_s = kept_s[maps[f"pool_hS{branch}.indices"].astype(int)]
    labels = [f"T{j}" for j in kept_t] + [f"S{j}" for j in kept_s]
    if len(labels) != n:
        return [str(j) for j in range(n)], 0
    return labels, len(kept_t)


def explain(
    file: str | Path,
    bundle_path: str | Path,
    out_dir: str | Path,
) -> Explanation:
    """Score ``file``'s first window with an AASIST bundle and write the attention heatmaps."""
    from voicescreen.models.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    if not bundle.architecture.startswith("aasist"):
        raise ExplainError(
            f"{bundle_path}: a {bundle.architecture} bundle; graph-attention maps exist for "
            "AASIST and AASIST-L only"
        )
    model = bundle.build_torch()
    samples = bundle.input_samples
    heard = load_audio(file)[:samples]
    window = pad_repeat(heard, samples)
    logits, maps = attention_maps(model, window)
    import torch

    from voicescreen.models.bundle import score_from_logits

    spec = bundle.score
    score = float(score_from_logits(torch.from_numpy(logits[None]), spec.convention)[0])
    calibrated = float(spec.calibrate(score))
    verdict = summarise([calibrated], speech_before(heard)(heard.size), SmoothingOptions()).verdict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    seconds = samples / SAMPLE_RATE
    bands = spectral_node_bands(bundle.config["filts"][0])
    s_labels = [f"{lo:.0f}-{hi:.0f}" for lo, hi in bands]
    att_s, att_t = maps["GAT_layer_S"], maps["GAT_layer_T"]
    n_t = att_t.shape[0]
    t_edges = np.linspace(0, seconds, n_t + 1)
    t_labels = [f"{a:.2f}" for a in t_edges[:-1]]
    title = f"{Path(file).name}: {verdict} (score {score:+.3f}, calibrated {calibrated:+.2f})"
    plt = _pyplot()

    # Overview: spectrogram with the attention received per node.
    fig, axes = plt.subplots(
        2, 2, figsize=(12, 6), gridspec_kw={"width_ratios": [5, 1], "height_ratios": [1, 3]}
    )
    axes[0, 1].axis("off")
    received_t = att_t.mean(axis=0)
    axes[0, 0].bar(t_edges[:-1], received_t, width=np.diff(t_edges), align="edge", color="tab:blue")
    axes[0, 0].set_xlim(0, seconds)
    axes[0, 0].set_ylabel("GAT-T\nreceived", fontsize=8)
    axes[0, 0].set_title(title, fontsize=10)
    ax = axes[1, 0]
    ax.specgram(window, NFFT=512, Fs=SAMPLE_RATE, noverlap=384, cmap="magma")
    ax.set_xlim(0, seconds)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    received_s = att_s.mean(axis=0)
    ax = axes[1, 1]
    ax.barh(
        bands[:, 0],
        received_s,
        height=np.diff(bands, axis=1)[:, 0],
        align="edge",
        color="tab:orange",
    )
    ax.set_ylim(0, SAMPLE_RATE / 2)
    ax.set_xlabel("GAT-S received", fontsize=8)
    ax.set_yticks([])
    fig.tight_layout()
    files["overview"] = out / "overview.png"
    fig.savefig(files["overview"], dpi=100)
    plt.close(fig)

    for key, m, labels, name in [
        ("gat_spectral", att_s, s_labels, "GAT-S: spectral nodes (Hz)"),
        ("gat_temporal", att_t, t_labels, "GAT-T: temporal nodes (start, s)"),
    ]:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        fig.colorbar(_heatmap(ax, m, name, labels), ax=ax)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        files[key] = out / f"{key}.png"
        fig.savefig(files[key], dpi=100)
        plt.close(fig)

    # HS-GAL: node order is [temporal nodes kept, spectral nodes kept]; label them by origin.
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    for i, layer in enumerate(HSGAL_LAYERS):
        ax = axes[i // 2, i % 2]
        m = maps[layer]
        branch, depth = layer[-2], layer[-1]
        labels, n1 = _hsgal_labels(maps, branch, depth, m.shape[0])
        name = f"{layer} (branch {branch}, layer {depth}): N·a - 1"
        fig.colorbar(_heatmap(ax, m, name, labels, n1, relative=True), ax=ax)
    ax = axes[0, 2]
    for layer in HSGAL_LAYERS:
        master = maps.get(f"{layer}.master")
        if master is not None:
            rel = master * master.size - 1
            ax.plot(rel, marker=".", label=layer.removeprefix("HtrgGAT_layer_"))
    ax.set_title("master node attention over nodes: N·a - 1", fontsize=9)
    ax.set_xlabel("node (temporal first, then spectral)", fontsize=8)
    ax.legend(fontsize=7)
    axes[1, 2].axis("off")
    axes[1, 2].text(
        0,
        0.5,
        "T<i>: temporal node i of GAT-T (time order)\nS<i>: spectral node i of GAT-S "
        "(frequency order)\nnodes in graph-pooling order (highest score first)\n"
        "white lines: temporal | spectral\nN·a - 1: attention relative to uniform (0 = 1/N)",
        fontsize=9,
        va="center",
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    files["hsgal"] = out / "hsgal.png"
    fig.savefig(files["hsgal"], dpi=100)
    plt.close(fig)

    files["arrays"] = out / "attention.npz"
    np.savez_compressed(files["arrays"], **{k.replace(".", "__"): v for k, v in maps.items()})
    files["json"] = out / "explain.json"
    files["json"].write_text(
        json.dumps(
            {
                "file": str(file),
                "bundle": bundle.name,
                "architecture": bundle.architecture,
                "window": f"first {samples} samples, repeat-padded",
                "score": score,
                "calibrated": calibrated,
                "verdict": verdict,
                "threshold": spec.threshold,
                "spectral_nodes_hz": bands.round(1).tolist(),
                "temporal_nodes_s": t_edges.round(3).tolist(),
                "maps": {k: list(v.shape) for k, v in maps.items()},
            },
            indent=2,
        )
        + "\n"
    )
    log.info("wrote attention maps of %s to %s", file, out)
    return Explanation(str(file), score, calibrated, verdict, maps, window, files)


__all__ = ["ExplainError", "Explanation", "attention_maps", "explain", "spectral_node_bands"]
