"""Open-loop load generator for re-rank requests, with an aiokafka result consumer.

Requests go out on a fixed schedule (request i at t0 + i / rate) whether or not
earlier ones were answered, so a slow service shows up as growing latency and
missing results instead of a slower client (no coordinated omission). Latency
is measured from the scheduled send time of a request to the moment its result
is handed to this client by its consumer, in one process and on one clock.

The producer is aiokafka's (its default partitioner is murmur2, as the worker's
co-partitioned state needs); the result consumer is aiokafka with partitions
assigned directly (no group join) and the same fetch wait as the service.

Usable on its own against a running stack:
    python -m bench.open_loop --broker HOST:PORT --rate 200 --duration 15 --users-file users.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@dataclass
class LoadResult:
    """What one open-loop window sent and got back. Latencies in milliseconds."""

    offered_rate: float
    window_s: float
    candidates: int
    sent: int = 0
    answered: int = 0
    missing: int = 0
    errors: int = 0
    # Answers marked "stale" (the worker's read barrier gave up waiting for the user's events).
    stale: int = 0
    achieved_rate: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    # How late the client itself put requests on the wire (scheduled -> producer.send returned).
    send_lag_p99_ms: float | None = None
    send_lag_max_ms: float | None = None
    request_bytes: int = 0
    result_bytes: int = 0
    # Where the time of an answer went, by the result's Kafka timestamp (the worker's producer
    # stamps it when it sends): request on the wire -> result sent, and result sent -> arrived.
    # Wall clocks of one machine.
    to_result_sent_p99_ms: float | None = None
    to_result_sent_max_ms: float | None = None
    result_delivery_p99_ms: float | None = None
    result_delivery_max_ms: float | None = None
    # From the send to the broker's acknowledgement of the request (acks=all).
    request_acked_p99_ms: float | None = None
    request_acked_max_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def sustainable(self, p99_limit_ms: float = 100.0) -> bool:
        return self.sent > 0 and self.missing == 0 and self.p99_ms is not None and self.p99_ms <= p99_limit_ms

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms")
        return out

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        return (
            f"offered {self.offered_rate:g}/s x {self.window_s:g}s, {self.candidates} cand: "
            f"sent {self.sent}, answered {self.answered}, missing {self.missing}, "
            f"achieved {self.achieved_rate:.0f}/s; p50 {f(self.p50_ms)} p95 {f(self.p95_ms)} "
            f"p99 {f(self.p99_ms)} max {f(self.max_ms)} ms; client send lag p99 "
            f"{f(self.send_lag_p99_ms)} ms"
        )


class RequestFactory:
    """Re-rank request payloads for a fixed set of users, with pooled candidate lists.

    Candidate lists are drawn once (a pool), so building a request at send time
    costs one orjson.dumps; the same factory (same seed) gives the echo floor and
    the worker byte-identical traffic.
    """

    def __init__(
        self,
        users: Sequence[str],
        items: Sequence[str],
        n_candidates: int,
        *,
        seed: int = 0,
        pool: int = 256,
        k: int | None = None,
    ) -> None:
        if n_candidates > len(items):
            raise ValueError(f"{n_candidates} candidates need at least as many items ({len(items)})")
        rng = np.random.default_rng(seed)
        self.users = list(users)
        self.n_candidates = n_candidates
        self.k = k
        self.pool = []
        for _ in range(pool):
            picked = rng.choice(len(items), size=n_candidates, replace=False)
            self.pool.append([{"item_id": items[int(i)], "score": round(float(rng.random()), 4)} for i in picked])
        self.user_order = rng.integers(len(self.users), size=1 << 16)

    def make(self, prefix: str, n: int) -> tuple[str, bytes, bytes]:
        """(request_id, key, value) of request number ``n``."""
        user = self.users[int(self.user_order[n % len(self.user_order)])]
        request_id = f"{prefix}-{n}"
        request: dict[str, Any] = {
            "request_id": request_id,
            "user_id": user,
            "candidates": self.pool[n % len(self.pool)],
            "ts": time.time(),
        }
        if self.k is not None:
            request["k"] = self.k
        return request_id, user.encode(), orjson.dumps(request)


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


async def _start_result_consumer(bootstrap: str, topic: str, partitions: int, fetch_wait_ms: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
        fetch_min_bytes=1,
        auto_offset_reset="latest",
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    return consumer


async def run_open_loop(
    bootstrap: str,
    factory: RequestFactory,
    *,
    rate: float,
    window_s: float,
    warmup_s: float = 2.0,
    drain_s: float = 5.0,
    requests_topic: str = "rerank-requests",
    results_topic: str = "reranked-results",
    partitions: int = 4,
    fetch_wait_ms: int = 5,
    linger_ms: float = 0.0,
    prefix: str | None = None,
) -> LoadResult:
    """Offer ``rate`` requests/s for ``warmup_s + window_s`` seconds; report the window.

    Requests of the warm-up are sent and answered like the others but left out
    of every figure. After the last send the client waits up to ``drain_s`` for
    the window's answers; those still absent count as missing.
    """
    prefix = prefix or f"lg{int(time.time() * 1000) % 10**9}"
    consumer = await _start_result_consumer(bootstrap, results_topic, partitions, fetch_wait_ms)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    total = round(rate * (warmup_s + window_s))
    first_measured = round(rate * warmup_s)
    scheduled = np.full(total, np.nan)
    sent_lag = np.full(total, np.nan)
    arrived = np.full(total, np.nan)
    sent_wall = np.full(total, np.nan)
    arrived_wall = np.full(total, np.nan)
    result_sent_wall = np.full(total, np.nan)
    acked_wall = np.full(total, np.nan)
    result = LoadResult(offered_rate=rate, window_s=window_s, candidates=factory.n_candidates)
    index: dict[str, int] = {}
    errors = 0
    stale = 0
    result_bytes: list[int] = []
    request_bytes: list[int] = []
    sending_done = asyncio.Event()
    send_failures: list[BaseException] = []

    def on_acked(n: int, fut: asyncio.Future[Any]) -> None:
        if fut.exception() is not None:
            send_failures.append(fut.exception())  # type: ignore[arg-type]
        else:
            acked_wall[n] = time.time()

    async def send_all() -> None:
        t0 = time.perf_counter() + 0.05
        try:
            for n in range(total):
                due = t0 + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                request_id, key, value = factory.make(prefix, n)
                index[request_id] = n
                scheduled[n] = due
                if n < 64:
                    request_bytes.append(len(value))
                sent_wall[n] = time.time()
                fut = await producer.send(requests_topic, value=value, key=key)
                fut.add_done_callback(functools.partial(on_acked, n))
                sent_lag[n] = time.perf_counter() - due
        finally:
            sending_done.set()

    async def receive_all() -> None:
        nonlocal errors, stale
        outstanding = total
        deadline = None
        while outstanding > 0:
            if sending_done.is_set():
                deadline = deadline or time.perf_counter() + drain_s
                if time.perf_counter() > deadline:
                    break
            batches = await consumer.getmany(timeout_ms=50)
            now, wall = time.perf_counter(), time.time()
            for records in batches.values():
                for record in records:
                    value = record.value
                    try:
                        obj = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        continue
                    n = index.get(obj.get("request_id"))
                    if n is None or not np.isnan(arrived[n]):
                        continue
                    arrived[n] = now
                    arrived_wall[n] = wall
                    result_sent_wall[n] = record.timestamp / 1000.0
                    outstanding -= 1
                    if "error" in obj:
                        errors += 1
                    if obj.get("stale"):
                        stale += 1
                    if len(result_bytes) < 64:
                        result_bytes.append(len(value))

    try:
        receiver = asyncio.create_task(receive_all())
        await send_all()
        await producer.flush()
        await receiver
    finally:
        await producer.stop()
        await consumer.stop()
    if send_failures:
        raise RuntimeError(f"{len(send_failures)} requests failed to send: {send_failures[0]!r}")

    window = slice(first_measured, total)
    lat = (arrived[window] - scheduled[window]) * 1000.0
    got = lat[~np.isnan(lat)]
    lags = sent_lag[window] * 1000.0
    result.sent = total - first_measured
    result.answered = int(got.size)
    result.missing = result.sent - result.answered
    result.errors = errors
    result.stale = stale
    if got.size:
        window_start = scheduled[first_measured]
        last = np.nanmax(arrived[window])
        result.achieved_rate = float(got.size / max(1e-9, last - window_start))
        result.p50_ms, result.p95_ms, result.p99_ms = (_percentile(got, q) for q in (50, 95, 99))
        result.max_ms = float(got.max())
        result.mean_ms = float(got.mean())
        result.latencies_ms = [round(float(x), 3) for x in got]
    to_sent = (result_sent_wall[window] - sent_wall[window]) * 1000.0
    delivery = (arrived_wall[window] - result_sent_wall[window]) * 1000.0
    to_sent, delivery = to_sent[~np.isnan(to_sent)], delivery[~np.isnan(delivery)]
    to_acked = (acked_wall[window] - sent_wall[window]) * 1000.0
    to_acked = to_acked[~np.isnan(to_acked)]
    if to_acked.size:
        result.request_acked_p99_ms, result.request_acked_max_ms = _percentile(to_acked, 99), float(to_acked.max())
    if to_sent.size:
        result.to_result_sent_p99_ms, result.to_result_sent_max_ms = _percentile(to_sent, 99), float(to_sent.max())
        result.result_delivery_p99_ms, result.result_delivery_max_ms = _percentile(delivery, 99), float(delivery.max())
    result.send_lag_p99_ms = _percentile(lags, 99)
    result.send_lag_max_ms = float(lags.max()) if lags.size else None
    result.request_bytes = int(np.mean(request_bytes)) if request_bytes else 0
    result.result_bytes = int(np.mean(result_bytes)) if result_bytes else 0
    return result


async def probe(
    bootstrap: str,
    user_ids: Sequence[str],
    items: Sequence[str],
    *,
    timeout: float,
    requests_topic: str = "rerank-requests",
    results_topic: str = "reranked-results",
    partitions: int = 4,
    fetch_wait_ms: int = 5,
) -> bool:
    """Send one small request per user and wait until every one is answered (True) or ``timeout``."""
    consumer = await _start_result_consumer(bootstrap, results_topic, partitions, fetch_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    tag = f"probe{time.monotonic_ns() % 10**9}"
    wanted = set()
    try:
        for n, user in enumerate(user_ids):
            request_id = f"{tag}-{n}"
            wanted.add(request_id)
            value = orjson.dumps(
                {"request_id": request_id, "user_id": user, "candidates": [{"item_id": i} for i in items[:5]]}
            )
            await producer.send(requests_topic, value=value, key=user.encode())
        await producer.flush()
        deadline = time.monotonic() + timeout
        while wanted and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        wanted.discard(orjson.loads(record.value).get("request_id"))
        return not wanted
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=15.0, help="measured window, seconds")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--users", type=int, default=1000, help="users u00000.. of the synthetic world")
    ap.add_argument("--items", type=int, default=2000, help="items i00000.. of the synthetic world")
    ap.add_argument("--fetch-wait-ms", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args()
    users = [f"u{u:05d}" for u in range(a.users)]
    items = [f"i{i:05d}" for i in range(a.items)]
    factory = RequestFactory(users, items, a.candidates)
    result = asyncio.run(
        run_open_loop(
            a.broker,
            factory,
            rate=a.rate,
            window_s=a.duration,
            warmup_s=a.warmup,
            fetch_wait_ms=a.fetch_wait_ms,
            partitions=a.partitions,
        )
    )
    print(result.line())
    print(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
