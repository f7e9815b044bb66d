"""A worker's RocksDB memory: one block cache and one write-buffer budget for all its partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import load_artifact
from streams.settings import Settings
from streams.worker.app import build_worker

rocksdict = pytest.importorskip("rocksdict")

MB = 1 << 20


def test_the_worker_store_shares_one_bounded_cache_across_partitions(trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(store="rocksdb://", partitions=4, rocksdb_block_cache_mb=4, rocksdb_write_buffer_mb=2)
    worker = build_worker(settings, load_artifact(trained_world.model_dir), web_port=6097, data_dir=tmp_path)
    options = worker.table.data.rocksdb_options  # what faust opens each partition's database with
    # faust's default is a 2 GiB cache of its own for every partition.
    assert options.block_cache_size == 4 * MB
    dbs = [options.open(tmp_path / f"p{p}") for p in range(3)]
    value = b"s" * 400  # about one user's state
    for db in dbs:
        for k in range(20_000):
            db[f"user-{k}".encode()] = value
    # Memtables of all three together. The manager asks for flushes once past its budget and they
    # run in the background, so usage overshoots for a moment (seen up to 3.4 MB); without a shared
    # budget all 24 MB written would still sit in memtables.
    assert options.write_buffers.get_usage() <= 2 * MB * 3
    for db in dbs:
        db.flush()
        for k in range(0, 20_000, 3):
            assert db[f"user-{k}".encode()] == value
    # 3 x 8 MB of states read through one 4 MB cache.
    assert 0 < options.cache.get_usage() <= 4 * MB
    for db in dbs:
        db.close()


def test_a_memory_store_is_left_alone(trained_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    worker = build_worker(
        Settings(store="memory://"), load_artifact(trained_world.model_dir), web_port=6096, data_dir=tmp_path
    )
    assert not hasattr(worker.table.data, "rocksdb_options")
