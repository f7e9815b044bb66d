"""One typed settings object for every command.

Precedence, lowest to highest: defaults here, a TOML config file
(``--config FILE`` or ``RERANKER_CONFIG``), ``RERANKER_*`` environment
variables, then command-line flags. ``reranker.example.toml`` documents
every field.

The defaults are for Apache Kafka. The ``embedded`` profile (``profile = "embedded"``
or ``RERANKER_PROFILE=embedded``) replaces some of them with :data:`EMBEDDED_PROFILE`,
below every explicit value: the demo, the tests, the benchmarks and the clients of
``reranker broker`` run with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "RERANKER_"

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "add_to_cart": 2.0,
    "purchase": 3.0,
    "rating": 1.0,
    "dismiss": -1.0,
}


# The embedded broker (Tansu, streams/devtools/broker.py) is not Apache Kafka; these values make
# the clients work well with it. This is the one place its tuning lives.
EMBEDDED_PROFILE: dict[str, Any] = {
    # It answers a waiting fetch only when the wait expires, never when data arrives, so a
    # consumer's latency there is its fetch wait.
    "consumer_fetch_wait_ms": 5,
    # It holds a new group's first join for half the session timeout, in whole seconds (measured:
    # 1 s at a 2 s session, 2 s at 3-4 s, 3 s at 6 s; ~23 s with client defaults): with 4 s a
    # worker answers about a second sooner after its start, and a dead one is noticed sooner.
    # Heartbeats come from faust's consumer thread, so a busy event loop does not delay them.
    "session_timeout_s": 4.0,
    "heartbeat_interval_s": 1.0,
    "rebalance_timeout_s": 10.0,
    # ListOffsets(latest) reports the base offset of the last record batch, not the end of the log.
    "verify_end_offsets": True,
}

PROFILES: dict[str, dict[str, Any]] = {"kafka": {}, "embedded": EMBEDDED_PROFILE}


# What a result adds to its request per ranked item (`"score": <float>, "rank": <int>` and the
# object around the item id), and the fixed part of any output record: model name and version,
# timestamp, a key of at most a 256-character id, and Kafka's record framing.
RESULT_ITEM_BYTES = 64
OUTPUT_OVERHEAD_BYTES = 4096
# A dead letter's key (the original message's key) is cut to this; any valid key is an id of at
# most 256 characters.
DEAD_LETTER_KEY_BYTES = 1024


# The diversity stage's methods and similarities (streams/core/diversity.py), for the settings and
# the request field alike.
DIVERSITY_METHODS = ("mmr", "dpp")
DIVERSITY_SIMILARITIES = ("features", "embedding")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass
class Settings:
    """Every tunable of the service, typed.

    Field names map to environment variables by upper-casing and prefixing
    ``RERANKER_`` (``broker`` -> ``RERANKER_BROKER``). Dict fields take JSON
    in the environment.
    """

    # Kafka
    broker: str = "localhost:9092"
    app_id: str = "stream-reranker"
    # Of every topic the service creates: the most workers that can share the work. Events and
    # requests must have the same count (README, "Producing to the service").
    partitions: int = 12
    replication_factor: int = 1
    events_topic: str = "user-events"
    requests_topic: str = "rerank-requests"
    results_topic: str = "reranked-results"
    dead_letter_topic: str = "dead-letters"
    model_updates_topic: str = "model-updates"
    items_topic: str = "items"

    # Security, passed to every Kafka client (faust, confluent-kafka, aiokafka).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    # "kafka" (these defaults) or "embedded" (EMBEDDED_PROFILE over them, under explicit values).
    profile: str = "kafka"

    # Consumer behaviour, for Apache Kafka. Kafka answers a waiting fetch as soon as data
    # arrives, so the fetch wait is no latency there, except for a partition left out of the
    # fetch in flight (aiokafka sends one fetch per broker at a time, without partitions that
    # still have buffered records or are paused): it waits for that fetch to return. 100 ms
    # bounds that, at about ten empty fetches per second per broker when idle.
    consumer_fetch_wait_ms: int = 100
    # Kafka's own client defaults (session.timeout.ms, heartbeat.interval.ms), and faust's
    # rebalance timeout: a worker that stalls briefly (a GC pause, a slow model swap) keeps its
    # partitions instead of forcing a rebalance on the group.
    session_timeout_s: float = 45.0
    heartbeat_interval_s: float = 3.0
    rebalance_timeout_s: float = 60.0
    commit_interval_s: float = 1.0
    # Confirm each end offset that ListOffsets reports with a fetch's high watermark before
    # table recovery trusts it; only the embedded broker needs it.
    verify_end_offsets: bool = False
    producer_linger_ms: float = 1.0
    # Client properties passed through as they are (Kafka's dotted names), over the project's
    # own: to librdkafka (confluent-kafka: the command line, the trainer), and to the worker's
    # faust and aiokafka clients where a property has an equivalent there (FAUST_*_PROPERTIES
    # in streams/worker/app.py; streams/kafka/follow.py).
    consumer_extra_config: dict[str, Any] = field(default_factory=dict)
    producer_extra_config: dict[str, Any] = field(default_factory=dict)
    admin_extra_config: dict[str, Any] = field(default_factory=dict)

    # Worker
    store: str = "memory://"
    # Standby copies of each user-state partition kept warm on other workers (faust's
    # table_standby_replicas): a partition moving off a failed worker is then served without
    # reading its changelog from the start. Useful only with at least two workers.
    table_standby_replicas: int = 0
    # RocksDB memory of a worker, shared by all its partitions: the block cache (which also holds
    # index and filter blocks) and the memtables.
    rocksdb_block_cache_mb: int = 128
    rocksdb_write_buffer_mb: int = 64
    # Users whose states a worker keeps decoded in memory besides the store (the most recently
    # used; 0 = none): their next event or request skips reading and decoding the state. About
    # 4 KB each with a 50-item history and 64-dim vectors.
    state_cache_users: int = 20_000
    data_dir: str = ""
    web_host: str = "127.0.0.1"
    web_port: int = 0
    # Address of the Prometheus /metrics server (worker and trainer); 0.0.0.0 in containers.
    metrics_host: str = "127.0.0.1"
    # The worker's /metrics port (0 = off); a busy one falls back to the next free port, so local
    # workers side by side all export.
    metrics_port: int = 9100
    log_level: str = "INFO"
    # "text" for a terminal, "json" (one object per line) for a container's log collector.
    log_format: str = "text"
    model_dir: str = ""
    # Requests are scored in batches of what has arrived (one fetch's requests, or what came in
    # while the worker was busy), at most batch_max: nothing waits for a timer.
    batch_max: int = 64
    # Read-your-writes (streams/worker/consuming.py): a request is held until its partition's
    # events are applied up to an end offset taken after it arrived, at most this long after it
    # was produced (its Kafka timestamp; its arrival if that is later); then it is answered
    # anyway, marked "stale". 0 turns the barrier off (answers at once, never stale).
    read_barrier_max_ms: int = 1000
    # Events are consumed apart from requests, in chunks of at most this many (fewer when a chunk
    # would take over ~20 ms): each chunk is one call of the Processor and one write per user, and
    # the event loop is free between chunks (requests, timers).
    events_batch_max: int = 500
    # Fetched events waiting to be applied, above which fetching events pauses (resumed at half).
    events_buffer_max: int = 10_000
    # Intra-op threads of torch in a worker (0 = torch's default, one per core). One forward
    # pass is far too small to gain from a second thread, and on a busy machine the threads wait
    # for each other: on 2 cores the default made p50 at 200 req/s ~300 ms instead of ~20 ms.
    # The worker also caps numpy's BLAS pool to this (online updates: 17% more events/s).
    torch_threads: int = 1
    max_candidates: int = 1000
    max_message_bytes: int = 1_048_576
    # A dead letter keeps at most this much of the raw message (flagged raw_truncated), so it always
    # fits the producer's request size whatever arrived.
    dead_letter_max_raw_bytes: int = 65_536
    # The liveness check (`reranker health`) fails when the agent has finished no batch for this
    # long while messages wait (consumer lag > 0).
    liveness_stale_s: float = 60.0
    # Largest event time accepted ahead of this machine's clock: a later one (or one in
    # milliseconds) is dead-lettered as bad_timestamp and left out of training, and a model
    # created further in the future is not loaded.
    max_clock_skew_s: float = 300.0
    # Most bytes of tensors (weights and state) a model artifact may hold; checked from the
    # safetensors headers before anything is allocated.
    max_model_bytes: int = 2 * 1024**3

    # Diversity stage for requests without a "diversity" field: "" (off), "mmr" or "dpp". The weight
    # (0 = relevance only, 1 = diversity only) also serves requests that name a method but no weight;
    # 0.2 with mmr raised ild@10 by 11% for 1.8% of NDCG@10 on ML-100K (BENCHMARKS.md). Similarity:
    # "features" (Jaccard of the item records' values of diversity_fields, comma-separated, from
    # the items topic) or "embedding" (cosine of the model's item vectors).
    diversity_method: str = ""
    diversity_weight: float = 0.2
    diversity_similarity: str = "features"
    diversity_fields: str = "genres"

    # Trainer service and model versions. Also the only directory a worker loads announced
    # models from (an announced path must resolve inside it), even when --model names one artifact.
    models_dir: str = "models"
    keep_versions: int = 5
    holdout_share: float = 0.1
    promotion_tolerance: float = 0.01
    # The newest events a run reads (0 = the whole log); see reranker.example.toml.
    train_window_events: int = 2_000_000
    train_warm_start: bool = True
    eval_max_requests: int = 1000
    # Learning from the serving log: read the requests topic too, and label each logged request
    # with its user's events in the label_window_s seconds that follow it.
    train_from_requests: bool = True
    label_window_s: float = 3600.0
    # Seconds between the trainer service's runs, and its /metrics port (as metrics_port).
    trainer_every_s: float = 600.0
    trainer_metrics_port: int = 9101

    # Online learning
    online_updates: bool = True
    online_steps: int = 1
    online_lr: float = 0.01
    online_negatives: int = 16
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))

    # Training hyper-parameters per model kind, over the kind's defaults (TOML tables
    # [model_hparams.<kind>]; JSON in the environment). Checked against the kinds when training.
    model_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from defaults, a config file, the environment and overrides.

        Args:
            config_file: TOML file; ``None`` falls back to ``RERANKER_CONFIG``.
            env: environment mapping (defaults to ``os.environ``).
            overrides: values from the command line; ``None`` values are skipped.

        Raises:
            SettingsError: unknown keys in the file or a value of the wrong type.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
        if config_file:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
            unknown = set(data) - set(_FIELDS)
            if unknown:
                raise SettingsError(f"unknown settings in {config_file}: {sorted(unknown)}")
            values.update({k: _coerce(k, v) for k, v in data.items()})
        for name in _FIELDS:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _coerce(name, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                if name not in _FIELDS:
                    raise SettingsError(f"unknown setting {name!r}")
                values[name] = _coerce(name, value)
        # The profile sits between the defaults and everything set explicitly.
        settings = cls(**{**PROFILES.get(values.get("profile", cls.profile), {}), **values})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject combinations that would fail later in less obvious ways."""
        if self.profile not in PROFILES:
            raise SettingsError(f"profile must be one of {', '.join(PROFILES)}")
        if self.partitions < 1:
            raise SettingsError("partitions must be >= 1")
        if self.table_standby_replicas < 0:
            raise SettingsError("table_standby_replicas must be >= 0")
        if self.session_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError("session_timeout_s must exceed heartbeat_interval_s")
        if self.torch_threads < 0:
            raise SettingsError("torch_threads must be >= 0 (0 = torch's default)")
        if self.batch_max < 1 or self.max_candidates < 1:
            raise SettingsError("batch_max and max_candidates must be >= 1")
        if self.read_barrier_max_ms < 0:
            raise SettingsError("read_barrier_max_ms must be >= 0 (0 = no barrier)")
        if self.events_batch_max < 1 or self.events_buffer_max < self.events_batch_max:
            raise SettingsError("events_batch_max must be >= 1 and events_buffer_max >= events_batch_max")
        if not self.label_window_s > 0:
            raise SettingsError("label_window_s must be > 0")
        if not 0.0 < self.holdout_share < 0.5:
            raise SettingsError("holdout_share must be in (0, 0.5)")
        if self.keep_versions < 1:
            raise SettingsError("keep_versions must be >= 1")
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise SettingsError("security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") or not self.sasl_username
        ):
            raise SettingsError("SASL needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and sasl_username")
        if not self.store.startswith(("memory://", "rocksdb://")):
            raise SettingsError("store must be memory:// or rocksdb://")
        if self.rocksdb_block_cache_mb < 1 or self.rocksdb_write_buffer_mb < 1:
            raise SettingsError("rocksdb_block_cache_mb and rocksdb_write_buffer_mb must be >= 1")
        if self.state_cache_users < 0:
            raise SettingsError("state_cache_users must be >= 0 (0 keeps no decoded states)")
        if self.log_format not in ("text", "json"):
            raise SettingsError("log_format must be text or json")
        if self.max_clock_skew_s < 0 or self.max_model_bytes < 1:
            raise SettingsError("max_clock_skew_s must be >= 0 and max_model_bytes >= 1")
        if self.diversity_method not in ("", *DIVERSITY_METHODS) or not 0.0 <= self.diversity_weight <= 1.0:
            raise SettingsError('diversity_method must be "", mmr or dpp and diversity_weight in 0..1')
        if self.diversity_similarity not in DIVERSITY_SIMILARITIES:
            raise SettingsError("diversity_similarity must be features or embedding")
        if self.trainer_every_s <= 0:
            raise SettingsError("trainer_every_s must be > 0")
        if not all(0 <= p < 65536 for p in (self.metrics_port, self.trainer_metrics_port)):
            raise SettingsError("metrics_port and trainer_metrics_port must be 0..65535")
        if self.dead_letter_max_raw_bytes < 0 or self.liveness_stale_s <= 0:
            raise SettingsError("dead_letter_max_raw_bytes must be >= 0 and liveness_stale_s > 0")
        needed = max(self.largest_result_bytes(), self.largest_dead_letter_bytes())
        if self.worker_max_request_bytes() < needed:
            raise SettingsError(
                f"producer_extra_config max.request.size = {self.worker_max_request_bytes()} is below the "
                f"{needed} bytes a result of max_candidates = {self.max_candidates} items for a request of "
                f"max_message_bytes = {self.max_message_bytes} (or a dead letter) can take: raise it, or lower "
                "max_message_bytes, max_candidates or dead_letter_max_raw_bytes"
            )

    def largest_result_bytes(self) -> int:
        """The most a result (value, key and record framing) can take for an accepted request.

        A result repeats its request's ids (no longer there than in the request's JSON) and adds a
        score and a rank per item, plus the model and a timestamp.
        """
        return self.max_message_bytes + self.max_candidates * RESULT_ITEM_BYTES + OUTPUT_OVERHEAD_BYTES

    def largest_dead_letter_bytes(self) -> int:
        """The most a dead letter can take: its raw part as base64, the key and error capped alike."""
        return -(-self.dead_letter_max_raw_bytes // 3) * 4 + DEAD_LETTER_KEY_BYTES + OUTPUT_OVERHEAD_BYTES

    def worker_max_request_bytes(self) -> int:
        """The worker producer's largest request (faust ``producer_max_request_size``): the
        ``max.request.size`` producer property when set, else what the largest result needs."""
        explicit = self.producer_extra_config.get("max.request.size")
        return int(explicit) if explicit is not None else self.largest_result_bytes()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def bootstrap(self) -> str:
        """The broker address without any scheme, as Kafka clients want it."""
        return self.broker.split("://", 1)[-1]


_FIELDS: dict[str, Any] = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = typing.get_type_hints(Settings)


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind in (int, float, str):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)
        if typing.get_origin(kind) is dict:
            parsed = json.loads(value) if isinstance(value, str) else dict(value)
            if typing.get_args(kind)[1] is float:
                return {str(k): float(v) for k, v in parsed.items()}
            if typing.get_args(kind)[1] is Any:
                # Client properties: one value each, as a Kafka client takes it.
                if not all(isinstance(v, (str, int, float, bool)) for v in parsed.values()):
                    raise TypeError(value)
                return {str(k): v for k, v in parsed.items()}
            # Tables of tables: each inner table passes on as it is.
            if not all(isinstance(v, Mapping) for v in parsed.values()):
                raise TypeError(value)
            return {str(k): {str(n): x for n, x in v.items()} for k, v in parsed.items()}
    except (TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"setting {name!r}: cannot use {value!r} as {kind}") from exc
    raise SettingsError(f"setting {name!r} has unsupported type {kind}")


def default_data_dir(settings: Settings, web_port: int) -> Path:
    """Per-worker data directory, derived from the web port so two local workers never share one."""
    return Path(settings.data_dir or "var") / f"worker-{web_port}"
