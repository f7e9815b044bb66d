"""Kafka security settings reach every client the project builds."""

import shutil
import subprocess
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials

from models import load_artifact
from streams.kafka.clients import consumer_config, producer_config
from streams.kafka.security import aiokafka_security, confluent_security
from streams.settings import Settings, SettingsError
from streams.worker.app import build_worker
from streams.worker.faust_hooks import faust_credentials

SASL = {
    "RERANKER_SECURITY_PROTOCOL": "SASL_SSL",
    "RERANKER_SASL_MECHANISM": "SCRAM-SHA-512",
    "RERANKER_SASL_USERNAME": "svc-reranker",
    "RERANKER_SASL_PASSWORD": "s3cret",
}


def test_sasl_ssl_reaches_confluent_clients() -> None:
    settings = Settings.load(env=SASL)
    for config in (producer_config(settings), consumer_config(settings), confluent_security(settings)):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert (config["sasl.username"], config["sasl.password"]) == ("svc-reranker", "s3cret")
    assert producer_config(settings)["partitioner"] == "murmur2_random"


def test_sasl_reaches_faust_and_aiokafka(trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.load(env=SASL)
    worker = build_worker(settings, load_artifact(trained_world.model_dir), web_port=6099, data_dir=tmp_path)
    credentials = worker.app.conf.broker_credentials
    assert isinstance(credentials, SASLCredentials)
    assert credentials.username == "svc-reranker" and credentials.password == "s3cret"
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.ssl_context is not None
    kwargs = aiokafka_security(settings)
    assert kwargs["sasl_plain_username"] == "svc-reranker" and kwargs["security_protocol"] == "SASL_SSL"


def test_ssl_only_with_ca_file(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a throwaway CA certificate")
    ca = tmp_path / "ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / "ca.key"),
            "-out",
            str(ca),
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
        check=True,
        capture_output=True,
    )
    settings = Settings.load(env={"RERANKER_SECURITY_PROTOCOL": "SSL", "RERANKER_SSL_CAFILE": str(ca)})
    assert confluent_security(settings) == {"security.protocol": "SSL", "ssl.ca.location": str(ca)}
    assert isinstance(faust_credentials(settings), SSLCredentials)


def test_plaintext_adds_nothing_and_bad_combinations_fail() -> None:
    plain = Settings.load(env={})
    assert confluent_security(plain) == {} and faust_credentials(plain) is None
    assert aiokafka_security(plain) == {}
    with pytest.raises(SettingsError):
        Settings.load(env={"RERANKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})  # no mechanism/user
    with pytest.raises(SettingsError):
        Settings.load(env={"RERANKER_SECURITY_PROTOCOL": "TLS"})


def test_password_is_not_in_the_settings_repr() -> None:
    assert "s3cret" not in repr(Settings.load(env=SASL))
