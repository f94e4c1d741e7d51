"""AASIST / AASIST-L: checkpoint compatibility, parity with the reference, ONNX export."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from voicescreen.audio import pad_repeat
from voicescreen.models.aasist import AASIST, CONFIGS, AASISTConfig, SincConv

NAMES = {"aasist": "AASIST", "aasist-l": "AASIST-L"}
TOL = 1e-4
BATCH_TOL = 1e-5  # logits: one window alone against the same window in a batch
SHORT = 16000  # 1 s: enough for every layer, cheap for the tests that need no reference numbers


@pytest.fixture(scope="module")
def official(reference_dir: Path):
    """official(name) -> (model in eval mode with the published weights, reference json)."""

    @cache
    def load(name: str) -> tuple[AASIST, dict]:
        stem = reference_dir / "aasist" / NAMES[name]
        meta = json.loads(stem.with_suffix(".json").read_text())
        model = AASIST(CONFIGS[name]).eval()
        state = torch.load(stem.with_suffix(".pth"), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model, meta

    return load


def _fixture(reference_dir: Path, name: str) -> dict[str, np.ndarray]:
    return dict(np.load(reference_dir / "aasist" / f"{NAMES[name]}.npz"))


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_configs_are_the_published_ones(reference_dir: Path, name: str) -> None:
    meta = json.loads((reference_dir / "aasist" / f"{NAMES[name]}.json").read_text())
    published = meta["model_config"]
    assert CONFIGS[name] == {k: v for k, v in published.items() if k != "architecture"}
    config = AASISTConfig.from_dict(published)  # "architecture" is ignored
    assert config.to_dict() == CONFIGS[name]
    assert AASISTConfig.from_dict(config.to_dict()) == config


def test_config_defaults_and_normalisation() -> None:
    assert AASISTConfig().to_dict() == CONFIGS["aasist"]
    as_tuples = {**CONFIGS["aasist-l"], "filts": (70, (1, 32), (32, 32), (32, 24), (24, 24))}
    assert AASISTConfig.from_dict(as_tuples).to_dict() == CONFIGS["aasist-l"]
    with pytest.raises(ValueError):
        AASISTConfig(gat_dims=[64])
    # the model takes a config, a mapping or nothing (AASIST)
    assert AASIST().config == AASISTConfig()
    assert AASIST({"architecture": "AASIST", **CONFIGS["aasist-l"]}).config.gat_dims == [24, 32]


# -- checkpoint compatibility ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_the_reference_layout(reference_dir: Path, name: str) -> None:
    """Same keys, order, shapes and dtypes as the official checkpoint; same parameter count."""
    text = (reference_dir / "aasist" / f"{NAMES[name]}.state_dict.txt").read_text()
    expected = [tuple(line.split("\t")) for line in text.splitlines() if line.strip()]
    model = AASIST(CONFIGS[name])
    ours = [(k, str(tuple(v.shape)), str(v.dtype)) for k, v in model.state_dict().items()]
    assert ours == expected

    meta = json.loads((reference_dir / "aasist" / f"{NAMES[name]}.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == meta["params"]


@pytest.mark.parametrize("name", NAMES)
def test_official_weights_load_strictly(official, name: str) -> None:
    model, _ = official(name)  # load_state_dict(strict=True) raised nothing
    # the sinc filterbank is derived from the config: a buffer, but never in a checkpoint
    assert "conv_time.band_pass" not in model.state_dict()
    assert model.conv_time.band_pass.shape == (70, 129)


# -- parity with the reference implementation -----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_reference(official, reference_dir: Path, name: str) -> None:
    model, _ = official(name)
    ref = _fixture(reference_dir, name)
    with torch.inference_mode():
        last_hidden, logits = model.forward_features(torch.from_numpy(ref["input"]))
        alone = model(torch.from_numpy(ref["input"][:1]))
    # A window alone scores as in a batch, to float32 rounding: kernels pick their blocking by
    # batch size and CPU (bit-equal on AVX-512, 4.8e-7 apart on AVX2), far inside TOL.
    torch.testing.assert_close(alone, logits[:1], atol=BATCH_TOL, rtol=0)
    assert last_hidden.shape == (4, 160) and logits.shape == (4, 2)
    assert np.abs(logits.numpy() - ref["logits"]).max() <= TOL
    assert np.abs(last_hidden.numpy() - ref["last_hidden"]).max() <= TOL


def test_sinc_filters_are_symmetric_band_passes() -> None:
    conv = SincConv(70, 128)
    bp = conv.band_pass.double()
    assert bp.shape == (70, 129)
    assert torch.allclose(bp, bp.flip(-1))  # linear phase
    # each filter passes its own band: the peak of its response moves up with the index
    response = torch.fft.rfft(bp, n=4096).abs()
    peaks = response.argmax(dim=-1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > peaks[0]


# -- ONNX -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_windows(speech_clips: dict[str, np.ndarray]) -> np.ndarray:
    """(3, 64600) real speech windows: spoof, bona fide from 0.5 s in, bona fide."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    return np.stack([pad_repeat(spoof), pad_repeat(bona[8000:]), pad_repeat(bona)])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # node counts are static per length
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is what we test
@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(
    official, reference_dir: Path, speech_windows: np.ndarray, name: str, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    model, _ = official(name)
    ref = _fixture(reference_dir, name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(ref["input"][:2]),),  # batch 2: a baked-in batch size would show below
        str(path),
        input_names=["waveform"],
        output_names=["logits"],
        dynamic_axes={"waveform": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(str(path)).graph
    for value in (graph.input[0], graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_ref = session.run(None, {"waveform": ref["input"]})[0]
    assert np.abs(onnx_ref - ref["logits"]).max() <= TOL

    one = session.run(None, {"waveform": speech_windows[2:]})[0]
    three = session.run(None, {"waveform": speech_windows})[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(speech_windows)).numpy()
    assert one.shape == (1, 2) and three.shape == (3, 2)
    assert np.abs(three - expected).max() <= TOL
    assert np.abs(one - expected[2:]).max() <= TOL


# -- training and visualisation -------------------------------------------------------------------


def test_train_mode_is_stochastic_and_every_used_parameter_learns() -> None:
    torch.manual_seed(0)
    model = AASIST(CONFIGS["aasist-l"])
    x = torch.randn(2, SHORT) * 0.1
    model.train()
    logits = model(x)
    assert not torch.equal(logits, model(x))  # dropout
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    # the reference's residual blocks never use bn1: it alone gets no gradient
    assert no_grad == {n for n, _ in model.named_parameters() if ".bn1." in n}

    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


def test_freq_aug_zeroes_a_random_band_of_filters() -> None:
    conv = SincConv(70, 128)
    impulse = torch.zeros(1, 1, 129)
    impulse[0, 0, 64] = 1.0
    widths = []
    for seed in range(20):
        torch.manual_seed(seed)
        out = conv(impulse, mask=True)[0, :, 0]  # the centre tap of every filter
        dead = (conv(impulse)[0, :, 0] != 0) & (out == 0)
        idx = dead.nonzero().flatten()
        if len(idx):
            assert idx[-1] - idx[0] + 1 == len(idx)  # one contiguous band
        widths.append(len(idx))
    assert max(widths) <= 19 and max(widths) > 0
    assert torch.equal(conv(impulse), conv(impulse, mask=False))  # off by default

    # the model applies it in train mode when asked to, and never in eval mode unless forced
    model = AASIST(CONFIGS["aasist-l"])
    masks: list[bool] = []
    model.conv_time.register_forward_pre_hook(
        lambda _m, _args, kwargs: masks.append(kwargs["mask"]), with_kwargs=True
    )
    x = torch.randn(1, SHORT) * 0.1
    with torch.no_grad():
        model.train()(x)
        model.freq_aug = True
        model(x)
        model.eval()(x)
        model.forward_features(x, freq_aug=True)
    assert masks == [False, True, False, True]


def test_attention_maps_are_recorded_only_on_request() -> None:
    torch.manual_seed(0)
    model = AASIST(CONFIGS["aasist"]).eval()
    x = torch.randn(2, SHORT) * 0.1
    with torch.inference_mode():
        plain = model(x)
        assert model.attention_maps() == {}
        model.record_attention()
        recorded = model(x)
    assert torch.equal(plain, recorded)

    maps = model.attention_maps()
    n_time = 7  # 16000 samples: (16000 - 128) // 3 = 5290, then // 3 six times
    assert maps["GAT_layer_S"].shape == (2, 23, 23)
    assert maps["GAT_layer_T"].shape == (2, n_time, n_time)
    n_S, n_T = int(23 * 0.5), int(n_time * 0.7)
    assert maps["HtrgGAT_layer_ST11"].shape == (2, n_T + n_S, n_T + n_S)
    assert maps["HtrgGAT_layer_ST11.master"].shape == (2, n_T + n_S)
    assert maps["pool_S.indices"].shape == (2, n_S)
    for key, att in maps.items():
        if not key.endswith(".indices"):
            assert torch.allclose(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5), key

    model.record_attention(False)
    assert model.attention_maps() == {}
