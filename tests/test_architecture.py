"""The layers of wsseg run one way (pyproject.toml's import-linter contracts), and stay that way."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package in `tree`, found there first on the import path."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install import-linter (requirements.txt)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "wsseg", tmp_path / "wsseg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}\n")


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, statement, importer, imported", [
    ("datasets/base.py", "import wsseg.pipeline.chain", "wsseg.datasets.base", "wsseg.pipeline.chain"),
    ("core/metrics.py", "from wsseg.models import build_segmenter", "wsseg.core.metrics", "wsseg.models"),
    ("pseudo_labels/pamr.py", "from wsseg.core import io", "wsseg.pseudo_labels.pamr", "wsseg.core.io"),
    ("models/unet.py", "from wsseg import cli", "wsseg.models.unet", "wsseg.cli"),
])
def test_an_upward_import_breaks_the_layer_contract(tmp_path, module, statement, importer, imported):
    tree = copy_of_the_package(tmp_path)
    add_import(tree / "wsseg" / module, statement)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert f"{importer} -> {imported}" in result.stdout


def test_a_progress_bar_in_pseudo_labels_breaks_the_purity_contract(tmp_path):
    tree = copy_of_the_package(tmp_path)
    add_import(tree / "wsseg" / "pseudo_labels" / "crf.py", "import tqdm")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert "wsseg.pseudo_labels.crf -> tqdm" in result.stdout


@pytest.mark.parametrize("module, statement", [("pipeline/data.py", "from tqdm import tqdm"),
                                               ("core/evaluate.py", "from tqdm.auto import tqdm")])
def test_a_progress_bar_outside_core_progress_breaks_the_one_place_contract(tmp_path, module, statement):
    # core.progress decides when bars are drawn (a terminal, not a log file); a bar made elsewhere
    # would redraw itself into every log again.
    tree = copy_of_the_package(tmp_path)
    add_import(tree / "wsseg" / module, statement)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    importer = "wsseg." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> tqdm" in result.stdout


# The synthetic generator draws its scenes in one place on purpose: its parts only make sense together.
LONG_MODULES_ALLOWED = {"wsseg/datasets/synthetic_aerial.py"}
MAX_MODULE_LINES = 300


def test_no_module_grows_past_300_lines():
    """A module a reader can hold at once (issue 26): a longer one is split where its parts separate."""
    long = {str(path.relative_to(ROOT)): n for path in sorted((ROOT / "wsseg").rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert set(long) <= LONG_MODULES_ALLOWED, {k: v for k, v in long.items() if k not in LONG_MODULES_ALLOWED}
