"""Announcements on model-updates name any path and any version: the swapper trusts neither."""

import asyncio
import dataclasses
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from models import ModelBundle
from streams.core.worker_metrics import MODEL_LOAD_FAILURE_REASONS, WorkerMetrics
from streams.settings import Settings
from streams.worker.model_swap import ModelSwapper


def copy_model(source: Path, target: Path, created: str | None = None) -> Path:
    """A copy of an artifact; ``created`` (default: now, newer than the serving one) rewritten."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["created"] = created or datetime.now(UTC).isoformat()
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@dataclasses.dataclass
class Swapper:
    swapper: ModelSwapper
    serving: ModelBundle
    models_dir: Path

    def announce(self, path: Path | str, version: str) -> bool:
        raw = orjson.dumps({"name": "dnn", "version": version, "path": str(path)})
        return asyncio.run(self.swapper.handle(raw))

    @property
    def version(self) -> str:
        return str(self.swapper.processor.bundle.version)

    def failures(self) -> dict[str, float]:
        counter: Any = self.swapper.metrics.model_load_failures
        return {r: counter.labels(r)._value.get() for r in MODEL_LOAD_FAILURE_REASONS if counter.labels(r)._value.get()}


@pytest.fixture
def swapper(bundle: ModelBundle, tmp_path: Path) -> Swapper:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    settings = dataclasses.replace(Settings.load(env={}), models_dir=str(models_dir))
    processor: Any = SimpleNamespace(bundle=bundle)
    return Swapper(ModelSwapper(settings, processor, WorkerMetrics()), bundle, models_dir)


def test_a_model_outside_models_dir_is_refused_however_it_is_named(
    swapper: Swapper, trained_world: Any, tmp_path: Path
) -> None:
    outside = copy_model(trained_world.model_dir, tmp_path / "elsewhere" / "m")
    (swapper.models_dir / "link").symlink_to(outside, target_is_directory=True)
    for n, path in enumerate(
        (
            outside,  # named directly
            swapper.models_dir / ".." / "elsewhere" / "m",  # climbing out with ..
            swapper.models_dir / "link",  # a symbolic link inside that points out
        )
    ):
        assert not swapper.announce(path, f"escape-{n}")
        assert swapper.version == swapper.serving.version
    assert swapper.failures() == {"outside_models_dir": 3}
    # The same artifact inside models_dir is served: only where it lies was wrong.
    inside = copy_model(trained_world.model_dir, swapper.models_dir / "v2")
    assert swapper.announce(inside, "v2")
    assert swapper.failures() == {"outside_models_dir": 3}


def test_a_model_from_the_future_is_refused_and_blocks_nothing(swapper: Swapper, trained_world: Any) -> None:
    future = copy_model(trained_world.model_dir, swapper.models_dir / "future", created="9999-12-31T23:59:59+00:00")
    assert not swapper.announce(future, "from-9999")
    ahead = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    assert not swapper.announce(copy_model(trained_world.model_dir, swapper.models_dir / "ahead", ahead), "ahead")
    assert swapper.version == swapper.serving.version
    assert swapper.failures() == {"future_version": 2}
    # Within the allowed skew a model is on time, and a later one still swaps in.
    on_time = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
    assert swapper.announce(copy_model(trained_world.model_dir, swapper.models_dir / "v2", on_time), "v2")


def test_a_huge_model_is_refused_by_the_size_limit(swapper: Swapper, trained_world: Any) -> None:
    small = dataclasses.replace(swapper.swapper.settings, max_model_bytes=1000)
    swapper.swapper.settings = small
    assert not swapper.announce(copy_model(trained_world.model_dir, swapper.models_dir / "v2"), "v2")
    assert swapper.failures() == {"invalid_artifact": 1}


def test_items_that_arrive_during_a_load_reach_the_new_model(
    swapper: Swapper, trained_world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.worker import model_swap

    catalog = SimpleNamespace(items={"a": {"item_id": "a"}})
    swapper.swapper.catalog = catalog
    registered: list[str] = []
    real_load = model_swap.load_and_validate

    def register(records: Any) -> None:
        if not registered:
            # Item metadata the catalog takes on the event loop while the new model, not yet
            # serving, registers the catalogue in a thread.
            catalog.items["b"] = {"item_id": "b"}
        registered.extend(r["item_id"] for r in records)

    def loading(*args: Any, **kwargs: Any) -> ModelBundle:
        bundle = real_load(*args, **kwargs)
        monkeypatch.setattr(bundle, "register_items", register)
        return bundle

    monkeypatch.setattr(model_swap, "load_and_validate", loading)
    assert swapper.announce(copy_model(trained_world.model_dir, swapper.models_dir / "v2"), "v2")
    assert sorted(registered) == ["a", "b"]


def test_a_missing_artifact_is_retried_until_it_appears(swapper: Swapper, trained_world: Any, tmp_path: Path) -> None:
    swapper.swapper.backoff_s = (0.05,)
    staged = copy_model(trained_world.model_dir, tmp_path / "staged")
    target = swapper.models_dir / "v2"

    async def scenario() -> None:
        raw = orjson.dumps({"name": "dnn", "version": "v2", "path": str(target)})
        assert not await swapper.swapper.handle(raw)
        shutil.copytree(staged, target)
        while swapper.swapper.swaps == 0:
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert swapper.swapper.processor.bundle is not swapper.serving
    assert swapper.failures() == {"missing_artifact": 1}
    assert swapper.swapper.metrics.model_load_retries._value.get() >= 1  # type: ignore[attr-defined]
