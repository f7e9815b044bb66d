from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_artifact
from streams.core.jsonl import read_jsonl, write_jsonl
from streams.core.offline import score_offline
from streams.devtools.synthetic import World, generate_events, make_world
from streams.settings import DEFAULT_EVENT_WEIGHTS, Settings
from tests.conftest import online_update
from trainer.data import build_interactions
from trainer.train import train_model, train_to_artifact


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(n_users=50, n_items=40, n_clusters=4, seed=5)


@pytest.fixture(scope="module")
def planted(world: World) -> list[dict]:
    """About eight events per user, mostly inside the user's cluster."""
    return generate_events(world, 400, seed=6)


@pytest.fixture(scope="module")
def artifact(planted: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines: list[str] = []
    path = train_to_artifact(planted, tmp_path_factory.mktemp("t") / "art", seed=0, log=lines.append)
    assert any(line.startswith("epoch   1 loss") and "ndcg@10" in line for line in lines)
    return path


def test_model_ranks_a_users_own_cluster_above_the_others(artifact: Path, planted: list[dict], world: World) -> None:
    b = load_artifact(artifact)
    seen: dict[str, set[str]] = {}
    for e in planted:
        seen.setdefault(e["user_id"], set()).add(e["item_id"])
    uv = b.model.user_vectors()
    all_rows = torch.arange(1, b.model.n_items + 1)[None]
    aucs = []
    for user, row in b.user_index.items():
        with torch.no_grad():
            s = b.model(uv[row : row + 1], torch.from_numpy(b.user_history[row : row + 1]), all_rows)[0]
        own, other = [], []
        for r in range(1, b.model.n_items + 1):
            item = b.item_ids[r]
            if item not in seen[user]:
                (own if world.item_cluster[item] == world.user_cluster[user] else other).append(float(s[r - 1]))
        if own and other:
            aucs.append(np.mean([[o > x for x in other] for o in own]))
    # Unseen items of the user's own cluster against other clusters' items, averaged over users.
    assert len(aucs) > 40
    assert np.mean(aucs) > 0.8  # about 0.89 trained, about 0.47 untrained


def test_artifact_contents(artifact: Path, planted: list[dict]) -> None:
    b = load_artifact(artifact)
    m = b.manifest
    assert b.trained_through == {"max_ts": max(e["ts"] for e in planted)}
    assert m["training"]["n_events"] == len(planted) and m["training"]["epochs"] >= 1
    assert m["metrics"]["users"] > 0 and 0 <= m["metrics"]["ndcg@10"] <= 1
    assert m["event_weights"] == DEFAULT_EVENT_WEIGHTS
    # Artifact history covers every event, the validation carve-out included.
    last = {e["user_id"]: e["item_id"] for e in planted if e["event_type"] != "dismiss"}
    assert len(last) > 40
    for u, i in last.items():
        assert b.user_history[b.user_index[u], -1] == b.item_index[i]


def test_training_is_deterministic_for_a_seed(planted: list[dict]) -> None:
    kw = {"seed": 3, "log": lambda _: None, "max_epochs": 2}
    a, _ = train_model(planted, **kw)
    b, _ = train_model(planted, **kw)
    c, _ = train_model(planted, **{**kw, "seed": 4})
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)


def test_single_event_users_dismisses_and_odd_ids() -> None:
    events = [{"user_id": k, "item_id": k % 5, "event_type": "click", "ts": k} for k in range(12)]
    events += [{"user_id": 1, "item_id": 3, "event_type": "dismiss", "ts": 20.5}]
    events += [{"user_id": "x", "item_id": "y", "event_type": "unknown", "ts": 1}]
    model, info = train_model(events, seed=0, log=lambda _: None, max_epochs=2)
    assert info["user_ids"][1:] == [str(k) for k in range(12)]
    assert info["metrics"]["users"] == 0  # nobody has enough events to give one up
    with torch.no_grad():
        s = model(torch.zeros(1, model.dim), torch.zeros(1, 3, dtype=torch.int64), torch.tensor([[0, 1, 2]]))
    assert torch.isfinite(s).all()


def test_no_usable_events_is_an_error() -> None:
    with pytest.raises(ValueError, match="no usable event"):
        train_model([{"user_id": 1, "item_id": 2, "event_type": "hover", "ts": 0}], log=lambda _: None)
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        train_model([{"user_id": 1, "item_id": 2, "event_type": "click", "ts": 0}], hparams={"dimm": 3})


def test_model_hparams_of_the_trained_kind_override_its_defaults(planted: list[dict]) -> None:
    per_kind = {"dnn": {"dim": 8, "mlp_hidden": [4]}, "gan": {"gan_epochs": 1}}
    model, info = train_model(planted, log=lambda _: None, max_epochs=1, model_hparams=per_kind)
    assert model.hparams["dim"] == 8 and model.hparams["mlp_hidden"] == [4] and model.dim == 8
    assert info["hparams"]["dim"] == 8 and "gan_epochs" not in info["hparams"]  # another kind's table
    # The run's own hparams win over the settings' table.
    model, _ = train_model(planted, log=lambda _: None, max_epochs=1, model_hparams=per_kind, hparams={"dim": 12})
    assert model.dim == 12


@pytest.mark.parametrize(
    "per_kind,match",
    [
        ({"dnnn": {"dim": 8}}, "unknown model kind 'dnnn'"),
        ({"dnn": {"dimm": 8}}, r"model_hparams\.dnn: unknown hyper-parameters \['dimm'\]"),
        ({"dnn": {"gan_epochs": 1}}, r"model_hparams\.dnn: unknown hyper-parameters \['gan_epochs'\]"),
        ({"gan": {"dimm": 8}}, r"model_hparams\.gan: unknown hyper-parameters \['dimm'\]"),
    ],
)
def test_model_hparams_with_an_unknown_kind_or_key_are_an_error(per_kind: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_model(
            [{"user_id": 1, "item_id": 2, "event_type": "click", "ts": 0}], log=lambda _: None, model_hparams=per_kind
        )


def test_online_updates_pull_a_cold_user_towards_a_cluster(artifact: Path, world: World) -> None:
    b = load_artifact(artifact)
    rows = [[b.item_index[i] for i in items if i in b.item_index] for items in world.cluster_items]
    hist = torch.zeros(1, b.history_len, dtype=torch.int64)
    items = torch.arange(b.model.n_items + 1)[None]
    with torch.no_grad():
        before = b.model(torch.zeros(1, b.model.dim), hist, items)[0].numpy()
    for c, cluster in enumerate(rows):
        vec = np.zeros(b.model.dim, dtype=np.float32)  # a user the model has never seen
        for n, r in enumerate(cluster[:4]):  # four events; the cluster's other items are held out
            vec = online_update(b, vec, hist[0].numpy(), r, 1.0, seed=n)
        with torch.no_grad():
            gain = b.model(torch.from_numpy(vec)[None], hist, items)[0].numpy() - before
        same = gain[cluster[4:]].mean()
        others = np.mean([gain[rows[k]].mean() for k in range(len(rows)) if k != c])
        # Measured about 0.17-0.6 for `same` and 0.2-0.35 for the difference.
        assert same > 0.05 and same > others + 0.1, (c, same, others)


def test_offline_scoring_writes_score_py_results(artifact: Path, tmp_path: Path) -> None:
    b = load_artifact(artifact)
    user, item1, item2 = b.manifest["user_ids"][1], b.item_ids[1], b.item_ids[2]
    reqs = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"request_id": "a", "user_id": user, "candidates": [{"item_id": item1}, {"item_id": "new"}]},
            {"request_id": "b", "user_id": "stranger", "candidates": [{"item_id": item1}, {"item_id": item2}]},
        ],
    )
    out = write_jsonl(tmp_path / "res.jsonl", score_offline(b, Settings(), read_jsonl(reqs)))
    res = list(read_jsonl(out))
    assert [r["request_id"] for r in res] == ["a", "b"]
    for r in res:
        assert "error" not in r
        assert [x["rank"] for x in r["items"]] == [1, 2]
        assert r["items"][0]["score"] >= r["items"][1]["score"]
    assert {x["item_id"] for x in res[0]["items"]} == {item1, "new"}
    assert {x["item_id"] for x in res[1]["items"]} == {item1, item2}


def test_validation_metric_ranks_and_ties() -> None:
    from models.dnn import DNNReranker
    from trainer.data import ValidationSplit
    from trainer.validation import evaluate_split

    model = DNNReranker(2, 30, dim=4, history_len=3)
    with torch.no_grad():
        model.user_emb.weight.zero_()
        model.item_emb.weight.zero_()
        model.mlp[-1].weight.zero_()
        model.item_bias.weight[:, 0] = torch.arange(31.0)  # higher row, higher score
        model.item_bias.weight[0, 0] = 100.0  # padding candidates score highest: only the mask drops them
    cands = np.array([[20, 1, 2, 3, 0], [5, 9, 10, 1, 0], [7, 7, 1, 2, 0]])
    split = ValidationSplit(
        users=np.array([1, 2, 1]),
        history=np.zeros((3, 3), dtype=np.int64),
        candidates=cands,
        valid=np.array([[True] * 4 + [False]] * 3),
    )
    m = evaluate_split(model, split, k=2)
    # Ranks 1, 3 and 2 (a tie counts against the held-out item).
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 3)


def test_a_warm_start_begins_from_the_serving_models_rows(artifact: Path, world: World) -> None:
    serving = load_artifact(artifact)
    newcomer = [{"user_id": "new-user", "item_id": "new-item", "event_type": "click", "ts": 1.75e9}]
    events = generate_events(world, 100, seed=9) + newcomer
    # No epoch: the model is exactly its starting point.
    model, info = train_model(events, seed=1, max_epochs=0, warm_from=serving, log=lambda line: None)
    data = build_interactions(events, DEFAULT_EVENT_WEIGHTS)
    old = dict(serving.model.named_parameters())
    for user, row in data.user_index.items():
        if user in serving.user_index:
            assert torch.equal(model.user_emb.weight[row], old["user_emb.weight"][serving.user_index[user]])
    for item, row in data.item_index.items():
        if item in serving.item_index:
            assert torch.equal(model.item_emb.weight[row], old["item_emb.weight"][serving.item_index[item]])
    assert torch.equal(model.hist_proj.weight, old["hist_proj.weight"])
    # Unknown to the serving model: a fresh row, not a copy.
    new_row = data.item_index["new-item"]
    assert not any(torch.equal(model.item_emb.weight[new_row], r) for r in old["item_emb.weight"])
    assert info["training"]["warm_start"] == {
        "from": serving.version,
        "users": sum(u in serving.user_index for u in data.user_ids[1:]),
        "items": sum(i in serving.item_index for i in data.item_ids[1:]),
        "tensors": len(old),
    }


def test_warm_started_training_converges_on_planted_data(artifact: Path, world: World) -> None:
    serving = load_artifact(artifact)
    events = generate_events(world, 400, seed=10)
    _, cold_info = train_model(events, seed=2, log=lambda line: None)
    _, warm_info = train_model(events, seed=2, warm_from=serving, log=lambda line: None)
    # 50 validation users: between seeds a cold start's NDCG@10 alone moves by 0.03-0.05
    # (0.570-0.631 over seeds 3-6), so closer than that says nothing.
    assert warm_info["metrics"]["ndcg@10"] >= cold_info["metrics"]["ndcg@10"] - 0.05
    assert warm_info["metrics"]["ndcg@10"] > 0.5
    # It starts near the end: early stopping needs fewer epochs.
    assert warm_info["training"]["epochs"] <= cold_info["training"]["epochs"]


def test_no_warm_start_from_a_model_without_common_items(artifact: Path) -> None:
    events = [{"user_id": f"x{k}", "item_id": f"other{k % 5}", "event_type": "click", "ts": k} for k in range(30)]
    _, info = train_model(events, seed=0, max_epochs=1, warm_from=load_artifact(artifact), log=lambda line: None)
    assert "warm_start" not in info["training"]
