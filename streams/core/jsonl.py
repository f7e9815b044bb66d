"""JSON-lines files: one JSON object per line, the format of every file the commands read or write."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSON-lines file, lazily; blank lines are skipped.

    Raises:
        ValueError: a line that is not a JSON object, with its line number.
    """
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            yield obj


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (creating missing parent directories); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for record in records:
            fh.write(orjson.dumps(record) + b"\n")
    return path
