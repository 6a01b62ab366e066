"""The package tree is the pipeline: stages import the foundation and the crosscoder library, a
sibling stage only through its package's public names, and no import loop exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from reasondiff.config import STAGES

PACKAGE = Path(__file__).resolve().parent.parent / "reasondiff"
APPS = (*STAGES, "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every reasondiff module `path` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("reasondiff"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reasondiff"):
            for alias in node.names:  # `from reasondiff.x import y` may name a module y
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").is_file()
                found.add(candidate if is_module else node.module)
    return found


MODULES = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_app_runs_as_its_own_package():
    for app in STAGES:
        assert (PACKAGE / app / "__main__.py").is_file(), app
        assert callable(importlib.import_module(f"reasondiff.{app}.run").run), app
        doc = importlib.import_module(f"reasondiff.{app}").__doc__ or ""
        assert "Reads:" in doc and "Writes:" in doc and "Open " in doc, f"reasondiff/{app}/__init__.py"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_never_imports_a_sibling_stages_internals(stage):
    offenders = []
    for module, imported in MODULES.items():
        if not module.startswith(f"reasondiff.{stage}"):
            continue
        for name in imported:
            parts = name.split(".")
            if len(parts) >= 2 and parts[1] in APPS and parts[1] != stage and len(parts) > 2:
                offenders.append(f"{module} imports {name}")
    assert not offenders, offenders


def test_the_foundation_and_the_crosscoder_library_import_no_stage():
    offenders = [f"{module} imports {name}" for module, imported in MODULES.items()
                 if module != "reasondiff" and module.split(".")[1] not in APPS
                 for name in imported if len(name.split(".")) > 1 and name.split(".")[1] in APPS]
    assert not offenders, offenders


def test_no_import_cycle():
    graph = {m: {i for i in imported if i in MODULES and i != m} for m, imported in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


FOUNDATION = ("core", "lm", "app")
"""Floors from the bottom: a foundation package imports only the floors below it (and the typed
configs, above core); none imports a stage package, the crosscoder library or the tiny world."""


def test_foundation_packages_import_only_downward():
    offenders = []
    for module, imported in MODULES.items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in FOUNDATION:
            continue
        below = set(FOUNDATION[:FOUNDATION.index(parts[1]) + 1]) | ({"config"} if parts[1] != "core" else set())
        offenders += [f"{module} imports {name}" for name in imported
                      if len(name.split(".")) > 1 and name.split(".")[1] not in below]
    assert not offenders, offenders


def test_the_package_root_holds_only_the_apps_on_top():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert loose == ["convert", "pipeline"], loose


def test_dir_lists_the_lazy_public_names():
    """Issue 33.6: `dir(reasondiff)` hid the names imported on first use (PEP 562 `__dir__`)."""
    import reasondiff
    import reasondiff.finetune
    import reasondiff.harvest
    import reasondiff.tiny

    for package in (reasondiff, reasondiff.harvest, reasondiff.finetune, reasondiff.tiny):
        assert set(package.__all__) <= set(dir(package)), package.__name__
    assert "load_crosscoder" in dir(reasondiff) and "__version__" in dir(reasondiff)


def test_no_public_name_shadows_a_module_of_its_package():
    """A lazy public name equal to a submodule's name (bench's `regrade` function vs the
    `reasondiff.bench.regrade` script) makes `from reasondiff.bench import regrade` return the wrong one."""
    clashes = []
    for init in PACKAGE.rglob("__init__.py"):
        package = importlib.import_module(module_name(init))
        names = set(getattr(package, "__all__", ()))
        modules = {p.stem for p in init.parent.glob("*.py")} | {p.parent.name for p in init.parent.glob("*/__init__.py")}
        clashes += [f"{package.__name__}.{n}" for n in sorted(names & modules)]
    assert not clashes, clashes
