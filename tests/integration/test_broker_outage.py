"""The broker goes away for a while: the worker neither crashes nor spins, and resumes.

The embedded broker keeps its data in memory, so its outage is a freeze (SIGSTOP
then SIGCONT): connections hang and time out exactly as with an unreachable
broker, and the log is intact afterwards.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from streams.devtools.broker import start_embedded_broker
from streams.devtools.synthetic import generate_requests
from streams.ports import free_port
from tests.conftest import isolated_settings, start_worker
from tests.integration.test_end_to_end import ask

pytestmark = pytest.mark.integration


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_worker_survives_a_broker_outage(trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with start_embedded_broker(port=free_port()) as broker:
        settings = isolated_settings(broker)
        worker = start_worker(settings, trained_world.model_dir, tmp_path)
        try:
            world = trained_world.world
            assert ask(settings, generate_requests(world, 3, seed=1, prefix="before"), timeout=120)
            os.kill(broker.process.pid, signal.SIGSTOP)
            cpu_before = cpu_seconds(worker.process.pid)
            time.sleep(20)
            cpu_during = cpu_seconds(worker.process.pid) - cpu_before
            os.kill(broker.process.pid, signal.SIGCONT)
            assert worker.process.poll() is None, "worker exited during the outage:\n" + worker.log()[-3000:]
            # Not spinning: well under one core while it waits for the broker.
            assert cpu_during < 0.5 * 20, f"{cpu_during:.1f} CPU seconds in 20 s of outage"
            started = time.monotonic()
            after = ask(settings, generate_requests(world, 3, seed=2, prefix="after"), timeout=120)
            print(
                f"outage: worker used {cpu_during:.1f} CPU s in 20 s; answered again "
                f"{time.monotonic() - started:.1f} s after the broker returned"
            )
            assert len(after) == 3 and all("error" not in r for r in after.values())
        finally:
            worker.stop()
