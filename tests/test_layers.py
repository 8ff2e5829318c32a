"""Import hygiene of the package that the layer contracts (lint-imports, pyproject.toml) do not cover: no private
module of another package, and imports at the top of a module unless a heavy or optional dependency is deferred
(the line says so)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FILES = sorted(p for p in SRC.rglob("*.py") if "egg-info" not in str(p))
#: Deferred imports of files another branch rewrites (metrics/randomization.py: the metrics split).
KNOWN: dict[str, str] = {}


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, list[str], bool]]:
    """Every import statement with the module names it reads and whether it sits inside a function."""
    out: list[tuple[ast.stmt, list[str], bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.append((child, [a.name for a in child.names], in_function))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child, [child.module], in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


def _found(path: Path, want: str) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    bad = []
    for node, names, in_function in _imports(ast.parse(text)):
        rel = f"{path.relative_to(SRC)}:{node.lineno}"
        for name in names:
            top, *rest = name.split(".")
            if want == "private" and top not in ("motion_relevance", "hydra_plugins") and any(
                    part.startswith("_") and not part.startswith("__") for part in rest):
                bad.append(f"{rel} imports the private module {name}")
            # the comment may sit on the first line of a group of deferred imports
            said = any("deferred" in lines[i] for i in range(max(0, node.lineno - 3), node.lineno))
            known = KNOWN.get(path.relative_to(SRC).as_posix()) == name
            if want == "deferred" and in_function and not said and not known:
                bad.append(f"{rel} imports {name} inside a function without a '# deferred: <why>' comment")
    return bad


@pytest.mark.parametrize("want", ["private", "deferred"])
def test_import_hygiene(want: str) -> None:
    assert len(FILES) > 60
    bad = [msg for path in FILES for msg in _found(path, want)]
    assert not bad, "\n".join(bad)


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """The walker finds a private import of another package and an undocumented deferred import."""
    probe = tmp_path / "probe.py"
    probe.write_text("from captum.attr._utils import lrp_rules\n\n\ndef f():\n    import cv2\n\n\n"
                     "def g():\n    import cv2  # deferred: OpenCV\n    import decord\n")
    global SRC
    old, SRC = SRC, tmp_path
    try:
        assert _found(probe, "private") == ["probe.py:1 imports the private module captum.attr._utils"]
        assert _found(probe, "deferred") == ["probe.py:5 imports cv2 inside a function without a "
                                             "'# deferred: <why>' comment"]
    finally:
        SRC = old
