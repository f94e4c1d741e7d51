"""Fine-tune AASIST with its front end and first encoder blocks frozen, on cached features.

Why: a forward pass of AASIST(-L) spends ~94 % of its arithmetic in the sinc front end and the
first residual blocks, which run on the full-resolution (23 x 21490) map; the last blocks and
the graph-attention head see a map 81x smaller in time. Fine-tuning from the official weights on
a small corpus changes little in those first layers, so with ``frozen_blocks = k`` in the recipe:

1. the front end and encoder blocks ``0 .. k-1`` keep their initial weights (BatchNorm statistics
   included) and are run **once** per training window: ``feature_copies`` windows per clip, copy 0
   the clip's random crop as it is, copies ``1 ..`` that crop through the recipe's ``augment``
   (codecs, noise, RawBoost ...), each drawn with ``rng_for(seed, copy, index)`` exactly as the
   full trainer draws epoch ``copy``;
2. the features go to ``OUT/features/`` (float16 ``.npy``, memory-mapped, so a large corpus
   need not fit in memory) under a key of everything that determines them (initial weights,
   ``k``, clips, seed, augmentation), so ``--resume`` and later runs with other optimiser
   settings reuse them;
3. every epoch passes over all cached windows, shuffled, and trains blocks ``k ..`` and the head;
   dev figures come from cached first windows of the dev split, clean and through every
   calibration channel.

The exported model is the whole network (frozen part unchanged), so a bundle trained this way is
an ordinary bundle. On CPU the prefix runs in ONNX Runtime (about 10x PyTorch eager here), on
CUDA in PyTorch. The AASIST family has this mode, and so does a model with a fixed frozen part
(a pretrained encoder, ``models/whisper.py``): it defines ``frozen_features(x)`` and
``head_logits(features)``, and any ``k`` > 0 means "train on its cached frozen features".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicescreen.audio import load_audio
from voicescreen.models.registry import get_architecture
from voicescreen.train.checkpoints import EpochTally, TrainResult, end_epoch, restore_checkpoint
from voicescreen.train.data import Utterance
from voicescreen.train.dataset import ClipDataset, files_digest, mix_seed
from voicescreen.train.evaluate import first_window
from voicescreen.train.metrics import eer
from voicescreen.train.optim import (
    adam,
    cross_entropy,
    learning_rate,
    set_learning_rate,
    take_step,
)
from voicescreen.train.recipes import Recipe
from voicescreen.train.start import build_model, resolve_device, set_deterministic

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1  # bump when the cached features' meaning changes
PREFIX_BATCH = 8


def check_frozen(recipe: Recipe, model: nn.Module) -> int:
    """The number of frozen encoder blocks, validated against the model."""
    k = recipe.frozen_blocks
    if hasattr(model, "frozen_features"):  # its frozen part is fixed: k only switches this on
        if k < 1:
            raise ValueError(f"frozen_blocks must be >= 1 for {recipe.architecture}")
        return k
    if get_architecture(recipe.architecture).cls != "AASIST":
        raise ValueError(f"frozen_blocks works for the AASIST family, not {recipe.architecture}")
    n = len(model.encoder)
    if not 0 < k < n:
        raise ValueError(f"frozen_blocks must be between 1 and {n - 1} for {recipe.architecture}")
    return k


def prefix_module(model: nn.Module, k: int) -> nn.Module:
    """(B, T) waveform -> the encoder's input to block ``k`` (the frozen part)."""
    from torch import nn

    class Prefix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            if hasattr(self.model, "frozen_features"):
                return self.model.frozen_features(x)
            return self.model.encoder[:k](self.model.front_end(x))

    return Prefix().eval()


def head_logits(model: nn.Module, k: int, features: torch.Tensor) -> torch.Tensor:
    """Logits from the frozen part's output: blocks ``k ..``, |.|, the graph-attention head."""
    if hasattr(model, "head_logits"):
        return model.head_logits(features)
    return model.readout(model.encoder[k:](features).abs())[1]


def trainable_parameters(model: nn.Module, k: int) -> list[torch.nn.Parameter]:
    """The parameters after the frozen part; the others get ``requires_grad = False``."""
    if hasattr(model, "frozen_features"):  # its frozen part holds buffers, no parameters
        return [p.requires_grad_(True) for p in model.parameters()]
    frozen = {
        id(p) for m in (model.conv_time, model.first_bn, model.encoder[:k]) for p in m.parameters()
    }
    out = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if p.requires_grad:
            out.append(p)
    return out


def prefix_runner(
    model: nn.Module, k: int, samples: int, device: torch.device
) -> Callable[[np.ndarray], np.ndarray]:
    """A function (B, samples) float32 windows -> float16 features of the frozen part."""
    import torch

    prefix = prefix_module(model, k)
    if device.type != "cpu":

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                f = prefix.to(device)(torch.from_numpy(x).to(device))
            return f.to(torch.float16).cpu().numpy()

        return run_torch

    import io
    import warnings

    import onnxruntime as ort

    example = torch.zeros(2, samples)
    example[:, ::97] = 0.1
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            prefix,
            (example,),
            buf,
            input_names=["waveform"],
            output_names=["features"],
            dynamic_axes={"waveform": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    threads = torch.get_num_threads()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def run_onnx(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"waveform": np.ascontiguousarray(x, np.float32)})[0].astype(
            np.float16
        )

    return run_onnx


class FeatureCache:
    """Cached frozen-part features of window sets, in ``folder`` as ``NAME.npy`` + ``NAME.json``."""

    def __init__(
        self, folder: Path, make_runner: Callable[[], Callable[[np.ndarray], np.ndarray]], key: dict
    ) -> None:
        self.folder = folder
        self.make_runner = make_runner  # called on the first miss (an ONNX export on CPU)
        self.run: Callable[[np.ndarray], np.ndarray] | None = None
        self.key = key
        folder.mkdir(parents=True, exist_ok=True)

    def get(
        self,
        name: str,
        n: int,
        window: Callable[[int], np.ndarray],
        *,
        progress: bool = False,
        extra: dict | None = None,
    ) -> np.ndarray:
        """The features of windows ``window(0) .. window(n-1)``, computed unless cached under
        the same key; a read-only memory map."""
        from tqdm import tqdm

        key = {**self.key, **(extra or {}), "name": name, "n": n}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        path, meta = self.folder / f"{name}.npy", self.folder / f"{name}.json"
        if path.exists() and meta.exists():
            try:
                if json.loads(meta.read_text()).get("digest") == digest:
                    log.info("features %s: cached (%s)", name, path)
                    return np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                pass
        t0 = time.time()
        meta.unlink(missing_ok=True)
        path.unlink(missing_ok=True)  # a new file: a cache hard-linked from another run stays
        if self.run is None:
            self.run = self.make_runner()
        out = None
        with tqdm(total=n, desc=f"features {name}", unit="win", disable=not progress) as bar:
            for start in range(0, n, PREFIX_BATCH):
                idx = range(start, min(n, start + PREFIX_BATCH))
                f = self.run(np.stack([window(i) for i in idx]))
                if out is None:
                    out = np.lib.format.open_memmap(
                        path, mode="w+", dtype=np.float16, shape=(n, *f.shape[1:])
                    )
                out[start : start + len(idx)] = f
                bar.update(len(idx))
        if out is None:
            raise ValueError(f"features {name}: no windows")
        out.flush()
        del out
        meta.write_text(json.dumps({"digest": digest, "key": key}, indent=2) + "\n")
        log.info("features %s: %d windows in %.0f s", name, n, time.time() - t0)
        return np.load(path, mmap_mode="r")


def feature_cache(
    folder: Path,
    recipe: Recipe,
    model: nn.Module,
    origin: dict,
    k: int,
    samples: int,
    device: torch.device,
) -> FeatureCache:
    """The cache of the frozen part's features in ``folder``, keyed by everything that
    determines them (architecture, model config, initial weights, frozen blocks, window)."""
    key = {
        "format": FEATURE_FORMAT,
        "architecture": recipe.architecture,
        "model": recipe.model_config(),
        "init": origin.get("init_sha256", f"random seed {recipe.seed}"),
        "frozen_blocks": k,
        "samples": samples,
    }
    if getattr(model, "pretrained", None):  # frozen weights from elsewhere (an extra)
        key["pretrained"] = model.pretrained.get("sha256")
    return FeatureCache(folder, lambda: prefix_runner(model, k, samples, device), key)


def _batches(features: np.ndarray, order: np.ndarray, size: int):
    for i in range(0, len(order), size):
        idx = np.sort(order[i : i + size])
        yield idx, np.asarray(features[idx], dtype=np.float32)


def head_scores(model: nn.Module, k: int, features: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, 2) logits of cached features, in eval mode."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for _, f in _batches(features, np.arange(len(features)), batch):
            out.append(head_logits(model, k, torch.from_numpy(f)).float())
    return torch.cat(out).numpy()


def train_frozen(
    recipe: Recipe,
    train_utts: Sequence[Utterance],
    dev_utts: Sequence[Utterance],
    out: Path,
    resume: bool,
    stop_after: int | None,
    device_name: str | None,
    progress: bool,
):
    """The ``frozen_blocks`` training loop; returns a ``TrainResult`` like the full trainer."""
    import torch
    from tqdm import tqdm

    device = resolve_device(device_name)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    set_deterministic(recipe.deterministic, device)
    arch = get_architecture(recipe.architecture)
    samples = arch.input_samples(recipe.model_config())
    model, origin = build_model(recipe, device)
    k = check_frozen(recipe, model)
    params = trainable_parameters(model, k)
    log.info(
        "frozen: front end + %d encoder blocks; training %d of %d parameters",
        k,
        sum(p.numel() for p in params),
        sum(p.numel() for p in model.parameters()),
    )
    optimizer = adam(params, recipe)
    criterion = cross_entropy(recipe, device)

    # -- the cache ------------------------------------------------------------------------------
    cache = feature_cache(out / "features", recipe, model, origin, k, samples, device)
    plain = ClipDataset(train_utts, samples, crop=recipe.crop, augment=None, seed=recipe.seed)
    augmented = ClipDataset(
        train_utts, samples, crop=recipe.crop, augment=recipe.augment, seed=recipe.seed
    )
    # One cached set per corpus folder and copy, so that adding a corpus (--extra-train) leaves
    # the others' features valid. Clip i of the whole list keeps its rng_for(seed, copy, i).
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(train_utts):
        groups.setdefault(str(u.path.parent.resolve()), []).append(i)
    where = np.zeros((len(train_utts), 2), dtype=np.int64)  # (group, position) of each clip
    copies: list[list[np.ndarray]] = [[] for _ in range(recipe.feature_copies)]
    for g, (folder, idx) in enumerate(groups.items()):
        where[idx, 0], where[idx, 1] = g, np.arange(len(idx))
        tag = hashlib.sha256(folder.encode()).hexdigest()[:8]
        members = [train_utts[i] for i in idx]
        clips = {
            "files": hashlib.sha256("\n".join(u.file for u in members).encode()).hexdigest(),
            "indices": hashlib.sha256(np.asarray(idx).tobytes()).hexdigest()[:16],
            "seed": recipe.seed,
            "crop": recipe.crop,
        }
        for c in range(recipe.feature_copies):
            source = plain if c == 0 else augmented
            source.set_epoch(c)
            extra = {**clips, "copy": c, "folder": folder}
            if c > 0:
                extra["augment"] = recipe.augment.to_dict()

            def window(j: int, source=source, idx=idx) -> np.ndarray:
                return source.window(idx[j])

            copies[c].append(
                cache.get(f"train-{tag}-{c}", len(idx), window, progress=progress, extra=extra)
            )
    targets = torch.tensor([u.target for u in train_utts] * recipe.feature_copies)
    n_train = len(targets)

    dev_targets = np.array([u.target for u in dev_utts])
    dev_channels = list(dict.fromkeys(["clean", *recipe.calibration]))
    dev_files = files_digest(dev_utts)
    dev_features = {}
    for ch in dev_channels:

        def dev_window(i: int, ch: str = ch) -> np.ndarray:
            return first_window(load_audio(dev_utts[i].path), samples, ch)

        dev_features[ch] = cache.get(
            f"dev-{ch}", len(dev_utts), dev_window, progress=progress, extra={"files": dev_files}
        )

    def gather(order: np.ndarray) -> torch.Tensor:
        n = len(train_utts)
        rows = []
        for i in order:
            g, pos = where[i % n]
            rows.append(np.asarray(copies[i // n][g][pos], np.float32))
        return torch.from_numpy(np.stack(rows))

    # -- resume ---------------------------------------------------------------------------------
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    history, start_epoch, step = (
        restore_checkpoint(out, recipe, model, optimizer, None) if resume else ([], 1, 0)
    )

    last = recipe.epochs if stop_after is None else min(recipe.epochs, stop_after)
    for epoch in range(start_epoch, last + 1):
        t0 = time.time()
        torch.manual_seed(mix_seed(recipe.seed, epoch, 2))  # dropout
        order = np.random.default_rng(mix_seed(recipe.seed, epoch, 1)).permutation(n_train)
        model.train()
        tally = EpochTally()
        bar = tqdm(
            range(0, n_train, recipe.batch_size),
            desc=f"epoch {epoch}/{recipe.epochs}",
            unit="batch",
            disable=not progress,
            dynamic_ncols=True,
        )
        for start in bar:
            idx = order[start : start + recipe.batch_size]
            x = gather(idx).to(device)
            y = targets[idx].to(device)
            lr = learning_rate(recipe, step, epoch, total_steps)
            set_learning_rate(optimizer, lr)
            logits = head_logits(model, k, x)
            loss = criterion(logits.float(), y)
            take_step(optimizer, loss, params, recipe, f"epoch {epoch}, step {step}")
            step += 1
            tally.add(loss, logits, y)
            bar.set_postfix(**tally.postfix(lr))
        bar.close()
        end_epoch(
            out,
            recipe,
            epoch=epoch,
            step=step,
            lr=lr,
            tally=tally,
            started=t0,
            history=history,
            model=model,
            optimizer=optimizer,
            scaler=None,
            dev=lambda: _dev_figures(model, k, dev_features, dev_targets, criterion),
        )

    for p in model.parameters():
        p.requires_grad_(True)
    done = history[-1]["epoch"] if history else 0
    origin = {**origin, "frozen_blocks": str(k)}
    return TrainResult(
        out, recipe, model.cpu().eval(), history, done, done >= recipe.epochs, origin=origin
    )


def _dev_figures(
    model: nn.Module,
    k: int,
    features: dict[str, np.ndarray],
    targets: np.ndarray,
    criterion,
) -> dict[str, float]:
    """Dev loss/accuracy/EER on the clean first windows (as the full trainer), plus the EER
    of each other channel and of all channels pooled (what calibration will see)."""
    import torch

    is_bona = targets == 1
    row: dict[str, float] = {}
    pooled = []
    for ch, f in features.items():
        logits = head_scores(model, k, f)
        score = logits[:, 1] - logits[:, 0]
        pooled.append(score)
        if ch == "clean":
            row["dev_loss"] = float(criterion(torch.from_numpy(logits), torch.from_numpy(targets)))
            row["dev_acc"] = float((logits.argmax(axis=1) == targets).mean())
            row["dev_eer"] = eer(score[is_bona], score[~is_bona])[0]
        else:
            row[f"dev_eer_{ch}"] = eer(score[is_bona], score[~is_bona])[0]
    if len(pooled) > 1:
        s = np.concatenate(pooled)
        b = np.concatenate([is_bona] * len(pooled))
        row["dev_eer_pooled"] = eer(s[b], s[~b])[0]
    return row


__all__ = [
    "FeatureCache",
    "check_frozen",
    "head_logits",
    "head_scores",
    "prefix_module",
    "prefix_runner",
    "train_frozen",
    "trainable_parameters",
]
