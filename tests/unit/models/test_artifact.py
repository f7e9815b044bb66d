import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models import ModelBundle, load_artifact, save_artifact
from models.dnn import DNNReranker

N_USERS, N_ITEMS, H = 5, 9, 4


def build(tmp_path: Path, name: str = "art") -> tuple[DNNReranker, Path]:
    torch.manual_seed(3)
    model = DNNReranker(N_USERS, N_ITEMS, dim=8, history_len=H, mlp_hidden=[8])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        model.user_emb.weight[0].zero_()
        model.hist_emb.weight[0].zero_()
    model.fill_unknown_rows()
    hist = np.zeros((N_USERS + 1, H), dtype=np.int64)
    hist[1:, -2:] = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 1]]
    out = save_artifact(
        tmp_path / name,
        model,
        item_ids=[f"i{k}" for k in range(1, N_ITEMS + 1)],
        user_ids=["", *[f"u{k}" for k in range(1, N_USERS + 1)]],
        user_history=hist,
        trained_through={"topic": "user-events", "offsets": {"0": 12}},
        hparams={"dim": 8, "lr": 0.01},
        metrics={"ndcg@10": 0.5},
        event_weights={"click": 1.0},
        extra={"training": {"epochs": 1, "n_events": 10, "seconds": 0.1}},
    )
    return model, out


def scores(bundle_or_model: ModelBundle | DNNReranker, hist: np.ndarray) -> torch.Tensor:
    model = bundle_or_model.model if isinstance(bundle_or_model, ModelBundle) else bundle_or_model
    rows = torch.arange(N_USERS + 1)
    items = torch.arange(N_ITEMS + 1).repeat(N_USERS + 1, 1)
    with torch.no_grad():
        return model(model.user_vectors()[rows], torch.from_numpy(hist), items)


def test_round_trip_gives_identical_scores_and_metadata(tmp_path: Path) -> None:
    model, out = build(tmp_path)
    b = load_artifact(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "state.safetensors", "weights.safetensors"]
    assert torch.equal(scores(model, b.user_history), scores(b, b.user_history))
    assert b.name == "dnn" and b.history_len == H and b.version == b.manifest["version"]
    assert b.item_ids[0] == "" and b.item_index["i3"] == 3 and b.user_index["u5"] == 5
    assert b.user_history.dtype == np.int64 and b.user_history[2, -1] == 4
    assert sorted(load_file(str(out / "state.safetensors"))) == ["user_history"]
    assert b.trained_through == {"topic": "user-events", "offsets": {"0": 12}}
    assert b.manifest["training"]["n_events"] == 10 and b.manifest["metrics"]["ndcg@10"] == 0.5
    assert not b.model.training
    assert not any(p.requires_grad for p in b.model.parameters())


def test_republish_replaces_atomically_with_a_new_version(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    v1 = load_artifact(out).version
    _, out2 = build(tmp_path)
    assert out2 == out
    assert load_artifact(out).version != v1
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary or old dirs left


def test_rejects_truncated_weights(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    w = out / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"weights\.safetensors"):
        load_artifact(out)


def test_rejects_corrupted_weights(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    w = out / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-7] ^= 0xFF  # inside the tensor data: the header still parses
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_artifact(out)


def rewrite_with_checksum(out: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a tensor file and fix the manifest checksum, so only the content check can fail."""
    import hashlib

    save_file(tensors, str(out / name))
    m = json.loads((out / "manifest.json").read_text())
    data = (out / name).read_bytes()
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(m))


def test_rejects_wrong_weight_shape(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    w = load_file(str(out / "weights.safetensors"))
    w["item_emb.weight"] = torch.zeros(N_ITEMS + 2, 8)
    rewrite_with_checksum(out, "weights.safetensors", w)
    with pytest.raises(ValueError, match=r"item_emb\.weight"):
        load_artifact(out)


def test_rejects_wrong_state_shape(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    s = load_file(str(out / "state.safetensors"))
    s["user_history"] = torch.zeros(N_USERS + 1, H + 1, dtype=torch.int64)
    rewrite_with_checksum(out, "state.safetensors", s)
    with pytest.raises(ValueError, match="user_history"):
        load_artifact(out)


def test_loads_an_older_artifact_with_item_popularity_and_rejects_other_state(tmp_path: Path) -> None:
    model, out = build(tmp_path)
    s = load_file(str(out / "state.safetensors"))
    rewrite_with_checksum(out, "state.safetensors", {**s, "item_popularity": torch.ones(N_ITEMS + 1)})
    b = load_artifact(out)
    assert torch.equal(scores(model, b.user_history), scores(b, b.user_history))
    assert not hasattr(b, "item_popularity")
    rewrite_with_checksum(out, "state.safetensors", {**s, "extra": torch.ones(3)})
    with pytest.raises(ValueError, match="state tensors"):
        load_artifact(out)


def test_rejects_manifest_that_disagrees_with_tensors(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["n_items"] += 1
    m["item_ids"].append("extra")
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="shape"):
        load_artifact(out)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("kind", "gbdt", "unknown model kind"), ("format", 2, "format"), ("version", None, None)],
)
def test_rejects_bad_manifest(tmp_path: Path, key: str, value: object, match: str | None) -> None:
    _, out = build(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    if value is None:
        del m[key]
    else:
        m[key] = value
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=match or key):
        load_artifact(out)


def test_rejects_missing_or_garbled_manifest(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_artifact(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="missing"):
        load_artifact(out)
    with pytest.raises(ValueError, match="not a directory"):
        load_artifact(tmp_path / "nowhere")


def test_save_rejects_mismatched_state(tmp_path: Path) -> None:
    model = DNNReranker(N_USERS, N_ITEMS, dim=8, history_len=H)
    with pytest.raises(ValueError, match="user_history"):
        save_artifact(
            tmp_path / "a",
            model,
            item_ids=[str(k) for k in range(N_ITEMS)],
            user_ids=[str(k) for k in range(N_USERS)],
            user_history=np.zeros((N_USERS, H), dtype=np.int64),
            trained_through={},
            hparams={},
            metrics={},
            event_weights={},
        )
    assert not any(tmp_path.iterdir())
