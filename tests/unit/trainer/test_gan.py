import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_artifact
from models.gan import GANReranker
from streams.devtools.synthetic import generate_events, make_world
from tests.conftest import online_update
from trainer import gan as gan_module
from trainer.train import train_model, train_to_artifact

FAST = {
    "gan_epochs": 3,
    "gan_batch_size": 64,
    "gan_samples": 8,
    "gan_lr_g": 1e-3,
    "gan_lr_d": 1e-3,
    "serve": "discriminator",
}


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return generate_events(make_world(n_users=40, n_items=30, n_clusters=3, seed=7), 400, seed=8)


def _all_scores(model: GANReranker) -> torch.Tensor:
    """[n_users + 1, n_items + 1] scores of every user (empty history) for every item row."""
    n_users, n_items = model.n_users, model.n_items
    hist = torch.zeros(n_users + 1, model.history_len, dtype=torch.int64)
    with torch.no_grad():
        return model(model.user_vectors(), hist, torch.arange(n_items + 1).expand(n_users + 1, -1))


def test_gan_trains_without_nans_and_publishes_a_loadable_artifact(events: list[dict], tmp_path: Path) -> None:
    lines: list[str] = []
    path = train_to_artifact(events, tmp_path / "gan", kind="gan", seed=0, log=lines.append, max_epochs=3, hparams=FAST)
    b = load_artifact(path)
    assert b.name == "gan" and isinstance(b.model, GANReranker) and b.manifest["kind"] == "gan"
    info = b.manifest["training"]["gan"]
    assert info["pretrain_epochs"] == 3 and len(info["log"]) == 3 and info["stopped"] == "max epochs"
    for rec in info["log"]:
        assert math.isfinite(rec["d_loss"]) and math.isfinite(rec["g_loss"]) and math.isfinite(rec["gen_entropy"])
        # Not collapsed: many distinct items among the generator's samples, entropy well above 0.
        assert rec["gen_distinct_items"] > 20 and rec["gen_entropy"] > 1.0
    assert any(line.startswith("gan epoch   1") and "distinct" in line for line in lines)
    m = b.manifest["metrics"]
    assert info["served"] == "discriminator" and 1 <= m["best_epoch"] <= 3 and 0 <= m["ndcg@10"] <= 1
    assert all(torch.isfinite(p).all() for p in b.model.state_dict().values())

    # The same seed and epochs give the DNN the GAN started from; the adversarial phase moved it.
    dnn, dnn_info = train_model(events, seed=0, log=lambda _: None, max_epochs=3)
    assert m["pretrained_ndcg@10"] == pytest.approx(dnn_info["metrics"]["ndcg@10"])
    assert not torch.allclose(_all_scores(b.model), _all_scores(dnn), atol=1e-4)

    # Serving code paths treat it like a dnn model.
    row = b.item_index[b.item_ids[1]]
    vec = online_update(b, np.zeros(b.model.dim, dtype=np.float32), np.zeros(b.history_len, np.int64), row, 1.0, seed=1)
    assert np.isfinite(vec).all() and np.abs(vec).sum() > 0


def test_generator_can_serve_and_serve_is_checked(events: list[dict]) -> None:
    model, info = train_model(
        events,
        kind="gan",
        seed=1,
        log=lambda _: None,
        max_epochs=2,
        hparams={**FAST, "gan_epochs": 2, "serve": "generator"},
    )
    log = info["training"]["gan"]["log"]
    assert info["metrics"]["ndcg@10"] == max(r["generator_ndcg@10"] for r in log)
    assert info["training"]["gan"]["served"] == "generator" and info["hparams"]["serve"] == "generator"
    assert isinstance(model, GANReranker) and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="serve"):
        train_model(events, kind="gan", log=lambda _: None, max_epochs=1, hparams={"serve": "both"})
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        train_model(events, kind="dnn", log=lambda _: None, max_epochs=1, hparams={"serve": "generator"})


def test_non_finite_loss_stops_and_keeps_a_finite_checkpoint(
    events: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gan_module._g_loss
    after_epoch_1 = {"on": False}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        loss = real(*args, **kwargs)
        return loss * math.nan if after_epoch_1["on"] else loss

    def log(line: str) -> None:
        if line.startswith("gan epoch   1"):
            after_epoch_1["on"] = True

    monkeypatch.setattr(gan_module, "_g_loss", poisoned)
    model, info = train_model(events, kind="gan", seed=0, log=log, max_epochs=2, hparams={**FAST, "serve": "generator"})
    gan = info["training"]["gan"]
    assert gan["stopped"].startswith("non-finite loss in epoch 2") and gan["log"][-1]["non_finite"]
    assert info["metrics"]["best_epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_collapse_check_stops_training(events: list[dict]) -> None:
    # Asking for every item to be sampled every epoch makes any real generator "collapsed".
    _, info = train_model(
        events, kind="gan", seed=0, log=lambda _: None, max_epochs=1, hparams={**FAST, "gan_min_distinct_share": 2.0}
    )
    gan = info["training"]["gan"]
    assert "collapsed in epoch 1" in gan["stopped"] and len(gan["log"]) == 1
