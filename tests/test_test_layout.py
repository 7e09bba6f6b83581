"""The tests' own layout: test modules are leaves. What two of them share lives in
tests/helpers.py (or tests/fakes/), fixtures in conftest.py, which pytest hands to the
tests itself; so no module imports a test module or conftest.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, wherever the import stands,
    relative ones resolved; `from package import name` counts as importing
    `package.name` too."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join([*base, *([node.module] if node.module else [])])
            names.add(parent)
            names.update(f"{parent}.{alias.name}" for alias in node.names)
    return names


def imports_of_every_file() -> dict[str, set[str]]:
    """What each Python file under tests/ and bench/ imports, by module name."""
    files = [p for folder in ("tests", "bench") for p in (ROOT / folder).rglob("*.py")]
    return {
        module_name(p): imported(p.read_text(), module_name(p), is_package=p.stem == "__init__")
        for p in files
    }


def test_no_module_imports_a_test_module() -> None:
    """A helper that one test module needs from another moves to tests/helpers.py."""
    found = imports_of_every_file()
    test_modules = {m for m in found if m.startswith("tests.test_")}
    assert "tests.test_test_layout" in test_modules
    crossing = {(m, i) for m, names in found.items() for i in names & test_modules if i != m}
    assert crossing == set()


def test_no_module_imports_conftest() -> None:
    """conftest.py holds fixtures only: pytest gives them to the tests."""
    found = imports_of_every_file()
    assert {m for m, names in found.items() if "tests.conftest" in names} == set()


def test_the_check_sees_every_kind_of_import() -> None:
    """Absolute, from-package, relative and function-local imports are all found."""
    source = (
        "import tests.test_cli\n"
        "from tests import test_crash\n"
        "from . import test_signals\n"
        "from .test_concurrency import Seeded\n"
        "def later() -> None:\n"
        "    from tests.test_security import libpq\n"
    )
    found = imported(source, "tests.test_sample")
    assert {
        "tests.test_cli",
        "tests.test_crash",
        "tests.test_signals",
        "tests.test_concurrency",
        "tests.test_security",
    } <= found
    assert "tests.fakes.http2" in imported("from .http2 import H2Fake\n", "tests.fakes.apns")
    assert "tests.fakes.pki" in imported("from . import pki\n", "tests.fakes", is_package=True)
