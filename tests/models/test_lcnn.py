"""LFCC-LCNN: shapes, size, determinism, ONNX parity, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voicescreen.audio import WINDOW_SAMPLES, pad_repeat
from voicescreen.models.lcnn import CONFIGS, LCNN, LCNNConfig

# LCNN-9 convolutions 157,504 + two BLSTMs 2 x 56,064 + output 97 (LFCC: 96-wide BLSTMs);
# the log-mel variant has 80 dims -> 160-wide BLSTMs.
PARAMS = {"lcnn": 269_729, "lcnn-mel": 467_425}
EMBEDDING = {"lcnn": 96, "lcnn-mel": 160}


@pytest.fixture(scope="module")
def windows(speech_clips: dict[str, np.ndarray]) -> torch.Tensor:
    """Three real speech windows (bona fide, spoof, bona fide from 0.5 s on), (3, 64600)."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    return torch.from_numpy(
        np.stack([pad_repeat(bona), pad_repeat(spoof), pad_repeat(bona[8000:])])
    )


def built(name: str, seed: int = 0) -> LCNN:
    """A model with random weights and non-trivial BatchNorm statistics and logits (eval mode)."""
    torch.manual_seed(seed)
    model = LCNN(CONFIGS[name])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.nn.init.normal_(model.out.weight, std=3.0)
    return model.eval()


def test_configs_and_round_trip() -> None:
    assert set(CONFIGS) == {"lcnn", "lcnn-mel"}
    for d in CONFIGS.values():
        assert d["nb_samp"] == WINDOW_SAMPLES
        cfg = LCNNConfig.from_dict({**d, "unknown_key": 1})
        assert cfg.to_dict() == d
        assert LCNNConfig.from_dict(cfg.to_dict()) == cfg
    assert CONFIGS["lcnn"]["frontend"] == "lfcc" and CONFIGS["lcnn-mel"]["frontend"] == "mel"
    lfcc = CONFIGS["lcnn"]["lfcc"]
    assert (lfcc["frame_length"], lfcc["frame_shift"], lfcc["n_fft"], lfcc["n_ceps"]) == (
        320,
        160,
        1024,
        20,
    )
    # a partial front-end dict keeps the other defaults
    assert LCNNConfig.from_dict({"lfcc": {"with_energy": False}}).lfcc.n_fft == 1024
    with pytest.raises(ValueError):
        LCNN({"frontend": "cqt"})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_parameter_count(name: str, windows: torch.Tensor) -> None:
    model = built(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    with torch.no_grad():
        emb, logits = model.forward_features(windows)
        assert emb.shape == (3, EMBEDDING[name])
        assert logits.shape == (3, 2)
        torch.testing.assert_close(model(windows), logits)
        # one output unit s, as the baseline: logits [-s/2, s/2]
        torch.testing.assert_close(logits[:, 0], -logits[:, 1])
        # any length works (the model is fully convolutional + recurrent)
        assert model(windows[:2, :16000]).shape == (2, 2)
    two = LCNN({**CONFIGS[name], "single_logit": False}).eval()
    assert two.out.out_features == 2
    assert sum(p.numel() for p in two.parameters()) == PARAMS[name] + EMBEDDING[name] + 1


def test_eval_is_deterministic_and_batch_independent(windows: torch.Tensor) -> None:
    model = built("lcnn")
    with torch.no_grad():
        a, b = model(windows), model(windows)
        single = torch.cat([model(windows[i : i + 1]) for i in range(3)])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a, atol=1e-5, rtol=1e-5)
    assert (a[:, 1] - a[:, 0]).abs().max() > 1e-2  # non-trivial logits for the parity test
    model.train()  # dropout 0.7 is active in training
    with torch.no_grad():
        assert not torch.equal(model(windows), model(windows))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_onnx_export_matches_torch(name: str, windows: torch.Tensor, onnx_session) -> None:
    model = built(name)
    session = onnx_session(model, windows[:1])
    for batch in (1, 3):  # exported with batch 1: the BLSTMs must take any batch
        x = windows[:batch]
        (got,) = session.run(None, {"waveform": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, 2)
        err = np.abs(got - want).max()
        assert err <= 1e-4, f"{name} batch {batch}: ONNX vs torch {err:.3g}"


def test_a_few_adam_steps_fit_four_windows(speech_clips: dict[str, np.ndarray]) -> None:
    """Gradients reach every layer and the loss falls: 4 one-second real clips, 2 per class."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    x = torch.from_numpy(
        np.stack(
            [bona[:16000], bona[16000:32000], pad_repeat(spoof, 32000)[:16000], spoof[-16000:]]
        )
    )
    y = torch.tensor([1, 1, 0, 0])
    torch.manual_seed(0)
    model = LCNN({**CONFIGS["lcnn"], "dropout": 0.0}).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss did not fall: {losses}"
