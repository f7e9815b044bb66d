"""JSON-lines files: the one reader and writer of the commands, bench and tests."""

from pathlib import Path

import pytest

from streams.core.jsonl import read_jsonl, write_jsonl


def test_write_then_read_round_trips_and_skips_blank_lines(tmp_path: Path) -> None:
    records = [{"user_id": "u1", "item_id": "i1", "ts": 1.5}, {"request_id": "r", "candidates": [{"item_id": "a"}]}]
    path = write_jsonl(tmp_path / "new" / "dir" / "r.jsonl", records)
    assert path == tmp_path / "new" / "dir" / "r.jsonl"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\n\n  \n", 1))
    assert list(read_jsonl(path)) == records


@pytest.mark.parametrize("line, why", [(b"{oops", "not JSON"), (b"[1, 2]", "not a JSON object")])
def test_a_bad_line_is_reported_with_its_number(tmp_path: Path, line: bytes, why: str) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"ok": 1}\n\n' + line + b"\n")
    with pytest.raises(ValueError, match=f"e.jsonl:3: {why}"):
        list(read_jsonl(path))
