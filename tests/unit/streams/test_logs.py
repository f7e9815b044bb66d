"""The services' log setup: JSON lines for containers, and the metrics port fallback."""

import io
import json
import logging
import socket

import pytest

from streams.cli import build_parser, serve_metrics
from streams.logs import JsonFormatter, setup_logging
from streams.settings import Settings


def test_json_formatter_writes_one_object_per_record() -> None:
    record = logging.LogRecord("reranker.x", logging.WARNING, __file__, 1, "lag %d on %s", (42, "p0"), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "reranker.x"
    assert entry["message"] == "lag 42 on p0"
    assert entry["ts"].endswith("+00:00") and "T" in entry["ts"]
    assert "exc_info" not in entry


def test_json_lines_carry_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(root, "level", root.level)
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("reranker.test")
    log.debug("below the level")
    try:
        raise ValueError("bad\nmodel")
    except ValueError:
        log.exception("load failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # the traceback's newlines stay inside the JSON string
    entry = json.loads(lines[0])
    assert entry["message"] == "load failed" and entry["level"] == "ERROR"
    assert "ValueError: bad" in entry["exc_info"] and "Traceback" in entry["exc_info"]


def test_text_format_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    out = io.StringIO()
    setup_logging("WARNING", "text", stream=out)
    logging.getLogger("reranker.test").warning("hello")
    assert out.getvalue().rstrip().endswith("WARNING reranker.test: hello")


def test_metrics_port_falls_back_to_the_next_free_one() -> None:
    settings = Settings.load(env={})
    held: list[socket.socket] = []

    def serve(port: int, host: str) -> None:
        sock = socket.socket()
        sock.bind((host, port))  # OSError when busy, as prometheus-client's server raises
        held.append(sock)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        try:
            got = serve_metrics(serve, port, settings)
            assert got != port and got > port
            assert held[0].getsockname()[1] == got
        finally:
            for sock in held:
                sock.close()
    assert serve_metrics(serve, 0, settings) == 0 and len(held) == 1


def test_metrics_and_period_flags_default_to_the_settings() -> None:
    parser = build_parser()
    assert parser.parse_args(["worker"]).metrics_port is None
    trainer = parser.parse_args(["train-service"])
    assert trainer.metrics_port is None and trainer.every is None
    assert parser.parse_args(["worker", "--metrics-port", "0"]).metrics_port == 0
