"""RawNet2 for anti-spoofing, in its two published configurations.

Tak et al., "End-to-end anti-spoofing with RawNet2", ICASSP 2021. Re-implemented from the two
reference codes, with their math and parameter names, so their checkpoints load with
``strict=True`` and give their outputs:

- ``RawNet2Tak``: eurecom-asp/rawnet2-antispoofing `model.py` (MIT licence, Copyright (c) 2021
  eurecom-asp), the paper's code. Outputs raw logits.
- ``RawNet2Clova``: the RawNet2 baseline shipped in clovaai/aasist `models/RawNet2Spoof.py`
  (MIT licence, Copyright (c) 2021-present NAVER Corp.). Outputs log-softmax scores.

Data flow, with the shapes of the published Tak config (B = batch; Clova in brackets):

    waveform                                            (B, 64000)          [(B, 64600)]
    SincConv: fixed mel-spaced band-pass filters        (B, 128, 63872)     [(B, 20, 63576)]
    |.|, max-pool 3, BatchNorm, SELU                    (B, 128, 21290)     [(B, 20, 21192)]
    6 residual blocks, each max-pool 3 and FMS          (B, 512, 29)        [(B, 128, 29)]
    BatchNorm, SELU, 3-layer GRU, last time step        (B, 1024)
    fc1_gru                                             last_hidden (B, 1024)
    fc2_gru                                             logits (B, 2), index 1 = bona fide
                                                        [then log-softmax]

Filter-wise feature-map scaling (FMS) after every block: s = sigmoid(W mean_t(x) + b) per
channel, x <- x * s + s.

Where the two references differ (each model keeps its own):
- Sinc band edges: Tak spaces ``n + 3`` points on the mel scale from 0 Hz to 8 kHz and uses the
  first ``n + 1`` as edges of ``n`` filters (the top band stops below Nyquist); Clova spaces
  ``n + 1`` edges over the full 0 to 8 kHz.
- Residual blocks after the first: Tak convolves ``leaky_relu(bn1(x))``; Clova computes it and
  then convolves ``x`` itself, so ``bn1`` is in its checkpoint but changes no output (in train
  mode it still updates its running statistics, as in the reference).
- Output: Tak returns the last FC's logits, Clova their log-softmax.

Config quirk kept on purpose: both references overwrite ``filts[2][0]`` with ``filts[2][1]`` while
building the model, so configs dumped after construction (such as ``CONFIGS`` here, taken from the
reference fixtures) read ``[512, 512]`` where the published yaml has ``[128, 512]``. Either form
is accepted: the third block always takes ``filts[1][1]`` channels in. ``filts[3]`` and ``margin``
are read by neither reference.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voicescreen.audio import SAMPLE_RATE, WINDOW_SAMPLES


@dataclass
class RawNet2Config:
    """The reference ``model_config``; defaults are the published Tak config (see ``CONFIGS``)."""

    nb_samp: int = 64000  # training window in samples (the model itself accepts any length)
    first_conv: int = 128  # sinc filter length (made odd: 129 taps)
    in_channels: int = 1  # must be 1: a mono waveform
    # [n_sinc_filters, [in, out] of the first-width blocks, [in, out] of the first block of
    # the second width (out = its width), unused]
    filts: list = field(default_factory=lambda: [128, [128, 128], [512, 512], [512, 512]])
    blocks: list = field(default_factory=lambda: [2, 4])  # residual blocks at each width
    nb_fc_node: int = 1024  # size of last_hidden (fc1_gru output)
    gru_node: int = 1024
    nb_gru_layer: int = 3
    nb_classes: int = 2
    margin: int | None = None  # in the Tak yaml, unused by the model

    def __post_init__(self) -> None:
        # Normalise to plain JSON types (tuples from safetensors metadata, numpy scalars, ...).
        for f in fields(self):
            if f.type == "int":  # annotations are strings here (postponed evaluation)
                setattr(self, f.name, int(getattr(self, f.name)))
        self.margin = None if self.margin is None else int(self.margin)
        if len(self.filts) < 3 or len(self.blocks) != 2:
            raise ValueError(
                f"filts needs >= 3 entries and blocks 2, got {self.filts}, {self.blocks}"
            )
        self.filts = [int(self.filts[0])] + [[int(a), int(b)] for a, b in self.filts[1:]]
        self.blocks = [int(b) for b in self.blocks]

        n_sinc, (a, b), (c, _) = self.filts[0], self.filts[1], self.filts[2]
        if self.in_channels != 1:
            raise ValueError(
                f"SincConv takes one input channel, got in_channels={self.in_channels}"
            )
        if not a == b == n_sinc:
            raise ValueError(f"filts[1] must be [filts[0], filts[0]], got {self.filts}")
        if c not in (b, self.filts[2][1]):
            raise ValueError(f"filts[2][0] must be filts[1][1] or filts[2][1], got {self.filts}")
        if self.blocks[0] < 1 or self.blocks[1] < 1:
            raise ValueError(f"blocks must both be >= 1, got {self.blocks}")

    @classmethod
    def from_dict(cls, d: Mapping) -> RawNet2Config:
        """Build from a reference-style dict; unknown keys (e.g. ``architecture``) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def _published(**changes) -> dict:
    """``RawNet2Config(**changes)`` as the reference fixtures record it: ``margin`` only where
    the yaml sets one, and then first."""
    d = RawNet2Config(**changes).to_dict()
    margin = d.pop("margin")
    return d if margin is None else {"margin": margin, **d}


# The two published configurations, as the reference fixtures record them (``full_model_config``):
# Tak's is the dataclass's defaults; the AASIST repository's baseline takes 64600-sample windows,
# 1024-tap sinc filters over 20 bands and narrower residual blocks.
CONFIGS: dict[str, dict] = {
    "rawnet2-tak": _published(margin=2),
    "rawnet2-clova": {
        "architecture": "RawNet2Spoof",
        **_published(
            nb_samp=WINDOW_SAMPLES,
            first_conv=1024,
            filts=[20, [20, 20], [128, 128], [128, 128]],
        ),
    },
}


# ---------------------------------------------------------------------------------------------
# Front-end: fixed sinc filterbank


def _to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595 * np.log10(1 + hz / 700)


def _to_hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595) - 1)


def _mel_points(n: int, sample_rate: int) -> np.ndarray:
    """``n`` frequencies (Hz) equally spaced on the mel scale from 0 Hz to sample_rate / 2.

    The references take the range from the mel values of a 512-point FFT's bins; done the same
    way here so the float64 edges are bit-identical.
    """
    fmel = _to_mel((sample_rate // 2) * np.linspace(0, 1, 512 // 2 + 1))
    return _to_hz(np.linspace(fmel.min(), fmel.max(), n))


def tak_band_edges(n_filters: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_filters + 1,) edges (Hz): the first n + 1 of n + 3 mel-spaced points (eurecom-asp)."""
    return _mel_points(n_filters + 3, sample_rate)[: n_filters + 1]


def clova_band_edges(n_filters: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_filters + 1,) edges (Hz): n + 1 mel-spaced points over 0 .. sample_rate / 2 (AASIST)."""
    return _mel_points(n_filters + 1, sample_rate)


def sinc_band_pass(edges: np.ndarray, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """(len(edges) - 1, kernel_size) Hamming-windowed ideal band-pass filters between
    consecutive edges (Hz); ``kernel_size`` must be odd (symmetric filters).

    Precision follows the references exactly (sinc argument and sinc in float32, gain and
    difference in float64, window product in float32): trained weights expect these values.
    """
    t = np.arange(kernel_size, dtype=np.float32) - np.float32((kernel_size - 1) / 2)

    def low_pass(cutoff: np.ndarray) -> np.ndarray:  # ideal low-pass, (n_filters, kernel_size)
        arg = (2 * cutoff[:, None]).astype(np.float32) * t / np.float32(sample_rate)
        return (2 * cutoff[:, None] / sample_rate) * np.sinc(arg)

    band_pass = (low_pass(edges[1:]) - low_pass(edges[:-1])).astype(np.float32)
    return torch.from_numpy(band_pass * np.hamming(kernel_size).astype(np.float32))


class SincConv(nn.Module):
    """Fixed (not learned) sinc filterbank: (B, 1, T) -> (B, n_filters, T - K + 1)."""

    def __init__(self, edges: np.ndarray, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        kernel_size += 1 - kernel_size % 2  # odd length: symmetric filters
        filters = sinc_band_pass(edges, kernel_size, sample_rate).unsqueeze(1)  # (n, 1, K)
        # Derived from the config, so not part of the checkpoint (persistent=False).
        self.register_buffer("band_pass", filters, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.band_pass)


# ---------------------------------------------------------------------------------------------
# Encoder


class ResidualBlock(nn.Module):
    """(B, C_in, T) -> (B, C_out, T // 3): pre-activation residual block, then max-pool 3.

    out = conv2(lrelu(bn2(conv1(pre(x))))) + skip(x), with pre = lrelu(bn1(.)) except in the first
    block (pre = identity) and, with ``bn1_feeds_conv1=False`` (Clova), in every block.
    """

    def __init__(
        self, in_channels: int, out_channels: int, first: bool = False, bn1_feeds_conv1: bool = True
    ) -> None:
        super().__init__()
        self.first = first
        self.bn1_feeds_conv1 = bn1_feeds_conv1
        if not first:
            self.bn1 = nn.BatchNorm1d(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_downsample = (
            nn.Conv1d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if not self.first:
            if self.bn1_feeds_conv1:
                out = F.leaky_relu(self.bn1(x), 0.3)
            elif self.training:
                self.bn1(x)  # Clova: output discarded, but running statistics update as there
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(out)), 0.3))
        identity = x if self.conv_downsample is None else self.conv_downsample(x)
        return F.max_pool1d(out + identity, 3)


# ---------------------------------------------------------------------------------------------
# The models


class _RawNet2(nn.Module):
    """Shared body: (B, T) waveform -> (last_hidden (B, nb_fc_node), fc2 output (B, nb_classes)).

    Blocks ``block{i}`` (each an ``nn.Sequential`` of one ``ResidualBlock``, as in the reference)
    and their FMS layers ``fc_attention{i}``: ``blocks[0]`` at ``filts[1][1]`` channels, then
    ``blocks[1]`` at ``filts[2][1]``.
    """

    def __init__(
        self, config: RawNet2Config | Mapping | None, *, tak_edges: bool, bn1_feeds_conv1: bool
    ) -> None:
        super().__init__()
        if not isinstance(config, RawNet2Config):
            config = RawNet2Config.from_dict(config or {})
        self.config = config
        n_sinc, width1, width2 = config.filts[0], config.filts[1][1], config.filts[2][1]

        edges = (tak_band_edges if tak_edges else clova_band_edges)(n_sinc)
        self.Sinc_conv = SincConv(edges, config.first_conv)
        self.first_bn = nn.BatchNorm1d(n_sinc)

        self.n_blocks = sum(config.blocks)
        for i in range(self.n_blocks):
            c_in = width1 if i <= config.blocks[0] else width2
            c_out = width1 if i < config.blocks[0] else width2
            block = ResidualBlock(c_in, c_out, first=i == 0, bn1_feeds_conv1=bn1_feeds_conv1)
            self.add_module(f"block{i}", nn.Sequential(block))
        for i in range(self.n_blocks):
            c = width1 if i < config.blocks[0] else width2
            self.add_module(f"fc_attention{i}", nn.Sequential(nn.Linear(c, c)))

        self.bn_before_gru = nn.BatchNorm1d(width2)
        self.gru = nn.GRU(width2, config.gru_node, num_layers=config.nb_gru_layer, batch_first=True)
        self.fc1_gru = nn.Linear(config.gru_node, config.nb_fc_node)
        self.fc2_gru = nn.Linear(config.nb_fc_node, config.nb_classes)

    def _body(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) -> (last_hidden (B, nb_fc_node), fc2_gru output (B, nb_classes))."""
        x = self.Sinc_conv(x.unsqueeze(1))  # (B, n_sinc, T - K + 1)
        x = F.selu(self.first_bn(F.max_pool1d(x.abs(), 3)))
        for i in range(self.n_blocks):
            x = getattr(self, f"block{i}")(x)  # (B, C, T // 3)
            scale = torch.sigmoid(getattr(self, f"fc_attention{i}")(x.mean(dim=-1))).unsqueeze(-1)
            x = x * scale + scale  # filter-wise feature-map scaling, (B, C, 1) broadcast
        x = F.selu(self.bn_before_gru(x))
        x, _ = self.gru(x.transpose(1, 2))  # (B, T', gru_node)
        last_hidden = self.fc1_gru(x[:, -1])
        return last_hidden, self.fc2_gru(last_hidden)


class RawNet2Tak(_RawNet2):
    """RawNet2 of eurecom-asp: (B, T) 16 kHz float32 waveform -> (B, 2) logits, index 1 = bona fide.

    Trained there on 64000-sample windows with weighted cross-entropy on these logits; scored with
    ``logits[:, 1]`` (its ``is_test`` softmax is monotonic in the same quantity).
    """

    def __init__(self, config: RawNet2Config | Mapping | None = None) -> None:
        super().__init__(config, tak_edges=True, bn1_feeds_conv1=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T) waveform -> (B, 2) logits."""
        return self._body(x)[1]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) waveform -> (last_hidden (B, nb_fc_node), logits (B, 2))."""
        return self._body(x)


class RawNet2Clova(_RawNet2):
    """RawNet2 baseline of clovaai/aasist: (B, T) 16 kHz waveform -> (B, 2) log-softmax outputs,
    index 1 = bona fide (the reference's output, scored there with ``output[:, 1]``)."""

    def __init__(self, config: RawNet2Config | Mapping | None = None) -> None:
        super().__init__(config or CONFIGS["rawnet2-clova"], tak_edges=False, bn1_feeds_conv1=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T) waveform -> (B, 2) log-probabilities."""
        return self.forward_features(x)[1]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) waveform -> (last_hidden (B, nb_fc_node), log-softmax outputs (B, 2))."""
        last_hidden, x = self._body(x)
        return last_hidden, F.log_softmax(x, dim=1)
