"""Starting and stopping the processes of local runs: the demo, benchmarks and tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def launch_worker(
    model_dir: Path,
    *,
    web_port: int,
    data_dir: Path,
    log_path: Path,
    metrics_port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A ``reranker worker`` child process writing stdout and stderr to ``log_path``.

    It runs as ``python -m streams`` from ``cwd``, so a ``cwd`` of another checkout runs that
    checkout's code; ``env`` carries its settings (None: this process's environment).
    ``metrics_port`` None leaves the worker's default (the metrics_port setting, or the next free port).
    """
    cmd = [
        sys.executable,
        "-m",
        "streams",
        "worker",
        "--model",
        str(model_dir),
        "--web-port",
        str(web_port),
        "--data-dir",
        str(data_dir),
    ]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
    # The child holds its own descriptor of the log; ours can close once it is started.
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [*cmd, *extra_args], stdout=log, stderr=subprocess.STDOUT, env=None if env is None else dict(env), cwd=cwd
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
