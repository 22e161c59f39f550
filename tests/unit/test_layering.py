"""Dependencies point one way (docs/DESIGN.md, "Layers"):

    launcher.py -> actors.service -> actors -> transport (the wire) | storage (the disk)
                                                          \\           /
                                                          storage.entry

Every import in every module of the library is checked, including imports inside functions:
a module may import its own layer and the layers below it, nothing above. The wire and the disk
are siblings: neither imports the other, and both import `storage.entry`, the log entry they
share. The library never imports `tests` or `bench` (tools that judge a system sit above it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("storage", "transport", "actors", "launcher.py")

# Rank of each layer: a module may import a module of a lower rank, or of its own layer.
LAYERS: dict[str, int] = {
    "storage.entry": 0,
    "storage": 1,
    "transport": 1,
    "actors": 2,
    "actors.service": 3,
    "launcher": 4,
}


def layer_of(module: str) -> str | None:
    """The most specific layer that `module` belongs to; None for anything outside them
    (the standard library, third parties, or tools such as tests and bench)."""
    best = None
    for layer in LAYERS:
        if (module == layer or module.startswith(layer + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from actors import service` imports the module actors.service.
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
            found.append((node.lineno, target))
    return found


def violations(root: Path) -> list[str]:
    """Every upward or sideways import in the library under `root`."""
    problems = []
    files: list[Path] = []
    for entry in LIBRARY:
        path = root / entry
        files.extend(
            sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        )
    for path in files:
        importer = module_name(path, root)
        importer_layer = layer_of(importer)
        assert importer_layer is not None, importer
        for line, imported in imports_of(path, root):
            top = imported.split(".")[0]
            if top in ("tests", "bench"):
                problems.append(f"{path.relative_to(root)}:{line}: imports the tool {imported}")
                continue
            imported_layer = layer_of(imported)
            if imported_layer is None or imported_layer == importer_layer:
                continue
            if LAYERS[imported_layer] >= LAYERS[importer_layer]:
                problems.append(
                    f"{path.relative_to(root)}:{line}: {importer_layer} imports "
                    f"{imported} ({imported_layer}, not below it)"
                )
    return sorted(set(problems))


def test_the_library_imports_only_downwards() -> None:
    assert violations(ROOT) == []


def test_every_library_module_is_in_a_layer() -> None:
    for entry in LIBRARY[:-1]:
        for path in (ROOT / entry).rglob("*.py"):
            assert layer_of(module_name(path, ROOT)) is not None, path


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("transport/codec.py", "from actors.node import Node\n", "transport imports actors.node"),
        ("storage/segment.py", "import transport.rpc\n", "storage imports transport.rpc"),
        ("transport/rpc.py", "from storage.segment import X\n", "storage.segment (storage"),
        ("actors/node.py", "def f():\n    from actors.service import peer\n", "actors.service"),
        ("actors/service/peer.py", "import launcher\n", "actors.service imports launcher"),
        ("actors/log_view.py", "from tests.sim import simulator\n", "the tool tests.sim"),
        ("actors/service/kv_store.py", "from . import kv_server\n", None),
        ("transport/client.py", "from storage.entry import LogEntry\n", None),
        ("actors/service/peer.py", "from ..node import Node\n", None),
        ("storage/segment.py", "from .entry import LogEntry\n", None),
        ("storage/entry.py", "from . import segment\n", "storage.entry imports storage.segment"),
    ],
)
def test_the_checker_catches_an_upward_import(
    tmp_path: Path, module: str, source: str, expected: str | None
) -> None:
    """The check has teeth: an upward or sideways import planted in a copy of the layout is
    reported, naming the file and line; a downward one is not."""
    for package in ("storage", "transport", "actors", "actors/service"):
        write(tmp_path, f"{package}/__init__.py", "")
    write(tmp_path, "launcher.py", "import actors.service.peer\n")
    write(tmp_path, module, source)
    found = violations(tmp_path)
    if expected is None:
        assert found == []
    else:
        assert found and all(f.startswith(f"{module}:") for f in found), found
        assert any(expected in f for f in found), found
