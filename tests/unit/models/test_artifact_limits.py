"""A manifest cannot make a loader allocate what its files do not hold, nor more than the limit."""

import functools
import json
import time
from pathlib import Path

import pytest
import torch

from models import load_artifact, store
from models.artifact import FutureArtifactError, created_at
from models.base import MODEL_REGISTRY, Reranker
from models.dnn import DNNReranker
from tests.unit.models.test_artifact import build


def edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for key, value in changes.items():
        if key in manifest.get("model_hparams", {}) or key == "dim":
            manifest["model_hparams"][key] = value
        else:
            manifest[key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def built_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The default device of every DNNReranker the code under test constructs."""
    devices: list[str] = []
    init = DNNReranker.__init__

    @functools.wraps(init)
    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        devices.append(str(torch.get_default_device()))
        init(self, *args, **kwargs)

    monkeypatch.setattr(DNNReranker, "__init__", spy)
    return devices


def test_a_small_manifest_asking_for_a_huge_model_is_refused_before_allocating(
    tmp_path: Path, built_on: list[str]
) -> None:
    _, out = build(tmp_path)
    # Built for real, 8192 wide takes ~0.3 GB (its dim x dim projection alone 256 MiB), and
    # 262,144 wide ~275 GB: the weights file still holds 8-wide tensors.
    for dim in (8192, 262_144):
        edit_manifest(out, dim=dim)
        built_on.clear()
        with pytest.raises(ValueError, match="has shape"):
            load_artifact(out)
        assert built_on == []  # sized from the manifest alone: nothing was allocated


def test_the_size_limit_applies_before_the_model_is_built(tmp_path: Path, built_on: list[str]) -> None:
    _, out = build(tmp_path)
    assert load_artifact(out, max_bytes=1 << 20).model.dim == 8
    built_on.clear()
    with pytest.raises(ValueError, match="over the limit of 1000 \\(max_model_bytes\\)"):
        load_artifact(out, max_bytes=1000)
    assert built_on == []
    edit_manifest(out, dim=262_144)
    with pytest.raises(ValueError, match="max_model_bytes"):
        load_artifact(out, max_bytes=1 << 30)


def test_a_model_created_in_the_future_is_refused_when_a_bound_is_given(tmp_path: Path) -> None:
    _, out = build(tmp_path)
    now = time.time()
    assert load_artifact(out, created_not_after=now + 300).version
    for created in ("9999-12-31T23:59:59+00:00", "99999999", None):
        edit_manifest(out, created=created)
        with pytest.raises(FutureArtifactError):
            load_artifact(out, created_not_after=now + 300)
        load_artifact(out)  # no bound: loads as before
    assert created_at({"created": "2026-01-01T00:00:00"}) == created_at({"created": "2026-01-01T00:00:00+00:00"})


@pytest.mark.parametrize("kind", sorted(MODEL_REGISTRY))
@pytest.mark.parametrize(
    "hparams",
    [{}, {"dim": 16, "history_len": 3, "mlp_hidden": [8, 4]}, {"dim": 8, "feature_vocab": ["genre:a", "genre:b"]}],
)
def test_declared_state_shapes_are_those_of_a_built_model(kind: str, hparams: dict[str, object]) -> None:
    cls = MODEL_REGISTRY[kind]
    built = cls(7, 11, **hparams).state_dict()
    assert cls.state_shapes(7, 11, **hparams) == {k: (tuple(t.shape), t.dtype) for k, t in built.items()}
    assert Reranker.state_shapes.__func__(cls, 7, 11, **hparams) == cls.state_shapes(7, 11, **hparams)  # type: ignore[attr-defined]


def test_a_models_root_passes_over_versions_from_the_future(tmp_path: Path) -> None:
    _, old = build(tmp_path / "models", "old")
    _, future = build(tmp_path / "models", "future")
    edit_manifest(future, created="9999-12-31T23:59:59+00:00")
    assert store.resolve(tmp_path / "models") == future  # without a bound the future wins, as before
    bound = time.time() + 300
    assert store.resolve(tmp_path / "models", created_not_after=bound) == old
    assert store.versions(tmp_path / "models", created_not_after=bound) == [old]
