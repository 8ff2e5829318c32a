"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_example() -> None:
    assert _python_blocks(), "README.md lost its 'Explain a clip in Python' example"


def test_readme_python_examples_run(capsys) -> None:
    for block in _python_blocks():
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([2, 3, 16, 56, 56])" in printed
    assert "torch.Size([3, 2, 3, 16, 56, 56])" in printed
