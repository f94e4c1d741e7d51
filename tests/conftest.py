"""Shared fixtures: where the reference material and the corpus live.

Tests mirror the packages (``tests/stream/``, ``tests/web/``, ...). The helpers shared across
those folders sit in ``tests/`` (``web_support.py``), and the Ray and Triton tests rerun
``tests/web/test_web_stream.py``'s tests on their backends: both folders are put on ``sys.path``
here, before any test module is imported.

``../shared`` sits beside the repository on every developer machine and on CI; a test that needs it
fails (never skips) when it is missing, since CI always has it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
for _helpers in (Path(__file__).resolve().parent, Path(__file__).resolve().parent / "web"):
    if str(_helpers) not in sys.path:
        sys.path.insert(0, str(_helpers))
SHARED = Path(os.environ.get("VOICESCREEN_SHARED", REPO.parent / "shared")).resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``native_bf16`` tests compile the bf16 fast path with torch inductor: seconds to a minute
    where the CPU has bfloat16 kernels, many minutes on emulated ones (an AVX2-only CPU), where
    the runtimes never choose bf16 by themselves. They are skipped there, saying why."""
    from voicescreen.models.cpu import cpu_info

    cpu = cpu_info()
    if cpu.native_bf16:
        return
    skip = pytest.mark.skip(
        reason=f"compiles --fast-path bf16, which needs AVX-512 BF16 or AMX; this CPU is "
        f"{cpu.describe()}"
    )
    for item in items:
        if "native_bf16" in item.keywords:
            item.add_marker(skip)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: tests read the reference material from ../shared")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(SHARED / "reference")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(SHARED / "data")


@pytest.fixture(scope="session")
def speech_clips(data_dir: Path) -> dict[str, np.ndarray]:
    """A few real clips of the corpus (train split), by label, as 16 kHz float32."""
    from voicescreen.audio import load_audio

    proto = (data_dir / "protocols" / "VS.cm.train.trn.txt").read_text().split("\n")
    rows = [line.split() for line in proto if line.strip()]
    bona = next(r[1] for r in rows if r[4] == "bonafide")
    spoof = next(r[1] for r in rows if r[4] == "spoof")
    return {
        "bonafide": load_audio(data_dir / "flac" / f"{bona}.flac"),
        "spoof": load_audio(data_dir / "flac" / f"{spoof}.flac"),
    }


@pytest.fixture(scope="session")
def aasist_l_official(reference_dir: Path):
    """AASIST-L with the official weights, in eval mode."""
    import torch

    from voicescreen.models.registry import get_architecture

    model = get_architecture("aasist-l").build()
    path = reference_dir / "aasist" / "AASIST-L.pth"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def export_aasist_l(tmp_path_factory, aasist_l_official):
    """Export the official AASIST-L as a bundle (once per setting; exporting is the slow part):
    ``export_aasist_l(threshold=0.0, scale=1.0, name="aasist-l", check_input=None,
    channels=None)`` (``channels``: ``{"narrowband": Calibration(...), ...}``)."""
    from voicescreen.models.bundle import export_bundle
    from voicescreen.models.registry import get_architecture

    made = {}

    def export(threshold=0.0, scale=1.0, name="aasist-l", check_input=None, channels=None):
        key = (threshold, scale, name, check_input is None, tuple(sorted((channels or {}).items())))
        if key not in made:
            made[key] = export_bundle(
                aasist_l_official,
                tmp_path_factory.mktemp("bundle") / name,
                architecture="aasist-l",
                config=get_architecture("aasist-l").default_config,
                name=name,
                threshold=threshold,
                scale=scale,
                channels=channels,
                check_input=check_input,
            )
        return made[key]

    return export


@pytest.fixture(scope="session")
def onnx_session():
    """``onnx_session(model, example)``: export ``model`` the way bundles are exported (legacy
    exporter, opset 17, input ``waveform`` and output ``logits`` with a dynamic batch axis,
    traced on ``example``) and open it in ONNX Runtime on the CPU."""
    import io
    import warnings

    import onnxruntime as ort
    import torch

    def export(model, example):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation and tracer notices
            torch.onnx.export(
                model,
                (example,),
                buf,
                input_names=["waveform"],
                output_names=["logits"],
                dynamic_axes={"waveform": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])

    return export


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A small corpus in the flat layout: links to real clips of each split, every attack."""
    from voicescreen.train.data import load_split

    root = tmp_path_factory.mktemp("corpus")
    (root / "flac").mkdir()
    (root / "protocols").mkdir()
    for split, suffix, n_bona in (
        ("train", "train.trn", 3),
        ("dev", "dev.trl", 3),
        ("eval", "eval.trl", 3),
    ):
        utts = load_split(data_dir, split)
        picked = [u for u in utts if u.is_bonafide][:n_bona]
        for attack in sorted({u.attack for u in utts if not u.is_bonafide}):
            picked += [u for u in utts if u.attack == attack][:1]
        for u in picked:
            (root / "flac" / u.path.name).symlink_to(u.path)
        lines = [f"{u.speaker} {u.file} - {u.attack} {u.label}" for u in picked]
        (root / "protocols" / f"VS.cm.{suffix}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def gmm_bundle(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    """A small LFCC-GMM bundle (2 components, trained on the small corpus): a non-AASIST model."""
    from voicescreen.train.recipes import load_recipe
    from voicescreen.train.trainer import train

    out = tmp_path_factory.mktemp("gmm")
    recipe = load_recipe("lfcc-gmm", overrides={"model": {"n_components": 2}})
    result = train(recipe, small_corpus, out / "run", export=out / "gmm-small", progress=False)
    return result.bundle
