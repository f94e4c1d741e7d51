"""A stand-in for Triton Inference Server's gRPC endpoint, for the client tests.

No Triton server with the ONNX Runtime backend can be installed here (it ships in NVIDIA's
containers; PyPI's ``nvidia-pytriton`` bundles a ``tritonserver`` binary with the Python backend
only, and wants numpy < 2). This server speaks the same protocol — tritonclient's own service
definitions (``GRPCInferenceService``, ``tritonclient.grpc.service_pb2_grpc``) — over a loopback
port and serves a model repository written by ``voicescreen export --triton``: it reads each
``DIR/<model>/config.pbtxt`` into Triton's ``ModelConfig`` message and runs
``DIR/<model>/1/model.onnx`` with ONNX Runtime. It enforces what the client path depends on:
input names, data types and dims, ``max_batch_size``, the queue bound
(``default_queue_policy.max_queue_size``: past it, UNAVAILABLE "Exceeds maximum queue size" as
Triton says), and reports outputs with the config's dims. ``delay`` slows every inference (for
timeouts). It does not batch requests together.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

WIRE = {"TYPE_FP32": ("FP32", np.float32), "TYPE_INT64": ("INT64", np.int64)}


class _Model:
    def __init__(self, folder: Path) -> None:
        self.config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        self.session = ort.InferenceSession(
            str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.waiting = 0  # requests admitted and not yet answered
        self.lock = threading.Lock()

    def tensors(self, kind: str) -> list:
        return list(getattr(self.config, kind))


def _dtype(tensor) -> tuple[str, type]:
    return WIRE[model_config_pb2.DataType.Name(tensor.data_type)]


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves the models of ``repository`` on 127.0.0.1:``port`` until ``stop``."""

    def __init__(self, repository: str | Path) -> None:
        self.models = {
            folder.name: _Model(folder)
            for folder in sorted(Path(repository).iterdir())
            if (folder / "config.pbtxt").exists()
        }
        self.delay = 0.0
        self.requests = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(grace=None)

    def _model(self, name: str, context) -> _Model:
        if name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{name}'")
        return self.models[name]

    # --- GRPCInferenceService ------------------------------------------------------------------

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name in self.models)

    def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(config=self._model(request.name, context).config)

    def ModelMetadata(self, request, context):
        model = self._model(request.name, context)

        def meta(tensor):
            return service_pb2.ModelMetadataResponse.TensorMetadata(
                name=tensor.name, datatype=_dtype(tensor)[0], shape=[-1, *tensor.dims]
            )

        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            platform=model.config.platform,
            inputs=[meta(t) for t in model.tensors("input")],
            outputs=[meta(t) for t in model.tensors("output")],
        )

    def ModelInfer(self, request, context):
        model = self._model(request.model_name, context)
        self.requests += 1
        config = model.config
        feeds = {}
        declared = {t.name: t for t in model.tensors("input")}
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            spec = declared.get(tensor.name)
            if spec is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected input {tensor.name}")
            wire, dtype = _dtype(spec)
            shape = list(tensor.shape)
            if tensor.datatype != wire or shape[1:] != list(spec.dims):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {tensor.name}: got {tensor.datatype} {shape}, "
                    f"expected {wire} [-1, {list(spec.dims)}]",
                )
            if not 1 <= shape[0] <= config.max_batch_size:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"inference request batch-size must be <= {config.max_batch_size}",
                )
            feeds[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if set(feeds) != set(declared):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected inputs {list(declared)}")
        bound = config.dynamic_batching.default_queue_policy.max_queue_size
        with model.lock:
            if bound and model.waiting >= bound:
                context.abort(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size")
            model.waiting += 1
        try:
            time.sleep(self.delay)
            wanted = [o.name for o in request.outputs] or [t.name for t in model.tensors("output")]
            results = dict(zip(wanted, model.session.run(wanted, feeds), strict=True))
        finally:
            with model.lock:
                model.waiting -= 1
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for spec in model.tensors("output"):
            if spec.name not in results:
                continue
            wire, dtype = _dtype(spec)
            value = np.ascontiguousarray(results[spec.name], dtype=dtype)
            shape = [value.shape[0], *spec.dims]  # as the config declares it (reshape undone)
            response.outputs.append(
                service_pb2.ModelInferResponse.InferOutputTensor(
                    name=spec.name, datatype=wire, shape=shape
                )
            )
            response.raw_output_contents.append(value.reshape(shape).tobytes())
        return response
