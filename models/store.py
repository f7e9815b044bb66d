"""A directory of model versions: atomic publish, newest lookup, bounded retention.

Layout: ``ROOT/<version>/`` holds one artifact (manifest.json, weights.safetensors,
state.safetensors). A version appears only by an atomic rename of a complete
directory, so a reader never sees a half-written model; directories whose
names start with "." are unfinished writes and are ignored (and cleaned up).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

MANIFEST = "manifest.json"


def is_artifact(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def versions(root: str | os.PathLike[str]) -> list[Path]:
    """Published versions, oldest first (by the manifest's created time, then name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not is_artifact(child):
            continue
        try:
            created = json.loads((child / MANIFEST).read_text()).get("created", "")
        except (OSError, ValueError):
            continue  # unreadable manifests are not published versions
        found.append((str(created), child.name, child))
    return [path for _, _, path in sorted(found)]


def newest(root: str | os.PathLike[str]) -> Path | None:
    found = versions(root)
    return found[-1] if found else None


def resolve(path: str | os.PathLike[str]) -> Path:
    """An artifact directory as given, or the newest version under a models root.

    Raises:
        FileNotFoundError: neither an artifact nor a root with any version.
    """
    path = Path(path)
    if is_artifact(path):
        return path
    found = newest(path)
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
