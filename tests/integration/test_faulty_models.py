"""Bad model announcements are rejected; the worker keeps serving the model it has."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from models import load_artifact
from streams.devtools.synthetic import generate_requests
from streams.kafka.clients import produce_records
from tests.conftest import isolated_settings, start_worker, wait_until
from tests.integration.test_end_to_end import ask
from trainer.train import train_to_artifact

pytestmark = pytest.mark.integration


def metric(port: int, name: str, having: str = "") -> float:
    """Sum of a worker's samples of ``name`` whose line contains ``having`` (a label, e.g. 'outcome="ok"')."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith((name + " ", name + "{")) and having in line
    )


def broken_copies(good: Path, root: Path) -> dict[str, Path]:
    """Artifacts damaged in the ways a disk, a network copy or a wrong build damages them."""
    out = {}
    for name in ("truncated", "corrupted", "wrong_shape", "wrong_kind", "pickle_weights"):
        path = root / name
        shutil.copytree(good, path)
        out[name] = path
    weights = out["truncated"] / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    data = bytearray((out["corrupted"] / "weights.safetensors").read_bytes())
    data[-64:] = bytes(64)
    (out["corrupted"] / "weights.safetensors").write_bytes(bytes(data))
    manifest = json.loads((out["wrong_shape"] / "manifest.json").read_text())
    manifest["n_items"] += 7
    manifest["item_ids"] += [f"extra-{i}" for i in range(7)]
    (out["wrong_shape"] / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((out["wrong_kind"] / "manifest.json").read_text())
    manifest["kind"] = "definitely-not-a-model"
    (out["wrong_kind"] / "manifest.json").write_text(json.dumps(manifest))
    # A pickle where safetensors belong: loading must refuse it, never execute it.
    (out["pickle_weights"] / "weights.safetensors").write_bytes(
        b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    )
    return out


def test_bad_announcements_are_rejected_and_a_good_one_swaps(broker, trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Announced paths must lie inside models_dir: the broken copies do, so each is loaded and refused.
    settings = isolated_settings(broker, models_dir=str(tmp_path))
    serving = load_artifact(trained_world.model_dir)
    worker = start_worker(settings, trained_world.model_dir, tmp_path)
    world = trained_world.world
    try:
        probe = lambda tag: ask(settings, generate_requests(world, 1, seed=1, prefix=tag), 120)
        assert probe("warm")["warm-0"]["model"]["version"] == serving.version
        bad = broken_copies(trained_world.model_dir, tmp_path / "bad")
        announcements = [{"name": "dnn", "version": f"bad-{n}", "path": str(p)} for n, p in bad.items()]
        announcements.append({"name": "dnn", "version": "missing", "path": str(tmp_path / "nowhere")})
        produce_records(settings, settings.model_updates_topic, announcements)
        # A malformed announcement too: it must not stop the watcher.
        from streams.kafka.clients import KafkaSender

        sender = KafkaSender(settings)
        sender.send(settings.model_updates_topic, None, b"{not json")
        sender.flush()
        expected = len(announcements) + 1
        wait_until(
            lambda: metric(worker.metrics_port, "reranker_model_load_failures_total") >= expected,
            timeout=60,
            what="all bad announcements rejected",
        )
        result = probe("after-bad")["after-bad-0"]
        assert "error" not in result and result["model"]["version"] == serving.version
        assert metric(worker.metrics_port, "reranker_model_swaps_total") == 0

        newer = train_to_artifact(trained_world.events, tmp_path / "newer", seed=1, max_epochs=3, log=lambda line: None)
        version = load_artifact(newer).version
        produce_records(
            settings, settings.model_updates_topic, [{"name": "dnn", "version": version, "path": str(newer)}]
        )
        wait_until(
            lambda: probe(f"p{version}")[f"p{version}-0"]["model"]["version"] == version,
            timeout=60,
            what="the good model serving",
        )
        assert metric(worker.metrics_port, "reranker_model_swaps_total") == 1
        assert metric(worker.metrics_port, "reranker_model_load_failures_total") == expected
    finally:
        worker.stop()
    log = worker.log()
    for name in bad:
        assert f"rejected model bad-{name}" in log
