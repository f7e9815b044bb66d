"""A directory of model versions: atomic publish, newest lookup, bounded retention.

Layout: ``ROOT/<version>/`` holds one artifact (manifest.json, weights.safetensors,
state.safetensors). A version appears only by an atomic rename of a complete
directory, so a reader never sees a half-written model; directories whose
names start with "." are unfinished writes and are ignored (and cleaned up).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def is_artifact(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def created_at(manifest: Mapping[str, Any]) -> float | None:
    """The manifest's creation time in seconds since the epoch (a naive time is UTC), or None
    when it has none.

    Raises:
        ValueError: ``created`` is not an ISO 8601 time.
    """
    created = manifest.get("created")
    if created is None:
        return None
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError:
        raise ValueError(f"created {created!r} is not an ISO 8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def versions(root: str | os.PathLike[str], *, created_not_after: float | None = None) -> list[Path]:
    """Published versions, oldest first (by the manifest's created time, then name).

    Args:
        created_not_after: Leave out versions created later than this (seconds since the epoch),
            or with no readable creation time: such a version would outrank every later one.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not is_artifact(child):
            continue
        try:
            manifest = json.loads((child / MANIFEST).read_text())
            created = manifest.get("created", "")
            when = created_at(manifest) if created_not_after is not None else None
            if created_not_after is not None and (when is None or when > created_not_after):
                log.warning("ignoring model version %s: created %r, in the future", child, created)
                continue
        except (OSError, ValueError, AttributeError):
            continue  # unreadable manifests are not published versions
        found.append((str(created), child.name, child))
    return [path for _, _, path in sorted(found)]


def newest(root: str | os.PathLike[str], *, created_not_after: float | None = None) -> Path | None:
    found = versions(root, created_not_after=created_not_after)
    return found[-1] if found else None


def resolve(path: str | os.PathLike[str], *, created_not_after: float | None = None) -> Path:
    """An artifact directory as given, or the newest version under a models root (`versions`
    explains ``created_not_after``).

    Raises:
        FileNotFoundError: neither an artifact nor a root with any version.
    """
    path = Path(path)
    if is_artifact(path):
        return path
    found = newest(path, created_not_after=created_not_after)
    if found is None:
        raise FileNotFoundError(f"no model artifact at {path} and no published version under it")
    return found


def confined(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """``path`` with every symbolic link resolved, when that lies inside ``root`` (resolved too).

    Raises:
        FileNotFoundError: ``path`` or ``root`` does not exist.
        ValueError: ``path`` resolves outside ``root``.
    """
    resolved, base = Path(path).resolve(strict=True), Path(root).resolve(strict=True)
    if not resolved.is_relative_to(base):
        raise ValueError(f"{path} resolves to {resolved}, outside {base}")
    return resolved


def staging_dir(root: str | os.PathLike[str], name: str) -> Path:
    """A fresh hidden directory inside ``root`` to write an artifact into before publishing."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".staging-{name}-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    return path


def fsync(path: str | os.PathLike[str]) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_into_place(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Rename a completely written directory to ``target`` in one step, replacing what is there.

    The files are flushed before the rename, so a crash right after it cannot leave empty files
    behind the new name, and the parent after it, so the rename itself survives a crash.
    ``staged`` must be on the same filesystem as ``target``.
    """
    staged, target = Path(staged), Path(target)
    for file in staged.iterdir():
        fsync(file)
    old = None
    if target.exists():
        # A rename cannot replace a non-empty directory: the old one steps aside just before, under
        # a hidden name, so readers miss the target only between two renames.
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
    os.replace(staged, target)
    fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def publish(staged: str | os.PathLike[str], root: str | os.PathLike[str], version: str) -> Path:
    """Move a complete artifact into ``root/<version>`` with one atomic rename.

    ``staged`` must be on the same filesystem as ``root`` (use :func:`staging_dir`).
    """
    staged, target = Path(staged), Path(root) / version
    if not is_artifact(staged):
        raise ValueError(f"{staged} holds no complete artifact")
    if target.exists():
        raise FileExistsError(f"version {version} is already published")
    return rename_into_place(staged, target)


def prune(root: str | os.PathLike[str], keep: int, *, protect: str | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest versions (never ``protect``), and stale staging dirs."""
    root = Path(root)
    removed = []
    for old in versions(root)[: max(0, len(versions(root)) - keep)]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".staging-") and time.time() - child.stat().st_mtime > 3600:
                shutil.rmtree(child, ignore_errors=True)
    return removed
