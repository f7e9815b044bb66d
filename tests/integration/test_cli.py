"""The user-facing commands, run as processes against real brokers."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient

from streams.devtools.broker import wait_for_port
from streams.ports import free_port
from streams.settings import Settings
from tests.conftest import REPO, settings_env

pytestmark = pytest.mark.integration


def test_broker_command_serves_and_creates_topics() -> None:
    port = free_port()
    env = settings_env(Settings.load(env={}, overrides={"profile": "embedded"}))
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "broker", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        # Its log (topic creation first) reaches the announcement within a few lines.
        lines: list[str] = []
        while len(lines) < 5 and not any(f"embedded broker on 127.0.0.1:{port}" in line for line in lines):
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
        assert "RERANKER_PROFILE=embedded" in lines[-1], lines
        topics = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10).topics
        for name in ("user-events", "rerank-requests", "reranked-results", "dead-letters"):
            assert len(topics[name].partitions) == 4
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


@pytest.mark.slow
def test_demo_prints_live_reranked_results() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--duration", "4"],
        cwd=REPO,
        env=settings_env(Settings.load(env={}, overrides={"profile": "embedded"})),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "worker ready" in out and "round 1" in out
    newcomer_lines = [line for line in out.splitlines() if "new0001" in line]
    assert len(newcomer_lines) == 3, out
    # After six clicks in their cluster the newcomer's top 5 is mostly that cluster, and more so
    # than before the clicks.
    share = [int(line.split("own-taste in top 5:")[1].split("%")[0]) for line in newcomer_lines]
    assert share[-1] >= 60 and share[-1] > share[0], out
    assert "requests answered; client round trip p50" in out
