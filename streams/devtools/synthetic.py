"""Synthetic users, items and interactions with planted taste structure.

Items fall into named clusters; each user has one favourite cluster and
interacts with it most of the time, so a working re-ranker must learn to put
a user's cluster first. Used by the demo, the tests and the benchmarks, which
therefore need no outside data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CLUSTER_NAMES = ("sci-fi", "comedy", "drama", "kids", "documentary", "horror", "romance", "western")

# Share of each type among the events generated; dismisses go to other clusters.
EVENT_MIX = (
    ("view", 0.45),
    ("click", 0.25),
    ("add_to_cart", 0.08),
    ("purchase", 0.05),
    ("rating", 0.12),
    ("dismiss", 0.05),
)


@dataclass
class World:
    """Planted ground truth.

    Attributes:
        user_cluster: user id -> favourite cluster index.
        item_cluster: item id -> cluster index.
        cluster_items: per cluster, its item ids (most popular first).
    """

    user_cluster: dict[str, int]
    item_cluster: dict[str, int]
    cluster_items: list[list[str]]
    n_clusters: int

    @property
    def users(self) -> list[str]:
        return list(self.user_cluster)

    @property
    def items(self) -> list[str]:
        return list(self.item_cluster)

    def cluster_name(self, cluster: int) -> str:
        return CLUSTER_NAMES[cluster % len(CLUSTER_NAMES)]


def make_world(
    n_users: int = 200,
    n_items: int = 120,
    n_clusters: int = 4,
    seed: int = 0,
    user_prefix: str = "u",
    item_prefix: str = "i",
) -> World:
    """Users with a favourite cluster each, items spread evenly over the clusters."""
    rng = np.random.default_rng(seed)
    item_cluster = {f"{item_prefix}{i:05d}": i % n_clusters for i in range(n_items)}
    cluster_items = [[item for item, c in item_cluster.items() if c == k] for k in range(n_clusters)]
    user_cluster = {f"{user_prefix}{u:05d}": int(rng.integers(n_clusters)) for u in range(n_users)}
    return World(user_cluster, item_cluster, cluster_items, n_clusters)


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    # Zipf-like popularity inside a cluster, so popularity alone is a weaker signal than taste.
    weights = 1.0 / np.arange(1, len(items) + 1) ** 0.8
    return items[int(rng.choice(len(items), p=weights / weights.sum()))]


def generate_events(
    world: World,
    n_events: int,
    *,
    seed: int = 1,
    start_ts: float = 1_700_000_000.0,
    taste_share: float = 0.85,
    users: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Interactions in time order: mostly inside each user's cluster, dismisses outside it."""
    rng = np.random.default_rng(seed)
    users = users or world.users
    types = [t for t, _ in EVENT_MIX]
    shares = np.array([s for _, s in EVENT_MIX])
    events = []
    for n in range(n_events):
        user = users[int(rng.integers(len(users)))]
        event_type = types[int(rng.choice(len(types), p=shares / shares.sum()))]
        own = world.user_cluster[user]
        if event_type == "dismiss" or rng.random() > taste_share:
            other = [c for c in range(world.n_clusters) if c != own]
            cluster = other[int(rng.integers(len(other)))] if other else own
        else:
            cluster = own
        event: dict[str, Any] = {
            "user_id": user,
            "item_id": _pick(rng, world.cluster_items[cluster]),
            "event_type": event_type,
            "ts": start_ts + n,
        }
        if event_type == "rating":
            event["value"] = float(rng.integers(3, 6) if cluster == own else rng.integers(1, 3))
        events.append(event)
    return events


def events_for_cluster(
    world: World,
    user_id: str,
    cluster: int,
    n: int,
    *,
    seed: int = 2,
    start_ts: float = 1_750_000_000.0,
    event_type: str = "click",
) -> list[dict[str, Any]]:
    """``n`` positive interactions of one user, all inside ``cluster``."""
    rng = np.random.default_rng(seed)
    items = world.cluster_items[cluster]
    return [
        {
            "user_id": user_id,
            "item_id": items[int(rng.integers(len(items)))],
            "event_type": event_type,
            "ts": start_ts + i,
        }
        for i in range(n)
    ]


def generate_requests(
    world: World,
    n_requests: int,
    *,
    n_candidates: int = 20,
    seed: int = 3,
    users: list[str] | None = None,
    k: int | None = None,
    prefix: str = "req",
    ts: float | None = None,
) -> list[dict[str, Any]]:
    """Requests whose candidates mix every cluster, in random order, with a noisy upstream score."""
    rng = np.random.default_rng(seed)
    users = users or world.users
    all_items = world.items
    requests = []
    for n in range(n_requests):
        user = users[n % len(users)] if n < len(users) else users[int(rng.integers(len(users)))]
        picked = rng.choice(len(all_items), size=min(n_candidates, len(all_items)), replace=False)
        request: dict[str, Any] = {
            "request_id": f"{prefix}-{n}",
            "user_id": user,
            "candidates": [{"item_id": all_items[int(i)], "score": round(float(rng.random()), 4)} for i in picked],
        }
        if k is not None:
            request["k"] = k
        if ts is not None:
            request["ts"] = ts
        requests.append(request)
    return requests


def cluster_share_at_k(world: World, user_id: str, ranked_items: list[str], k: int) -> float:
    """Share of the top k that belongs to the user's planted cluster."""
    top = ranked_items[:k]
    own = world.user_cluster[user_id]
    return sum(world.item_cluster.get(i) == own for i in top) / max(1, len(top))
