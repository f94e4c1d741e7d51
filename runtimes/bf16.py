"""The ``bf16`` fast path: AASIST's residual encoder in bfloat16, compiled by torch inductor.

``compile_bf16(model)`` (``BF16AASIST``) is **lossy**, for PyTorch (``TorchRuntime``). The
front-end and the graph-attention head stay in float32 (the 129-tap sinc filterbank applied by
FFT, ~3x fewer operations than the direct convolution); the residual encoder runs in bfloat16
(BatchNorm folded in float64 first) on oneDNN's AVX512-BF16 kernels, twice the fp32 FMA rate;
inductor (with freezing) fuses the SELU / add / max-pool work around them, and windows go one by
one, which keeps the first block's activations in cache. Logits move by ~0.01 (median), up to
~0.2 (speed in docs/benchmarks.md). Needs a C++ compiler on the machine; the first call compiles
(inductor keeps the code in its on-disk cache, so a restart recompiles in seconds).
``bf16_runtime`` runs it as a start-up fast path; ``runtimes.reuse`` compiles its encoder alone
(``BF16Encoder``) for each chunk length.

Tried and dropped: splitting the first blocks into time chunks to stay in cache (no gain);
dynamic-shape compilation (over 15 minutes, then slower).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voicescreen.models.cpu import cpu_info
from voicescreen.runtimes.local import TorchRuntime
from voicescreen.runtimes.plan import FAST_PATHS, FastPathError, check_fast_path, compiler_problem

if TYPE_CHECKING:
    from voicescreen.models.aasist import AASIST, ResidualBlock
    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def selu_exp(x: Tensor) -> Tensor:
    """SELU evaluated in float32 with ``exp`` (not ``expm1``), result in ``x``'s dtype.

    Inductor's vectorised expm1 made the SELU after the first block's conv1 take a third of
    that block's time; exp is ~3x cheaper. Evaluating in float32 and rounding once matches
    what the compiled kernel does (eager bfloat16 would round after every op).
    """
    x32 = x.float()
    negative = (SELU_SCALE * SELU_ALPHA) * (torch.exp(torch.clamp(x32, max=0.0)) - 1.0)
    return torch.where(x32 > 0, SELU_SCALE * x32, negative).to(x.dtype)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution, computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale[:, None, None, None]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    return weight, bias


class FoldedBlock(nn.Module):
    """A residual block in eval mode, BatchNorm folded into ``conv1``, weights in ``dtype``."""

    def __init__(self, block: ResidualBlock, dtype: torch.dtype) -> None:
        super().__init__()
        w1, b1 = _fold_bn(block.conv1, block.bn2)
        self.register_buffer("w1", w1.to(dtype))
        self.register_buffer("b1", b1.to(dtype))
        self.register_buffer("w2", block.conv2.weight.detach().to(dtype))
        self.register_buffer("b2", block.conv2.bias.detach().to(dtype))
        ds = block.conv_downsample
        self.downsample = ds is not None
        if ds is not None:
            self.register_buffer("wd", ds.weight.detach().to(dtype))
            self.register_buffer("bd", ds.bias.detach().to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        out = selu_exp(F.conv2d(x, self.w1, self.b1, padding=(1, 1)))
        out = F.conv2d(out, self.w2, self.b2, padding=(0, 1))
        identity = F.conv2d(x, self.wd, self.bd, padding=(0, 1)) if self.downsample else x
        return F.max_pool2d(out + identity, (1, 3))


class FFTSincFrontEnd(nn.Module):
    """AASIST's front-end (sinc filterbank, |.|, 3x3 max-pool, BN, SELU) with the 129-tap
    filterbank applied by FFT in float32: ~0.2 GFLOP instead of 0.58 GMAC of direct convolution.
    Only the 3 * (n_filters // 3) filters and the output samples that the max-pool keeps are
    computed. Not bit-exact (different rounding): ~1e-6 relative."""

    def __init__(self, model: AASIST, input_samples: int) -> None:
        super().__init__()
        filters = model.conv_time.band_pass.double()  # (C, K)
        n_filters, taps = filters.shape
        keep = 3 * (n_filters // 3)
        self.out_len = 3 * ((input_samples - taps + 1) // 3)
        self.n_fft = 1 << (input_samples - 1).bit_length()  # >= input: circular wrap stays out
        # conv1d is a correlation: multiply by the conjugate spectrum of the filter.
        spectrum = torch.fft.rfft(filters[:keep], n=self.n_fft).conj()
        self.register_buffer("spectrum_re", spectrum.real.float())
        self.register_buffer("spectrum_im", spectrum.imag.float())
        self.bn = model.first_bn

    def forward(self, x: Tensor) -> Tensor:
        X = torch.view_as_real(torch.fft.rfft(x, n=self.n_fft)).unsqueeze(1)  # (B, 1, F, 2)
        xr, xi = X[..., 0], X[..., 1]
        sr, si = self.spectrum_re, self.spectrum_im
        # The complex product in real arithmetic, so that the compiler fuses it into one pass.
        product = torch.stack([xr * sr - xi * si, xr * si + xi * sr], dim=-1)  # (B, C', F, 2)
        y = torch.fft.irfft(torch.view_as_complex(product), n=self.n_fft)[..., : self.out_len]
        y = F.max_pool2d(y.abs().unsqueeze(1), (3, 3))
        return selu_exp(self.bn(y))


class BF16AASIST(nn.Module):
    """AASIST with its residual encoder in bfloat16 (or ``dtype``): (B, T) -> (B, 2) float32.

    The front-end and the graph-attention head run in float32 (the front-end's filterbank by FFT
    when ``fft_front_end``, else the model's own convolution); the encoder's weights are copied
    (folded), so later changes to ``model`` are not seen.
    """

    def __init__(
        self,
        model: AASIST,
        dtype: torch.dtype = torch.bfloat16,
        *,
        fft_front_end: bool = True,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.dtype = dtype
        self.front = FFTSincFrontEnd(model, model.config.nb_samp) if fft_front_end else None
        self.blocks = nn.ModuleList(FoldedBlock(seq[0], dtype) for seq in model.encoder)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if self.front is not None and x.shape[-1] == self.model.config.nb_samp:
            h = self.front(x)
        else:
            h = self.model.front_end(x)
        h = h.to(self.dtype)
        for block in self.blocks:
            h = block(h)
        return self.model.readout(h.float().abs())[1]


class BF16Encoder(nn.Module):
    """``BF16AASIST``'s front end and residual encoder alone, for ``samples``-sample inputs:
    (B, samples) -> |encoder output| (B, channels, spectral nodes, frames) in float32, the
    features ``runtimes.reuse`` assembles windows from. ``blocks``: the bf16 blocks of a
    ``BF16AASIST`` (shared: one copy of the weights for every input length)."""

    def __init__(self, model: AASIST, samples: int, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.front = FFTSincFrontEnd(model, samples)
        self.blocks = blocks
        self.dtype = next(iter(blocks.buffers())).dtype
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self.front(x).to(self.dtype)
        for block in self.blocks:
            h = block(h)
        return h.float().abs()


def compile_bf16_encoder(model: AASIST, samples: int, blocks: nn.ModuleList) -> nn.Module:
    """``BF16Encoder`` compiled like ``compile_bf16`` for one input length (the first call
    compiles: ~20 s on 2 cores for the first length, ~8 s for each further one when inductor's
    cache is cold)."""
    return _Frozen(BF16Encoder(model, samples, blocks)).eval()


class _Frozen(nn.Module):
    """Runs a ``torch.compile``d module window by window, with inductor's freezing on.

    One window at a time is the fastest here: a batch-1 window's activations (~33 MB in bf16 for
    the first block) mostly stay in the L3 cache, a batch of 16 streams ~0.5 GB through memory
    per layer (AASIST: ~14 windows/s one by one, ~9 at batch 4). It also means one compiled
    shape, (1, samples), serves every batch size. Freezing (constant weights: oneDNN weight
    pre-packing, fused post-ops) is read from inductor's global config when a call compiles;
    ``torch.compile(options={"freezing": True})`` does not reach that pass.
    """

    instances = 0  # made in this process

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        # Dynamo keeps at most ``recompile_limit`` (8) compiled variants per code object, and
        # every instance of one module class shares its ``forward``: past that it runs the
        # module eagerly, silently (bf16 eager is ~7x slower). Encoder reuse compiles 8 input
        # lengths per model, and a server may hold several models: make room for each one.
        from torch._dynamo import config as dynamo

        _Frozen.instances += 1
        room = _Frozen.instances + 8
        dynamo.recompile_limit = max(dynamo.recompile_limit, room)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * room)
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, x: Tensor) -> Tensor:
        from torch._inductor import config

        with config.patch(freezing=True):
            return torch.cat([self.compiled(x[i : i + 1].contiguous()) for i in range(len(x))])


def compile_bf16(model: AASIST) -> nn.Module:
    """``BF16AASIST(model)`` compiled by inductor with freezing (weights pre-packed for oneDNN).

    Call it under ``torch.inference_mode()`` (``TorchRuntime`` does). The first call compiles
    (about a minute on 2 cores; inductor keeps the code in its on-disk cache, so a restart
    recompiles in seconds); batches are run window by window through that one compiled shape.
    """
    return _Frozen(BF16AASIST(model)).eval()


# --- as a runtime --------------------------------------------------------------------------------


def bf16_failed(bundle: Bundle, cause: str) -> FastPathError:
    """The error for a bf16 encoder that cannot be compiled here, with ``cause`` and the
    alternatives."""
    return FastPathError(
        f"{bundle.name}: --fast-path bf16 could not compile the bfloat16 encoder: {cause}. It "
        "needs a working C++ compiler for torch inductor (g++ or clang++ on the PATH, or CXX "
        "naming one). Alternatives: --fast-path exact with --backend onnx (exact, 10-18 % "
        "faster), an int8 bundle from `voicescreen optimize --int8` (lossy, ~1.6x), or no "
        "--fast-path"
    )


def bf16_compile_failed(bundle: Bundle, e: Exception) -> FastPathError:
    """``bf16_failed`` naming the root cause of a failed compile (inductor wraps it)."""
    root: BaseException = e
    while root.__cause__ is not None:
        root = root.__cause__
    first = (str(root).strip().splitlines() or [""])[0][:300]
    return bf16_failed(bundle, f"{type(root).__name__}: {first}")


def check_compiler(bundle: Bundle) -> None:
    """Raise ``bf16_failed`` where inductor finds no C++ compiler, and log that ``--fast-path
    bf16`` will be slow here where the CPU lacks bfloat16 kernels."""
    problem = compiler_problem()
    if problem:
        raise bf16_failed(bundle, problem)
    cpu = cpu_info()
    if not cpu.native_bf16:
        log.warning(
            "%s: this CPU has no AVX-512 BF16 or AMX (%s): --fast-path bf16 runs on emulated "
            "kernels here, slower than --fast-path exact, and compiles for minutes",
            bundle.name,
            cpu.describe(),
        )


def bf16_runtime(
    bundle: Bundle,
    *,
    device: str | None = None,
    threads: int | None = None,
) -> TorchRuntime:
    """``compile_bf16`` of ``bundle``'s model in a ``TorchRuntime`` on the CPU, compiled now (one
    window through it) so that a missing compiler fails here, as ``FastPathError``."""
    from voicescreen.models.bundle import default_check_input

    check_fast_path(bundle, "bf16", "torch")
    if device not in (None, "cpu"):
        raise FastPathError(
            f"--fast-path bf16 is a CPU path (AVX512-BF16), not for {device}: leave out "
            "--fast-path to run the fp32 model there"
        )
    check_compiler(bundle)
    start = time.perf_counter()
    log.info("%s: compiling the bf16 encoder (20-60 s, seconds with a warm cache)", bundle.name)
    model = compile_bf16(bundle.build_torch())
    runtime = TorchRuntime(
        model,
        bundle.score.convention,
        bundle.input_samples,
        name=bundle.name,
        device="cpu",
        threads=threads,
    )
    try:
        with warnings.catch_warnings():  # the FFT front-end stays complex, outside the kernels
            warnings.filterwarnings("ignore", "Torchinductor does not support code generation")
            runtime(default_check_input(bundle.input_samples)[:1])
    except Exception as e:  # inductor wraps a failed compile in BackendCompilerFailed & co.
        raise bf16_compile_failed(bundle, e) from e
    runtime.fast_path = "bf16"
    log.info(
        "%s: fast path bf16: %s, compiled in %.0f s",
        bundle.name,
        FAST_PATHS["bf16"],
        time.perf_counter() - start,
    )
    return runtime
