"""The layer boundaries, checked on the source (AST): what the core and the adapters may import.

``driftline/core/`` is pure: no broker, Redis, ONNX Runtime, HTTP, Prometheus or Parquet client,
and nothing from the layers above it. ``driftline/adapters/`` may use the third-party clients but
not the commands or the application (``agents/``, ``serving/``). Every import counts: top level
or inside a function, ``import x`` or ``from x import y``, relative imports resolved to absolute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "driftline" / "core"
ADAPTERS = REPO / "driftline" / "adapters"

UPPER_LAYERS = ("driftline.commands", "driftline.agents", "driftline.serving")
CORE_FORBIDDEN = (
    "driftline.adapters", *UPPER_LAYERS,
    "confluent_kafka", "redis", "faust", "mode", "aiokafka", "aiohttp", "onnxruntime",
    "prometheus_client", "pyarrow", "sklearn", "skl2onnx",
)
ADAPTERS_FORBIDDEN = UPPER_LAYERS


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    imported: str
    statement: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.statement} (imports {self.imported})"


def _package_of(path: Path) -> tuple[str, ...]:
    """The dotted package a module file belongs to, found by walking up the __init__.py chain."""
    parts: list[str] = []
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return tuple(parts)


def _imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, absolute module name, statement) for every module an import in `path` may load."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            statement = f"from {dots}{node.module or ''} import " + \
                ", ".join(a.name for a in node.names)
            if node.level:
                if node.level > len(package):
                    yield node.lineno, f"<relative import beyond {'.'.join(package)}>", statement
                    continue
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            yield node.lineno, module, statement
            # `from driftline import adapters` imports driftline.adapters.
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}", statement
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value, ast.unparse(node)


def _is_dynamic_import(func: ast.expr) -> bool:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def _matches(module: str, forbidden: str) -> bool:
    return module == forbidden or module.startswith(forbidden + ".")


def find_violations(directory: Path, forbidden: Iterable[str]) -> list[Violation]:
    """Every import, in any .py under `directory`, of a module in or under one of `forbidden`."""
    forbidden = tuple(forbidden)
    found: dict[tuple[Path, int, str], Violation] = {}
    for path in sorted(directory.rglob("*.py")):
        for line, module, statement in _imports(path):
            hit = next((f for f in forbidden if _matches(module, f)), None)
            if hit is None and not module.startswith("<relative import beyond"):
                continue
            # One report per statement and forbidden module, not one per imported name.
            key = (path, line, hit or module)
            found.setdefault(key, Violation(path, line, hit or module, statement))
    return list(found.values())


def _report(violations: list[Violation], rule: str) -> str:
    where = "\n".join(f"  {v}" for v in violations)
    return f"{rule}:\n{where}"


def test_core_imports_no_adapter_application_or_io_client():
    assert CORE.is_dir()
    violations = find_violations(CORE, CORE_FORBIDDEN)
    assert not violations, _report(
        violations, "driftline/core must not import adapters, commands, the application or "
                    "I/O clients")


def test_adapters_import_no_command_or_application():
    assert ADAPTERS.is_dir()
    violations = find_violations(ADAPTERS, ADAPTERS_FORBIDDEN)
    assert not violations, _report(
        violations, "driftline/adapters must not import driftline.commands/agents/serving")


# The checker itself, on fixture packages.

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def fixture_pkg(tmp_path) -> Path:
    _write(tmp_path, {
        "driftline/__init__.py": "",
        "driftline/adapters/__init__.py": "",
        "driftline/adapters/kafka.py": "",
        "driftline/core/__init__.py": "",
        "driftline/core/clean.py": "import json\nimport numpy as np\nfrom . import sub\n",
        "driftline/core/sub/__init__.py": "",
        "driftline/core/sub/ok.py": "from ..clean import json\nfrom driftline.core import sub\n",
    })
    return tmp_path


def test_checker_reports_nothing_on_a_clean_package(fixture_pkg):
    assert find_violations(fixture_pkg / "driftline" / "core", CORE_FORBIDDEN) == []


def test_checker_reports_a_third_party_client_and_an_adapter_imported_in_a_function(fixture_pkg):
    _write(fixture_pkg, {
        "driftline/core/store.py": "import redis.asyncio\n",
        "driftline/core/sub/late.py": (
            "def f():\n"
            "    from driftline.adapters import kafka\n"
            "    return kafka\n"
        ),
    })
    core = fixture_pkg / "driftline" / "core"
    found = {(v.path.relative_to(core).as_posix(), v.line, v.imported)
             for v in find_violations(core, CORE_FORBIDDEN)}
    assert found == {("store.py", 1, "redis"), ("sub/late.py", 2, "driftline.adapters")}


@pytest.mark.parametrize("source", [
    "from ... import adapters\n",             # driftline.adapters, from driftline/core/sub
    "from ...adapters.kafka import x\n",
    "from driftline import commands\n",
    "import importlib\nimportlib.import_module('onnxruntime')\n",
    "def g():\n    import prometheus_client as p\n",
])
def test_checker_resolves_relative_and_dynamic_imports(fixture_pkg, source):
    _write(fixture_pkg, {"driftline/core/sub/bad.py": source})
    violations = find_violations(fixture_pkg / "driftline" / "core", CORE_FORBIDDEN)
    assert len(violations) == 1 and violations[0].path.name == "bad.py"
    assert "bad.py:" in str(violations[0])


def test_checker_does_not_confuse_a_prefix_with_a_package(fixture_pkg):
    _write(fixture_pkg, {"driftline/core/sub/names.py": "import redislite\nimport model\n"})
    assert find_violations(fixture_pkg / "driftline" / "core", CORE_FORBIDDEN) == []
