"""The weights a training keeps are the running average of `average_weights` ("weight_average"),
not the weights of its last step."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import trainer.train as train_module
from streams.devtools.synthetic import generate_events, make_world
from trainer.train import average_weights, train_model


def test_the_average_follows_the_ramp_then_the_decay() -> None:
    """Step t moves the average by 1 - min(decay, (1 + t) / (10 + t)) towards the weights."""
    start = torch.tensor([0.0, 2.0])
    averaged = [start.clone()]
    expected = start.double()
    decay = 0.9
    for step in range(1, 60):
        weights = torch.tensor([float(step), -float(step) / 3])
        average_weights(averaged, [weights], step, decay)
        d = min(decay, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * weights.double()
    # float32 against float64 over 59 steps of a convex combination: a few ulps of values near 50.
    assert torch.allclose(averaged[0].double(), expected, rtol=1e-5, atol=1e-5)
    # The ramp: the first step weighs the new weights 9/11, not 1 - decay.
    first = [torch.zeros(1)]
    average_weights(first, [torch.ones(1)], 1, 0.999)
    assert first[0].item() == pytest.approx(9 / 11, rel=1e-6)


def _train_recording(
    monkeypatch: pytest.MonkeyPatch, hparams: dict[str, Any], epochs: int
) -> tuple[torch.nn.Module, list[Any]]:
    """Train a small model; return it and a copy of the average after the last step."""
    last: list[Any] = []

    def recording(averaged: Any, params: Any, step: int, decay: float) -> None:
        average_weights(averaged, params, step, decay)
        last[:] = [a.detach().clone() for a in averaged]

    monkeypatch.setattr(train_module, "average_weights", recording)
    world = make_world(n_users=40, n_items=30, n_clusters=3, seed=5)
    events = generate_events(world, 600, seed=6)
    model, _ = train_model(events, hparams=hparams, seed=0, max_epochs=epochs, log=lambda _: None)
    return model, last


@pytest.mark.parametrize("validated", [True, False], ids=["with validation", "without validation"])
def test_training_keeps_the_averaged_weights(monkeypatch: pytest.MonkeyPatch, validated: bool) -> None:
    # Without validation every epoch runs and the last average is kept; with validation and one
    # epoch the best epoch is that one, validated on the average.
    hp: dict[str, Any] = {"weight_average": 0.999, "min_steps_per_epoch": 8}
    if not validated:
        hp["val_min_positives"] = 10**6  # no user gives up an event: nothing to validate on
    epochs = 1 if validated else 2
    model, last = _train_recording(monkeypatch, hp, epochs)
    trained = list(model.parameters())  # no served lists: every parameter is trained (frozen after)
    assert last and len(last) == len(trained)
    for kept, average in zip(trained, last, strict=True):
        # Row 0 of the tables (the unknown user / item) is filled after training (fill_unknown_rows).
        rows = slice(1, None) if kept.dim() == 2 else slice(None)
        assert torch.equal(kept.detach()[rows], average[rows])

    plain, never = _train_recording(monkeypatch, {**hp, "weight_average": 0.0}, epochs)
    assert never == []  # off: never called
    item_rows = model.state_dict()["item_emb.weight"]
    assert not torch.allclose(item_rows, plain.state_dict()["item_emb.weight"], atol=1e-4)
