"""Who may import whom (docs/architecture.md), checked on the source: every import statement of
every module, at the top or inside a function.

- The core (kvsweep/*.py: cells, records, messages, the run layout, part names, cache types,
  model shapes, defaults, ...) imports nothing of orchestrator/, workers/ or analysis/.
- workers/ and analysis/ never import orchestrator/ (a worker host runs without the driver;
  the analysis reads a run directory, whoever wrote it).
- No library module imports a CLI module (argument parsing and printing stay at the edge).
"""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PACKAGES = {"kvsweep": "kvsweep", "orchestrator": "kvsweep.orchestrator", "workers": "kvsweep.workers",
            "analysis": "kvsweep.analysis"}
CLI_MODULES = {"kvsweep.orchestrator.cli", "kvsweep.orchestrator.fleet_cli", "kvsweep.__main__"}
SIDES = ("kvsweep.orchestrator", "kvsweep.workers", "kvsweep.analysis")


def modules() -> dict[str, set[str]]:
    """module name -> the kvsweep modules it imports."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            imported = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
                    imported |= {f"{node.module}.{a.name}" for a in node.names}
            out[name] = {m for m in imported if m == "kvsweep" or m.startswith("kvsweep.")}
    return out


MODULES = modules()


def _side(module: str) -> str:
    return next((s for s in SIDES if module == s or module.startswith(s + ".")), "core")


def test_the_checker_sees_the_imports():
    assert "kvsweep.messages" in MODULES["kvsweep.orchestrator.scheduler"]
    assert len(MODULES) > 60


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _side(m) == "core" and m not in CLI_MODULES))
def test_the_core_imports_nothing_of_the_sides(module):
    assert {m for m in MODULES[module] if _side(m) != "core"} == set()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _side(m) in ("kvsweep.workers", "kvsweep.analysis")))
def test_workers_and_analysis_never_import_the_orchestrator(module):
    assert {m for m in MODULES[module] if _side(m) == "kvsweep.orchestrator"} == set()


@pytest.mark.parametrize("module", sorted(set(MODULES) - CLI_MODULES))
def test_no_library_module_imports_a_cli_module(module):
    assert MODULES[module] & CLI_MODULES == set()
