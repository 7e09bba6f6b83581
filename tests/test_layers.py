"""The layers import one way: the push layer never imports the services or the CLI above
it, the repository layer never imports services or pushers, and the idle run loads none
of the push layer. Every import counts, lazy and type-only ones too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import followup_cli

PACKAGE = Path(followup_cli.__file__).parent

# The services and everything above them.
SERVICES = {
    "followup_cli.delivery",
    "followup_cli.requeue",
    "followup_cli.testsend",
    "followup_cli.story",
    "followup_cli.scheduling",
    "followup_cli.monitoring",
    "followup_cli.metrics",
    "followup_cli.cleanup",
    "followup_cli.schemacheck",
    "followup_cli.security",
    "followup_cli.migrate",
}
ABOVE_SERVICES = {
    "followup_cli.cli",
    "followup_cli.main",
    "followup_cli.idle",
    "followup_cli.render",
}
# The repository layer and the words it stores.
DATA_LAYER = {
    "followup_cli.repository",
    "followup_cli.tables",
    "followup_cli.db",
    "followup_cli.vocabulary",
    "followup_cli.errors",
    "followup_cli.report",
    "followup_cli.clock",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every followup_cli module a file imports, wherever the import stands, relative
    imports (`from .base import ...`) resolved from the file's package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*parts, node.module] if node.module else parts)
            elif node.module:
                module = node.module
            else:
                continue
            names.add(module)
            # `from followup_cli import render` imports the module followup_cli.render.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("followup_cli.")}


def modules() -> dict[str, set[str]]:
    return {
        module_name(p): imported(p)
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.relative_to(PACKAGE).parts
    }


def in_layer(name: str, layer: set[str]) -> bool:
    return name in layer or name.rsplit(".", 1)[0] in layer


def test_the_push_layer_imports_no_service_and_no_cli() -> None:
    """followup_cli.push.* reaches down (settings, repository types), never up."""
    found = modules()
    pushers = {m for m in found if m.startswith("followup_cli.push")}
    assert "followup_cli.push.apns" in pushers and "followup_cli.push.factory" in pushers
    upward = {(m, i) for m in pushers for i in found[m] if in_layer(i, SERVICES | ABOVE_SERVICES)}
    assert upward == set()


def test_no_adapter_imports_the_factory() -> None:
    """make_pusher knows the adapters; nothing in the push layer imports it back."""
    found = modules()
    back = {
        m
        for m in found
        if m.startswith("followup_cli.push") and "followup_cli.push.factory" in found[m]
    }
    assert back == set()


def test_the_data_layer_imports_no_service_pusher_or_cli() -> None:
    """The repository package (every module of it), tables, db and the vocabulary import
    nothing above them."""
    found = modules()
    data = {m for m in found if in_layer(m, DATA_LAYER)}
    assert DATA_LAYER <= data
    assert {"followup_cli.repository.base", "followup_cli.repository.rows"} <= data
    upward = {
        (m, i)
        for m in data
        for i in found[m]
        if in_layer(i, SERVICES | ABOVE_SERVICES) or i.startswith("followup_cli.push")
    }
    assert upward == set()


def test_the_idle_run_loads_no_push_module() -> None:
    """idle.py and what it prints with (render) leave the push layer unloaded."""
    probe = (
        "import sys; import followup_cli.main, followup_cli.idle, followup_cli.render; "
        "print(sorted(m for m in sys.modules if m.startswith('followup_cli.push')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
