"""LFCC-GMM: the ASVspoof 2021 LA baseline, two Gaussian mixtures scored as a likelihood ratio.

One diagonal-covariance GMM is fitted (scikit-learn ``GaussianMixture``) on the LFCC frames of bona
fide speech and one on those of spoofed speech. A window's score is the mean over its frames of
``log p(frame | bona fide) - log p(frame | spoof)``, the log-likelihood ratio.

The fitted parameters live in a torch module as buffers (safetensors-friendly, no pickle), so the
model scores windows in PyTorch and exports to ONNX like the neural models: ``forward`` gives
logits ``[mean log p(frames | spoof), mean log p(frames | bona fide)]`` per window, and
``logits[:, 1] - logits[:, 0]`` is the LLR.

The front-end defaults follow the baseline's Python LFCC (``LFCC_pipeline.py`` and
``extract_lfcc``): 30 ms Hamming frames every 15 ms, 1024-point FFT, 70 linear filters on 0-4 kHz,
20 cepstra with Δ and ΔΔ (60 dims), no pre-emphasis and c0 kept. Framing and filterbank are ours
(``frontends.LFCC``: centred frames, the LCNN baseline's triangles), not spafe's. The baseline fits
512 components.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from voicescreen.audio import WINDOW_SAMPLES
from voicescreen.models.frontends import LFCC, LFCCConfig

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

log = logging.getLogger(__name__)


def _baseline_lfcc() -> LFCCConfig:
    return LFCCConfig(
        frame_length=480,
        frame_shift=240,
        n_fft=1024,
        n_filters=70,
        n_ceps=20,
        max_freq=0.5,
        with_energy=False,
        with_delta=True,
        preemphasis=0.0,
    )


@dataclass
class LFCCGMMConfig:
    nb_samp: int = WINDOW_SAMPLES  # input samples of one window
    lfcc: LFCCConfig = field(default_factory=_baseline_lfcc)
    n_components: int = 512  # per class, as the baseline
    # scikit-learn GaussianMixture options used by fit_lfcc_gmm
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 1e-6
    init_params: str = "kmeans"
    max_frames: int = 200_000  # per class: a seeded random subset of frames when there are more
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LFCCGMMConfig:
        """Build from a dict (``CONFIGS["lfcc-gmm"]``, a bundle card), ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in (d or {}).items() if k in names}
        if not isinstance(kw.get("lfcc", LFCCConfig()), LFCCConfig):
            kw["lfcc"] = LFCCConfig.from_dict({**_baseline_lfcc().to_dict(), **kw["lfcc"]})
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["lfcc"] = self.lfcc.to_dict()
        return d


CONFIGS: dict[str, dict[str, Any]] = {"lfcc-gmm": LFCCGMMConfig().to_dict()}


class DiagonalGMM(nn.Module):
    """A diagonal-covariance Gaussian mixture as buffers: ``weights`` (K,), ``means`` (K, D),
    ``covariances`` (K, D) (variances, scikit-learn's ``covariances_`` for ``"diag"``).

    Built empty it is K equally weighted standard normals, to be filled by ``load_state_dict`` or
    ``from_sklearn``.
    """

    def __init__(self, n_components: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.full((n_components,), 1.0 / n_components))
        self.register_buffer("means", torch.zeros(n_components, dim))
        self.register_buffer("covariances", torch.ones(n_components, dim))

    @classmethod
    def from_sklearn(cls, gmm: GaussianMixture) -> DiagonalGMM:
        if gmm.covariance_type != "diag":
            raise ValueError(f"need a 'diag' GaussianMixture, got {gmm.covariance_type!r}")
        module = cls(*gmm.means_.shape)
        module.weights.copy_(torch.from_numpy(gmm.weights_))
        module.means.copy_(torch.from_numpy(gmm.means_))
        module.covariances.copy_(torch.from_numpy(gmm.covariances_))
        return module

    def to_sklearn(self) -> GaussianMixture:
        """A fitted scikit-learn ``GaussianMixture`` with these parameters (float64)."""
        from sklearn.mixture import GaussianMixture

        k = self.weights.numel()
        gmm = GaussianMixture(n_components=k, covariance_type="diag")
        gmm.weights_ = self.weights.double().numpy()
        gmm.means_ = self.means.double().numpy()
        gmm.covariances_ = self.covariances.double().numpy()
        gmm.precisions_cholesky_ = 1.0 / np.sqrt(gmm.covariances_)
        gmm.precisions_ = 1.0 / gmm.covariances_
        gmm.converged_ = True
        gmm.n_iter_ = 0
        gmm.lower_bound_ = float("nan")
        return gmm

    def log_likelihood(self, x: Tensor, center: Tensor) -> Tensor:
        """log p(x) of frames x (..., D), shape (...).

        The squared Mahalanobis distance is expanded into matrix products (memory stays
        O(frames x K)); both x and the means are first shifted by ``center`` (the mean training
        frame), which leaves the result unchanged and keeps the float32 expansion accurate.
        """
        precision = 1.0 / self.covariances  # (K, D)
        xc = x - center
        mc = self.means - center
        quad = (
            (xc * xc) @ precision.T
            - 2.0 * xc @ (mc * precision).T
            + (mc * mc * precision).sum(dim=-1)
        )  # (..., K)
        dim = self.means.shape[-1]
        log_norm = -0.5 * (dim * math.log(2 * math.pi) + torch.log(self.covariances).sum(dim=-1))
        joint = torch.log(self.weights) + log_norm - 0.5 * quad
        peak = joint.amax(dim=-1, keepdim=True)  # a log-sum-exp that exports to plain ops
        return (peak + torch.log(torch.exp(joint - peak).sum(dim=-1, keepdim=True))).squeeze(-1)


class LFCCGMM(nn.Module):
    """Bona fide and spoof GMMs on LFCC frames: (B, T) -> logits (B, 2) = mean log-likelihoods."""

    def __init__(self, config: LFCCGMMConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, LFCCGMMConfig) else LFCCGMMConfig.from_dict(config)
        self.config = cfg
        self.frontend = LFCC(cfg.lfcc)
        dim = cfg.lfcc.dims
        self.register_buffer("center", torch.zeros(dim))
        self.spoof = DiagonalGMM(cfg.n_components, dim)
        self.bona = DiagonalGMM(cfg.n_components, dim)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) -> (per-frame log-likelihoods (B, frames, 2) [spoof, bona], logits (B, 2))."""
        feats = self.frontend(x)
        frame_ll = torch.stack(
            [
                self.spoof.log_likelihood(feats, self.center),
                self.bona.log_likelihood(feats, self.center),
            ],
            dim=-1,
        )
        return frame_ll, frame_ll.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]


def lfcc_frames(clips: Sequence[np.ndarray], config: LFCCConfig) -> np.ndarray:
    """Stack the LFCC frames of waveforms (1-D, 16 kHz) or feature matrices (frames, dims)."""
    frontend = LFCC(config).eval()
    out = []
    with torch.no_grad():
        for clip in clips:
            a = np.asarray(clip, dtype=np.float32)
            if a.ndim == 1:
                a = frontend(torch.from_numpy(a)[None])[0].numpy()
            elif a.ndim != 2 or a.shape[1] != config.dims:
                raise ValueError(
                    f"expected a waveform or ({config.dims}-dim) frames, got {a.shape}"
                )
            out.append(a)
    if not out:
        raise ValueError("no clips to fit on")
    return np.concatenate(out).astype(np.float64)


def fit_lfcc_gmm(
    bonafide: Sequence[np.ndarray],
    spoof: Sequence[np.ndarray],
    config: LFCCGMMConfig | Mapping[str, Any] | None = None,
) -> LFCCGMM:
    """Fit the two GMMs with scikit-learn and return the scoring module (eval mode).

    ``bonafide`` and ``spoof`` are lists of 16 kHz waveforms (1-D, any length: whole clips are
    fine), or of precomputed LFCC frame matrices (frames, dims) from ``LFCC(config.lfcc)``.
    """
    from sklearn.mixture import GaussianMixture

    cfg = config if isinstance(config, LFCCGMMConfig) else LFCCGMMConfig.from_dict(config)
    rng = np.random.default_rng(cfg.seed)
    frames = {}
    for label, clips in (("bonafide", bonafide), ("spoof", spoof)):
        x = lfcc_frames(clips, cfg.lfcc)
        if len(x) > cfg.max_frames:
            x = x[np.sort(rng.choice(len(x), cfg.max_frames, replace=False))]
        if len(x) < cfg.n_components:
            raise ValueError(f"{len(x)} {label} frames cannot fit {cfg.n_components} components")
        frames[label] = x

    model = LFCCGMM(cfg)
    center = np.concatenate(list(frames.values())).mean(axis=0)
    model.center.copy_(torch.from_numpy(center))
    for label, target in (("bonafide", model.bona), ("spoof", model.spoof)):
        gmm = GaussianMixture(
            n_components=cfg.n_components,
            covariance_type="diag",
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            reg_covar=cfg.reg_covar,
            init_params=cfg.init_params,
            random_state=cfg.seed,
        ).fit(frames[label])
        if not gmm.converged_:
            log.warning("%s GMM did not converge in %d iterations", label, cfg.max_iter)
        log.info(
            "%s GMM: %d frames, %d components, mean log-likelihood %.3f",
            label,
            len(frames[label]),
            cfg.n_components,
            gmm.score(frames[label]),
        )
        target.load_state_dict(DiagonalGMM.from_sklearn(gmm).state_dict())
    return model.eval()


__all__ = ["CONFIGS", "DiagonalGMM", "LFCCGMM", "LFCCGMMConfig", "fit_lfcc_gmm", "lfcc_frames"]
