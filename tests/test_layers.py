"""The package's layers (``[tool.importlinter]`` in pyproject.toml): no import cycles, no upward import, methods
without dataset parsers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_import_contracts_of_pyproject_are_kept():
    pytest.importorskip("importlinter", reason="the layer contracts need import-linter: pip install -e '.[dev]'")
    # In a fresh interpreter from the repository root: the checked package is this checkout's xsearch (not an
    # installed copy), and the graph (lazy imports included) is built from its files, without a cache folder.
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          "sys.exit(lint_imports(no_cache=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"lint-imports: a layer contract of pyproject.toml is broken\n{run.stdout}{run.stderr}"
    assert "0 broken" in run.stdout, run.stdout


def test_importing_the_methods_loads_no_dataset_module():
    code = ("import sys, xsearch, xsearch.models; "
            "print(xsearch.__file__); print(' '.join(sorted(m for m in sys.modules if m.startswith('xsearch.'))))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    package, loaded = run.stdout.splitlines()[-2:]
    assert Path(package).parent == ROOT / "xsearch"
    loaded = loaded.split()
    assert "xsearch.models.dual_encoder" in loaded and "xsearch.datamodules.celeba" not in loaded
    assert [m for m in loaded if m == "xsearch.datamodules" or m.startswith("xsearch.datamodules.")] == []
