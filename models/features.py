"""Item metadata -> feature names -> normalised multi-hot rows, shared by training and serving.

Metadata is one record of the `items` topic or an items.jsonl line:
`{"item_id", "title"?, "genres"?, "tags"?}`, where genres and tags are lists of strings or one
string separated by "|". Feature names are "genre:<name>" and "tag:<name>", lower-cased and
stripped; the title is not used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

FEATURE_FIELDS: dict[str, str] = {"genres": "genre", "tags": "tag"}


def feature_names(metadata: Mapping[str, Any] | None) -> list[str]:
    """The feature names of one item, deduplicated, in first-seen order (empty for None)."""
    if not metadata:
        return []
    out: dict[str, None] = {}
    for field, prefix in FEATURE_FIELDS.items():
        value = metadata.get(field)
        if isinstance(value, str):
            value = value.split("|")
        if not isinstance(value, (list, tuple)):
            continue
        for v in value:
            if isinstance(v, str) and v.strip():
                out[f"{prefix}:{v.strip().lower()}"] = None
    return list(out)


def build_vocab(
    items: Iterable[Mapping[str, Any]],
    known_ids: Mapping[str, Any] | set[str],
    *,
    min_count: int = 1,
    max_size: int = 5000,
) -> list[str]:
    """Feature vocabulary learned from the metadata of items the model trains on.

    Only items in `known_ids` count: a feature seen on no training item would keep its random
    initial embedding. Features on fewer than `min_count` items are dropped; of the rest, the
    `max_size` most frequent are kept (ties by name).

    Returns:
        Sorted feature names.
    """
    counts: Counter[str] = Counter()
    for meta in items:
        if str(meta.get("item_id")) in known_ids:
            counts.update(feature_names(meta))
    kept = [f for f, c in counts.items() if c >= min_count]
    kept.sort(key=lambda f: (-counts[f], f))
    return sorted(kept[:max_size])


def feature_rows(metadata: Sequence[Mapping[str, Any] | None], vocab: Sequence[str]) -> np.ndarray:
    """Normalised multi-hot rows: 1/m on each of an item's m in-vocabulary features.

    Args:
        metadata: One record (or None = no metadata) per row.
        vocab: Feature names, one per column.

    Returns:
        [len(metadata), len(vocab)] float32; a row without in-vocabulary features is all zeros.
    """
    index = {f: j for j, f in enumerate(vocab)}
    out = np.zeros((len(metadata), len(vocab)), dtype=np.float32)
    for r, meta in enumerate(metadata):
        cols = [index[f] for f in feature_names(meta) if f in index]
        if cols:
            out[r, cols] = 1.0 / len(cols)
    return out
