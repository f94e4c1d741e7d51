"""The README's first command and the launcher: what ``scripts/setup.sh`` installs, what it says.

Building a real environment takes minutes and gigabytes (CI does it from nothing through
``scripts/test.sh``); here ``setup.sh`` runs against a stand-in Python whose ``pip`` records what
it was asked to install, so each stage is checked: the first command installs what ``serve``
needs and no test extra, says what each stage does, and shows pip's progress; ``--test`` adds
the test extra once; the editable install is redone only for another checkout. The launcher is
then run for real, on the environment these tests run in: it must print nothing on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = r"""#!/usr/bin/env bash
# python3 -m venv DIR: a stand-in environment whose pip logs its arguments
[[ $1 == -m && $2 == venv ]] || exit 9
mkdir -p "$3/bin"
cat >"$3/bin/pip" <<'PIP'
#!/usr/bin/env bash
echo "$*" >>"$(dirname "$0")/../pip.log"
PIP
printf '#!/usr/bin/env bash\nexit 1\n' >"$3/bin/python"  # nothing installed: find_spec fails
chmod +x "$3/bin/pip" "$3/bin/python"
"""


def _setup(
    tmp_path: Path, *args: str, root: Path = REPO
) -> tuple[subprocess.CompletedProcess, list]:
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": str(python), "VOICESCREEN_VENV": str(venv)}
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    log = venv / "pip.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return p, calls


def test_the_first_command_installs_what_serve_needs_and_says_so(tmp_path) -> None:
    p, calls = _setup(tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "venv")  # stdout is the path, and only that
    installs = [c for c in calls if " install " in f" {c} "]
    assert not [c for c in installs if "[test]" in c or "hibari" in c], calls
    assert any(c.endswith(f"install --progress-bar on {REPO}") for c in calls), calls
    assert any("-e " + str(REPO) in c for c in calls), calls
    for stage in ("[1/3]", "[2/3]", "[3/3]", "environment ready"):
        assert stage in p.stderr, p.stderr

    # again: nothing to do but the editable install (the stand-in python finds no package)
    p, calls = _setup(tmp_path)
    assert p.returncode == 0 and "[2/3]" not in p.stderr
    assert [c for c in calls if "-e " in c] and not [c for c in calls if "progress-bar" in c]

    # the tests' set-up: the test extra and the TTS wheels, once
    p, calls = _setup(tmp_path, "--test")
    assert p.returncode == 0, p.stderr
    assert any(c.endswith(f"install --progress-bar on {REPO}[test]") for c in calls), calls
    assert any("--no-deps hibari-tts" in c for c in calls), calls
    assert "test extra" in p.stderr
    p, calls = _setup(tmp_path, "--test")
    assert not [c for c in calls if "[test]" in c], calls

    p, _ = _setup(tmp_path, "--serve")
    assert p.returncode == 2 and "usage" in p.stderr


def test_the_launcher_is_quiet_and_reinstalls_nothing() -> None:
    """On the environment these tests run in (set up by ``scripts/test.sh`` for this checkout):
    ``scripts/voicescreen --help`` prints help and nothing on stderr."""
    ready = Path(sys.prefix) / ".voicescreen-ready"
    assert ready.exists(), (
        f"{sys.prefix} is not scripts/setup.sh's: run the tests by scripts/test.sh"
    )
    env = {**os.environ, "VOICESCREEN_VENV": sys.prefix}
    env.pop("PYTHONPATH", None)
    launcher = [str(REPO / "scripts" / "voicescreen"), "--help"]
    subprocess.run(launcher, capture_output=True, env=env, timeout=300)  # points it here, once
    p = subprocess.run(launcher, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and "usage: voicescreen" in p.stdout
    assert p.stderr == ""
