"""Upstream features, the DNN's upstream part, and artifacts with and without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import load_artifact, save_artifact
from models.dnn import DNNReranker
from models.upstream import N_UPSTREAM_FEATURES, UPSTREAM_FEATURES, upstream_batch, upstream_features
from streams.core.scoring import ScoringInput, rerank_batch


def column(name: str) -> int:
    return UPSTREAM_FEATURES.index(name)


def test_features_are_normalised_within_the_request() -> None:
    x = upstream_features(np.array([3.0, 1.0, np.nan, 2.0]), 4)
    assert x.shape == (4, N_UPSTREAM_FEATURES) and x.dtype == np.float32
    assert x[:, column("position_gain")] == pytest.approx(1.0 / np.log2(np.arange(4) + 2.0))
    assert x[:, column("position_share")] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert x[:, column("score_absent")].tolist() == [0.0, 0.0, 1.0, 0.0]
    z = x[:, column("score_z")]
    assert z[[0, 1, 3]] == pytest.approx((np.array([3.0, 1.0, 2.0]) - 2.0) / np.std([3.0, 1.0, 2.0]))
    assert z[2] == 0.0
    # Ranks by score: 3.0 first, 2.0 second, 1.0 third; absent 0.
    assert x[:, column("score_rank_gain")] == pytest.approx([1.0, 1 / np.log2(4), 0.0, 1 / np.log2(3)])
    # Shifting and scaling a request's scores changes nothing.
    assert upstream_features(np.array([3.0, 1.0, np.nan, 2.0]) * 7 + 100, 4) == pytest.approx(x)


def test_a_request_without_scores_keeps_its_position_features() -> None:
    x = upstream_features(None, 3)
    assert x[:, column("score_absent")].tolist() == [1.0, 1.0, 1.0]
    assert (x[:, column("score_z")] == 0).all() and (x[:, column("score_rank_gain")] == 0).all()
    assert x[:, column("position_gain")] == pytest.approx(1.0 / np.log2(np.arange(3) + 2.0))
    assert (upstream_features(np.full(3, np.nan), 3) == x).all()
    assert upstream_features(None, 0).shape == (0, N_UPSTREAM_FEATURES)


def test_the_batch_is_each_request_padded_with_zeros() -> None:
    a, b = np.array([1.0, 2.0]), np.array([5.0, np.nan, 4.0])
    batch = upstream_batch([a, b], 4)
    assert batch.shape == (2, 4, N_UPSTREAM_FEATURES)
    assert (batch[0, :2] == upstream_features(a, 2)).all() and (batch[0, 2:] == 0).all()
    assert (batch[1, :3] == upstream_features(b, 3)).all() and (batch[1, 3] == 0).all()


def upstream_model() -> DNNReranker:
    torch.manual_seed(0)
    model = DNNReranker(4, 6, dim=8, history_len=3, upstream_inputs=N_UPSTREAM_FEATURES)
    with torch.no_grad():
        for p in model.upstream_net.parameters():
            p.normal_(0.0, 1.0)
    return model.eval()


def test_the_parts_sum_to_the_score_and_none_means_no_upstream_term() -> None:
    model = upstream_model()
    users, hist = torch.randn(2, 8), torch.tensor([[0, 1, 2], [0, 0, 3]])
    items = torch.tensor([[1, 2, 3, 4], [5, 6, 1, 0]])
    up = torch.from_numpy(upstream_batch([np.array([4.0, 3.0, 2.0, 1.0]), np.array([1.0, 2.0, np.nan])], 4))
    with torch.no_grad():
        parts = model.score_parts(users, hist, items, up)
        assert set(parts) == {"model", "upstream"}
        assert torch.allclose(parts["model"] + parts["upstream"], model(users, hist, items, up), atol=1e-6)
        assert set(model.score_parts(users, hist, items)) == {"model"}
        assert torch.equal(model(users, hist, items), parts["model"])
    with pytest.raises(ValueError, match="do not fit"):
        model(users, hist, items, up[:, :3])


def test_the_closed_form_shapes_hold_for_a_model_with_an_upstream_part() -> None:
    model = upstream_model()
    expected = DNNReranker.state_shapes(4, 6, dim=8, history_len=3, upstream_inputs=N_UPSTREAM_FEATURES)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: s for k, (s, _) in expected.items()}


def save(model: DNNReranker, out: Path) -> Path:
    return save_artifact(
        out,
        model,
        item_ids=["", *(f"i{n}" for n in range(1, model.n_items + 1))],
        user_ids=["", *(f"u{n}" for n in range(1, model.n_users + 1))],
        user_history=np.zeros((model.n_users + 1, model.history_len), dtype=np.int64),
        trained_through={"max_ts": 1.75e9},
        hparams=dict(model.hparams),
        metrics={},
        event_weights={"click": 1.0},
    )


def request(bundle: Any, scores: list[float]) -> ScoringInput:
    ids = [f"i{n}" for n in range(1, len(scores) + 1)]
    return ScoringInput(
        np.zeros(bundle.model.dim, dtype=np.float32),
        np.zeros(bundle.history_len, dtype=np.int64),
        ids,
        np.array(scores),
        None,
    )


def test_serving_scores_the_upstream_features_of_a_model_with_an_upstream_part(tmp_path: Path) -> None:
    bundle = load_artifact(save(upstream_model(), tmp_path / "m"))
    assert bundle.model.n_upstream_features == N_UPSTREAM_FEATURES
    down, up = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    a, b = rerank_batch(bundle, [request(bundle, down), request(bundle, up)])
    # Same user, same items: only the upstream scores differ, and so do the model's scores.
    assert dict(a) != dict(b)
    with torch.no_grad():
        expected = bundle.model(
            torch.zeros(1, bundle.model.dim),
            torch.zeros(1, bundle.history_len, dtype=torch.int64),
            torch.arange(1, 7).unsqueeze(0),
            torch.from_numpy(upstream_batch([np.array(down)], 6)),
        )[0]
    assert dict(a) == pytest.approx({f"i{n + 1}": float(s) for n, s in enumerate(expected)}, abs=1e-5)


def test_an_older_model_without_an_upstream_part_loads_and_ignores_the_upstream_order(bundle: Any) -> None:
    # The session's trained model is built without served lists, as every older artifact.
    assert "upstream_inputs" not in bundle.manifest["model_hparams"]
    assert bundle.model.n_upstream_features == 0
    items = bundle.item_ids[1:9]
    inputs = [
        ScoringInput(np.zeros(bundle.model.dim, np.float32), np.zeros(bundle.history_len, np.int64), items, s, None)
        for s in (np.linspace(1, 0, 8), np.linspace(0, 1, 8), np.full(8, np.nan))
    ]
    scored = [dict(r) for r in rerank_batch(bundle, inputs)]
    assert scored[0] == scored[1] == scored[2]


def test_explained_parts_of_a_model_with_an_upstream_part_sum_to_the_returned_score(tmp_path: Path) -> None:
    import orjson

    from streams.core.explain import PARTS_ATOL
    from streams.core.processing import DictStateStore, InMessage, Processor
    from streams.settings import Settings

    bundle = load_artifact(save(upstream_model(), tmp_path / "m"))
    settings = Settings.load(env={})
    candidates = [{"item_id": f"i{n}", "score": 1.0 / n} for n in range(1, 7)]
    request = {"request_id": "r", "user_id": "u1", "candidates": candidates, "explain": True}
    [out] = Processor(bundle, settings, DictStateStore()).process(
        [InMessage(settings.requests_topic, 0, 0, None, b"u1", orjson.dumps(request))]
    )
    result = orjson.loads(out.value)
    for item in result["items"]:
        parts = item["explain"]["parts"]
        assert set(parts) == {"model", "upstream"} and parts["upstream"] != 0.0
        assert abs(sum(parts.values()) - item["score"]) <= PARTS_ATOL
