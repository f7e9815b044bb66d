from pathlib import Path

import pytest

from streams.settings import DEFAULT_EVENT_WEIGHTS, EMBEDDED_PROFILE, Settings, SettingsError


def test_defaults_are_for_apache_kafka() -> None:
    settings = Settings.load(env={})
    assert settings.profile == "kafka"
    assert settings.broker == "localhost:9092"
    assert 100 <= settings.consumer_fetch_wait_ms <= 500
    assert settings.session_timeout_s == 45.0  # Kafka's session.timeout.ms
    assert settings.verify_end_offsets is False
    assert settings.event_weights == DEFAULT_EVENT_WEIGHTS
    assert settings.event_weights["dismiss"] < 0


def test_embedded_profile_values_and_explicit_settings_win(tmp_path: Path) -> None:
    assert EMBEDDED_PROFILE == {
        "consumer_fetch_wait_ms": 5,
        "session_timeout_s": 4.0,
        "heartbeat_interval_s": 1.0,
        "rebalance_timeout_s": 10.0,
        "verify_end_offsets": True,
    }
    kafka = Settings.load(env={}).as_dict()
    embedded = Settings.load(env={"RERANKER_PROFILE": "embedded"}).as_dict()
    assert {k: v for k, v in embedded.items() if kafka[k] != v} == {**EMBEDDED_PROFILE, "profile": "embedded"}
    # An explicit value wins over the profile, wherever it comes from.
    config = tmp_path / "c.toml"
    config.write_text('profile = "embedded"\nsession_timeout_s = 8.0\n')
    settings = Settings.load(
        config, env={"RERANKER_CONSUMER_FETCH_WAIT_MS": "50"}, overrides={"verify_end_offsets": False}
    )
    assert settings.profile == "embedded"
    assert (settings.session_timeout_s, settings.consumer_fetch_wait_ms, settings.verify_end_offsets) == (
        8.0,
        50,
        False,
    )
    assert settings.rebalance_timeout_s == EMBEDDED_PROFILE["rebalance_timeout_s"]
    # A value equal to the default still counts as explicit.
    assert (
        Settings.load(env={"RERANKER_PROFILE": "embedded", "RERANKER_SESSION_TIMEOUT_S": "45"}).session_timeout_s == 45
    )
    with pytest.raises(SettingsError, match="profile"):
        Settings.load(env={"RERANKER_PROFILE": "tansu"})


def test_extra_client_config_from_toml_and_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[consumer_extra_config]\n"client.id" = "r1"\n"fetch.min.bytes" = 10\n')
    settings = Settings.load(
        config, env={"RERANKER_PRODUCER_EXTRA_CONFIG": '{"acks": "1", "enable.idempotence": true}'}
    )
    assert settings.consumer_extra_config == {"client.id": "r1", "fetch.min.bytes": 10}
    assert settings.producer_extra_config == {"acks": "1", "enable.idempotence": True}
    assert settings.admin_extra_config == {}
    with pytest.raises(SettingsError, match="admin_extra_config"):
        Settings.load(env={"RERANKER_ADMIN_EXTRA_CONFIG": '{"a": {"b": 1}}'})


def test_service_settings_defaults_and_checks() -> None:
    settings = Settings.load(env={})
    assert (settings.metrics_port, settings.trainer_metrics_port, settings.trainer_every_s) == (9100, 9101, 600.0)
    assert settings.log_format == "text"
    for bad in ({"RERANKER_LOG_FORMAT": "xml"}, {"RERANKER_TRAINER_EVERY_S": "0"}, {"RERANKER_METRICS_PORT": "70000"}):
        with pytest.raises(SettingsError):
            Settings.load(env=bad)


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "reranker.toml"
    config.write_text('broker = "file:1"\npartitions = 8\nbatch_max = 7\n[event_weights]\nview = 0.1\n')
    env = {"RERANKER_BROKER": "env:2", "RERANKER_ONLINE_UPDATES": "0", "RERANKER_BATCH_MAX": "9"}
    settings = Settings.load(config, env=env, overrides={"batch_max": 11, "store": None})
    assert settings.broker == "env:2"
    assert settings.partitions == 8
    assert settings.batch_max == 11
    assert settings.online_updates is False
    assert settings.event_weights == {"view": 0.1}
    assert settings.store == "memory://"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('requests_topic = "reqs"\n')
    assert Settings.load(env={"RERANKER_CONFIG": str(config)}).requests_topic == "reqs"


def test_event_weights_from_env_json() -> None:
    settings = Settings.load(env={"RERANKER_EVENT_WEIGHTS": '{"click": 2, "dismiss": -3}'})
    assert settings.event_weights == {"click": 2.0, "dismiss": -3.0}


@pytest.mark.parametrize(
    "env",
    [
        {"RERANKER_PARTITIONS": "many"},
        {"RERANKER_ONLINE_UPDATES": "maybe"},
        {"RERANKER_STORE": "redis://"},
        {"RERANKER_PARTITIONS": "0"},
        {"RERANKER_EVENT_WEIGHTS": "[1, 2]"},
    ],
)
def test_bad_values_are_rejected(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.load(env=env)


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("brokr = 'typo'\n")
    with pytest.raises(SettingsError, match="brokr"):
        Settings.load(config, env={})


def test_sample_config_is_complete_and_loads() -> None:
    sample = Path(__file__).resolve().parents[3] / "reranker.example.toml"
    settings = Settings.load(sample, env={})
    lines = [
        line.lstrip("# ").strip() for line in sample.read_text().splitlines() if not line.lstrip().startswith("##")
    ]
    documented = {line.split("=")[0].strip() for line in lines if "=" in line}
    documented |= {line.strip("[]").split(".")[0] for line in lines if line.startswith("[")}
    assert set(settings.as_dict()) <= documented


def test_bootstrap_strips_scheme() -> None:
    assert Settings.load(env={"RERANKER_BROKER": "kafka://h:1"}).bootstrap == "h:1"


def test_model_hparams_from_toml_tables_and_env_json(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[model_hparams.dnn]\ndim = 32\nmlp_hidden = [16]\n\n[model_hparams.gan]\nserve = "discriminator"\n'
    )
    settings = Settings.load(config, env={})
    assert settings.model_hparams == {"dnn": {"dim": 32, "mlp_hidden": [16]}, "gan": {"serve": "discriminator"}}
    settings = Settings.load(config, env={"RERANKER_MODEL_HPARAMS": '{"dnn": {"lr": 0.001}}'})
    assert settings.model_hparams == {"dnn": {"lr": 0.001}}  # the environment replaces the file's
    assert Settings.load(env={}).model_hparams == {}
    for bad in ('{"dnn": 3}', "[1]", "{"):
        with pytest.raises(SettingsError, match="model_hparams"):
            Settings.load(env={"RERANKER_MODEL_HPARAMS": bad})


def test_the_worker_producer_takes_the_largest_result_of_the_message_limit() -> None:
    import orjson

    from streams.core.records import encode_result, parse_request

    settings = Settings.load(env={})
    # faust's own default (1,000,000) was below max_message_bytes.
    assert settings.worker_max_request_bytes() >= settings.largest_result_bytes() > settings.max_message_bytes
    # The largest request of max_candidates items of the longest ids, padded to the size limit, and
    # its result with every item ranked, the scores as long as floats print.
    ids = [f"{i:04d}" + "\u00e9" * 252 for i in range(settings.max_candidates)]
    request = {"request_id": "r" * 256, "user_id": "u" * 256, "candidates": [{"item_id": i} for i in ids]}
    pad = settings.max_message_bytes - len(orjson.dumps({**request, "context": {"p": ""}}))
    raw = orjson.dumps({**request, "context": {"p": "x" * pad}})
    assert len(raw) == settings.max_message_bytes
    parsed = parse_request(raw, max_candidates=settings.max_candidates, max_bytes=settings.max_message_bytes)
    ranked = [(item, -1.2345678901234567e-300) for item in parsed.item_ids]
    value = encode_result(parsed.request_id, parsed.user_id, ranked, "m" * 100, "v" * 100, 1.7e9)
    assert len(value) + len(parsed.user_id.encode()) + 100 <= settings.worker_max_request_bytes()


def test_a_producer_request_size_below_the_largest_output_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"max\.request\.size = 1000000 is below"):
        Settings.load(env={}, overrides={"producer_extra_config": {"max.request.size": 1_000_000}})
    smaller = Settings.load(
        env={},
        overrides={"producer_extra_config": {"max.request.size": 1_000_000}, "max_message_bytes": 900_000},
    )
    assert smaller.worker_max_request_bytes() == 1_000_000
