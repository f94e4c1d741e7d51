#!/usr/bin/env bash
# Run the whole test suite on a machine that may have nothing: system packages, the virtual
# environment (scripts/setup.sh), lint, then pytest. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# System packages the tests drive for real (installed only where missing; needs root or sudo).
need_apt=()
# chromium: the demo page test; pulseaudio + ALSA's pulse plugin + PortAudio: the monitor's real
# audio device; tmux: the monitor's terminal view; g++: torch inductor (--fast-path bf16);
# espeak-ng, festival and its voices: the corpus build's spoofs (the 8 kHz kal/ked voices conflict
# with the 16 kHz ones and are fetched by `apt-get download` instead).
apt_packages=(chromium pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 tmux g++
    espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-czech-dita festvox-czech-krb
    festvox-czech-machac festvox-czech-ph festvox-suopuhe-lj festvox-suopuhe-mv festvox-itapc16k
    festvox-italp16k festvox-ru festvox-hi-nsk festvox-mr-nsk festvox-te-nsk festvox-ca-ona-hts)
for pkg in "${apt_packages[@]}"; do
    # installed, not just known to dpkg (a removed package keeps "deinstall ... config-files")
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] ||
        need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
    sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    echo "test: installing ${need_apt[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

venv=$(scripts/setup.sh --test)
export PATH="$venv/bin:$PATH"

ruff check .
ruff format --check .

set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
    echo "test: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit $rc
