"""LFCC-GMM: fitting on real clips, equality with scikit-learn, safetensors round trip, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voicescreen.audio import WINDOW_SAMPLES, load_audio, pad_repeat
from voicescreen.models.gmm import (
    CONFIGS,
    LFCCGMM,
    DiagonalGMM,
    LFCCGMMConfig,
    fit_lfcc_gmm,
    lfcc_frames,
)

SMALL = {**CONFIGS["lfcc-gmm"], "n_components": 8, "max_iter": 50}


def train_clips(data_dir: Path, label: str, count: int, skip: int = 0) -> list[np.ndarray]:
    """``count`` clips of one label from the corpus' train protocol, every 20th after ``skip``."""
    lines = (data_dir / "protocols" / "VS.cm.train.trn.txt").read_text().splitlines()
    names = [r[1] for r in (line.split() for line in lines if line.strip()) if r[4] == label]
    return [load_audio(data_dir / "flac" / f"{n}.flac") for n in names[skip::20][:count]]


@pytest.fixture(scope="module")
def real_model(data_dir: Path) -> LFCCGMM:
    """Fitted on 5 bona fide and 5 spoof training clips, 8 components each."""
    return fit_lfcc_gmm(
        train_clips(data_dir, "bonafide", 5, skip=1),
        train_clips(data_dir, "spoof", 5, skip=1),
        SMALL,
    )


@pytest.fixture(scope="module")
def windows(speech_clips: dict[str, np.ndarray]) -> torch.Tensor:
    """Three real speech windows not used for fitting, (3, 64600)."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    return torch.from_numpy(
        np.stack([pad_repeat(bona), pad_repeat(spoof), pad_repeat(bona[8000:])])
    )


def test_config_and_empty_module() -> None:
    d = CONFIGS["lfcc-gmm"]
    assert d["nb_samp"] == WINDOW_SAMPLES and d["n_components"] == 512
    cfg = LFCCGMMConfig.from_dict({**d, "unknown_key": 1})
    assert cfg.to_dict() == d and LFCCGMMConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.lfcc.dims == 60 and (cfg.lfcc.frame_length, cfg.lfcc.n_filters) == (480, 70)
    # a partial LFCC override keeps the baseline's other settings
    assert LFCCGMMConfig.from_dict({"lfcc": {"n_ceps": 10}}).lfcc.n_filters == 70

    empty = LFCCGMM(d)  # what a bundle builds before load_state_dict
    shapes = {k: tuple(v.shape) for k, v in empty.state_dict().items()}
    assert shapes == {
        "center": (60,),
        "spoof.weights": (512,),
        "spoof.means": (512, 60),
        "spoof.covariances": (512, 60),
        "bona.weights": (512,),
        "bona.means": (512, 60),
        "bona.covariances": (512, 60),
    }
    with torch.no_grad():
        logits = empty(torch.zeros(1, 16000))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    assert logits[0, 0] == logits[0, 1]  # two identical standard-normal mixtures


def test_torch_log_likelihood_equals_sklearn(
    real_model: LFCCGMM, windows: torch.Tensor, speech_clips: dict[str, np.ndarray]
) -> None:
    frames = lfcc_frames([speech_clips["bonafide"], speech_clips["spoof"]], real_model.config.lfcc)
    for gmm in (real_model.bona, real_model.spoof):
        want = gmm.to_sklearn().score_samples(frames)
        with torch.no_grad():
            got = gmm.log_likelihood(torch.from_numpy(frames).float(), real_model.center).double()
        rel = np.abs(got.numpy() - want) / np.abs(want)
        assert rel.max() <= 1e-4, f"per-frame log-likelihood: relative error {rel.max():.3g}"
    # a window's logits are the sklearn mean log-likelihoods (score) of its frames
    with torch.no_grad():
        logits = real_model(windows).double().numpy()
    for i in range(3):
        f = lfcc_frames([windows[i].numpy()], real_model.config.lfcc)
        want = [real_model.spoof.to_sklearn().score(f), real_model.bona.to_sklearn().score(f)]
        np.testing.assert_allclose(logits[i], want, rtol=1e-5)


def test_sklearn_fit_is_what_the_module_holds(data_dir: Path) -> None:
    """from_sklearn/fit copy the fitted parameters unchanged (up to float32)."""
    from sklearn.mixture import GaussianMixture

    frames = lfcc_frames(train_clips(data_dir, "bonafide", 2), LFCCGMMConfig().lfcc)
    gm = GaussianMixture(4, covariance_type="diag", random_state=0, max_iter=100).fit(frames)
    module = DiagonalGMM.from_sklearn(gm)
    np.testing.assert_allclose(module.means.numpy(), gm.means_, rtol=1e-6)
    np.testing.assert_allclose(
        module.to_sklearn().score_samples(frames), gm.score_samples(frames), rtol=1e-5
    )


def test_llr_ranks_held_out_bonafide_above_spoof_on_an_easy_case(
    speech_clips: dict[str, np.ndarray],
) -> None:
    """Bona fide: real speech; spoof: the same speech with white noise at 10 dB SNR. Fitted on
    the first halves of the clips, scored on windows cut from the second halves."""
    rng = np.random.default_rng(0)
    clean = [speech_clips["bonafide"], speech_clips["spoof"]]
    noisy = [
        (c + rng.normal(0, np.sqrt(np.mean(c**2) / 10), c.shape)).astype(np.float32) for c in clean
    ]
    half = [len(c) // 2 for c in clean]
    model = fit_lfcc_gmm(
        [c[:h] for c, h in zip(clean, half, strict=True)],
        [c[:h] for c, h in zip(noisy, half, strict=True)],
        {"n_components": 4, "max_iter": 50},
    )
    held_out = [(c[h:], 1) for c, h in zip(clean, half, strict=True)]
    held_out += [(c[h:], 0) for c, h in zip(noisy, half, strict=True)]
    x = torch.from_numpy(np.stack([pad_repeat(c) for c, _ in held_out]))
    with torch.no_grad():
        logits = model(x)
    llr = (logits[:, 1] - logits[:, 0]).numpy()
    labels = np.array([y for _, y in held_out])
    assert llr[labels == 1].min() > llr[labels == 0].max(), llr
    assert llr[labels == 1].min() > 0 > llr[labels == 0].max(), llr


def test_state_dict_round_trip_through_safetensors(
    real_model: LFCCGMM, windows: torch.Tensor, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in real_model.state_dict().items()}, str(path))
    fresh = LFCCGMM(real_model.config.to_dict()).eval()
    with torch.no_grad():
        before = fresh(windows)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        want, got = real_model(windows), fresh(windows)
    assert torch.equal(got, want)
    assert not torch.allclose(before, want)


def test_onnx_export_matches_torch(
    real_model: LFCCGMM, windows: torch.Tensor, onnx_session
) -> None:
    """Logits are mean log-likelihoods (|values| ~ 50-150): relative tolerance 1e-4."""
    session = onnx_session(real_model, windows[:1])
    for batch in (1, 3):
        x = windows[:batch]
        (got,) = session.run(None, {"waveform": x.numpy()})
        with torch.no_grad():
            want = real_model(x).numpy()
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, want, rtol=1e-4)
        llr_err = np.abs((got[:, 1] - got[:, 0]) - (want[:, 1] - want[:, 0])).max()
        assert llr_err <= 1e-3, f"LLR differs by {llr_err:.3g}"
