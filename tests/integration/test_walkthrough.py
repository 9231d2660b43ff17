"""`crm up` as a user runs it: a real process, real HTTP, and the README's curl walk-through."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    return block.split("```bash")[1].split("```")[0]


def _wait_for_banner(process: subprocess.Popen, deadline: float) -> str:
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Stop with Ctrl-C" in line:
            return "".join(lines)
        if process.poll() is not None:
            break
    raise AssertionError("crm up printed no banner:\n" + "".join(lines))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_crm_up_serves_the_readme_walkthrough_and_stops_cleanly(tmp_path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(CRM_DATA_DIR=str(tmp_path / "data"), CRM_HTTP_PORT=str(port))
    crm = Path(sys.executable).with_name("crm")
    process = subprocess.Popen([str(crm), "up"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        banner = _wait_for_banner(process, time.monotonic() + 60)
        assert f"http://127.0.0.1:{port}/docs" in banner
        key = re.search(r"Admin key .*: (\S+)", banner).group(1)
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5))
        assert health["status"] == "ok" and health["position"] == 0

        script = "set -euo pipefail\n" + _walkthrough()
        run = subprocess.run(["bash", "-c", script], env={**env, "CRM": f"http://127.0.0.1:{port}", "KEY": key},
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        order = next(o for o in outputs if "forecast_profit" in o)
        complaint = next(o for o in outputs if "due_at" in o)
        shipped = outputs[-1]
        assert order["forecast_profit"] == "4.50" and order["forecast_margin"] == "0.3750"
        assert complaint["tier"] is None and complaint["version"] == 1
        assert shipped["status"] == "shipped" and shipped["version"] == 2

        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5))
        assert health["position"] == shipped["position"] == 5
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists(), "embedded PostgreSQL was left running"
