"""RawNet2 (Tak and Clova configurations): checkpoint compatibility, parity with the reference
outputs, the published full-size layouts, and ONNX export."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from voicescreen.audio import pad_repeat
from voicescreen.models.rawnet2 import (
    CONFIGS,
    RawNet2Clova,
    RawNet2Config,
    RawNet2Tak,
    clova_band_edges,
    tak_band_edges,
)

MODELS = {"tak": RawNet2Tak, "clova": RawNet2Clova}
TOL = 1e-4


def _meta(reference_dir, name: str) -> dict:
    return json.loads((reference_dir / "rawnet2" / f"RawNet2-{name}.json").read_text())


@pytest.fixture(scope="module", params=list(MODELS))
def parity_model(request, reference_dir):
    """(name, reduced reference model with the parity weights, eval mode, its json)."""
    name = request.param
    meta = _meta(reference_dir, name)
    model = MODELS[name](meta["model_config"])
    path = reference_dir / "rawnet2" / f"RawNet2-{name}.parity.pth"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return name, model.eval(), meta


def _parse_state_dict_txt(path) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return out


# -- config ------------------------------------------------------------------------------------


def test_configs_are_the_published_full_configs(reference_dir):
    for name in MODELS:
        assert CONFIGS[f"rawnet2-{name}"] == _meta(reference_dir, name)["full_model_config"]


def test_config_round_trip_ignores_unknown_keys_and_does_not_mutate():
    d = copy.deepcopy(CONFIGS["rawnet2-clova"])
    cfg = RawNet2Config.from_dict(d)
    assert d == CONFIGS["rawnet2-clova"]  # deep-copied; the references mutate their dict
    assert "architecture" not in cfg.to_dict()
    assert RawNet2Config.from_dict(cfg.to_dict()) == cfg
    assert RawNet2Config.from_dict(CONFIGS["rawnet2-tak"]).margin == 2
    RawNet2Clova(d)
    assert d == CONFIGS["rawnet2-clova"]


def test_published_yaml_form_of_filts_builds_the_same_model(reference_dir):
    """The references overwrite filts[2][0] while building, so the json configs (dumped after)
    read [64, 64] where the config given had [32, 64]; both forms must give one layout."""
    dumped = _meta(reference_dir, "tak")["model_config"]
    given = {**dumped, "filts": [32, [32, 32], [32, 64], [64, 64]]}
    assert dumped["filts"][2] == [64, 64]
    a, b = RawNet2Tak(dumped).state_dict(), RawNet2Tak(given).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert a["block2.0.conv1.weight"].shape == (64, 32, 3)
    assert RawNet2Config.from_dict(given).filts[2] == [32, 64]  # kept as given


@pytest.mark.parametrize(
    "bad",
    [
        {"filts": [128, [64, 64], [64, 512], [512, 512]]},  # block 0 must take the sinc outputs
        {"filts": [128, [128, 128], [256, 512], [512, 512]]},  # block 2 input is filts[1][1]
        {"in_channels": 2},
        {"blocks": [2]},
    ],
)
def test_inconsistent_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        RawNet2Config.from_dict({**CONFIGS["rawnet2-tak"], **bad})


def test_sinc_band_edges_differ_as_in_the_references():
    tak, clova = tak_band_edges(20), clova_band_edges(20)
    assert tak.shape == clova.shape == (21,)
    assert tak[0] == clova[0] == 0.0
    assert clova[-1] == pytest.approx(8000.0)
    assert 6000 < tak[-1] < 7500  # Tak's top band stops well below Nyquist


# -- 1. checkpoints and parameter counts -------------------------------------------------------


def test_parity_weights_load_strict_and_param_count(parity_model):
    _, model, meta = parity_model  # loading with strict=True happened in the fixture
    assert sum(p.numel() for p in model.parameters()) == meta["params"]
    assert not any(k.startswith("Sinc_conv") for k in model.state_dict())  # fixed filters


# -- 2. parity with the reference outputs ------------------------------------------------------


def test_outputs_match_reference_fixture(parity_model, reference_dir):
    name, model, meta = parity_model
    ref = np.load(reference_dir / "rawnet2" / f"RawNet2-{name}.npz")
    x = torch.from_numpy(ref["input"])
    with torch.inference_mode():
        last_hidden, logits = model.forward_features(x)
        direct = model(x)
    assert logits.shape == tuple(meta["outputs"]["logits"])
    assert np.abs(logits.numpy() - ref["logits"]).max() <= TOL
    assert torch.equal(direct, logits)
    assert last_hidden.shape == (4, meta["model_config"]["nb_fc_node"])
    if "last_hidden" in ref:
        assert np.abs(last_hidden.numpy() - ref["last_hidden"]).max() <= TOL
    if name == "clova":  # log-softmax outputs: each row's probabilities sum to 1
        assert torch.allclose(logits.exp().sum(1), torch.ones(4), atol=1e-5)
    # Guard on the fixture itself: parity on near-constant outputs would prove little.
    assert np.ptp(ref["logits"][:, 1]) > 1e-3


def test_bn1_quirk_of_each_reference(parity_model):
    """Tak feeds bn1 into conv1; Clova computes bn1 and discards it (eval output unaffected)."""
    name, model, _ = parity_model
    x = torch.randn(2, 16000) * 0.1
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.block1[0].bn1.running_mean += 1.0
    with torch.inference_mode():
        diff = (model(x) - perturbed(x)).abs().max().item()
    assert (diff == 0.0) if name == "clova" else (diff > 1e-4)


def test_train_mode_updates_stats_and_backpropagates(parity_model):
    name, model, _ = parity_model
    model = copy.deepcopy(model).train()
    before = model.block2[0].bn1.running_mean.clone()
    x = torch.randn(2, 8000) * 0.1  # long enough for the 7 poolings
    model(x)[:, 1].sum().backward()
    # As in both references, bn1 updates its running statistics in train mode, even in Clova.
    assert not torch.equal(before, model.block2[0].bn1.running_mean)
    assert not model.Sinc_conv.band_pass.requires_grad  # fixed filters
    assert model.fc_attention0[0].weight.grad is not None and model.gru.weight_hh_l0.grad.any()
    assert (model.block1[0].bn1.weight.grad is None) == (name == "clova")


# -- 3. published full-size layouts ------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_full_model_state_dict_matches_reference(name, reference_dir):
    expected = _parse_state_dict_txt(
        reference_dir / "rawnet2" / f"RawNet2-{name}.full.state_dict.txt"
    )
    model = MODELS[name](CONFIGS[f"rawnet2-{name}"])
    got = {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected


# -- 4. ONNX -----------------------------------------------------------------------------------


def _speech_windows(speech_clips, n: int) -> np.ndarray:
    """Three real speech windows: each clip from its start, and the bona fide one from 1 s."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    return np.stack([pad_repeat(bona, n), pad_repeat(spoof, n), pad_repeat(bona[16000:], n)])


def test_onnx_export_matches_torch_with_dynamic_batch(parity_model, speech_clips, onnx_session):
    name, model, meta = parity_model
    n = meta["model_config"]["nb_samp"]
    dummy = torch.zeros(2, n)  # traced at batch 2, run at 1 and 3: the batch axis must be free
    session = onnx_session(model, dummy)
    windows = _speech_windows(speech_clips, n)
    for batch in (windows[:1], windows):
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).numpy()
        (got,) = session.run(None, {"waveform": batch})
        assert got.shape == expected.shape == (len(batch), 2)
        assert np.abs(got - expected).max() <= TOL
