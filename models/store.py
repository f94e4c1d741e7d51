"""Where bundles live: the one shipped inside the package, and the user's bundle directory."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default"
REPO = Path(__file__).resolve().parents[1]  # the package root: in a checkout, the repository


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as a card or report should hold it: relative to the repository's parent
    (``../shared/data``) or the home directory (``~/...``) where it lies under them, else as
    given: no build machine's absolute paths."""
    given = Path(os.path.abspath(Path(path).expanduser()))  # as named (../shared may be a link)
    for place in (given, given.resolve()):
        for base, shown in ((REPO.parent, ".."), (Path.home(), "~")):
            if base == Path(base.anchor):  # a checkout (or home) at the root: that says nothing
                continue
            if place.is_relative_to(base):
                return f"{shown}/{place.relative_to(base)}"
    return str(path)


def bundle_home() -> Path:
    """``$VOICESCREEN_HOME/bundles``, by default ``~/.local/share/voicescreen/bundles``."""
    home = os.environ.get("VOICESCREEN_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "voicescreen"
    return base / "bundles"


def installed_bundles() -> dict[str, Path]:
    """Name -> path of every bundle found: the shipped default first, then the user's."""
    found: dict[str, Path] = {}
    if (DEFAULT_BUNDLE / "card.json").exists():
        found["default"] = DEFAULT_BUNDLE
    home = bundle_home()
    if home.is_dir():
        for p in sorted(home.iterdir()):
            if (p / "card.json").exists() or p.suffix == ".zip":
                found.setdefault(p.name.removesuffix(".zip"), p)
    return found


def resolve_bundle(spec: str | os.PathLike | None) -> Path:
    """A bundle path from a path, an installed bundle's name, or None for the shipped default."""
    if spec is None:
        spec = "default"
    path = Path(spec)
    if path.exists():
        return path
    bundles = installed_bundles()
    if str(spec) in bundles:
        return bundles[str(spec)]
    known = ", ".join(bundles) or "none"
    raise FileNotFoundError(
        f"no bundle {str(spec)!r}: neither a bundle's path nor the name of an installed bundle "
        f"(installed: {known}; `voicescreen models` lists them, {bundle_home()} holds yours)"
    )
