"""Learning from served lists with upstream features beats the upstream order on held-out lists.

Planted structure: each user keeps to a favourite cluster of items (the user-item part can learn
it), and the first stage's score is an independent, noisy signal of the item the user is about
to take (only the upstream features carry it). Each request sent just before an interaction
holds that item among 19 random others. A model trained on the older lists, scored through the
worker's code path on the newer ones (whose answers are left out of training), must beat both
the upstream order and the same model trained without the lists.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import load_artifact
from streams.core.offline import score_stream_offline
from streams.devtools.synthetic import generate_events, make_world
from streams.kafka.clients import produce_records
from streams.kafka.topics import create_topics
from streams.settings import Settings
from tests.conftest import isolated_settings, run_cli
from trainer.served import logged_from_records
from trainer.train import train_to_artifact
from trainer.validation import rank_metrics

N_CANDIDATES = 20
# An event 0.5 s after its request labels it; the next event (1 s later) does not.
LABEL_WINDOW_S = 0.9


def planted_log(seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    world = make_world(n_users=120, n_items=80, n_clusters=4, seed=seed)
    events = generate_events(world, 6000, seed=seed + 1, start_ts=1.75e9)
    rng = np.random.default_rng(seed + 2)
    items = world.items
    requests = []
    for n, e in enumerate(events[2000:], start=2000):
        if e["event_type"] == "dismiss" or n % 2:
            continue
        others = [i for i in rng.permutation(items).tolist() if i != e["item_id"]][: N_CANDIDATES - 1]
        ids = [e["item_id"], *others]
        score = rng.normal(0.0, 1.0, size=N_CANDIDATES)
        score[0] += 1.5
        order = np.argsort(-score, kind="stable")
        requests.append(
            {
                "request_id": f"log-{n}",
                "user_id": e["user_id"],
                "ts": e["ts"] - 0.5,
                "k": 10,
                "candidates": [{"item_id": ids[j], "score": round(float(score[j]), 4)} for j in order],
                "_truth": e["item_id"],
                "_event": n,
            }
        )
    return events, requests


def test_served_lists_and_upstream_features_beat_the_upstream_order(tmp_path: Path) -> None:
    events, requests = planted_log()
    cut = int(len(requests) * 0.75)
    fit, held = requests[:cut], requests[cut:]
    # The held-out lists' answers are not trained on.
    answers = {r["_event"] for r in held}
    train_events = [e for n, e in enumerate(events) if n not in answers]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("_")}
    common = {"seed": 0, "log": lambda line: None, "max_epochs": 12, "label_window_s": LABEL_WINDOW_S}
    with_lists = train_to_artifact(
        train_events, tmp_path / "lists", logged=logged_from_records(strip(r) for r in fit), **common
    )
    without = train_to_artifact(train_events, tmp_path / "plain", **common)

    bundle = load_artifact(with_lists)
    assert bundle.model.n_upstream_features > 0
    assert load_artifact(without).model.n_upstream_features == 0

    # Events and held-out requests in time order, as a worker sees them.
    stream = sorted(
        [{"kind": "event", **e} for e in train_events] + [{"kind": "request", **strip(r)} for r in held],
        key=lambda x: x["ts"],
    )
    truth = {r["request_id"]: r["_truth"] for r in held}
    settings = Settings()

    def ndcg(path: Path) -> float:
        results = score_stream_offline(load_artifact(path), settings, stream)
        ranked = {r["request_id"]: [i["item_id"] for i in r["items"]] for r in results}
        return float(rank_metrics(ranked, truth)["ndcg@10"])

    upstream = rank_metrics({r["request_id"]: [c["item_id"] for c in r["candidates"]] for r in held}, truth)
    model, plain = ndcg(with_lists), ndcg(without)
    assert len(truth) > 300
    # Measured (475 lists): upstream order 0.628, without the lists 0.627, with them 0.776.
    assert model > upstream["ndcg@10"] + 0.05, (model, upstream, plain)
    assert model > plain + 0.05, (model, upstream, plain)


@pytest.mark.integration
def test_train_from_the_topic_reads_the_requests_topic_by_default(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    events, requests = planted_log()
    settings = dataclasses.replace(isolated_settings(broker), label_window_s=LABEL_WINDOW_S)
    create_topics(settings, [settings.events_topic, settings.requests_topic])
    produce_records(settings, settings.events_topic, events)
    produce_records(
        settings, settings.requests_topic, [{k: v for k, v in r.items() if not k.startswith("_")} for r in requests]
    )
    args = ["train", "--topic", settings.events_topic, "--max-epochs", "3"]
    done = run_cli(settings, *args, "--out", str(tmp_path / "lists"))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "lists" / "manifest.json").read_text())
    assert manifest["model_hparams"]["upstream_inputs"] > 0
    assert manifest["metrics"]["served_lists"] > 0.5 * len(requests)
    off = run_cli(settings, *args, "--no-served-lists", "--out", str(tmp_path / "plain"))
    assert off.returncode == 0, off.stderr[-2000:]
    assert "upstream_inputs" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["model_hparams"]
