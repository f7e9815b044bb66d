"""The dnn kind's numpy forward (serving) agrees with its torch forward."""

from typing import Any

import numpy as np
import pytest
import torch

from models.dnn import DNNReranker
from models.sequence import transition_table
from models.upstream import N_UPSTREAM_FEATURES, upstream_batch

# float32 sums in another order: a few ulps of scores of magnitude ~1-10. Scores are served
# rounded to 5 decimals, so agreement to 1e-5 is what serving can tell apart.
ATOL = 2e-5


def trained_like(**hparams: Any) -> DNNReranker:
    """A dnn with every weight away from its initial value (as after training)."""
    torch.manual_seed(3)
    model = DNNReranker(6, 12, dim=8, history_len=5, **hparams)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    if model.sequence_top:
        rng = np.random.default_rng(0)
        model.set_transitions(
            *transition_table([rng.integers(1, 13, size=20).tolist() for _ in range(30)], 12, window=3, top=4)
        )
    if model.n_features:
        model.set_item_features(torch.arange(1, 13), torch.rand(12, model.n_features))
    return model.eval()


@pytest.mark.parametrize(
    "hparams",
    [
        {},
        {"mlp_hidden": [16, 8]},
        {"feature_vocab": ["a", "b", "c"]},
        {"upstream_inputs": N_UPSTREAM_FEATURES},
        {"sequence_top": 4},
        {"upstream_inputs": N_UPSTREAM_FEATURES, "sequence_top": 4, "mlp_hidden": [16]},
    ],
)
def test_numpy_scores_match_the_torch_forward(hparams: dict[str, Any]) -> None:
    model = trained_like(**hparams)
    rng = np.random.default_rng(1)
    users = rng.normal(size=(4, 8)).astype(np.float32)
    # Full, partial and empty histories; candidates with unknown items (0) and padding.
    history = np.array([[1, 2, 3, 4, 5], [0, 0, 0, 7, 9], [0, 0, 0, 0, 0], [0, 11, 0, 12, 3]], dtype=np.int64)
    items = rng.integers(1, 13, size=(4, 9))
    items[1, 7:] = 0
    items[3, 2] = 0
    scores = [rng.normal(size=9) for _ in range(4)]
    upstream = upstream_batch(scores, 9) if model.n_upstream_features else None
    got = model.numpy_scores(users, history, items, upstream, {})
    args = [torch.from_numpy(users), torch.from_numpy(history), torch.from_numpy(items)]
    with torch.no_grad():
        want = model(*args, None if upstream is None else torch.from_numpy(upstream)).numpy()
    assert got is not None and got.shape == want.shape == (4, 9)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # The table's term is there: without it the scores differ.
    if model.sequence_top:
        with torch.no_grad():
            model.seq_weight.zero_()
        assert not np.allclose(model.numpy_scores(users, history, items, upstream, {}), got, atol=1e-3)
