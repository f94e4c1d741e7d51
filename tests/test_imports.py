"""The package's import graph, read from the source (nothing is imported): commands sit above the
libraries, and the rooms import one another one way.

Every ``voicescreen.*`` import counts, at module level or inside a function (a function-level
import is a dependency all the same, only a later one); those under ``if TYPE_CHECKING:`` count
for the layering rules but not for cycles, since they never run. A package's ``__init__``
importing its own submodules (re-exporting or registering them) is not counted as a dependency of
the package on them: importing any submodule runs the ``__init__`` first, so that edge is how
packages work, not a layer reaching into another.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "voicescreen"
ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name: the root's .py files and those of the folders
    that are packages (an ``__init__.py``), recursively; tests, scripts and build output are not."""
    found: dict[str, Path] = {}

    def walk(folder: Path, prefix: str) -> None:
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                walk(path, f"{prefix}.{path.name}")
            elif path.suffix == ".py":
                name = prefix if path.stem == "__init__" else f"{prefix}.{path.stem}"
                found[name] = path

    walk(ROOT, PACKAGE)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """The package modules that ``name`` imports, anywhere in its source, each with whether the
    import sits under ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def target(module: str) -> str | None:
        while module and module not in modules:  # a name defined in a module, not a module
            module = module.rpartition(".")[0]
        return module or None

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found = target(alias.name)
                    if found:
                        out.append((found, typing_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base == PACKAGE or base.startswith(PACKAGE + "."):
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    found = target(f"{base}.{alias.name}")
                    if found:
                        out.append((found, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return out


def import_graph(runtime_only: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports (itself, and a package's own submodules, left
    out); ``runtime_only``: without the TYPE_CHECKING imports."""
    files = module_files()
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for target, typing_only in imports_of(name, path, modules):
            if runtime_only and typing_only:
                continue
            if target == name or (path.name == "__init__.py" and target.startswith(name + ".")):
                continue
            graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The graph's cycles: its strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def room(module: str) -> str:
    """The top-level module or package ``module`` belongs to: voicescreen.web.app -> .web."""
    return ".".join(module.split(".")[:2])


def in_room(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def is_library(module: str) -> bool:
    """Everything but the commands and the ``python -m`` entry points."""
    return not in_room(module, f"{PACKAGE}.cli") and not module.endswith(".__main__")


def edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets)


def test_the_walk_finds_the_package():
    files = module_files()
    for name in ("voicescreen", "voicescreen.cli", "voicescreen.cli.serve", "voicescreen.audio"):
        assert name in files
    assert not any(".tests" in n or ".scripts" in n or ".build" in n for n in files)
    graph = import_graph(runtime_only=False)
    assert "voicescreen.audio" in graph["voicescreen.cli"]  # module level
    assert "voicescreen.cli.serve" in graph["voicescreen.cli.deploy"]
    assert "voicescreen.stream.loading" in graph["voicescreen.cli.monitor"]  # in a function


def test_no_library_imports_the_commands():
    wrong = [
        (a, b)
        for a, b in edges(import_graph(runtime_only=False))
        if is_library(a) and in_room(b, f"{PACKAGE}.cli")
    ]
    assert not wrong, f"library modules import voicescreen.cli: {wrong}"


def test_models_and_runtimes_never_import_train():
    found = [
        (a, b)
        for a, b in edges(import_graph(runtime_only=False))
        if (in_room(a, f"{PACKAGE}.models") or in_room(a, f"{PACKAGE}.runtimes"))
        and in_room(b, f"{PACKAGE}.train")
    ]
    assert not found, f"models or runtimes import train: {found}"


def test_stream_does_not_import_web():
    wrong = [
        (a, b)
        for a, b in edges(import_graph(runtime_only=False))
        if in_room(a, f"{PACKAGE}.stream") and in_room(b, f"{PACKAGE}.web")
    ]
    assert not wrong, f"voicescreen.stream imports voicescreen.web: {wrong}"


def test_no_module_is_in_an_import_cycle():
    cycles = [sorted(c) for c in strongly_connected(import_graph(runtime_only=True))]
    assert not cycles, f"import cycles: {cycles}"


def test_no_rooms_import_one_another_in_a_circle():
    """Rooms (top-level modules and packages) form layers: audio and resample at the bottom,
    then models, runtimes, stream, ..., cli on top. A function-level import counts (it runs all
    the same, only later); a TYPE_CHECKING one does not."""
    graph = import_graph(runtime_only=True)
    rooms: dict[str, set[str]] = {}
    for a, b in edges(graph):
        if a.endswith(".__main__"):  # `python -m` entry points stand above every room
            continue
        if room(a) != room(b):
            rooms.setdefault(room(a), set()).add(room(b))
    cycles = [sorted(c) for c in strongly_connected(rooms)]
    assert not cycles, f"rooms import one another in a circle: {cycles}"


def test_audio_and_runtimes_sit_below_the_live_path():
    """The two edges that once closed circles: audio.py imports nothing from stream/ (the
    resampler is ``voicescreen.resample``, below both), and runtimes/ nothing from stream/
    (``Overloaded`` lives in ``runtimes.remote``)."""
    wrong = [
        (a, b)
        for a, b in edges(import_graph(runtime_only=False))
        if (a == f"{PACKAGE}.audio" or in_room(a, f"{PACKAGE}.runtimes"))
        and in_room(b, f"{PACKAGE}.stream")
    ]
    assert not wrong, f"these import the live path from below it: {wrong}"
    assert not import_graph(runtime_only=False)[f"{PACKAGE}.resample"]


def test_the_cycle_check_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [frozenset({"a", "b", "c"})]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
