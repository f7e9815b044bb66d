import asyncio

import orjson
import prometheus_client
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from streams.core.processing import OutMessage
from streams.core.records import encode_error_result
from streams.core.worker_metrics import WorkerMetrics
from streams.worker.agents import OutputSender


class FakeSink:
    """A topic whose producer refuses the first ``failures`` sends, and every value over ``limit``
    bytes, as faust does: ProducerSendError raised from aiokafka's error."""

    def __init__(self, failures: int = 0, limit: int = 10**9) -> None:
        self.failures = failures
        self.limit = limit
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        if len(value) > self.limit:
            raise ProducerSendError("Error while sending") from MessageSizeTooLargeError("too big")
        if self.failures:
            self.failures -= 1
            raise ProducerSendError("Error while sending") from KafkaTimeoutError()
        self.sent.append((key, value))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


def error_result(rid: str | None, uid: str | None, key: bytes | None, code: str, text: str) -> OutMessage:
    return OutMessage("results", key, encode_error_result(rid, uid, code, text, "m", "v1", 0.0), rid, uid)


def sender_for(results: FakeSink, dead: FakeSink, waits: list[float]) -> OutputSender:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return OutputSender({"results": results, "dead": dead}, WorkerMetrics(), error_result, attempts=4, sleep=sleep)


def result(rid: str, size: int = 10) -> OutMessage:
    return OutMessage("results", b"u1", orjson.dumps({"request_id": rid, "pad": "x" * size}), rid, "u1")


def failures(sender: OutputSender, topic: str, reason: str) -> float:
    return sender.metrics.send_failures.labels(topic, reason)._value.get()


def test_a_send_that_fails_a_few_times_is_retried_with_backoff_and_nothing_is_lost() -> None:
    results, dead, waits = FakeSink(failures=3), FakeSink(), []
    sender = sender_for(results, dead, waits)
    asyncio.run(sender.send_all([result("r1"), result("r2")]))
    assert [orjson.loads(v)["request_id"] for _, v in results.sent] == ["r1", "r2"]
    assert waits == [0.5, 1.0, 2.0]
    assert failures(sender, "results", "error") == 0


def test_a_result_too_large_to_send_is_replaced_by_an_error_result() -> None:
    results, dead, waits = FakeSink(limit=1000), FakeSink(), []
    sender = sender_for(results, dead, waits)
    asyncio.run(sender.send_all([result("big", size=5000), result("small")]))
    sent = [orjson.loads(v) for _, v in results.sent]
    assert [r["request_id"] for r in sent] == ["big", "small"]
    assert sent[0]["error"]["code"] == "result_too_large" and sent[0]["items"] == []
    assert results.sent[0][0] == b"u1"
    assert waits == []  # no retry can make it smaller
    assert failures(sender, "results", "too_large") == 1


def test_a_result_the_producer_keeps_refusing_becomes_send_failed_and_nothing_raises() -> None:
    results, dead, waits = FakeSink(failures=4), FakeSink(), []
    sender = sender_for(results, dead, waits)
    dead_letter = OutMessage("dead", b"k", b"{}")
    asyncio.run(sender.send_all([result("r1"), dead_letter]))
    assert [orjson.loads(v)["error"]["code"] for _, v in results.sent] == ["send_failed"]
    assert dead.sent == [(b"k", b"{}")]
    assert failures(sender, "results", "error") == 1


def test_send_failure_counters_start_at_zero_for_each_output_topic() -> None:
    sender = sender_for(FakeSink(), FakeSink(), [])
    text = prometheus_client.generate_latest(sender.metrics.registry).decode()
    for topic in ("results", "dead"):
        for reason in ("too_large", "error", "delivery"):
            assert f'reranker_send_failures_total{{reason="{reason}",topic="{topic}"}} 0.0' in text


def test_a_delivery_the_broker_refuses_is_counted() -> None:
    class RefusingBroker(FakeSink):
        async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
            delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            delivered.set_exception(MessageSizeTooLargeError("broker limit"))
            return delivered

    async def run() -> OutputSender:
        sender = sender_for(RefusingBroker(), FakeSink(), [])
        await sender.send_all([result("r1")])
        await asyncio.sleep(0)  # done callbacks run on the next turn
        return sender

    assert failures(asyncio.run(run()), "results", "delivery") == 1
