"""The Triton backend: the model repository ``voicescreen export --triton`` writes, checked
against the ONNX model's real inputs and outputs, and the client path (``--backend triton``).

The client is tested against a stand-in gRPC server (``triton_fake.py`` beside this file)
speaking Triton's protocol from tritonclient's own service definitions, not against Triton
itself: no Triton server with the ONNX Runtime backend can be installed here.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import test_web_stream as web
from google.protobuf import text_format
from triton_fake import FakeTriton
from tritonclient.grpc import model_config_pb2
from web_support import dev_clip, run, start_server

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.cli import main
from voicescreen.models.bundle import ONNX_FILE, sha256
from voicescreen.runtimes import BackendError, TritonOptions, open_runtime
from voicescreen.runtimes.triton import SHA_PARAMETER, TritonRuntime, model_config
from voicescreen.stream import AudioFormat, BatchOptions, InferenceWorker, Session
from voicescreen.stream.worker import Overloaded
from voicescreen.web.config import ServerConfig

# The fixtures and the WebSocket tests of test_web_stream.py, in its order; here they run against
# the ``server`` below.
bundle, scorer, clips = web.bundle, web.scorer, web.clips
test_a_stream_scores_like_the_offline_scorer = web.test_a_stream_scores_like_the_offline_scorer
test_a_44k_stereo_float_stream_is_resampled_like_the_file = (
    web.test_a_44k_stereo_float_stream_is_resampled_like_the_file
)
test_score_endpoint_returns_what_the_cli_prints = (
    web.test_score_endpoint_returns_what_the_cli_prints
)
test_metrics_are_prometheus_text = web.test_metrics_are_prometheus_text
test_the_server_logs_no_errors_for_good_streams = (
    web.test_the_server_logs_no_errors_for_good_streams
)

QUEUE = 2  # the repository's max_queue_size


@pytest.fixture(scope="module")
def repository(bundle, tmp_path_factory):
    """``voicescreen export --triton DIR`` of the AASIST-L bundle, as an operator would run it."""
    out = tmp_path_factory.mktemp("triton") / "models"
    argv = ["export", "--triton", str(out), "--bundle", str(bundle.source)]
    argv += ["--kind", "cpu", "--instances", "2", "--max-batch", "32"]
    argv += ["--max-queue-delay-us", "500", "--max-queue-size", str(QUEUE)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def triton(repository):
    server = FakeTriton(repository)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(bundle, triton):
    # no more batches in flight than the repository lets wait: full-speed streams are never shed
    triton_options = TritonOptions(url=triton.url, inflight=QUEUE)
    config = ServerConfig(bundles=[bundle], backend="triton", triton=triton_options)
    server = start_server(config)
    yield server
    server.stop()


def test_the_repository_holds_the_model_and_a_config_made_from_it(repository, bundle):
    assert sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*")) == [
        "aasist-l",
        "aasist-l/1",
        "aasist-l/1/model.onnx",
        "aasist-l/config.pbtxt",
    ]
    model = (repository / "aasist-l" / "1" / "model.onnx").read_bytes()
    assert model == bundle.files[ONNX_FILE]
    # Triton's own ModelConfig message reads it (unknown fields or enum values would not parse)
    text = (repository / "aasist-l" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == (
        "aasist-l",
        "onnxruntime_onnx",
        32,
    )
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.dynamic_batching.default_queue_policy.max_queue_size == QUEUE
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)
    ]
    assert config.parameters[SHA_PARAMETER].string_value == sha256(model)

    # every tensor as the ONNX graph declares it: name, element type, dims after the batch axis
    graph = onnx.load_from_string(model).graph
    declared = {t.name: t for t in (*config.input, *config.output)}
    assert [t.name for t in config.input] == [i.name for i in graph.input] == ["waveform"]
    assert [t.name for t in config.output] == [o.name for o in graph.output] == ["logits", "score"]
    for value in (*graph.input, *graph.output):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims[0] == -1 and t.shape.dim[0].dim_param  # a dynamic batch axis
        spec = declared[value.name]
        assert t.elem_type == onnx.TensorProto.FLOAT
        assert spec.data_type == model_config_pb2.TYPE_FP32
        if len(dims) > 1:
            assert list(spec.dims) == dims[1:] and not spec.HasField("reshape")
        else:  # batch-only: [1] on the wire, reshaped to [] for the model
            assert list(spec.dims) == [1] and list(spec.reshape.shape) == []
    assert list(declared["waveform"].dims) == [bundle.input_samples]

    # and what the model really produces for a batch of 3 fits those declarations
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits, score = session.run(None, {"waveform": np.zeros((3, bundle.input_samples), np.float32)})
    assert logits.shape == (3, *declared["logits"].dims)
    assert score.shape == (3, *declared["score"].reshape.shape)


def test_export_says_what_it_wrote_and_refuses_bad_options(bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert main(["export", "--triton", str(out), "--bundle", str(bundle.source)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"wrote {out / 'aasist-l'}"
    assert printed[1].startswith(f"run: tritonserver --model-repository {out}")
    config = text_format.Parse(
        (out / "aasist-l" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert not config.dynamic_batching.HasField("default_queue_policy")  # unbounded by default
    argv = ["export", "--triton", str(tmp_path / "bad"), "--bundle", str(bundle.source)]
    assert main([*argv, "--instances", "0"]) == 2
    assert "max_batch and instances must be at least 1" in capsys.readouterr().err


def test_a_graph_without_a_batch_axis_is_refused():
    x = onnx.helper.make_tensor_value_info("waveform", onnx.TensorProto.FLOAT, [1, 16])
    y = onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("ReduceMean", ["waveform"], ["score"], keepdims=0)], "g", [x], [y]
    )
    model = onnx.helper.make_model(graph).SerializeToString()
    with pytest.raises(ValueError, match="no dynamic batch axis; Triton cannot batch it"):
        model_config(model, "fixed")


def test_the_client_scores_like_the_bundle(triton, bundle):
    runtime = TritonRuntime(bundle, TritonOptions(url=triton.url))
    x = (0.1 * np.random.default_rng(0).standard_normal((5, bundle.input_samples))).astype(
        np.float32
    )
    logits, score = runtime(x)
    want_logits, want_score = open_runtime(bundle, "onnx")(x)
    assert score.shape == (5,) and logits.shape == (5, 2)
    np.testing.assert_allclose(score, want_score, atol=1e-5)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)
    runtime.close()


def test_a_full_queue_is_overloaded_and_a_slow_server_a_timeout(triton, bundle):
    runtime = TritonRuntime(bundle, TritonOptions(url=triton.url, timeout_s=5))
    x = np.zeros((1, bundle.input_samples), np.float32)
    outcomes: list[str] = []

    def call() -> None:
        try:
            runtime(x)
            outcomes.append("scored")
        except Overloaded:
            outcomes.append("overloaded")

    triton.delay = 1.0
    try:
        threads = [threading.Thread(target=call) for _ in range(QUEUE + 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(outcomes) == ["overloaded"] * 2 + ["scored"] * QUEUE
        slow = TritonRuntime(bundle, TritonOptions(url=triton.url, timeout_s=0.1))
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no answer within 0.1 s"):
            slow(x)
        assert time.monotonic() - t0 < 2
    finally:
        triton.delay = 0.0
        runtime.close()


def test_overload_on_triton_is_reported_as_with_the_local_worker(triton, bundle, data_dir):
    runtime = TritonRuntime(bundle, TritonOptions(url=triton.url, inflight=4))
    x = load_audio(dev_clip(data_dir, "bonafide", 5.5, 6.5))

    async def main():
        w = InferenceWorker(
            runtime,
            name="aasist-l",
            input_samples=bundle.input_samples,
            score=bundle.score,
            options=BatchOptions(max_batch=1, max_wait_ms=0, max_queue=64),
        )
        async with w:  # four one-window batches at once against a queue of two: two refused
            sessions = [
                Session(w, fmt=AudioFormat("float32", SAMPLE_RATE), stream_id=f"t{k}")
                for k in range(3)
            ]
            for s in sessions:
                s.push(x)
            return w, [await s.close() for s in sessions]

    triton.delay = 0.3
    try:
        w, out = run(main())
    finally:
        triton.delay = 0.0
        runtime.close()
    shed = 0
    for events in out:
        s = events[-1].models["aasist-l"]
        assert "error" not in [e.type for e in events]
        assert s.windows == s.scored + s.no_speech + s.shed and s.failed == 0
        seen = [e.window for e in events if e.type in ("score", "no_speech")]
        seen += [n for e in events if e.type == "overloaded" for n in e.windows]
        assert sorted(seen) == list(range(s.windows))
        shed += s.shed
    assert shed > 0 and shed == w.metrics.shed
    assert w.metrics.submitted == w.metrics.scored + w.metrics.shed


def test_a_server_that_cannot_serve_the_bundle_is_refused(triton, bundle, repository, tmp_path):
    from voicescreen.web import create_app
    from voicescreen.web.state import ConfigError

    closed = TritonOptions(url="127.0.0.1:9", timeout_s=1)
    with pytest.raises(ConfigError, match="cannot use Triton at 127.0.0.1:9"):
        create_app(ServerConfig(bundles=[bundle], backend="triton", triton=closed))

    # the same name, another model.onnx: the sha256 parameter tells them apart
    other = tmp_path / "models"
    (other / "aasist-l" / "1").mkdir(parents=True)
    text = (repository / "aasist-l" / "config.pbtxt").read_text()
    (other / "aasist-l" / "config.pbtxt").write_text(
        text.replace(sha256(bundle.files[ONNX_FILE]), "0" * 64)
    )
    (other / "aasist-l" / "1" / "model.onnx").write_bytes(bundle.files[ONNX_FILE])
    impostor = FakeTriton(other)
    try:
        with pytest.raises(BackendError, match="runs another model.onnx"):
            TritonRuntime(bundle, TritonOptions(url=impostor.url))
    finally:
        impostor.stop()
