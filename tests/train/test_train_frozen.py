"""Fine-tuning AASIST on cached features of a frozen front end (train/frozen.py).

A reduced AASIST-L (24 sinc filters, 8 channels, 1 s windows) on the small real corpus, so that
every step runs in seconds; the official weights' split is checked on real speech too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from voicescreen.audio import pad_repeat
from voicescreen.models.bundle import load_bundle
from voicescreen.runtimes import open_runtime
from voicescreen.train import frozen
from voicescreen.train.data import load_split
from voicescreen.train.recipes import load_recipe
from voicescreen.train.start import build_model
from voicescreen.train.trainer import train

SMALL = {
    "model": {"nb_samp": 16000, "filts": [24, [1, 8], [8, 8], [8, 8], [8, 8]], "gat_dims": [8, 8]},
    "init": None,
    "batch_size": 4,
    "threads": 2,
    "frozen_blocks": 3,
    "feature_copies": 2,
    "epochs": 2,
    "lr": 1e-3,
    "augment": {"preset": "channel"},
    "calibration": ["clean", "mulaw"],
}


def small_recipe(**changes):
    return load_recipe("aasist-l", overrides={**SMALL, **changes})


def test_head_on_prefix_features_is_the_whole_model(aasist_l_official, speech_clips):
    """Official AASIST-L: blocks k.. + head applied to the prefix output give the model's logits,
    and the ONNX Runtime prefix (float16 cache) stays close to them."""
    model = aasist_l_official.eval()
    x = np.stack([pad_repeat(c[:64600], 64600) for c in speech_clips.values()])
    with torch.inference_mode():
        whole = model(torch.from_numpy(x))
        for k in (1, 4, 5):
            f = frozen.prefix_module(model, k)(torch.from_numpy(x))
            assert torch.allclose(frozen.head_logits(model, k, f), whole, atol=1e-5), k
    run = frozen.prefix_runner(model, 4, 64600, torch.device("cpu"))
    f16 = run(x)
    assert f16.dtype == np.float16 and f16.shape == (2, 24, 23, 265)
    with torch.inference_mode():
        approx = frozen.head_logits(model, 4, torch.from_numpy(f16.astype(np.float32)))
    assert torch.allclose(approx, whole, atol=0.05), (approx, whole)


def test_frozen_training_keeps_the_prefix_and_exports_a_whole_bundle(small_corpus, tmp_path):
    recipe = small_recipe()
    result = train(recipe, small_corpus, tmp_path / "run", export=tmp_path / "b", progress=False)
    assert result.finished and result.epochs_done == 2

    initial, _ = build_model(recipe, torch.device("cpu"))
    before, after = initial.state_dict(), result.model.state_dict()
    prefix = ("conv_time.", "first_bn.", "encoder.0.", "encoder.1.", "encoder.2.")
    for name in before:
        if name.startswith(prefix):
            assert torch.equal(before[name], after[name]), name
    moved = [n for n in before if not n.startswith(prefix) and not torch.equal(before[n], after[n])]
    assert any(n.startswith("encoder.3.") for n in moved) and "out_layer.weight" in moved

    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "dev_eer", "dev_eer_mulaw", "dev_eer_pooled"} <= set(history[-1])
    # 6 train clips x 2 copies, batches of 4
    assert history[-1]["step"] == 2 * 3
    feats = sorted(p.name for p in (tmp_path / "run" / "features").glob("*.npy"))
    assert feats[:2] == ["dev-clean.npy", "dev-mulaw.npy"] and len(feats) == 4
    assert [f[-6:] for f in feats[2:]] == ["-0.npy", "-1.npy"]  # train-<corpus>-<copy>

    bundle = load_bundle(result.bundle)
    assert bundle.card["provenance"]["frozen_blocks"] == "3"
    assert bundle.card["training"]["recipe"]["frozen_blocks"] == 3
    # The bundle is the whole network: its ONNX graph scores raw windows like the trained model.
    x = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32) * 0.1
    with torch.inference_mode():
        expected = result.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(open_runtime(bundle, "onnx")(x)[0], expected, atol=1e-4)


def test_features_are_cached_and_recomputed_when_their_inputs_change(
    small_corpus, tmp_path, monkeypatch
):
    extra_corpus = tmp_path / "extra"
    (extra_corpus / "flac").mkdir(parents=True)
    (extra_corpus / "protocols").mkdir()
    lines = []
    for u in load_split(small_corpus, "eval")[:2]:  # any two other clips
        (extra_corpus / "flac" / u.path.name).symlink_to(u.path.resolve())
        lines.append(f"{u.speaker} {u.file} - {u.attack} {u.label}")
    (extra_corpus / "protocols" / "X.cm.train.trn.txt").write_text("\n".join(lines) + "\n")
    calls = []
    real = frozen.prefix_runner

    def counting_runner(*args, **kwargs):
        run = real(*args, **kwargs)

        def counted(windows):
            calls.append(len(windows))
            return run(windows)

        return counted

    recipe = small_recipe(epochs=1, eval_every=0)
    train(recipe, small_corpus, tmp_path / "run", progress=False)
    monkeypatch.setattr(frozen, "prefix_runner", counting_runner)
    # other optimiser settings: every cached set is reused
    train(recipe.override({"lr": 5e-4}), small_corpus, tmp_path / "run", progress=False)
    assert calls == []
    # other augmentation: only the augmented copy is recomputed
    other = recipe.override({"augment": {"preset": "telephone"}})
    train(other, small_corpus, tmp_path / "run", progress=False)
    assert sum(calls) == 6
    (meta_path,) = (tmp_path / "run" / "features").glob("train-*-1.json")
    assert json.loads(meta_path.read_text())["key"]["augment"]["codec"]["codecs"] == ["mulaw"]
    # another corpus joins: only its windows are computed, the first corpus's stay cached
    calls.clear()
    train(other.override({"extra_train": [str(extra_corpus)]}), small_corpus, tmp_path / "run")
    assert sum(calls) == 2 * 2  # its 2 clips x 2 copies


def test_resume_without_a_checkpoint_fails_before_any_work(small_corpus, tmp_path, monkeypatch):
    from voicescreen.train.start import TrainError

    def no_work(*args, **kwargs):
        raise AssertionError("features were computed for a run that cannot resume")

    monkeypatch.setattr(frozen, "prefix_runner", no_work)
    with pytest.raises(TrainError, match="no checkpoint to resume from"):
        train(small_recipe(), small_corpus, tmp_path / "never", resume=True, progress=False)
    assert not (tmp_path / "never").exists()


def test_resume_reproduces_the_uninterrupted_frozen_run(small_corpus, tmp_path):
    recipe = small_recipe()
    whole = train(recipe, small_corpus, tmp_path / "whole", progress=False)
    part = train(recipe, small_corpus, tmp_path / "part", stop_after=1, progress=False)
    assert not part.finished
    resumed = train(recipe, small_corpus, tmp_path / "part", resume=True, progress=False)
    assert resumed.finished
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_frozen_blocks_is_checked():
    with pytest.raises(ValueError, match="AASIST family"):
        load_recipe("lcnn", overrides={"frozen_blocks": 2})
    with pytest.raises(ValueError, match="feature_copies"):
        small_recipe(feature_copies=0)
    model, _ = build_model(small_recipe(frozen_blocks=6), torch.device("cpu"))
    with pytest.raises(ValueError, match="between 1 and 5"):
        frozen.check_frozen(small_recipe(frozen_blocks=6), model)


def test_a_cache_linked_from_another_run_is_never_written_through(tmp_path):
    """A run may start from another run's cache hard-linked in (``cp -al``); a set it must
    recompute (its key differs) goes to a new file, and the other run's cache stays as it was."""
    import os

    def window(i: int) -> np.ndarray:
        return np.full(4, i, np.float32)

    a = frozen.FeatureCache(tmp_path / "a", lambda: lambda w: w * 2, {"model": 1})
    first = np.array(a.get("train", 3, window))
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").iterdir():
        os.link(f, tmp_path / "b" / f.name)
    b = frozen.FeatureCache(tmp_path / "b", lambda: lambda w: w * 3, {"model": 2})
    np.testing.assert_array_equal(b.get("train", 3, window), first * 1.5)

    def never() -> None:
        raise AssertionError("a's cache was recomputed")

    again = frozen.FeatureCache(tmp_path / "a", never, {"model": 1})
    np.testing.assert_array_equal(again.get("train", 3, window), first)
