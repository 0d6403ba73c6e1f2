"""Every module imports, and the package never imports the runnable top-level folders."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import diffalign

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE_FOLDERS = {"training", "reward_models", "datasets_builders", "examples"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(diffalign.__path__, "diffalign."))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_walk_found_the_package():
    assert {"diffalign.config", "diffalign.cli", "diffalign.families.sdxl", "diffalign.testing"} <= set(MODULES)


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def test_runnable_folders_are_never_imported():
    offenders = []
    for folder in ("diffalign", "tests", *RUNNABLE_FOLDERS):
        for path in (ROOT / folder).rglob("*.py") if (ROOT / folder).is_dir() else []:
            bad = _imported_roots(path) & RUNNABLE_FOLDERS
            if bad:
                offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "run these folders as scripts, never import them:\n" + "\n".join(offenders)


def test_runnable_folders_are_not_packages():
    packages = [f for f in RUNNABLE_FOLDERS if (ROOT / f / "__init__.py").exists()]
    assert not packages, f"{packages} must hold scripts and configs only, not an __init__.py"


def test_the_checker_catches_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom training.train import main\nimportlib.import_module('examples.toy')\n")
    assert _imported_roots(bad) & RUNNABLE_FOLDERS == {"training", "examples"}
