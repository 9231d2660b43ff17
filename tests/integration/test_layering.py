"""The layering is a machine check: import-linter's contracts in pyproject.toml must hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_domain_contract_would_catch_an_infrastructure_import(tmp_path) -> None:
    """Proves the check can fail: a domain module importing infra breaks the contract."""
    offender = ROOT / "src" / "aggregates" / "_layering_probe.py"
    offender.write_text("import crm.infra.settings  # deliberate violation\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    finally:
        offender.unlink()
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
