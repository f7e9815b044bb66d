import numpy as np
import pytest

from models import seeded
from models.seeded import MIN_ROWS, seeded_integers


def numpy_draws(seeds: list[int], low: int, high: int, n: int) -> np.ndarray:
    return np.stack([np.random.default_rng(s).integers(low, high, size=n) for s in seeds])


EDGE_SEEDS = [0, 1, 2, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


@pytest.mark.parametrize("low,high,n", [(1, 2000, 16), (1, 41, 4), (1, 3, 5), (0, 2**31, 7), (1, 41, 1)])
def test_equals_one_default_rng_per_seed(low: int, high: int, n: int) -> None:
    rng = np.random.default_rng(0)
    seeds = EDGE_SEEDS + [int(s) for s in rng.integers(0, 2**64, size=500, dtype=np.uint64)]
    got = seeded_integers(seeds, low, high, n)
    assert got.dtype == np.int64 and got.shape == (len(seeds), n)
    assert np.array_equal(got, numpy_draws(seeds, low, high, n))


def test_rejected_draws_and_uncovered_inputs_fall_back_to_numpy() -> None:
    # A range of 3 * 2**30 rejects a quarter of the 32-bit draws: those rows take numpy's path.
    seeds = list(range(200))
    low, high = 5, 5 + 3 * 2**30
    _, ok = seeded._replica(np.array(seeds, dtype=np.uint64), low, high, 3)
    assert 0 < ok.sum() < len(seeds)
    assert np.array_equal(seeded_integers(seeds, low, high, 3), numpy_draws(seeds, low, high, 3))
    # Seeds past 64 bits, a range of one value, a small batch.
    big = [2**64 + s for s in range(MIN_ROWS)] + [2**64 - 1]
    assert np.array_equal(seeded_integers(big, 1, 100, 4), numpy_draws(big, 1, 100, 4))
    assert np.array_equal(seeded_integers(seeds, 1, 2, 4), numpy_draws(seeds, 1, 2, 4))
    assert np.array_equal(seeded_integers(seeds[:3], 1, 100, 4), numpy_draws(seeds[:3], 1, 100, 4))


def test_a_replica_that_disagrees_with_numpy_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = seeded._replica

    def off_by_one(seeds, low, high, n):  # type: ignore[no-untyped-def]
        draws, ok = real(seeds, low, high, n)
        return draws + 1, ok

    monkeypatch.setattr(seeded, "_replica", off_by_one)
    monkeypatch.setattr(seeded, "_verified", {})
    seeds = list(range(3 * MIN_ROWS))
    assert np.array_equal(seeded_integers(seeds, 1, 50, 6), numpy_draws(seeds, 1, 50, 6))
    assert seeded._verified == {(1, 50, 6): False}


def test_the_replica_serves_full_64_bit_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seeds as `update_seed` makes them: uniform over 64 bits, so half of them above 2**63.
    seeds = [int(s) for s in np.random.default_rng(4).integers(0, 2**64, size=64, dtype=np.uint64)]
    want = numpy_draws(seeds, 1, 300, 16)
    assert np.array_equal(seeded_integers(seeds, 1, 300, 16), want)  # verifies the replica once

    def no_generators(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("numpy generator used")

    monkeypatch.setattr(np.random, "default_rng", no_generators)
    assert np.array_equal(seeded_integers(seeds, 1, 300, 16), want)
    assert np.array_equal(seeded_integers([np.uint64(s) for s in seeds], 1, 300, 16), want)
