"""Bundles: export, verification on load, and the two runtimes agreeing."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from voicescreen.audio import pad_repeat
from voicescreen.models.bundle import (
    CARD_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    BundleError,
    export_bundle,
    load_bundle,
)
from voicescreen.models.registry import ARCHITECTURES, get_architecture
from voicescreen.runtimes import open_runtime
from voicescreen.runtimes.local import resolve_providers


@pytest.fixture(scope="module")
def aasist_l_bundle(export_aasist_l, speech_clips):
    check = np.stack([pad_repeat(x, 64600) for x in speech_clips.values()])
    return export_aasist_l(threshold=0.25, name="aasist-l-test", check_input=check)


def _windows(speech_clips, n):
    xs = [pad_repeat(x[i * 4000 :], n) for i, x in enumerate(speech_clips.values())]
    return np.stack(xs + [pad_repeat(speech_clips["bonafide"][::-1].copy(), n)])


def test_card_describes_the_bundle(aasist_l_bundle):
    card = aasist_l_bundle.card
    assert card["architecture"] == "aasist-l"
    assert card["input_samples"] == 64600 and card["sample_rate"] == 16000
    assert card["score"]["convention"] == "bonafide_logit"
    assert card["score"]["threshold"] == 0.25
    assert card["parameters"] == 85306
    assert set(card["files"]) == {ONNX_FILE, WEIGHTS_FILE}
    assert card["export_check"]["max_abs_score_diff"] <= 1e-4


def test_onnx_and_torch_runtimes_agree_on_speech(aasist_l_bundle, speech_clips):
    x = _windows(speech_clips, aasist_l_bundle.input_samples)
    onnx_logits, onnx_score = open_runtime(aasist_l_bundle, "onnx", providers="cpu")(x)
    torch_logits, torch_score = open_runtime(aasist_l_bundle, "torch", device="cpu")(x)
    assert onnx_logits.shape == (3, 2) and onnx_score.shape == (3,)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_score, torch_logits[:, 1], atol=1e-4, rtol=0)
    # batch 1 gives the same as the batch it came from: the batch axis is really dynamic
    _, one = open_runtime(aasist_l_bundle, "onnx", providers="cpu")(x[1:2])
    np.testing.assert_allclose(one, onnx_score[1:2], atol=1e-4, rtol=0)


def test_zip_bundle_round_trips(aasist_l_bundle, tmp_path, speech_clips):
    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in aasist_l_bundle.source.iterdir():
            f.write(p, f"inner/{p.name}")
    b = load_bundle(z)
    x = _windows(speech_clips, b.input_samples)[:1]
    np.testing.assert_allclose(
        open_runtime(b)(x)[1], open_runtime(aasist_l_bundle)(x)[1], atol=1e-6
    )


def _copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle.source, dst)
    return dst


def test_corrupt_bundle_is_refused(aasist_l_bundle, tmp_path):
    d = _copy(aasist_l_bundle, tmp_path)
    data = bytearray((d / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(d)


def test_truncated_bundle_is_refused(aasist_l_bundle, tmp_path):
    d = _copy(aasist_l_bundle, tmp_path)
    (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(d)


def test_missing_file_and_bad_card_are_refused(aasist_l_bundle, tmp_path):
    d = _copy(aasist_l_bundle, tmp_path)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(d)
    (d / CARD_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(d)
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "nowhere")


def _edit_card(d, **changes):
    card = json.loads((d / CARD_FILE).read_text())
    card.update(changes)
    (d / CARD_FILE).write_text(json.dumps(card))


def test_mismatched_card_is_refused(aasist_l_bundle, tmp_path):
    d = _copy(aasist_l_bundle, tmp_path)
    card = json.loads((d / CARD_FILE).read_text())
    _edit_card(d, input_samples=64000)
    with pytest.raises(BundleError, match="input_samples"):
        load_bundle(d)
    _edit_card(d, input_samples=64600, architecture="nonsense")
    with pytest.raises(BundleError, match="unknown architecture"):
        load_bundle(d)
    # the card claims the full AASIST: the weights do not fit, and torch loading says so
    _edit_card(d, architecture="aasist", config=get_architecture("aasist").default_config)
    b = load_bundle(d)
    with pytest.raises(BundleError, match="do not fit"):
        b.build_torch()
    _edit_card(d, architecture=card["architecture"], format_version=99)
    with pytest.raises(BundleError, match="version"):
        load_bundle(d)


def test_onnx_with_wrong_input_length_is_refused(aasist_l_bundle, tmp_path):
    d = _copy(aasist_l_bundle, tmp_path)
    from voicescreen.models.bundle import export_onnx, sha256

    model = get_architecture("aasist-l").build({"nb_samp": 64000})
    onnx_bytes = export_onnx(model, "bonafide_logit", 64000)
    (d / ONNX_FILE).write_bytes(onnx_bytes)
    card = json.loads((d / CARD_FILE).read_text())
    card["files"][ONNX_FILE] = {"bytes": len(onnx_bytes), "sha256": sha256(onnx_bytes)}
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="input shape"):
        load_bundle(d)


def test_provider_fallback_is_to_cpu():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["tensorrt", "cuda", "cpu"])[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="unknown execution provider"):
        resolve_providers("tpu")


# (a fusion is not trained: tests/models/test_fusion.py)
TRAINED = [n for n, a in ARCHITECTURES.items() if a.trainable]


@pytest.mark.parametrize("name", [n for n in TRAINED if n not in ("aasist", "lfcc-gmm")])
def test_every_architecture_exports_with_parity(name, tmp_path, speech_clips):
    """Random-initialised models export; ONNX Runtime and PyTorch agree on real speech."""
    arch = get_architecture(name)
    torch.manual_seed(0)
    model = arch.build()
    x = _windows(speech_clips, arch.input_samples())
    b = export_bundle(
        model,
        tmp_path / name,
        architecture=name,
        config=arch.default_config,
        name=name,
        check_input=x,
    )
    onnx_logits, _ = open_runtime(b, "onnx", providers="cpu")(x)
    torch_logits, _ = open_runtime(b, "torch", device="cpu")(x)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-5)
