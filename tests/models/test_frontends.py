"""LFCC and log-mel front-ends against independent computations of the same definitions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from voicescreen.audio import SAMPLE_RATE, WINDOW_SAMPLES, pad_repeat
from voicescreen.models.frontends import (
    LFCC,
    LFCCConfig,
    LogMel,
    LogMelConfig,
    PowerSpectrogram,
    mel_filterbank,
    n_frames,
)
from voicescreen.models.gmm import CONFIGS as GMM_CONFIGS


@pytest.fixture(scope="module")
def windows(speech_clips: dict[str, np.ndarray]) -> torch.Tensor:
    """Three real speech windows (bona fide, spoof, bona fide from 0.5 s on), (3, 64600)."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    return torch.from_numpy(
        np.stack([pad_repeat(bona), pad_repeat(spoof), pad_repeat(bona[8000:])])
    )


def numpy_lfcc(x: np.ndarray, cfg: LFCCConfig) -> np.ndarray:
    """LFCC of a 1-D signal in float64, written from the baseline's definition, loop by loop."""
    x = x.astype(np.float64)
    if cfg.preemphasis:
        x = np.concatenate([x[:1], x[1:] - cfg.preemphasis * x[:-1]])
    # centred frames: pad n_fft/2 zeros, window (periodic Hamming) in the middle of the FFT frame
    half = cfg.n_fft // 2
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    win = np.zeros(cfg.n_fft)
    start = (cfg.n_fft - cfg.frame_length) // 2
    n = np.arange(cfg.frame_length)
    win[start : start + cfg.frame_length] = 0.54 - 0.46 * np.cos(2 * np.pi * n / cfg.frame_length)
    count = 1 + len(x) // cfg.frame_shift
    frames = [
        padded[i * cfg.frame_shift : i * cfg.frame_shift + cfg.n_fft] * win for i in range(count)
    ]
    power = np.abs(np.fft.rfft(np.array(frames), axis=1)) ** 2
    # keep bins [0, int(max_freq * (n_fft/2 + 1))), whose frequencies the baseline spreads evenly
    bins = int(cfg.max_freq * (half + 1))
    power = power[:, :bins]
    freqs = np.linspace(0.0, cfg.max_freq, bins) * SAMPLE_RATE / 2
    edges = np.linspace(freqs[0], freqs[-1], cfg.n_filters + 2)
    fbank = np.zeros((bins, cfg.n_filters))
    for j in range(cfg.n_filters):
        a, b, c = edges[j], edges[j + 1], edges[j + 2]
        for k, f in enumerate(freqs):
            if a < f < b:
                fbank[k, j] = (f - a) / (b - a)
            elif f == b:
                fbank[k, j] = 1.0
            elif b < f < c:
                fbank[k, j] = (c - f) / (c - b)
    eps = np.finfo(np.float32).eps
    ceps = scipy.fft.dct(np.log10(power @ fbank + eps), type=2, norm="ortho", axis=1)
    ceps = ceps[:, : cfg.n_ceps]
    if cfg.with_energy:
        ceps[:, 0] = np.log10(power.sum(axis=1) / cfg.n_fft + eps)

    def delta(a: np.ndarray) -> np.ndarray:
        p = np.concatenate([a[:1], a, a[-1:]])
        return p[2:] - p[:-2]

    return np.concatenate([ceps, delta(ceps), delta(delta(ceps))], axis=1)


LFCC_CASES = {
    "lcnn-baseline": LFCCConfig(),
    "gmm-baseline": LFCCConfig.from_dict(GMM_CONFIGS["lfcc-gmm"]["lfcc"]),
}


@pytest.mark.parametrize("case", list(LFCC_CASES))
def test_lfcc_matches_numpy_reference_on_real_speech(windows: torch.Tensor, case: str) -> None:
    cfg = LFCC_CASES[case]
    with torch.no_grad():
        ours = LFCC(cfg)(windows[:2]).numpy()
    for i in range(2):
        ref = numpy_lfcc(windows[i].numpy(), cfg)
        assert ours[i].shape == ref.shape == (WINDOW_SAMPLES // cfg.frame_shift + 1, 60)
        err = np.abs(ours[i] - ref).max()
        assert err <= 1e-4, f"{case} window {i}: max |LFCC - numpy| = {err:.3g}"
        # the features carry information: energy and cepstra vary over time
        assert ref[:, :20].std(axis=0).min() > 1e-3


def test_lfcc_frame_count_and_layout() -> None:
    assert n_frames(WINDOW_SAMPLES, 160) == 404
    lfcc = LFCC()
    for length in (WINDOW_SAMPLES, 64000, 16000, 16001, 321):
        y = lfcc(torch.randn(2, length) * 0.1)
        stft = torch.stft(
            torch.randn(length),
            1024,
            160,
            320,
            window=torch.hamming_window(320),
            return_complex=True,
            pad_mode="constant",
        )
        assert y.shape == (2, length // 160 + 1, 60) == (2, stft.shape[-1], 60)
    assert lfcc(torch.randn(1, WINDOW_SAMPLES)).shape == (1, 404, 60)
    # options: no deltas -> 20 dims; without energy c0 is the DCT's first coefficient
    x = torch.randn(1, 8000) * 0.1
    plain = LFCC({"with_delta": False, "with_energy": False})(x)
    with_energy = LFCC({"with_delta": False})(x)
    assert plain.shape == (1, 51, 20)
    torch.testing.assert_close(plain[..., 1:], with_energy[..., 1:])
    assert not torch.allclose(plain[..., 0], with_energy[..., 0])
    # front-end matrices are derived from the config, not weights
    assert LFCC().state_dict() == {}


def test_power_spectrogram_matches_torch_stft(windows: torch.Tensor) -> None:
    x = windows[:1].double()
    for mode in ("constant", "reflect"):
        ref = (
            torch.stft(
                x,
                1024,
                160,
                320,
                window=torch.hamming_window(320, dtype=torch.float64),
                center=True,
                pad_mode=mode,
                return_complex=True,
            )
            .abs()
            .pow(2)
            .transpose(1, 2)
        )
        ours = PowerSpectrogram(320, 160, 1024, pad_mode=mode)(windows[:1]).double()
        assert ours.shape == ref.shape == (1, 404, 513)
        assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_logmel_matches_torchaudio(windows: torch.Tensor) -> None:
    torchaudio = pytest.importorskip("torchaudio")
    cfg = LogMelConfig()
    ta_fbank = torchaudio.functional.melscale_fbanks(
        cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate
    )
    ours_fbank = mel_filterbank(cfg.n_fft, cfg.sample_rate, cfg.n_mels, cfg.f_min, cfg.f_max)
    np.testing.assert_allclose(ours_fbank, ta_fbank.double().numpy(), atol=1e-5)  # theirs: float32

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        win_length=cfg.frame_length,
        hop_length=cfg.frame_shift,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        n_mels=cfg.n_mels,
        window_fn=torch.hamming_window,
        power=2.0,
    ).double()
    with torch.no_grad():
        ref = torch.log(mel(windows.double()) + cfg.log_floor).transpose(1, 2)
        ours = LogMel(cfg)(windows).double()
    assert ours.shape == ref.shape == (3, 404, 80)
    # float32 DFT vs float64: quiet bands (1e-6 of the frame's energy) carry ~1e-4 of log error
    assert (ours - ref).abs().max().item() < 5e-4
    assert (ours - ref).abs().mean().item() < 1e-5


@pytest.mark.parametrize("frontend", [LFCC, LogMel])
def test_frontend_exports_to_onnx(frontend: type, windows: torch.Tensor, onnx_session) -> None:
    model = frontend().eval()
    session = onnx_session(model, windows[:1])
    for batch in (1, 3):
        x = windows[:batch]
        (got,) = session.run(None, {"waveform": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        err = np.abs(got - want).max()
        assert err <= 1e-4, f"{frontend.__name__} batch {batch}: ONNX vs torch {err:.3g}"
