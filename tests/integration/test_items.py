"""A new item announced on the items topic is scored by its metadata in a live worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.synthetic import generate_events, make_world
from streams.kafka.clients import produce_records
from tests.conftest import isolated_settings, start_worker, wait_until
from tests.integration.test_end_to_end import ask
from trainer.train import train_to_artifact

pytestmark = pytest.mark.integration


def test_new_item_metadata_reaches_the_serving_model(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = make_world(n_users=120, n_items=60, n_clusters=3, seed=61)
    items = [{"item_id": i, "genres": [world.cluster_name(c)]} for i, c in world.item_cluster.items()]
    model = train_to_artifact(
        generate_events(world, 3000, seed=62), tmp_path / "model", items=items, max_epochs=8, log=lambda line: None
    )
    settings = isolated_settings(broker)
    worker = start_worker(settings, model, tmp_path)
    try:
        user = next(u for u, c in world.user_cluster.items() if c == 1)
        others = [i for i, c in world.item_cluster.items() if c != 1][:20]
        candidates = [{"item_id": "brand-new"}] + [{"item_id": i} for i in others]

        def rank_of_new(tag: str) -> int:
            got = ask(settings, [{"request_id": tag, "user_id": user, "candidates": candidates}], 120)
            return [i["item_id"] for i in got[tag]["items"]].index("brand-new")

        before = rank_of_new("before")
        produce_records(
            settings,
            settings.items_topic,
            [{"item_id": "brand-new", "title": "New", "genres": [world.cluster_name(1)]}],
        )
        probes = iter(range(1000))
        ranks: list[int] = []
        wait_until(
            lambda: ranks.append(rank_of_new(f"after-{next(probes)}")) or ranks[-1] < before,
            timeout=60,
            what="the new item ranked higher once its metadata arrived",
        )
        print(
            f"items: brand-new item ranked {before + 1} of {len(candidates)} before its metadata, {ranks[-1] + 1} after"
        )
    finally:
        worker.stop()
    # Its genre is the user's cluster and every other candidate is from another cluster.
    assert ranks[-1] < len(candidates) // 2, (before, ranks)
