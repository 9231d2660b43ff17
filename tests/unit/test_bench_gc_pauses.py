"""The hook `python -m bench.gc_pauses` loads into the API processes: it times full collections,
and in the run without the freeze it keeps gc.freeze from freezing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gc_pauses import HOOK

SCRIPT = "import gc; gc.collect(); gc.freeze(); gc.collect(); gc.collect(); print(gc.get_freeze_count())"  # 3 full collections, and one at exit


@pytest.mark.parametrize("no_freeze", ["0", "1"])
def test_the_hook_times_full_collections_and_can_keep_the_freeze_out(tmp_path: Path, no_freeze: str) -> None:
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CRM_BENCH_GC_DIR": str(out), "CRM_BENCH_NO_FREEZE": no_freeze}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout.split()[-1])
    assert (frozen == 0) == (no_freeze == "1")
    [report] = [json.loads(f.read_text()) for f in out.glob("*.json")]
    assert len(report["full"]) >= 3 and all(ms >= 0 for _, ms in report["full"])
    assert (report["frozen"] == 0) == (no_freeze == "1")  # as the process saw it in its last collection
