"""What happens to a scored list before it is returned: business rules and the diversity stage.

The stages, in this order (README, "Diversity, rules and explain"):

1. ``exclude``: the excluded items leave the list.
2. ``boost``: a boosted item's score becomes score + ln(factor) (its exp(score) times the
   factor), and the list is sorted again by that (the previous order breaks ties).
3. pinned items are set aside.
4. diversity (MMR or DPP) re-orders the rest, relevance being the boosted scores.
5. ``max_per``: walking the list in that order, an item is skipped when one of its values of an
   attribute already has ``n`` items (pinned items count first); this stops once the list has
   k minus the pins items.
6. ``pin``: each pinned item goes to its rank (or to the end of a list that ended up shorter).

The result is cut to ``k`` on the way (step 5), so the greedy diversity stage only runs for as
many picks as the result needs. Returned scores stay the model's: these stages change the order.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.core.diversity import diversify
from streams.core.records import DiversitySpec, RankingRules

# candidate indexes of a list -> their [M, M] similarity matrix
SimilarityOf = Callable[[Sequence[int]], np.ndarray]


def attribute_values(record: Mapping[str, Any] | None, attribute: str) -> set[Any]:
    """The values an item has for an attribute of its record: each element of a list, or the one
    scalar; none when the item has no record, no such field, or only unhashable values."""
    if record is None:
        return set()
    value = record.get(attribute)
    return {v for v in (value if isinstance(value, list) else [value]) if isinstance(v, (str, int, float, bool))}


@dataclass
class Arrangement:
    """The stages after scoring for one request.

    Attributes:
        k: how many to return (None = all that remain).
        rules: the request's business rules, or None.
        diversity: the diversity stage (the request's, else the settings' default), its weight
            resolved; None or a weight of 0 = off.
        similarity: builds the similarity matrix the diversity stage needs, on demand.
        items: item records (the items topic), for ``max_per``.
    """

    k: int | None
    rules: RankingRules | None = None
    diversity: DiversitySpec | None = None
    similarity: SimilarityOf | None = None
    items: Mapping[str, Mapping[str, Any]] | None = None

    def __call__(self, order: np.ndarray, scores: np.ndarray, candidates: Sequence[str]) -> np.ndarray:
        return arrange(order, scores, candidates, self)


def arrange(order: np.ndarray, scores: np.ndarray, candidates: Sequence[str], spec: Arrangement) -> np.ndarray:
    """Apply the stages of the module docstring to one scored list.

    Args:
        order: candidate indexes by model score, best first (ties already broken).
        scores: [N] model scores by candidate index.
        candidates: the candidate ids by index.
        spec: the stages to apply.

    Returns:
        The candidate indexes to return, best first, at most ``spec.k``.
    """
    rules = spec.rules or RankingRules()
    index = order.tolist()
    if rules.exclude:
        index = [i for i in index if candidates[i] not in rules.exclude]
    adjusted = scores
    if rules.boost:
        adjusted = np.array(scores, dtype=np.float64)
        for i in index:
            factor = rules.boost.get(candidates[i])
            if factor is not None:
                adjusted[i] += math.log(factor)
        kept = np.array(index, dtype=np.int64)
        index = kept[np.argsort(-adjusted[kept], kind="stable")].tolist()
    pinned: dict[int, int] = {}
    if rules.pin:
        pinned = {i: rules.pin[candidates[i]] for i in index if candidates[i] in rules.pin}
        index = [i for i in index if i not in pinned]
    picks: Iterator[int] = iter(index)
    diversity = spec.diversity
    weight = (diversity.weight or 0.0) if diversity is not None else 0.0
    if diversity is not None and weight > 0 and len(index) > 1 and spec.similarity is not None:
        kept = np.array(index, dtype=np.int64)
        order_of = diversify(diversity.method, adjusted[kept], spec.similarity(index), weight)
        picks = (index[p] for p in order_of)
    need = None if spec.k is None else spec.k - len(pinned)
    if rules.max_per:
        out = _limited(picks, need, rules.max_per, list(pinned), candidates, spec.items or {})
    else:
        out = list(itertools.islice(picks, need))
    for i, rank in sorted(pinned.items(), key=lambda entry: entry[1]):
        out.insert(min(rank - 1, len(out)), i)
    return np.array(out, dtype=np.int64)


def _limited(
    picks: Iterator[int],
    need: int | None,
    max_per: Mapping[str, int],
    pinned: Sequence[int],
    candidates: Sequence[str],
    items: Mapping[str, Mapping[str, Any]],
) -> list[int]:
    """The picks that keep every attribute value within its limit, at most ``need`` of them."""
    counts = {attribute: Counter[Any]() for attribute in max_per}

    def values(i: int) -> dict[str, set[Any]]:
        record = items.get(candidates[i])
        return {attribute: attribute_values(record, attribute) for attribute in max_per}

    for i in pinned:
        for attribute, pinned_values in values(i).items():
            counts[attribute].update(pinned_values)
    out: list[int] = []
    for i in picks:
        if need is not None and len(out) >= need:
            break
        found = values(i)
        if any(counts[a][v] >= limit for a, limit in max_per.items() for v in found[a]):
            continue
        for attribute, vals in found.items():
            counts[attribute].update(vals)
        out.append(i)
    return out
