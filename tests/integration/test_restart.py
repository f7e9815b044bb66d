"""User state survives a worker restart: RocksDB on disk, and the changelog for a fresh data dir."""

from __future__ import annotations

from typing import Any

import pytest

from streams.devtools.synthetic import events_for_cluster
from tests.conftest import isolated_settings, start_worker
from tests.integration.test_end_to_end import ask, produce_and_locate, wait_until_processed

pytestmark = pytest.mark.integration


def ranking(settings, world, user: str, request_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    candidates = [{"item_id": i} for i in world.items]
    got = ask(settings, [{"request_id": request_id, "user_id": user, "candidates": candidates}], timeout=120)
    assert request_id in got, "no answer"
    return [i["item_id"] for i in got[request_id]["items"]]


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_state_is_recovered_after_restart(broker, trained_world, tmp_path, store: str) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(broker, store=store)
    world = trained_world.world
    users: dict[str, Any] = {f"restart-{n}": n % world.n_clusters for n in range(12)}
    events = [
        e
        for n, (user, cluster) in enumerate(users.items())
        for e in events_for_cluster(world, user, cluster, 5, seed=n, start_ts=1.75e9 + 100 * n)
    ]
    for user, cluster in users.items():
        world.user_cluster[user] = cluster

    first = start_worker(settings, trained_world.model_dir, tmp_path, "--store", store)
    try:
        ranking(settings, world, "warm-up", "warm-up")
        wait_until_processed(settings, produce_and_locate(settings, events))
        before = {u: ranking(settings, world, u, f"before-{u}") for u in users}
    finally:
        assert first.stop() == 0, first.log()[-3000:]

    # memory:// keeps nothing on disk: the changelog is the only copy. RocksDB reopens
    # its files in the same data dir and must agree with the changelog.
    second = start_worker(settings, trained_world.model_dir, tmp_path, "--store", store, web_port=first.web_port)
    try:
        after = {u: ranking(settings, world, u, f"after-{u}") for u in users}
    except AssertionError:
        raise AssertionError(second.log()[-4000:]) from None
    finally:
        second.stop()
    assert after == before
