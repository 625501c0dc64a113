"""The package's layers (docs/design.md, "Layers") hold: the import-linter contracts in pyproject.toml pass on
this checkout, and they fail on a planted upward import, a planted cycle and a tool importing another tool.
``make lint`` runs the same contracts."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import procs
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``root``'s pyproject.toml on ``root``'s packages (the linter puts its working
    directory first on ``sys.path``); no cache, so a planted file is always seen."""
    return procs.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, capture_output=True, text=True)


def copy_project(dst: Path) -> Path:
    """The package, the tools, the recipes and pyproject.toml: what the contracts read."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("eat", "tools", "recipes"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_import_contracts_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 4 kept, 0 broken." in r.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("layers"))


@pytest.mark.parametrize("plant, broken", [
    # the export format reaching up into training (the cycle this layering removed)
    ({"eat/export.py": "\nfrom eat.train.finetune import FinetuneConfig  # planted\n"}, "eat layers"),
    # a new module low in the stack that imports an application
    ({"eat/audio/planted.py": "from eat.apps.demo import main\n"}, "eat layers"),
    # two modules of one layer importing each other (the layers contract cannot see this one)
    ({"eat/train/planted_a.py": "import eat.train.planted_b\n", "eat/train/planted_b.py": "import eat.train.planted_a\n"},
     "no import cycle"),
    # a module outside every layer (the layers are exhaustive)
    ({"eat/planted.py": "X = 1\n"}, "eat layers"),
    # one tool importing another
    ({"tools/planted.py": "from tools.export_encoder import main\n"}, "tools and recipes import eat"),
])
def test_a_planted_violation_breaks_the_contracts(project, plant, broken):
    saved = {}
    try:
        for rel, text in plant.items():
            path = project / rel
            saved[path] = path.read_text() if path.exists() else None
            path.write_text((saved[path] or "") + text)
        r = lint_imports(project)
    finally:
        for path, text in saved.items():
            path.unlink() if text is None else path.write_text(text)
    assert r.returncode == 1, r.stdout + r.stderr
    assert any(line.startswith(broken) and " BROKEN" in line for line in r.stdout.splitlines()), r.stdout
    assert lint_imports(project).returncode == 0  # the copy is clean again: the violation alone broke it


def first_party_imports(path: Path, names: set[str]) -> list[str]:
    """Top-level module names of ``path``'s imports that are one of ``names``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module.split(".")[0])
    return sorted(set(found) & names)


def test_tools_and_recipes_do_not_import_each_other_by_script_name(tmp_path):
    """``python tools/x.py`` puts tools/ on ``sys.path``, so ``import other_tool`` would work there; the
    linter sees that as an outside package, so this test covers it: scripts import ``eat``, never a script,
    ``tools``, ``recipes`` or ``tests``."""
    scripts = sorted([*ROOT.glob("tools/*.py"), *ROOT.glob("recipes/*.py")])
    names = {p.stem for p in scripts} | {"tools", "recipes", "tests", "conftest"}
    bad = {str(p.relative_to(ROOT)): hits for p in scripts if (hits := first_party_imports(p, names))}
    assert not bad
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\nfrom eat.cli import cli_main\nimport make_shards\nfrom recipes.finetune import main\n")
    assert first_party_imports(planted, names) == ["make_shards", "recipes"]


OLD_NAMES = [  # (old module, name, where it lives now): the deprecation shims listed in docs/design.md
    ("eat.export", "export_checkpoint", "eat.checkpoint_export"),
    ("eat.export", "export_official", "eat.checkpoint_export"),
    ("eat.export", "find_checkpoint", "eat.checkpoint_export"),
    ("eat.eval.protocol", "initial_weights", "eat.apps.probe_protocol"),
    ("eat.demo", "main", "eat.apps.demo"),
    ("eat.data.real_benchmark", "build", "eat.apps.real_benchmark"),
    ("eat.utils.bench", "machine", "eat.apps.bench_common"),
]


def test_moved_names_still_import_from_their_old_modules_with_a_deprecation_warning():
    code = """
import importlib, json, sys, warnings
out = []
for old, name, new in json.loads(sys.argv[1]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = getattr(importlib.import_module(old), name)
    same = obj is getattr(importlib.import_module(new), name)
    out.append([same, [str(w.message) for w in caught if w.category is DeprecationWarning]])
print(json.dumps(out))
"""
    r = procs.run([sys.executable, "-c", code, json.dumps(OLD_NAMES)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    for (old, name, new), (same, warned) in zip(OLD_NAMES, json.loads(r.stdout.splitlines()[-1]), strict=True):
        assert same, f"{old}.{name} is not {new}.{name}"
        assert any(new in w for w in warned), (old, name, warned)
