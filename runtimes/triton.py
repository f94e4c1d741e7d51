"""The Triton backend: a model repository made from bundles, and a gRPC client for it.

``write_repository`` lays out a Triton Inference Server model repository, one model per bundle::

    DIR/<bundle name>/config.pbtxt     # ONNX Runtime backend, dynamic batching, instance group
    DIR/<bundle name>/1/model.onnx     # the bundle's model.onnx, byte for byte

``model_config`` writes ``config.pbtxt`` from the ONNX graph itself: its input and output names,
element types and shapes (the batch axis becomes ``max_batch_size``; an output that is only the
batch axis, such as ``score`` of shape (batch,), is declared ``dims: [ 1 ]`` with
``reshape: { shape: [ ] }`` as Triton asks for batch-only tensors).

The config also carries the model's sha256 as a parameter (``voicescreen_model_sha256``).

``TritonRuntime`` is a runtime of the batched worker: it sends one batch per gRPC ``ModelInfer``
with a timeout; a server whose queue is full (``max_queue_size``) refuses with UNAVAILABLE, which
becomes ``Overloaded``; anything else becomes ``BackendError``. At start it checks that the server
is live, that the model there takes and returns what the bundle's model does, and that its sha256
parameter, where present, is that of the bundle's ``model.onnx``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.models.bundle import ONNX_FILE, ONNX_INPUT, sha256
from voicescreen.runtimes.local import check_batch
from voicescreen.runtimes.remote import BackendError, Overloaded, TritonOptions

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
# A model parameter naming the ONNX file's sha256, so an ingest node can tell that the server runs
# the model its bundle holds (backends read only the parameters they know).
SHA_PARAMETER = "voicescreen_model_sha256"
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
CHECK_TIMEOUT = 10.0  # seconds for the start-up checks
# ONNX TensorProto element types -> Triton data types (model_config.proto) and wire types.
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TritonModelOptions:
    """How Triton runs each model: batches of up to ``max_batch`` windows, gathered for up to
    ``max_queue_delay_us`` (dynamic batching); at most ``max_queue_size`` requests waiting
    (0: no bound; past it Triton refuses and streams get ``overloaded``); ``instances`` copies
    of the model on each GPU (``kind`` gpu) or in the CPU pool (``kind`` cpu)."""

    max_batch: int = 64
    max_queue_delay_us: int = 2000
    max_queue_size: int = 0
    kind: str = "gpu"
    instances: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"instance kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.max_batch < 1 or self.instances < 1:
            raise ValueError("max_batch and instances must be at least 1")
        if self.max_queue_delay_us < 0 or self.max_queue_size < 0:
            raise ValueError("max_queue_delay_us and max_queue_size must be >= 0")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an ONNX graph: its name, Triton data type and per-item dims (the
    batch axis left out; -1 for any other dynamic axis)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def onnx_tensors(model: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs, each with a leading dynamic batch axis (which Triton's
    batching needs); raises ``ValueError`` for a graph without one."""
    import onnx

    graph = onnx.load_from_string(model).graph
    initializers = {i.name for i in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        if t.elem_type not in ONNX_TO_TRITON:
            raise ValueError(f"{value.name}: ONNX element type {t.elem_type} has no Triton type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1:
            raise ValueError(
                f"{value.name}: shape {dims} has no dynamic batch axis; Triton cannot batch it"
            )
        return TensorSpec(value.name, ONNX_TO_TRITON[t.elem_type], tuple(dims[1:]))

    inputs = [spec(i) for i in graph.input if i.name not in initializers]
    return inputs, [spec(o) for o in graph.output]


def _tensor(spec: TensorSpec) -> str:
    lines = [f'    name: "{spec.name}"', f"    data_type: {spec.data_type}"]
    if spec.dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]")
    else:  # only the batch axis: Triton wants a [1] tensor reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config(model: bytes, name: str, options: TritonModelOptions | None = None) -> str:
    """``config.pbtxt`` (protobuf text of Triton's ``ModelConfig``) for the ONNX ``model``."""
    options = options or TritonModelOptions()
    inputs, outputs = onnx_tensors(model)
    queue = (
        f"\n  default_queue_policy {{ max_queue_size: {options.max_queue_size} }}"
        if options.max_queue_size
        else ""
    )
    sep = ",\n"
    return (
        f"# voicescreen model {name}: {ONNX_FILE} sha256 {sha256(model)}\n"
        f'name: "{name}"\n'
        f'platform: "{PLATFORM}"\n'
        f"max_batch_size: {options.max_batch}\n"
        f"input [\n{sep.join(_tensor(s) for s in inputs)}\n]\n"
        f"output [\n{sep.join(_tensor(s) for s in outputs)}\n]\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}{queue}\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {options.instances}\n    kind: {KINDS[options.kind]}\n  }}\n"
        "]\n"
        "parameters {\n"
        f'  key: "{SHA_PARAMETER}"\n'
        f'  value: {{ string_value: "{sha256(model)}" }}\n'
        "}\n"
    )


def write_repository(
    bundles: list[Bundle], out: str | Path, options: TritonModelOptions | None = None
) -> list[Path]:
    """Write one Triton model per bundle under ``out``; returns the model directories."""
    out = Path(out)
    made = []
    for bundle in bundles:
        model = bundle.files[ONNX_FILE]
        config = model_config(model, bundle.name, options)  # checks the graph before writing
        folder = out / bundle.name
        (folder / VERSION).mkdir(parents=True, exist_ok=True)
        (folder / VERSION / ONNX_FILE).write_bytes(model)
        (folder / CONFIG_FILE).write_text(config)
        made.append(folder)
        log.info("wrote Triton model %s", folder)
    return made


# --- the ingest side ---------------------------------------------------------------------------


def _status(e: Exception) -> str:
    status = getattr(e, "status", None)
    return str(status() if callable(status) else status or "")


def _message(e: Exception) -> str:
    message = getattr(e, "message", None)
    return str(message() if callable(message) else message or e)


class TritonRuntime:
    """Scores batches with a model on a Triton server over gRPC; see the module docstring."""

    backend = "triton"

    def __init__(self, bundle: Bundle, options: TritonOptions) -> None:
        if not options.url:
            raise BackendError("the triton backend needs the server's gRPC URL (--triton-url)")
        self.url = options.url
        self.model = bundle.name
        self.input_samples = bundle.input_samples
        self.timeout_s = options.timeout_s
        self.concurrency = options.inflight
        self.providers = [f"triton:{self.url}/{self.model}"]
        self._local = threading.local()  # a client per worker thread
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._check(bundle)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpcclient

            client = self._local.client = grpcclient.InferenceServerClient(self.url)
            with self._lock:
                self._clients.append(client)
        return client

    def _check(self, bundle: Bundle) -> None:
        """The server is live and its model takes (B, input_samples) FP32 ``waveform`` and
        returns ``score``; raise ``BackendError`` saying what is wrong otherwise."""
        from tritonclient.utils import InferenceServerException

        client = self._client()
        where = f"Triton at {self.url}"
        try:
            if not client.is_server_live(client_timeout=CHECK_TIMEOUT):
                raise BackendError(f"{where} is not live")
            if not client.is_model_ready(self.model, client_timeout=CHECK_TIMEOUT):
                raise BackendError(
                    f"{where} has no ready model {self.model!r}; load the repository written by "
                    "`voicescreen export --triton`"
                )
            meta = client.get_model_metadata(self.model, as_json=True, client_timeout=CHECK_TIMEOUT)
            config = client.get_model_config(self.model, as_json=True, client_timeout=CHECK_TIMEOUT)
        except InferenceServerException as e:
            raise BackendError(f"cannot use {where}: {_status(e)} {_message(e)}") from None
        inputs = {i["name"]: i for i in meta.get("inputs", [])}
        outputs = {o["name"] for o in meta.get("outputs", [])}
        want = inputs.get(ONNX_INPUT, {})
        shape = [int(d) for d in want.get("shape", [])]
        if want.get("datatype") != "FP32" or shape[-1:] != [bundle.input_samples]:
            raise BackendError(
                f"{where}: model {self.model!r} takes {list(inputs.values())}, but bundle "
                f"{bundle.source} needs {ONNX_INPUT} FP32 (batch, {bundle.input_samples})"
            )
        if "score" not in outputs:
            raise BackendError(f"{where}: model {self.model!r} has no output 'score' ({outputs})")
        served = config.get("config", {}).get("parameters", {}).get(SHA_PARAMETER, {})
        served = served.get("string_value") or served.get("stringValue")
        want_sha = sha256(bundle.files[ONNX_FILE])
        if served is None:
            log.warning("%s: model %s does not say which model.onnx it runs", where, self.model)
        elif served != want_sha:
            raise BackendError(
                f"{where}: model {self.model!r} runs another model.onnx (sha256 {served[:12]}) "
                f"than bundle {bundle.source} ({want_sha[:12]}); export the bundle again with "
                "`voicescreen export --triton`"
            )

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        x = check_batch(windows, self.input_samples)
        waveform = grpcclient.InferInput(ONNX_INPUT, list(x.shape), "FP32")
        waveform.set_data_from_numpy(x)
        wanted = [grpcclient.InferRequestedOutput(n) for n in ("logits", "score")]
        try:
            result = self._client().infer(
                self.model, [waveform], outputs=wanted, client_timeout=self.timeout_s
            )
        except InferenceServerException as e:
            status, message = _status(e), _message(e)
            if "DEADLINE_EXCEEDED" in status or "Deadline" in message:
                raise BackendError(f"{self.model}: no answer within {self.timeout_s:g} s") from None
            if "UNAVAILABLE" in status and "queue" in message.lower():
                raise Overloaded(f"{self.model} on Triton refused the batch: {message}") from None
            raise BackendError(f"{self.model} on Triton: {status} {message}".strip()) from None
        score = result.as_numpy("score")
        logits = result.as_numpy("logits")
        if score is None or score.size != len(x):
            raise BackendError(f"{self.model} on Triton returned no score per window")
        return logits, score.reshape(len(x))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
