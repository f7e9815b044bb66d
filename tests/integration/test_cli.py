"""The user-facing commands, run as processes against real brokers."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

from streams.devtools.broker import EmbeddedBroker, wait_for_port
from streams.kafka.clients import KafkaSender, produce_records, read_topic
from streams.kafka.topics import create_topics
from streams.ports import free_port
from streams.settings import Settings
from tests.conftest import REPO, isolated_settings, run_cli, settings_env

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
            assert len(topics[name].partitions) == Settings().partitions
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
    # Every round follows a newcomer: before any click, after 3 and after 6 in their cluster.
    rounds = sorted({word for line in out.splitlines() for word in line.split() if word.startswith("new0")})
    assert rounds, out
    shares = []
    for newcomer in rounds:
        lines = [line for line in out.splitlines() if newcomer in line]
        assert len(lines) == 3, out
        shares.append([int(line.split("own-taste in top 5:")[1].split("%")[0]) for line in lines])
    # After six clicks the newcomers' top 5 is mostly their cluster, and more so than before the
    # clicks. Taken over the rounds: one newcomer's share moves by 20 points when a single item
    # near rank 5 changes places (new0001 after six clicks: 60% with the last step's weights,
    # 40% with averaged weights; the four newcomers 80% and 75% on average).
    before = sum(s[0] for s in shares) / len(shares)
    after = sum(s[-1] for s in shares) / len(shares)
    assert after >= 60 and after > before, out
    assert "requests answered; client round trip p50" in out


def _send(settings: Settings, topic: str, values: list[bytes]) -> None:
    sender = KafkaSender(settings)
    for value in values:
        sender.send(topic, None, value)
        time.sleep(0.002)  # distinct timestamps: tail orders across partitions by time
    sender.flush()
    sender.close()


def _documents(out: str) -> list[object]:
    """The JSON documents printed one after the other (indented, so not one per line)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    while (at := len(out) - len(out[at:].lstrip())) < len(out):
        doc, at = decoder.raw_decode(out, at)
        docs.append(doc)
    return docs


def test_tail_prints_the_newest_messages_as_json_and_the_rest_raw(broker: EmbeddedBroker) -> None:
    settings = isolated_settings(broker)
    create_topics(settings)
    topic = settings.results_topic
    results = [{"request_id": f"r{i}", "items": [{"item_id": str(i), "score": 0.5}]} for i in range(5)]
    _send(settings, topic, [json.dumps(r).encode() for r in results] + [b"not json"])

    last = run_cli(settings, "tail", topic, "-n", "3", timeout=60)
    assert last.returncode == 0, last.stderr
    out = last.stdout
    assert out.rstrip().endswith("not json")
    assert _documents(out.rstrip()[: -len("not json")]) == results[3:]
    assert '\n  "request_id": "r3",' in out  # indented, one field a line

    everything = run_cli(settings, "tail", topic, "--from-beginning", timeout=60)
    assert everything.returncode == 0, everything.stderr
    assert _documents(everything.stdout.rstrip()[: -len("not json")]) == results


def test_tail_follow_prints_new_messages_until_stopped(broker: EmbeddedBroker) -> None:
    settings = isolated_settings(broker)
    create_topics(settings)
    topic = settings.dead_letter_topic
    _send(settings, topic, [b'{"old": 1}'])
    process = subprocess.Popen(
        [sys.executable, "-m", "streams", "tail", topic, "--follow", "-n", "1"],
        env=settings_env(settings),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    # A thread reads, so waiting for a line can time out instead of blocking the test.
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        seen = ""
        deadline = time.monotonic() + 60
        sent = False
        while '"new": 2' not in seen and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen += lines.get(timeout=0.5)
            if '"old": 1' in seen and not sent:
                _send(settings, topic, [b'{"new": 2}'])
                sent = True
        assert '"old": 1' in seen and '"new": 2' in seen, seen
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(20)
    assert code == 0, process.stderr.read()  # type: ignore[union-attr]


def test_tail_of_a_missing_topic_is_one_line(broker: EmbeddedBroker) -> None:
    settings = isolated_settings(broker)
    done = run_cli(settings, "tail", "no-such-topic-here", timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no-such-topic-here" in done.stderr


def test_long_reads_and_writes_report_progress(broker: EmbeddedBroker) -> None:
    settings = isolated_settings(broker)
    create_topics(settings)
    records = [{"user_id": f"u{i}", "item_id": "i1", "event_type": "click", "ts": 1.0 + i} for i in range(50)]
    sent: list[int] = []
    assert produce_records(settings, settings.events_topic, records, progress=sent.append, progress_every_s=0) == 50
    assert sent and sent == sorted(sent) and sent[-1] <= 50

    reports: list[tuple[int, int | None]] = []
    read, _ = read_topic(
        settings, settings.events_topic, progress=lambda done, total: reports.append((done, total)), progress_every_s=0
    )
    assert len(read) == 50
    assert reports and all(done <= 50 for done, _ in reports)
    assert any(total == 50 for _, total in reports), reports
