"""Fast AASIST paths (runtimes: exact, bf16, int8) against the plain model, on real speech."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from voicescreen.audio import load_audio, pad_repeat
from voicescreen.models.aasist import AASIST, CONFIGS
from voicescreen.models.bundle import _check_onnx, export_onnx
from voicescreen.runtimes import exact
from voicescreen.runtimes.bf16 import BF16AASIST, FFTSincFrontEnd, compile_bf16, selu_exp
from voicescreen.runtimes.exact import keep_unary_ops_blocked, optimize_onnx, ort_optimized
from voicescreen.runtimes.int8 import quantize_onnx
from voicescreen.runtimes.local import OnnxRuntime, TorchRuntime
from voicescreen.train.data import load_split

NAMES = {"aasist": "AASIST", "aasist-l": "AASIST-L"}
SAMPLES = 64600
EXACT = 1e-4  # logits, absolute: the parity bound
BF16_BOUND = 0.25  # logits, absolute: bf16 encoder (~0.01 median, <= 0.18 max on 200 dev windows)
INT8_BOUND = 2.0  # logits, absolute: int8 QDQ (~0.1 median, <= 1.7 max on 200 dev windows)


@pytest.fixture(scope="module")
def official(reference_dir: Path):
    @cache
    def load(name: str) -> AASIST:
        model = AASIST(CONFIGS[name]).eval()
        path = reference_dir / "aasist" / f"{NAMES[name]}.pth"
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model

    return load


@pytest.fixture(scope="module")
def speech(speech_clips: dict[str, np.ndarray]) -> np.ndarray:
    """(4, 64600) real speech windows: spoof, bona fide, and both again from 0.5 s in."""
    bona, spoof = speech_clips["bonafide"], speech_clips["spoof"]
    return np.stack([pad_repeat(c) for c in (spoof, bona, spoof[8000:], bona[8000:])])


@pytest.fixture(scope="module")
def plain_onnx(official):
    return cache(lambda name: export_onnx(official(name), "bonafide_logit", SAMPLES))


@pytest.fixture(scope="module")
def calibration(data_dir: Path) -> np.ndarray:
    """(8, 64600) TRAIN-split windows, 4 bona fide and 4 spoof, none of them in ``speech``."""
    utts = load_split(data_dir, "train")
    bona = [u for u in utts if u.is_bonafide][1:5]
    spoof = [u for u in utts if not u.is_bonafide][1:5]
    return np.stack([pad_repeat(load_audio(u.path)) for u in bona + spoof])


def _same_decisions(fast: np.ndarray, fp32: np.ndarray, bound: float) -> bool:
    """Arg-max classes agree wherever the fp32 margin exceeds what ``bound`` could flip."""
    margin = fp32[:, 1] - fp32[:, 0]
    sure = np.abs(margin) > 2 * bound
    return bool(np.array_equal((fast[:, 1] > fast[:, 0])[sure], (margin > 0)[sure]))


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


# -- exact: optimize_onnx -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_optimized_graph_is_exact_on_speech(official, plain_onnx, speech, name: str) -> None:
    fast = optimize_onnx(plain_onnx(name), check_input=speech[:2])
    runtime = OnnxRuntime(fast, SAMPLES, threads=2)  # the stock runtime runs it unchanged
    logits, score = runtime(speech)
    expected = _torch_logits(official(name), speech)
    assert logits.shape == (4, 2) and score.shape == (4,)
    assert np.abs(logits - expected).max() <= EXACT
    assert np.array_equal(score, logits[:, 1])  # the bundle's bonafide_logit convention
    one, _ = runtime(speech[1:2])
    assert np.abs(one - logits[1:2]).max() <= EXACT  # batch 1 as in a batch

    # It is the rewired graph: SELUs read the blocked convolution outputs directly.
    model = onnx.load_from_string(fast)
    meta = {p.key: p.value for p in model.metadata_props}
    assert int(meta["voicescreen.rewired_ops"]) == 6  # one SELU per residual block
    producer = {o: n for n in model.graph.node for o in n.output}
    selus = [n for n in model.graph.node if n.op_type == "Selu"]
    fed_by = {producer[n.input[0]].op_type for n in selus if n.input[0] in producer}
    assert "ReorderOutput" not in fed_by


def test_optimized_graph_keeps_the_bundle_io_contract(plain_onnx, tmp_path: Path) -> None:
    fast = optimize_onnx(plain_onnx("aasist-l"))
    _check_onnx(tmp_path, fast, SAMPLES)  # what load_bundle verifies: names, dynamic batch
    model = onnx.load_from_string(fast)
    assert [i.name for i in model.graph.input] == ["waveform"]
    assert [o.name for o in model.graph.output] == ["logits", "score"]
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_optimize_onnx_refuses_a_graph_that_disagrees(plain_onnx, speech, monkeypatch) -> None:
    """The check in optimize_onnx catches a rewrite that changes the numbers."""

    def break_selu(model: onnx.ModelProto) -> int:
        count = keep_unary_ops_blocked(model)
        for node in model.graph.node:
            if node.op_type == "Selu":
                node.op_type = "Relu"
                del node.attribute[:]
        return count

    monkeypatch.setattr(exact, "keep_unary_ops_blocked", break_selu)
    with pytest.raises(RuntimeError, match="differs"):
        optimize_onnx(plain_onnx("aasist-l"), check_input=speech[:1])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, as the bundles use
def test_only_reorder_sandwiches_are_rewired(tmp_path: Path) -> None:
    """conv -> SELU -> conv is rewired; a SELU whose result leaves the graph is not."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.selu(self.a(x))
            return self.b(h), torch.selu(self.b(h))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 16, 8, 40)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], dynamo=False)
    model = ort_optimized(path.read_bytes())
    assert keep_unary_ops_blocked(model) == 1

    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})
    with torch.inference_mode():
        want = [t.numpy() for t in net(x)]
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w).max() <= 1e-5


# -- lossy: int8 QDQ graph -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_int8_graph_stays_within_its_bound(
    official, plain_onnx, speech, calibration, name: str, tmp_path: Path
) -> None:
    graph = quantize_onnx(plain_onnx(name), calibration)
    _check_onnx(tmp_path, graph, SAMPLES)  # the bundle's I/O contract, dynamic batch
    logits, score = OnnxRuntime(graph, SAMPLES, threads=2)(speech)
    fp32 = _torch_logits(official(name), speech)
    diff = np.abs(logits - fp32)
    assert logits.shape == (4, 2) and np.array_equal(score, logits[:, 1])
    assert 1e-3 < diff.max() <= INT8_BOUND  # really quantised, and within the stated bound
    assert _same_decisions(logits, fp32, INT8_BOUND)
    one, _ = OnnxRuntime(graph, SAMPLES, threads=2)(speech[3:])
    assert np.abs(one - logits[3:]).max() <= 1e-4  # batch 1 as in a batch

    # Convolutions run on int8 weights, except the sinc filterbank on the raw waveform.
    model = onnx.load_from_string(graph)
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantised = [n for n in convs if producer.get(n.input[1], n).op_type == "DequantizeLinear"]
    assert len(convs) == 15 and len(quantised) == 14
    (front,) = (n for n in convs if n not in quantised)
    assert [a.ints for a in front.attribute if a.name == "kernel_shape"] == [[129]]


def test_quantize_onnx_wants_calibration_windows(plain_onnx) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(plain_onnx("aasist-l"), np.zeros((0, SAMPLES), np.float32))


# -- lossy: bf16 encoder --------------------------------------------------------------------------


def test_fft_front_end_matches_the_sinc_convolution(official, speech) -> None:
    model = official("aasist")
    with torch.inference_mode():
        want = model.front_end(torch.from_numpy(speech))
        got = FFTSincFrontEnd(model, SAMPLES)(torch.from_numpy(speech))
    assert got.shape == want.shape == (4, 1, 23, 21490)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_selu_exp_is_selu() -> None:
    x = torch.linspace(-30, 30, 100_001)
    assert (selu_exp(x) - torch.selu(x)).abs().max() <= 1e-6 * x.abs().max()
    assert selu_exp(x.bfloat16()).dtype == torch.bfloat16
    assert torch.isfinite(selu_exp(torch.tensor([1e4, -1e4]))).all()  # no exp overflow


@pytest.mark.parametrize("name", NAMES)
def test_bf16_encoder_stays_within_its_bound(official, speech, name: str) -> None:
    model = official(name)
    fp32 = _torch_logits(model, speech)
    bf16 = _torch_logits(BF16AASIST(model), speech)
    diff = np.abs(bf16 - fp32)
    assert bf16.dtype == np.float32 and bf16.shape == (4, 2)
    assert diff.max() <= BF16_BOUND
    assert diff.max() > 0  # it really is a different (bf16) computation
    assert _same_decisions(bf16, fp32, BF16_BOUND)
    # The wrapped model is left as it was (fp32, eval).
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training


@pytest.mark.native_bf16
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_compiled_bf16_matches_the_eager_bf16_model(official, speech) -> None:
    model = official("aasist-l")
    eager = _torch_logits(BF16AASIST(model), speech[:3])
    compiled = compile_bf16(model)  # compiles on the first call (a minute when the cache is cold)
    got = _torch_logits(compiled, speech[:3])
    assert got.shape == (3, 2) and got.dtype == np.float32
    assert np.abs(got - eager).max() <= 0.05  # same bf16 graph; inductor may round differently
    assert np.abs(got - _torch_logits(model, speech[:3])).max() <= BF16_BOUND
    # Windows go through one by one: a batch gives what its windows give alone.
    assert np.array_equal(_torch_logits(compiled, speech[2:3]), got[2:3])
    # The stock PyTorch runtime serves it as it serves the plain model.
    logits, score = TorchRuntime(compiled, "bonafide_logit", SAMPLES, device="cpu")(speech[:3])
    assert np.array_equal(logits, got) and np.array_equal(score, got[:, 1])
