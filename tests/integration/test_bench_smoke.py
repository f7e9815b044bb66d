"""The performance harness runs end to end: fresh broker, worker, a few seconds of open-loop load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.core.jsonl import read_jsonl
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_harness_smoke_reports_numbers_and_no_missing_result(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.harness",
            "--work",
            str(tmp_path),
            "--world-users",
            "200",
            "--world-items",
            "100",
            "--world-events",
            "3000",
            "--max-epochs",
            "2",
            "smoke",
            "--rate",
            "20",
            "--window",
            "3",
            "--candidates",
            "20",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SMOKE "))
    smoke = json.loads(line.removeprefix("SMOKE "))
    assert smoke["sent"] == 60
    assert smoke["missing"] == 0 and smoke["errors"] == 0
    assert smoke["answered"] == smoke["sent"]
    assert smoke["p50_ms"] > 0 and smoke["p99_ms"] >= smoke["p50_ms"]
    assert smoke["achieved_rate"] > 0
    records = list(read_jsonl(tmp_path / "results.jsonl"))
    assert records[-1]["kind"] == "latency" and "load1_before" in records[-1]
