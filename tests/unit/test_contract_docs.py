"""docs/contracts.md: its model API block imports and calls what the code really has."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _model_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## model/ public API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_imports_exist() -> None:
    block = _model_block()
    imports = [line for line in block.splitlines() if line.startswith(("from ", "import "))]
    assert imports
    for line in imports:
        exec(line, {})  # the documented import statements, nothing else


def test_documented_fit_detector_call_binds_to_the_real_signature() -> None:
    from model.trainer import fit_detector

    call = next(node for node in ast.walk(ast.parse(_calls_only()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "fit_detector")
    signature = inspect.signature(fit_detector)
    for keyword in call.keywords:
        assert keyword.arg in signature.parameters, keyword.arg
        if isinstance(keyword.value, ast.Constant):
            value = keyword.value.value
            annotation = str(signature.parameters[keyword.arg].annotation)
            if keyword.arg == "progress":  # None or a callable: a bool would be called
                assert value is None, f"progress={value!r} is not None or a callable"
            else:
                assert type(value).__name__ in annotation, (keyword.arg, value, annotation)


def _calls_only() -> str:
    """The block's statements that parse as Python (descriptive lines are left out)."""
    kept = []
    for line in _model_block().splitlines():
        try:
            ast.parse(line.split("#")[0])
        except SyntaxError:
            continue
        kept.append(line.split("#")[0])
    return "\n".join(kept)
