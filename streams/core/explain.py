"""Explanations of a result (``"explain": true``): score components, the history items behind each
score, and a summary of the user's state.

Components come from ``Reranker.score_parts`` over the request's whole candidate list (a model may
normalise per list, e.g. its upstream scores), rounded like the scores; they sum to the returned
score within ``PARTS_ATOL``. "because" is a leave-one-out over the history: the score of each
returned item is computed again without each distinct history item (all its positions set to
padding), in one batched forward pass, and the (up to) three items whose removal lowers the score
the most, by a positive amount, are named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models import ModelBundle
from models.upstream import upstream_batch
from streams.core.scoring import SCORE_DECIMALS, ScoringInput
from streams.core.state import UserState

BECAUSE_ITEMS = 3
# The parts are rounded one by one to SCORE_DECIMALS and come from a forward pass of another batch
# shape than the returned score (a few float32 ulps apart, as SCORE_ATOL in the tests allows), so
# their sum may differ from the score by up to 0.5e-5 per part plus 1e-5; 1e-4 bounds that for up
# to 18 parts.
PARTS_ATOL = 1e-4


def _tensors(
    bundle: ModelBundle, request: ScoringInput
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """[1, D] user, [1, H] history, [1, N] item rows and the upstream input of one request: what
    `scoring._model_scores` gives the model for it, so that the parts sum to the returned score
    (the upstream features only for a model with an upstream part)."""
    index = bundle.item_index
    items = torch.tensor([[index.get(c, 0) for c in request.candidates]], dtype=torch.int64)
    user = torch.from_numpy(np.asarray(request.user_vector, dtype=np.float32)[None])
    history = torch.from_numpy(np.asarray(request.history, dtype=np.int64)[None])
    if not getattr(bundle.model, "n_upstream_features", 0):
        return user, history, items, None
    upstream = torch.from_numpy(upstream_batch([request.upstream], len(request.candidates)))
    return user, history, items, upstream


def explain_request(
    bundle: ModelBundle, request: ScoringInput, returned: Sequence[int], scores: Sequence[float]
) -> list[dict[str, Any]]:
    """One "explain" object per returned candidate, in the order of ``returned``.

    Args:
        bundle: the serving model.
        request: the request as it was scored.
        returned: indexes of the returned candidates, best first.
        scores: their returned scores (the "model" field).

    Returns:
        [{"model", "upstream", "parts", "because"}]: the model score, the upstream score (None
        when the request gave none), the score components, and up to BECAUSE_ITEMS history item
        ids whose presence raised the score the most.
    """
    model = bundle.model
    user, history, items, upstream_input = _tensors(bundle, request)
    cols = np.asarray(returned, dtype=np.int64)
    with torch.inference_mode():
        parts = {
            name: part[0].numpy().astype(np.float64)
            for name, part in model.score_parts(user, history, items, upstream_input).items()
        }
        base = sum(parts.values())
        rows = np.unique(history[0].numpy())
        rows = rows[rows > 0]
        because: list[list[str]] = [[] for _ in returned]
        if rows.size and cols.size:
            without = history.repeat(rows.size, 1)
            without[torch.from_numpy(rows)[:, None] == without] = 0
            repeated = None if upstream_input is None else upstream_input.expand(rows.size, *upstream_input.shape[1:])
            loo = model(user.expand(rows.size, -1), without, items.expand(rows.size, -1), repeated).numpy()
            # drop[r, c]: how much history item r raised the score of returned item c.
            drop = np.asarray(base)[cols][None, :] - loo[:, cols].astype(np.float64)
            top = np.argsort(-drop, axis=0, kind="stable")[:BECAUSE_ITEMS]
            ids = bundle.item_ids
            for c in range(cols.size):
                because[c] = [ids[int(rows[r])] for r in top[:, c] if drop[r, c] > 0]
    upstream = np.asarray(request.upstream, dtype=np.float64)
    out = []
    for c, (i, score) in enumerate(zip(cols.tolist(), scores)):
        up = float(upstream[i])
        out.append(
            {
                "model": score,
                "upstream": None if up != up else up,
                "parts": {name: round(float(values[i]), SCORE_DECIMALS) for name, values in parts.items()},
                "because": because[c],
            }
        )
    return out


def state_summary(state: UserState) -> dict[str, Any]:
    """What the worker knows of the user: events applied online, per type, the time of the last one
    (None before any), the history length and the model version of the state."""
    return {
        "events_applied": state.applied,
        "event_counts": dict(state.counts),
        "last_event_ts": state.last_ts or None,
        "history_items": len(state.history),
        "model_version": state.model_version,
    }
