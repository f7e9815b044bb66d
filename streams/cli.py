"""The ``reranker`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.core.jsonl import read_jsonl, write_jsonl
from streams.logs import setup_logging
from streams.settings import Settings, SettingsError

if TYPE_CHECKING:
    from trainer.service_metrics import TrainerMetrics

log = logging.getLogger("reranker")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="HOST:PORT of Kafka (default: RERANKER_BROKER, else localhost:9092)")
    parser.add_argument("--config", help="TOML settings file (see reranker.example.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reranker", description="Streaming re-ranker on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    _common(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)

    p = sub.add_parser("worker", help="run a faust worker serving a model")
    _common(p)
    p.add_argument("--model", help="model artifact directory (default: the model_dir setting)")
    p.add_argument("--web-port", type=int, help="faust web port (default: first free from 6066)")
    p.add_argument("--web-host", help="address of faust's web server")
    p.add_argument("--data-dir", help="this worker's data directory (default: var/worker-<web port>)")
    p.add_argument("--store", help="table store: memory:// or rocksdb://")
    p.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port, 0 = off (default: the metrics_port setting, 9100)"
    )
    p.add_argument("--metrics-host", help="address of the /metrics server (default: the metrics_host setting)")
    p.add_argument("--no-online-updates", action="store_true", help="serve the model frozen")
    p.add_argument("--loglevel", help="log level (default from settings: INFO)")

    p = sub.add_parser("train", help="train a model artifact from events")
    _common(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="JSON-lines file of user events")
    source.add_argument("--topic", help="read the events from this Kafka topic")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--kind", default="dnn", help="model kind from the registry")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, help="upper bound on training epochs")
    p.add_argument("--items", help="JSON-lines file of item metadata ({item_id, genres?, tags?}) for item features")

    p = sub.add_parser("trainer", help="retrain periodically from the event log, gate, publish, announce")
    _common(p)
    p.add_argument("--topic", help="event log topic (default: the events_topic setting)")
    p.add_argument("--models-dir", help="versioned model directory (default: the models_dir setting)")
    p.add_argument("--every", help="time between runs: 90s, 10m, 1h (default: the trainer_every_s setting, 600)")
    p.add_argument("--once", action="store_true", help="one run, then exit (status 1 if it failed)")
    p.add_argument("--kind", default="dnn", help="model kind from the registry")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, help="upper bound on training epochs")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus /metrics port, 0 = off (default: the trainer_metrics_port setting, 9101)",
    )
    p.add_argument("--metrics-host", help="address of the /metrics server (default: the metrics_host setting)")

    p = sub.add_parser("produce", help="produce a JSON-lines file to a topic, keyed by a field of each record")
    _common(p)
    p.add_argument("--topic", required=True, help="one of the project's topics, or an existing one")
    p.add_argument("--file", required=True)
    p.add_argument(
        "--key",
        help="record field to key messages by (default: item_id for the items topic, user_id otherwise)",
    )
    p.add_argument(
        "--create",
        action="store_true",
        help="create --topic if it is neither one of the project's topics nor existing",
    )

    p = sub.add_parser("replay", help="send requests through Kafka and collect every result")
    _common(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--requests", help="JSON-lines file of re-rank requests, sent all at once")
    mode.add_argument(
        "--stream",
        help='JSON-lines file of {"kind": "event"|"request", ...}, sent in '
        "order; each request is answered before the next line is sent",
    )
    p.add_argument("--out", required=True, help="results JSON-lines file, one per request")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for all results (--requests) or for each one (--stream)",
    )

    p = sub.add_parser("score", help="score requests offline, without Kafka")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--requests", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--events", help="events that build user state before scoring")
    p.add_argument("--no-online-updates", action="store_true")

    p = sub.add_parser("evaluate", help="compare results with random, popularity and upstream order")
    p.add_argument("--requests", required=True, help="JSON-lines file of re-rank requests")
    p.add_argument("--truth", required=True, help="JSON-lines {request_id, item_id} held-out items")
    p.add_argument("--results", required=True, help="JSON-lines results of the model to evaluate")
    p.add_argument("--out", required=True, help="directory for report.json and report.png")
    p.add_argument("--events", help="training events, for the popularity baseline (skipped without)")
    p.add_argument("-k", type=int, default=10, help="cut-off of HR and NDCG")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")

    p = sub.add_parser("loadgen", help="demo-like traffic against a running stack")
    _common(p)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until stopped)")
    p.add_argument(
        "--history",
        type=int,
        default=8000,
        help="past interactions to produce first if the events topic is empty (0 = none)",
    )
    p.add_argument("--seed", type=int, default=7)

    p = sub.add_parser("demo", help="embedded broker + synthetic data + training + worker, live")
    _common(p)
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until Ctrl-C)")
    p.add_argument("--port", type=int, help="embedded broker port (default: a free one)")
    return parser


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.load(args.config, overrides={"broker": args.broker, **overrides})


def stop_on_signals() -> threading.Event:
    """An event that SIGINT or SIGTERM sets, for commands that stop cleanly between steps."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.devtools.broker import start_embedded_broker
    from streams.kafka.topics import create_topics

    settings = load_settings(args, broker=f"{args.host}:{args.port}", profile="embedded")
    setup_logging(settings.log_level, settings.log_format)
    stop = stop_on_signals()
    broker = start_embedded_broker(args.host, args.port)
    created = create_topics(settings)
    log.info(
        "embedded broker on %s (memory storage; restart it for a clean state); topics created: %s; "
        "run its clients with RERANKER_PROFILE=embedded",
        broker.bootstrap,
        ", ".join(created) or "none",
    )
    try:
        while not stop.is_set() and broker.process.poll() is None:
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0 if stop.is_set() else 1


def _limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS pool before numpy loads (the pool size is read once, at import).

    The online update is many tiny matrix products; with a pool per core, OpenBLAS threads
    contend with the consumer thread and the broker, and ingestion measured 17% slower.
    An explicit environment setting wins.
    """
    if threads > 0 and "numpy" not in sys.modules:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(threads))


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings(
        args,
        store=args.store,
        web_host=args.web_host,
        log_level=args.loglevel,
        metrics_host=args.metrics_host,
        online_updates=False if args.no_online_updates else None,
    )
    _limit_blas_threads(settings.torch_threads)
    from models import load_artifact
    from streams.core.worker_metrics import WorkerMetrics
    from streams.kafka.topics import create_topics
    from streams.ports import free_port
    from streams.settings import default_data_dir
    from streams.worker.app import build_worker, run_worker

    setup_logging(settings.log_level, settings.log_format)
    model_dir = args.model or settings.model_dir
    if not model_dir:
        print("reranker worker: give --model DIR or set model_dir", file=sys.stderr)
        return 2
    from models.store import resolve

    # A models root serves its newest version; announcements then keep the worker current.
    bundle = load_artifact(resolve(model_dir))
    web_port = args.web_port or settings.web_port or free_port(settings.web_host, start=6066)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(settings, web_port)
    data_dir.mkdir(parents=True, exist_ok=True)
    create_topics(settings)
    metrics = WorkerMetrics()
    metrics_port = serve_metrics(metrics.serve, _given(args.metrics_port, settings.metrics_port), settings)
    worker = build_worker(settings, bundle, web_port=web_port, data_dir=data_dir, metrics=metrics)
    log.info(
        "worker: model %s %s, web port %d, metrics port %s, data dir %s, online updates %s, %s profile",
        bundle.name,
        bundle.version,
        web_port,
        metrics_port or "off",
        data_dir,
        "on" if settings.online_updates else "off",
        settings.profile,
    )
    run_worker(worker, settings.log_level)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.train import train_to_artifact

    settings = load_settings(args)
    started = time.monotonic()
    if args.events:
        events = list(read_jsonl(args.events))
        trained_through = None
    else:
        from trainer.event_log import events_from_topic

        events, trained_through = events_from_topic(settings, args.topic)
    items = None
    if args.items:
        items = list(read_jsonl(args.items))
    print(f"training {args.kind} on {len(events)} events" + (f", {len(items)} items" if items else ""), flush=True)
    path = train_to_artifact(
        events,
        args.out,
        kind=args.kind,
        event_weights=settings.event_weights,
        seed=args.seed,
        trained_through=trained_through,
        max_epochs=args.max_epochs,
        items=items,
        model_hparams=settings.model_hparams,
    )
    print(f"model written to {path} in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "10m" or "1h"."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise SettingsError(f"cannot read {text!r} as a duration (examples: 90s, 10m, 1h)") from None


def cmd_trainer(args: argparse.Namespace) -> int:
    from trainer.service import run_and_record, run_forever

    settings = load_settings(
        args,
        models_dir=args.models_dir,
        metrics_host=args.metrics_host,
        trainer_every_s=parse_duration(args.every) if args.every else None,
        trainer_metrics_port=args.metrics_port,
    )
    setup_logging(settings.log_level, settings.log_format)
    every = settings.trainer_every_s
    run_args = dict(topic=args.topic, kind=args.kind, seed=args.seed, max_epochs=args.max_epochs, progress=log.info)
    metrics = _trainer_metrics(settings)
    if args.once:
        result = run_and_record(settings, metrics, **run_args)
        log.info("trainer: %s", f"{result.decision} {result.version or ''} {result.reason}".rstrip())
        return 0
    stop = stop_on_signals()
    log.info("trainer: every %.0fs from %s into %s", every, args.topic or settings.events_topic, settings.models_dir)
    run_forever(settings, every_s=every, stop=stop, metrics=metrics, **run_args)
    return 0


def _trainer_metrics(settings: Settings) -> TrainerMetrics | None:
    if not settings.trainer_metrics_port:
        return None
    from trainer.service_metrics import TrainerMetrics

    metrics = TrainerMetrics()
    serve_metrics(metrics.serve, settings.trainer_metrics_port, settings)
    return metrics


def _given(flag: int | None, setting: int) -> int:
    return setting if flag is None else flag


def serve_metrics(serve: Callable[[int, str], None], port: int, settings: Settings, tries: int = 20) -> int:
    """Start a /metrics server on ``port`` or, when it is busy, the next free one; 0 starts none.

    Returns:
        The port it listens on (0 for none).
    """
    if not port:
        return 0
    for candidate in range(port, port + tries):
        try:
            serve(candidate, settings.metrics_host)
        except OSError:
            continue
        if candidate != port:
            log.warning("metrics port %d is busy; /metrics is on port %d", port, candidate)
        return candidate
    raise OSError(f"no free metrics port in {port}..{port + tries - 1} on {settings.metrics_host}")


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.kafka.clients import MissingKeyError, produce_records
    from streams.kafka.topics import create_topics, existing_topics, project_topics

    settings = load_settings(args)
    known = project_topics(settings)
    # A misspelt topic must not quietly become a new one that nothing reads.
    if args.topic not in known and not args.create and args.topic not in existing_topics(settings):
        print(
            f"reranker produce: no topic {args.topic!r}; the project's topics are {', '.join(known)} "
            "(pass --create to create another)",
            file=sys.stderr,
        )
        return 2
    # A topic the broker auto-creates would get its default partition count, not ours.
    create_topics(settings, {*known, args.topic})
    started = time.monotonic()
    try:
        count = produce_records(settings, args.topic, read_jsonl(args.file), key=args.key)
    except MissingKeyError as exc:
        print(f"reranker produce: {exc}", file=sys.stderr)
        return 2
    print(f"produced {count} records to {args.topic} in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.devtools.replay import replay_requests, replay_stream
    from streams.kafka.topics import create_topics

    settings = load_settings(args)
    create_topics(settings)
    started = time.monotonic()
    if args.stream:
        results, missing = replay_stream(
            settings, read_jsonl(args.stream), timeout=args.timeout, progress=lambda line: print(line, flush=True)
        )
        sent = len(results) + len(missing)
    else:
        requests = list(read_jsonl(args.requests))
        results, missing = replay_requests(settings, requests, timeout=args.timeout)
        sent = len(requests)
    write_jsonl(args.out, results)
    print(
        f"replayed {sent} requests in {time.monotonic() - started:.1f}s: "
        f"{len(results)} results, {len(missing)} missing",
        flush=True,
    )
    if missing:
        print("missing request ids (first 10): " + ", ".join(missing[:10]), file=sys.stderr)
        return 1
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from models import load_artifact
    from streams.core.offline import score_offline

    settings = load_settings(args, online_updates=False if args.no_online_updates else None)
    bundle = load_artifact(args.model)
    events = list(read_jsonl(args.events)) if args.events else []
    started = time.monotonic()
    results = score_offline(bundle, settings, read_jsonl(args.requests), events)
    write_jsonl(args.out, results)
    print(f"scored {len(results)} requests offline in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.report import format_table, write_report

    report = write_report(args.out, args.requests, args.truth, args.results, args.events, k=args.k, seed=args.seed)
    print(format_table(report), flush=True)
    print(f"report written to {Path(args.out) / 'report.json'}", flush=True)
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    from streams.devtools.traffic import run_loadgen

    settings = load_settings(args)
    stop = stop_on_signals()
    stats = run_loadgen(
        settings,
        rate=args.rate,
        duration=args.duration,
        history=args.history,
        seed=args.seed,
        stop=stop,
        say=lambda line: print(line, flush=True),
    )
    # A bounded run is a check: every request must have been answered.
    return 1 if args.duration > 0 and stats.answered < stats.sent else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.devtools.demo import run_demo

    return run_demo(load_settings(args, profile="embedded"), duration=args.duration, port=args.port)


COMMANDS = {
    "broker": cmd_broker,
    "worker": cmd_worker,
    "train": cmd_train,
    "trainer": cmd_trainer,
    "produce": cmd_produce,
    "replay": cmd_replay,
    "score": cmd_score,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "loadgen": cmd_loadgen,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"reranker: bad setting: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
