"""The import rules of docs/architecture.md, read from the source (no module is imported).

* ``model/`` is pure: it imports nothing from ``pipeline``, ``workers`` or ``devtools``.
* ``pipeline/`` is the shared library: it imports no process (``workers``) and no dev
  tool; of the model package only ``pipeline/runtimes/`` knows anything.
* ``pipeline/wire/`` holds the contracts: it imports only ``pipeline.errors`` and itself.
* ``workers/<process>/`` imports the library, the model and ``workers.startup``, never
  another process's package.
* Nothing shipped (``model``, ``pipeline``, ``workers``) imports ``devtools`` or ``tests``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("model", "pipeline", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _project_files(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def _first_party(module: str) -> str:
    return module.split(".")[0]


def violations() -> list[str]:
    found = []
    for path in _project_files("model", "pipeline", "workers", "devtools"):
        name = _module_name(path)
        top = name.split(".")[0]
        for module in sorted(imports(path)):
            first = _first_party(module)
            where = f"{path.relative_to(ROOT)} imports {module}"
            if top in SHIPPED and first in ("devtools", "tests"):
                found.append(f"{where}: shipped code never imports {first}")
            if top == "model" and first in ("pipeline", "workers"):
                found.append(f"{where}: model/ is pure")
            if top == "pipeline" and first == "workers":
                found.append(f"{where}: the library imports no process")
            if (top == "pipeline" and first == "model"
                    and not name.startswith("pipeline.runtimes")):
                found.append(f"{where}: only pipeline/runtimes/ knows the model package")
            if (name.startswith("pipeline.wire") and first == "pipeline"
                    and not module.startswith(("pipeline.wire", "pipeline.errors"))):
                found.append(f"{where}: wire contracts import only pipeline.errors")
            if top == "workers" and first == "workers" and name.count(".") >= 1:
                own = ".".join(name.split(".")[:2])
                other = ".".join(module.split(".")[:2])
                if other not in (own, "workers", "workers.startup"):
                    found.append(f"{where}: a process does not import another process")
    return found


def test_import_rules_hold() -> None:
    found = violations()
    assert not found, "\n".join(found)


def test_the_rules_see_imports() -> None:
    """The reader finds absolute, relative and function-level imports."""
    names = imports(ROOT / "workers" / "trainer" / "run.py")
    assert {"pipeline.model_store", "workers.trainer.gate", "model.trainer"} <= names
    assert any(name.startswith("pipeline.wire") for name in imports(
        ROOT / "pipeline" / "wire" / "codec.py"))


def test_every_process_has_a_thin_entry_module_and_settings() -> None:
    processes = [p for p in sorted((ROOT / "workers").iterdir())
                 if p.is_dir() and (p / "__init__.py").is_file()]
    assert len(processes) >= 8
    for process in processes:
        for name in ("__main__.py", "main.py", "settings.py"):
            assert (process / name).is_file(), f"{process.name} lacks {name}"
        assert len((process / "main.py").read_text().splitlines()) <= 150, process.name


def test_no_module_is_oversized() -> None:
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines())
             for path in _project_files("pipeline", "workers")}
    assert max(sizes.values()) <= 450, max(sizes.items(), key=lambda item: item[1])
