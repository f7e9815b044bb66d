"""The latency floor: a plain aiokafka echo of re-rank requests.

Consumes ``rerank-requests`` and, for each message in turn, reads its JSON and
publishes a result of the same size (the request bytes) keyed like the
request to ``reranked-results``. No state, no model, no batching: what is left
is the cost of the broker, the client library and one Python process, with the
worker's consumer and producer settings (fetch wait, linger, acks=all).

With ``--wait-ack`` each send waits for the broker's acknowledgement before the
next request is handled (the naive echo); without it sends are queued and the
producer pipelines them, as the worker's faust producer does.

With ``--also-read TOPIC`` the same consumer also reads TOPIC from its end and
drops what arrives: one fetch then covers both topics, as the worker's covers
requests and events, so the broker's cost of a topic holding a history shows.

    python -m bench.echo --broker HOST:PORT [--fetch-wait-ms 5] [--linger-ms 1] [--wait-ack]
        [--also-read user-events]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def echo(
    bootstrap: str,
    requests_topic: str,
    results_topic: str,
    partitions: int,
    fetch_wait_ms: int,
    linger_ms: float,
    stop: asyncio.Event,
    wait_ack: bool = False,
    also_read: str | None = None,
) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
        fetch_min_bytes=1,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", max_request_size=4 * 1024 * 1024
    )
    await consumer.start()
    await producer.start()
    others = [TopicPartition(also_read, p) for p in range(partitions)] if also_read else []
    consumer.assign([TopicPartition(requests_topic, p) for p in range(partitions)] + others)
    if others:
        await consumer.seek_to_end(*others)
    print("echo: ready", flush=True)
    handled = 0
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                if tp.topic != requests_topic:
                    continue
                for record in records:
                    request = orjson.loads(record.value)
                    key = str(request.get("user_id", "")).encode() or record.key
                    if wait_ack:
                        # Naive: each result acknowledged before the next request is read.
                        await producer.send_and_wait(results_topic, value=record.value, key=key)
                    else:
                        await producer.send(results_topic, value=record.value, key=key)
                    handled += 1
    finally:
        await producer.stop()
        await consumer.stop()
    return handled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--requests-topic", default="rerank-requests")
    ap.add_argument("--results-topic", default="reranked-results")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--fetch-wait-ms", type=int, default=5)
    ap.add_argument("--linger-ms", type=float, default=1.0)
    ap.add_argument(
        "--wait-ack",
        action="store_true",
        help="wait for each result's acknowledgement before the next (the naive echo)",
    )
    ap.add_argument("--also-read", help="a topic the consumer also reads, from its end, and drops")
    a = ap.parse_args()

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await echo(
            a.broker,
            a.requests_topic,
            a.results_topic,
            a.partitions,
            a.fetch_wait_ms,
            a.linger_ms,
            stop,
            a.wait_ack,
            a.also_read,
        )

    handled = asyncio.run(run())
    print(f"echo: {handled} messages echoed", flush=True)


if __name__ == "__main__":
    main()
