"""Publishing into a models root: one rename of a complete directory, never over a version."""

from pathlib import Path

import pytest

from models import store


def staged_artifact(root: Path, created: str) -> Path:
    staged = store.staging_dir(root, "test")
    (staged / store.MANIFEST).write_text(f'{{"created": "{created}"}}')
    (staged / "weights.safetensors").write_bytes(b"w")
    return staged


def test_publish_moves_the_whole_directory_and_leaves_no_staging(tmp_path: Path) -> None:
    published = store.publish(staged_artifact(tmp_path, "2026-01-01"), tmp_path, "v1")
    assert published == tmp_path / "v1" and (published / "weights.safetensors").read_bytes() == b"w"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]
    assert store.newest(tmp_path) == published


def test_publish_refuses_an_existing_version_and_an_incomplete_directory(tmp_path: Path) -> None:
    store.publish(staged_artifact(tmp_path, "2026-01-01"), tmp_path, "v1")
    with pytest.raises(FileExistsError):
        store.publish(staged_artifact(tmp_path, "2026-01-02"), tmp_path, "v1")
    assert (tmp_path / "v1" / store.MANIFEST).read_text() == '{"created": "2026-01-01"}'
    empty = store.staging_dir(tmp_path, "empty")
    with pytest.raises(ValueError, match="no complete artifact"):
        store.publish(empty, tmp_path, "v2")
    assert [p.name for p in store.versions(tmp_path)] == ["v1"]
