"""Near-limit malformed messages at default settings: the worker keeps answering, nothing vanishes.

A dead letter keeps the raw message; a ~0.95 MB value that is not UTF-8 grows past 1 MB as
base64. Unbounded, that dead letter was refused by the worker's producer and the agent never
answered again. The fuzz test lowers ``max_message_bytes`` and cannot see this.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson
import pytest

from streams.kafka.clients import KafkaSender, ResultCollector
from streams.settings import Settings
from tests.conftest import isolated_settings, run_cli, start_worker

pytestmark = pytest.mark.integration

BIG = 950_000
VALID_AFTER = 30


def request(rid: str) -> bytes:
    return orjson.dumps({"request_id": rid, "user_id": "u00001", "candidates": [{"item_id": "i00001"}]})


def test_big_malformed_messages_leave_the_worker_answering(broker, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker)
    assert settings.max_message_bytes == Settings.max_message_bytes  # the defaults, not a lowered limit
    worker = start_worker(settings, trained_world.model_dir, tmp_path)
    sender = KafkaSender(settings)
    try:
        with ResultCollector(settings) as results, ResultCollector(settings, settings.dead_letter_topic) as dead:
            sender.send(settings.requests_topic, b"u00001", request("warm"))
            sender.flush()
            assert results.wait_for(["warm"], 120), worker.log()[-3000:]
            # Under the size limit and with a readable id, but without candidates: an error result is owed.
            bad_request = orjson.dumps(
                {"request_id": "huge", "user_id": "u00001", "candidates": [], "context": {"blob": "x" * BIG}}
            )
            bad_event = b"\xff" + b"\xfe" * BIG  # not UTF-8: its dead letter is base64
            sender.send(settings.requests_topic, b"u00001", bad_request)
            sender.send(settings.events_topic, b"u00001", bad_event)
            sender.flush()
            ids = [f"after-{i}" for i in range(VALID_AFTER)]
            for rid in ids:
                sender.send(settings.requests_topic, b"u00001", request(rid))
            sender.flush()
            started = time.monotonic()
            got = results.wait_for(["huge", *ids], 60)
            huge = got.pop("huge", {})
            print(f"big bad input: {len(got)} of {VALID_AFTER} valid requests answered afterwards")
            assert huge.get("error", {}).get("code") == "no_candidates", worker.log()[-3000:]
            assert len(got) == VALID_AFTER, f"{len(got)} of {VALID_AFTER} answered:\n" + worker.log()[-3000:]
            assert all("error" not in r for r in got.values())
            letters: list[dict] = []
            while len(letters) < 2 and time.monotonic() < started + 30:
                letters.extend(dead.poll(0.2))
            by_topic = {letter["topic"]: letter for letter in letters}
            assert set(by_topic) == {settings.requests_topic, settings.events_topic}, letters
            for letter, original in (
                (by_topic[settings.requests_topic], bad_request),
                (by_topic[settings.events_topic], bad_event),
            ):
                assert letter["raw_truncated"] is True and letter["raw_bytes"] == len(original)
                raw = base64.b64decode(letter["raw"]) if letter["raw_encoding"] == "base64" else letter["raw"].encode()
                assert raw == original[: settings.dead_letter_max_raw_bytes]
            assert by_topic[settings.events_topic]["raw_encoding"] == "base64"
        # Caught up and making progress: the liveness check passes.
        health = run_cli(settings, "health", "--metrics-url", f"http://127.0.0.1:{worker.metrics_port}/metrics")
        assert health.returncode == 0, health.stdout + health.stderr
        assert worker.process.poll() is None, worker.log()[-3000:]
    finally:
        sender.close()
        worker.stop()
