"""AASIST and AASIST-L: spectro-temporal graph attention on raw waveforms.

Jung et al., "AASIST: Audio Anti-Spoofing using Integrated Spectro-Temporal Graph Attention
Networks", ICASSP 2022. Re-implemented from the reference code, clovaai/aasist `models/AASIST.py`
(MIT licence, Copyright (c) 2021-present NAVER Corp.): the math and every parameter name are the
reference's, so the official `AASIST.pth` / `AASIST-L.pth` load with ``strict=True`` and give the
reference outputs.

Data flow, with the shapes of a 64600-sample window and the AASIST config (B = batch):

    waveform                                           (B, 64600)
    SincConv: 70 fixed mel-spaced band-pass filters    (B, 70, 64472)
    |.|, 3x3 max-pool, BatchNorm, SELU                 (B, 1, 23, 21490)    a (freq, time) "image"
    encoder: 6 residual blocks, time max-pool 3 each   (B, 64, 23, 29)
    spectral graph: max |.| over time, + pos_S         (B, 23, 64) -> GAT-S -> pool -> (B, 11, 64)
    temporal graph: max |.| over freq                  (B, 29, 64) -> GAT-T -> pool -> (B, 20, 64)
    two branches of 2 heterogeneous graph layers (HS-GAL) with a master node, max over branches
    readout: max |.| and mean of both node types, master   last_hidden (B, 160)
    Linear                                             logits (B, 2), index 1 = bona fide

Details of the reference that the weights depend on, kept on purpose:
- in every residual block but the first, ``bn1`` exists (and is in the checkpoint) but its output is
  discarded: ``conv1`` sees the block input directly;
- the sinc filters are evaluated in float32 (see ``mel_sinc_filters``);
- ``pool_ratios[3]`` and ``temperatures[3]`` are part of the config but unused.
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
class AASISTConfig:
    """The reference ``model_config``; defaults are AASIST's (see ``CONFIGS`` for AASIST-L)."""

    nb_samp: int = WINDOW_SAMPLES  # input window in samples (the model itself accepts any length)
    first_conv: int = 128  # sinc filter length (made odd: 129 taps)
    # [n_sinc_filters, [in, out] channels of residual blocks 1, 2, 3 and 4 (= 5 and 6)]
    filts: list = field(default_factory=lambda: [70, [1, 32], [32, 32], [32, 64], [64, 64]])
    gat_dims: list = field(default_factory=lambda: [64, 32])  # GAT-S/T dim, HS-GAL dim
    pool_ratios: list = field(default_factory=lambda: [0.5, 0.7, 0.5, 0.5])  # S, T, HS-GAL, unused
    temperatures: list = field(default_factory=lambda: [2.0, 2.0, 100.0, 100.0])  # idem

    def __post_init__(self) -> None:
        if len(self.filts) != 5 or len(self.gat_dims) != 2:
            raise ValueError(
                f"filts needs 5 entries and gat_dims 2, got {self.filts}, {self.gat_dims}"
            )
        if len(self.pool_ratios) < 3 or len(self.temperatures) < 3:
            raise ValueError("pool_ratios and temperatures need at least 3 entries")
        # Normalise to plain JSON types (tuples from safetensors metadata, numpy scalars, ...).
        self.nb_samp, self.first_conv = int(self.nb_samp), int(self.first_conv)
        self.filts = [int(self.filts[0])] + [[int(a), int(b)] for a, b in self.filts[1:]]
        self.gat_dims = [int(d) for d in self.gat_dims]
        self.pool_ratios = [float(r) for r in self.pool_ratios]
        self.temperatures = [float(t) for t in self.temperatures]

    @classmethod
    def from_dict(cls, d: Mapping) -> AASISTConfig:
        """Build from a reference-style dict; unknown keys (e.g. ``architecture``) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


# The two published configurations (the ``model_config`` of the reference config/*.conf): AASIST
# is the dataclass's defaults, AASIST-L narrows the residual blocks and the graph layers.
CONFIGS: dict[str, dict] = {
    "aasist": AASISTConfig().to_dict(),
    "aasist-l": AASISTConfig(
        filts=[70, [1, 32], [32, 32], [32, 24], [24, 24]],
        gat_dims=[24, 32],
        pool_ratios=[0.4, 0.5, 0.7, 0.5],
    ).to_dict(),
}


# ---------------------------------------------------------------------------------------------
# Front-end: fixed sinc filterbank


def mel_sinc_filters(n_filters: int, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """(n_filters, kernel_size) Hamming-windowed ideal band-pass filters.

    Band edges are equally spaced on the mel scale from 0 Hz to sample_rate / 2 (the reference
    spaces them between the mel values of a 512-point FFT's bins, which span the same range).
    The sinc is evaluated in float32 exactly as the reference does: the trained weights expect
    these values: float64 filters (a 4e-6 relative change) move the outputs by up to 2e-4.
    """

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + hz / 700)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return 700 * (10 ** (mel / 2595) - 1)

    edges = to_hz(np.linspace(0.0, to_mel(np.float64(sample_rate // 2)), n_filters + 1))
    t = np.arange(kernel_size, dtype=np.float32) - np.float32((kernel_size - 1) / 2)

    def low_pass(cutoff: np.ndarray) -> np.ndarray:  # ideal low-pass, (n_filters, kernel_size)
        arg = (2 * cutoff[:, None]).astype(np.float32) * t / np.float32(sample_rate)
        return (2 * cutoff[:, None] / sample_rate) * np.sinc(arg)  # float32 sinc, float64 gain

    band_pass = (low_pass(edges[1:]) - low_pass(edges[:-1])).astype(np.float32)
    return torch.from_numpy(band_pass * np.hamming(kernel_size).astype(np.float32))


class SincConv(nn.Module):
    """Fixed (not learned) mel-scaled sinc filterbank: (B, 1, T) -> (B, n_filters, T - K + 1).

    ``mask=True`` is the reference's frequency augmentation ("Freq_aug"): a random band of
    0-19 adjacent filters is zeroed for this call.
    """

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        kernel_size += 1 - kernel_size % 2  # odd length: symmetric filters
        # Derived from the config, so not part of the checkpoint (persistent=False).
        self.register_buffer(
            "band_pass", mel_sinc_filters(n_filters, kernel_size, sample_rate), persistent=False
        )

    def forward(self, x: Tensor, mask: bool = False) -> Tensor:
        filters = self.band_pass
        if mask:
            n = filters.shape[0]
            width = int(torch.randint(0, 20, ()))
            start = int(torch.randint(0, n - width + 1, ()))
            filters = filters.clone()
            filters[start : start + width] = 0
        return F.conv1d(x, filters.unsqueeze(1))


# ---------------------------------------------------------------------------------------------
# Encoder


class ResidualBlock(nn.Module):
    """(B, C_in, F, T) -> (B, C_out, F, T // 3): two (2, 3) convs, a skip, max-pool over time."""

    def __init__(self, in_channels: int, out_channels: int, first: bool = False) -> None:
        super().__init__()
        if not first:
            # In the checkpoint, but unused: the reference computes selu(bn1(x)) and then
            # convolves x itself. Kept so the weights load; skipping it changes no output.
            self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=(2, 3), padding=(0, 1))
        self.conv_downsample = (
            nn.Conv2d(in_channels, out_channels, kernel_size=(1, 3), padding=(0, 1))
            if in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.selu(self.bn2(self.conv1(x)), inplace=True)  # (B, C_out, F + 1, T)
        out = self.conv2(out)  # (B, C_out, F, T)
        identity = x if self.conv_downsample is None else self.conv_downsample(x)
        return F.max_pool2d(out + identity, (1, 3))


# ---------------------------------------------------------------------------------------------
# Graph attention


def pairwise_products(x: Tensor) -> Tensor:
    """(B, N, D) -> (B, N, N, D) with [b, i, j] = x[b, i] * x[b, j]."""
    return x.unsqueeze(2) * x.unsqueeze(1)


class GraphAttentionLayer(nn.Module):
    """Graph attention over a fully connected graph: (B, N, D_in) -> (B, N, D_out).

    Attention a_ij = softmax_j(w . tanh(W (x_i * x_j)) / temperature); the output is
    SELU(BN(W1 sum_j a_ij x_j + W2 x_i)). With ``store_attention`` set, the last (B, N, N)
    attention map is kept on ``last_attention``.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(out_dim, 1)))
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(p=0.2)
        self.temp = temperature
        self.store_attention = False
        self.last_attention: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_drop(x)
        scores = torch.tanh(self.att_proj(pairwise_products(x))) @ self.att_weight  # (B,N,N,1)
        att = F.softmax(scores.squeeze(-1) / self.temp, dim=-1)  # (B, N, N), rows sum to 1
        if self.store_attention:
            self.last_attention = att.detach()
        x = self.proj_with_att(att @ x) + self.proj_without_att(x)
        return F.selu(self.bn(x.transpose(1, 2)).transpose(1, 2))


class HtrgGraphAttentionLayer(nn.Module):
    """Heterogeneous graph attention (HS-GAL) over two node types and a master node.

    (B, N1, D_in), (B, N2, D_in), master (B or 1, 1, D_in)
        -> (B, N1, D_out), (B, N2, D_out), master (B, 1, D_out).
    Node pairs of type (1,1), (2,2) and mixed types each have their own attention vector. The
    master node attends to all nodes; it is not itself a neighbour of the other nodes. With
    ``store_attention`` set, ``last_attention`` (B, N1+N2, N1+N2) and ``last_master_attention``
    (B, N1+N2) keep the last attention maps.
    """

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        self.att_weight11 = nn.Parameter(nn.init.xavier_normal_(torch.empty(out_dim, 1)))
        self.att_weight22 = nn.Parameter(nn.init.xavier_normal_(torch.empty(out_dim, 1)))
        self.att_weight12 = nn.Parameter(nn.init.xavier_normal_(torch.empty(out_dim, 1)))
        self.att_weightM = nn.Parameter(nn.init.xavier_normal_(torch.empty(out_dim, 1)))
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(p=0.2)
        self.temp = temperature
        self.store_attention = False
        self.last_attention: Tensor | None = None
        self.last_master_attention: Tensor | None = None

    def forward(
        self, x1: Tensor, x2: Tensor, master: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        n1 = x1.size(1)
        x = torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1)  # (B, N, D_in)
        if master is None:
            master = x.mean(dim=1, keepdim=True)
        x = self.input_drop(x)

        att = self._node_attention(x, n1)  # (B, N, N)
        master = self._update_master(x, master)
        x = self.proj_with_att(att @ x) + self.proj_without_att(x)
        x = F.selu(self.bn(x.transpose(1, 2)).transpose(1, 2))
        return x[:, :n1], x[:, n1:], master

    def _node_attention(self, x: Tensor, n1: int) -> Tensor:
        """(B, N, D_in) -> (B, N, N), softmax over neighbours j of each node i."""
        h = torch.tanh(self.att_proj(pairwise_products(x)))  # (B, N, N, D_out)
        # Score each block with its own vector; assembled by concatenation rather than by
        # writing into slices of a zero board, which keeps the ONNX graph simple.
        top = torch.cat([h[:, :n1, :n1] @ self.att_weight11, h[:, :n1, n1:] @ self.att_weight12], 2)
        bottom = torch.cat(
            [h[:, n1:, :n1] @ self.att_weight12, h[:, n1:, n1:] @ self.att_weight22], 2
        )
        scores = torch.cat([top, bottom], dim=1).squeeze(-1)
        att = F.softmax(scores / self.temp, dim=-1)
        if self.store_attention:
            self.last_attention = att.detach()
        return att

    def _update_master(self, x: Tensor, master: Tensor) -> Tensor:
        """Master node attends to every node: (B, N, D_in), (B|1, 1, D_in) -> (B, 1, D_out)."""
        scores = torch.tanh(self.att_projM(x * master)) @ self.att_weightM  # (B, N, 1)
        att = F.softmax(scores / self.temp, dim=1)
        if self.store_attention:
            self.last_master_attention = att.squeeze(-1).detach()
        return self.proj_with_attM(att.transpose(1, 2) @ x) + self.proj_without_attM(master)


class GraphPool(nn.Module):
    """Keep the top ``ratio`` of nodes by a learned score: (B, N, D) -> (B, N', D).

    N' = max(int(N * ratio), 1), a constant for a given input length. Kept nodes are scaled by
    their sigmoid score and ordered by decreasing score. With ``store_attention`` set,
    ``last_indices`` (B, N') keeps which input nodes were kept.
    """

    def __init__(self, ratio: float, in_dim: int, p: float = 0.3) -> None:
        super().__init__()
        self.k = ratio
        self.proj = nn.Linear(in_dim, 1)
        self.drop = nn.Dropout(p=p) if p > 0 else nn.Identity()
        self.store_attention = False
        self.last_indices: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        scores = torch.sigmoid(self.proj(self.drop(h)))  # (B, N, 1)
        n_keep = max(int(h.shape[1] * self.k), 1)
        idx = torch.topk(scores, n_keep, dim=1).indices  # (B, N', 1)
        if self.store_attention:
            self.last_indices = idx.squeeze(-1).detach()
        return torch.gather(h * scores, 1, idx.expand(-1, -1, h.shape[2]))


# ---------------------------------------------------------------------------------------------
# The model


class AASIST(nn.Module):
    """AASIST / AASIST-L: (B, T) 16 kHz float32 waveform -> (B, 2) logits, index 1 = bona fide.

    Any T long enough for the encoder works; the published models were trained on
    ``config.nb_samp`` (64600) samples, repeat-padded from shorter audio.
    """

    def __init__(self, config: AASISTConfig | Mapping | None = None) -> None:
        super().__init__()
        if not isinstance(config, AASISTConfig):
            config = AASISTConfig.from_dict(config or {})
        self.config = config
        filts, gat_dims = config.filts, config.gat_dims
        ratios, temps = config.pool_ratios, config.temperatures
        enc_dim = filts[-1][-1]

        self.conv_time = SincConv(filts[0], config.first_conv)
        self.first_bn = nn.BatchNorm2d(1)
        self.drop = nn.Dropout(0.5)  # on last_hidden
        self.drop_way = nn.Dropout(0.2)  # on each branch's nodes and master
        self.encoder = nn.Sequential(
            *[
                nn.Sequential(ResidualBlock(*f, first=i == 0))
                for i, f in enumerate([*filts[1:], filts[4], filts[4]])
            ]
        )

        # Learned positional embedding of the spectral nodes (70 filters -> 23 after pooling),
        # and the two branches' master nodes.
        self.pos_S = nn.Parameter(torch.randn(1, filts[0] // 3, enc_dim))
        self.master1 = nn.Parameter(torch.randn(1, 1, gat_dims[0]))
        self.master2 = nn.Parameter(torch.randn(1, 1, gat_dims[0]))

        self.GAT_layer_S = GraphAttentionLayer(enc_dim, gat_dims[0], temperature=temps[0])
        self.GAT_layer_T = GraphAttentionLayer(enc_dim, gat_dims[0], temperature=temps[1])
        self.HtrgGAT_layer_ST11 = HtrgGraphAttentionLayer(gat_dims[0], gat_dims[1], temps[2])
        self.HtrgGAT_layer_ST12 = HtrgGraphAttentionLayer(gat_dims[1], gat_dims[1], temps[2])
        self.HtrgGAT_layer_ST21 = HtrgGraphAttentionLayer(gat_dims[0], gat_dims[1], temps[2])
        self.HtrgGAT_layer_ST22 = HtrgGraphAttentionLayer(gat_dims[1], gat_dims[1], temps[2])

        self.pool_S = GraphPool(ratios[0], gat_dims[0], 0.3)
        self.pool_T = GraphPool(ratios[1], gat_dims[0], 0.3)
        self.pool_hS1 = GraphPool(ratios[2], gat_dims[1], 0.3)
        self.pool_hT1 = GraphPool(ratios[2], gat_dims[1], 0.3)
        self.pool_hS2 = GraphPool(ratios[2], gat_dims[1], 0.3)
        self.pool_hT2 = GraphPool(ratios[2], gat_dims[1], 0.3)

        self.out_layer = nn.Linear(5 * gat_dims[1], 2)

        # The reference's "freq_aug" training option: in train mode, zero a random band of
        # sinc filters on every forward pass. A plain attribute rather than a forward()
        # argument, so that forward(x) is the whole exported signature.
        self.freq_aug = False

    def forward(self, x: Tensor) -> Tensor:
        """(B, T) waveform -> (B, 2) logits."""
        return self.forward_features(x)[1]

    def forward_features(self, x: Tensor, freq_aug: bool | None = None) -> tuple[Tensor, Tensor]:
        """(B, T) waveform -> (last_hidden (B, 5 * gat_dims[1]), logits (B, 2)).

        ``freq_aug`` zeroes a random band of sinc filters for this call (the reference's
        ``Freq_aug``); by default it follows ``self.freq_aug`` in train mode and is off in eval
        mode. In train mode ``last_hidden`` is returned after its dropout, as in the reference.
        """
        if freq_aug is None:
            freq_aug = self.freq_aug and self.training
        e = self.encoder(self.front_end(x, freq_aug)).abs()  # (B, D, S, T)
        return self.readout(e)

    def front_end(self, x: Tensor, freq_aug: bool = False) -> Tensor:
        """(B, T) waveform -> (B, 1, C/3, T'/3): sinc filterbank, |.|, 3x3 max-pool, BN, SELU."""
        x = self.conv_time(x.unsqueeze(1), mask=freq_aug)  # (B, C, T')
        x = F.max_pool2d(x.abs().unsqueeze(1), (3, 3))  # (B, 1, C/3, T'/3)
        return F.selu(self.first_bn(x), inplace=True)

    def readout(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """|encoder output| (B, D, S, T) -> (last_hidden, logits): the graph-attention head."""
        # Spectral and temporal graphs.
        e_S = e.amax(dim=3).transpose(1, 2) + self.pos_S  # (B, S, D)
        out_S = self.pool_S(self.GAT_layer_S(e_S))
        e_T = e.amax(dim=2).transpose(1, 2)  # (B, T, D)
        out_T = self.pool_T(self.GAT_layer_T(e_T))

        # Two branches of stacked heterogeneous graph attention.
        T1, S1, m1 = self._branch(
            out_T, out_S, self.master1, self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12,
            self.pool_hT1, self.pool_hS1,
        )  # fmt: skip
        T2, S2, m2 = self._branch(
            out_T, out_S, self.master2, self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22,
            self.pool_hT2, self.pool_hS2,
        )  # fmt: skip
        T1, T2, S1, S2, m1, m2 = (self.drop_way(t) for t in (T1, T2, S1, S2, m1, m2))
        out_T, out_S, master = torch.maximum(T1, T2), torch.maximum(S1, S2), torch.maximum(m1, m2)

        # Readout.
        last_hidden = torch.cat(
            [
                out_T.abs().amax(dim=1),
                out_T.mean(dim=1),
                out_S.abs().amax(dim=1),
                out_S.mean(dim=1),
                master.squeeze(1),
            ],
            dim=1,
        )
        last_hidden = self.drop(last_hidden)
        return last_hidden, self.out_layer(last_hidden)

    @staticmethod
    def _branch(
        nodes_T: Tensor,
        nodes_S: Tensor,
        master: Tensor,
        layer1: HtrgGraphAttentionLayer,
        layer2: HtrgGraphAttentionLayer,
        pool_T: GraphPool,
        pool_S: GraphPool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """HS-GAL, graph pooling, then a second HS-GAL added residually."""
        T, S, master = layer1(nodes_T, nodes_S, master=master)
        S = pool_S(S)
        T = pool_T(T)
        T_aug, S_aug, master_aug = layer2(T, S, master=master)
        return T + T_aug, S + S_aug, master + master_aug

    # -- visualisation -------------------------------------------------------------------------

    def record_attention(self, enabled: bool = True) -> AASIST:
        """Make every graph layer keep its last attention map (and every pool its kept nodes)."""
        for m in self.modules():
            if isinstance(m, GraphAttentionLayer | HtrgGraphAttentionLayer | GraphPool):
                m.store_attention = enabled
                if not enabled:
                    for attr in ("last_attention", "last_master_attention", "last_indices"):
                        if hasattr(m, attr):
                            setattr(m, attr, None)
        return self

    def attention_maps(self) -> dict[str, Tensor]:
        """The maps kept since ``record_attention()``: {"GAT_layer_S": (B, N, N), ...,
        "HtrgGAT_layer_ST11.master": (B, N), "pool_S.indices": (B, N'), ...}."""
        maps: dict[str, Tensor] = {}
        for name, m in self.named_modules():
            for suffix, attr in [
                ("", "last_attention"),
                (".master", "last_master_attention"),
                (".indices", "last_indices"),
            ]:
                value = getattr(m, attr, None)
                if isinstance(value, Tensor):
                    maps[name + suffix] = value
        return maps
