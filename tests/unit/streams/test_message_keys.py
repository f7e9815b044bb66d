"""Which field keys a topic's messages, and a record without it is refused, not sent unkeyed."""

from __future__ import annotations

from typing import Any

import pytest

from streams.kafka import clients
from streams.kafka.clients import MissingKeyError, key_field, produce_records
from streams.settings import Settings

SETTINGS = Settings()


class FakeSender:
    def __init__(self, settings: Settings) -> None:
        self.messages: list[tuple[str, bytes | None]] = []
        self.sent = 0
        self.flushed = 0
        SENDERS.append(self)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.messages.append((topic, key))
        self.sent += 1

    def flush(self, timeout: float = 60.0) -> None:
        self.flushed += 1


SENDERS: list[FakeSender] = []


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> Any:
    SENDERS.clear()
    monkeypatch.setattr(clients, "KafkaSender", FakeSender)
    return lambda: SENDERS[-1]


def test_items_are_keyed_by_item_id_and_everything_else_by_user_id() -> None:
    assert key_field(SETTINGS, SETTINGS.items_topic) == "item_id"
    assert key_field(SETTINGS, SETTINGS.model_updates_topic) is None
    for topic in (SETTINGS.events_topic, SETTINGS.requests_topic, "anything-else"):
        assert key_field(SETTINGS, topic) == "user_id"


def test_items_are_sent_with_their_item_id_as_key(sender: Any) -> None:
    items = [{"item_id": "a", "user_id": "u"}, {"item_id": 7}]
    assert produce_records(SETTINGS, SETTINGS.items_topic, items) == 2
    assert sender().messages == [(SETTINGS.items_topic, b"a"), (SETTINGS.items_topic, b"7")]


def test_an_explicit_key_field_wins(sender: Any) -> None:
    produce_records(SETTINGS, SETTINGS.events_topic, [{"user_id": "u", "session": "s1"}], key="session")
    assert sender().messages == [(SETTINGS.events_topic, b"s1")]


def test_a_record_without_its_key_stops_the_run_after_delivering_the_ones_before(sender: Any) -> None:
    items = [{"item_id": "a"}, {"title": "no id"}, {"item_id": "c"}]
    with pytest.raises(MissingKeyError, match="record 2 has no 'item_id'"):
        produce_records(SETTINGS, SETTINGS.items_topic, items)
    assert sender().messages == [(SETTINGS.items_topic, b"a")]
    assert sender().flushed == 1


def test_announcements_go_unkeyed(sender: Any) -> None:
    produce_records(SETTINGS, SETTINGS.model_updates_topic, [{"name": "dnn", "version": "v1", "path": "/m"}])
    assert sender().messages == [(SETTINGS.model_updates_topic, None)]
