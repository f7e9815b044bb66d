from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from models import load_artifact
from models.dnn import DNNReranker
from models.features import build_vocab, feature_names, feature_rows
from streams.devtools.synthetic import World, generate_events, make_world
from tests.conftest import online_update
from trainer.train import train_model, train_to_artifact


def test_feature_names_accept_lists_and_pipe_strings() -> None:
    assert feature_names({"item_id": "1", "genres": ["Comedy", " Drama ", "comedy"], "tags": "Funny|cult|"}) == [
        "genre:comedy",
        "genre:drama",
        "tag:funny",
        "tag:cult",
    ]
    assert feature_names({"item_id": "1", "title": "No metadata"}) == []
    assert feature_names(None) == []
    assert feature_names({"genres": 3, "tags": [None, ""]}) == []


def test_vocab_counts_only_training_items_and_drops_rare_features() -> None:
    items = [
        {"item_id": 1, "genres": ["A", "B"]},
        {"item_id": "2", "genres": ["A"], "tags": ["x"]},
        {"item_id": "3", "genres": ["C"]},  # not a training item: C must not enter
        {"item_id": "4", "genres": ["A", "B"]},
    ]
    known = {"1": 1, "2": 2, "4": 3}
    assert build_vocab(items, known) == ["genre:a", "genre:b", "tag:x"]
    assert build_vocab(items, known, min_count=2) == ["genre:a", "genre:b"]
    assert build_vocab(items, known, max_size=1) == ["genre:a"]


def test_feature_rows_are_normalised_multi_hots() -> None:
    rows = feature_rows([{"genres": ["A", "B", "Z"]}, None, {"genres": ["b"]}], ["genre:a", "genre:b"])
    np.testing.assert_array_equal(rows, np.array([[0.5, 0.5], [0, 0], [0, 1]], dtype=np.float32))
    assert rows.dtype == np.float32


def _model_with_features() -> DNNReranker:
    torch.manual_seed(0)
    model = DNNReranker(3, 6, dim=8, history_len=4, mlp_hidden=[5], feature_vocab=["g:a", "g:b"])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        model.set_item_features(torch.arange(1, 7), torch.tensor([[1, 0], [0, 1], [0.5, 0.5], [1, 0], [0, 1], [0, 0]]))
    model.fill_unknown_rows()
    return model


def test_added_items_are_scored_from_their_features() -> None:
    model = _model_with_features()
    u = model.user_repr(torch.randn(2, 8), torch.tensor([[0, 0, 1, 2], [0, 3, 4, 5]]))
    before = model.score(u, torch.arange(7).expand(2, -1))
    mean_feats = model.item_features[0].clone()
    model.add_items(torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), mean_feats]))
    assert model.n_items == 9 and model.item_emb.weight.shape[0] == 10 and model.item_features.shape == (10, 2)
    after = model.score(u, torch.arange(10).expand(2, -1))
    torch.testing.assert_close(after[:, :7], before)  # existing rows unchanged
    # A new item with the average feature row is exactly the average (unknown) item; features move it.
    torch.testing.assert_close(after[:, 9], after[:, 0])
    assert not torch.allclose(after[:, 7], after[:, 8])
    # New rows are usable as history entries.
    assert torch.isfinite(model(torch.zeros(1, 8), torch.tensor([[0, 7, 8, 9]]), torch.arange(10)[None])).all()


def test_models_without_features_refuse_feature_calls() -> None:
    model = DNNReranker(2, 3, dim=4, history_len=2)
    assert "feature_vocab" not in model.hparams and model.feature_vocab == []
    with pytest.raises(ValueError, match="no item features"):
        model.add_items(torch.zeros(1, 0))


def _genre_items(world: World) -> list[dict]:
    return [{"item_id": i, "title": f"t{i}", "genres": [world.cluster_name(c)]} for i, c in world.item_cluster.items()]


@pytest.fixture(scope="module")
def cold_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, list[str], Path]:
    """A model trained without 12 of the world's items, which have genre metadata."""
    world = make_world(n_users=80, n_items=60, n_clusters=4, seed=11)
    cold = [items[-3:] for items in world.cluster_items]
    cold_ids = [i for group in cold for i in group]
    events = [e for e in generate_events(world, 1600, seed=12) if e["item_id"] not in cold_ids]
    path = train_to_artifact(
        events,
        tmp_path_factory.mktemp("feat") / "m",
        seed=0,
        log=lambda _: None,
        max_epochs=12,
        items=_genre_items(world),
    )
    return world, cold_ids, path


def test_artifact_stores_vocab_and_rows_and_round_trips(cold_setup: tuple[World, list[str], Path]) -> None:
    world, cold_ids, path = cold_setup
    b = load_artifact(path)
    assert b.feature_vocab == sorted(f"genre:{world.cluster_name(c)}" for c in range(4))
    assert b.manifest["model_hparams"]["feature_vocab"] == b.feature_vocab
    known = [i for i in world.items if i not in cold_ids][:5]
    # Known items' rows, and row 0 where an unknown item lands.
    feats = b.model.item_features[torch.tensor([*(b.item_index[i] for i in known), 0])].numpy()
    assert feats.shape == (6, 4)
    for row, item in zip(feats[:5], known):
        assert row[b.feature_vocab.index(f"genre:{world.cluster_name(world.item_cluster[item])}")] == 1.0
    np.testing.assert_allclose(feats[5].sum(), 1.0, rtol=1e-5)  # the mean row


def test_registered_cold_items_rank_by_genre(cold_setup: tuple[World, list[str], Path]) -> None:
    world, cold_ids, path = cold_setup
    b = load_artifact(path)
    n_before = b.model.n_items
    assert all(i not in b.item_index for i in cold_ids)
    meta = {m["item_id"]: m for m in _genre_items(world)}
    assert b.register_items([meta[i] for i in cold_ids]) == len(cold_ids)
    assert b.model.n_items == n_before + len(cold_ids) == len(b.item_ids) - 1
    rows = torch.tensor([b.item_index[i] for i in cold_ids])
    assert sorted(rows.tolist()) == list(range(n_before + 1, n_before + 1 + len(cold_ids)))
    uv = b.model.user_vectors()
    aucs = []
    for user, r in b.user_index.items():
        with torch.no_grad():
            s = b.model(uv[r : r + 1], torch.from_numpy(b.user_history[r : r + 1]), rows[None])[0]
        own = [float(x) for x, i in zip(s, cold_ids) if world.item_cluster[i] == world.user_cluster[user]]
        other = [float(x) for x, i in zip(s, cold_ids) if world.item_cluster[i] != world.user_cluster[user]]
        aucs.append(np.mean([[o > x for x in other] for o in own]))
    # Unregistered, all cold items are the same row-0 item (AUC 0 with ties counted as losses).
    assert np.mean(aucs) > 0.8


def test_register_is_idempotent_and_online_update_accepts_new_rows(cold_setup: tuple[World, list[str], Path]) -> None:
    world, cold_ids, path = cold_setup
    b = load_artifact(path)
    meta = {m["item_id"]: m for m in _genre_items(world)}
    assert b.register_items([meta[cold_ids[0]]]) == 1
    n, row = b.model.n_items, b.item_index[cold_ids[0]]
    before = b.model.item_features.clone()
    assert b.register_items([meta[cold_ids[0]], meta[world.items[0]]]) == 2  # re-apply: updates, no new rows
    assert b.model.n_items == n and torch.equal(b.model.item_features, before)
    assert b.register_items([{"item_id": "no-genre-item", "title": "x"}]) == 0  # nothing usable: stays unknown
    assert "no-genre-item" not in b.item_index
    vec = np.zeros(b.model.dim, dtype=np.float32)
    hist = np.zeros(b.history_len, dtype=np.int64)
    out = online_update(b, vec, hist, row, 1.0, seed=0)
    assert np.isfinite(out).all() and not np.allclose(out, vec)


def test_without_items_or_with_the_switch_off_no_features(cold_setup: tuple[World, list[str], Path]) -> None:
    world, _, _ = cold_setup
    events = generate_events(world, 300, seed=13)
    m, _ = train_model(
        events, log=lambda _: None, max_epochs=1, items=_genre_items(world), hparams={"item_features": False}
    )
    assert m.feature_vocab == [] and not hasattr(m, "item_features")
    m, _ = train_model(events, log=lambda _: None, max_epochs=1)
    assert m.feature_vocab == []


def test_cli_train_reads_items(tmp_path: Path) -> None:
    from streams.cli import main as cli_main

    world = make_world(n_users=20, n_items=16, n_clusters=2, seed=3)
    (tmp_path / "ev.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in generate_events(world, 200, seed=4)))
    (tmp_path / "items.jsonl").write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in _genre_items(world)))
    with pytest.raises(SystemExit) as done:
        cli_main(
            [
                "train",
                "--events",
                str(tmp_path / "ev.jsonl"),
                "--items",
                str(tmp_path / "items.jsonl"),
                "--out",
                str(tmp_path / "m"),
                "--max-epochs",
                "1",
            ]
        )
    assert done.value.code == 0
    assert load_artifact(tmp_path / "m").feature_vocab == ["genre:comedy", "genre:sci-fi"]
