"""The layering is enforced, not hoped for: the import-linter contracts of
pyproject.toml (logic, tables, stores and models never import tango, by
module name pattern; drivers and simulators neither; no test helper at
runtime; no configuration-loader cycle) hold, in every CI run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
    assert "Logic, tables, stores and models never import tango KEPT" in result.stdout
