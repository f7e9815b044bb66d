"""`np.random.default_rng(seed).integers(low, high, size=n)` for many seeds at once.

The online update draws each event's negatives from a generator seeded for that event alone, so
that replays and batches give the same vectors. Building one numpy Generator per event costs
about 10 us, more than the rest of a batched update. `seeded_integers` computes the same numbers
for a whole batch with array arithmetic: numpy's SeedSequence hash (pool of 4 words), PCG64's
seeding and 128-bit LCG steps, its XSL-RR output split into 32-bit halves, and Lemire's bounded
integers, the path `Generator.integers` takes for an int64 range below 2**32.

The replica is checked against numpy itself the first time each (low, high, n) is used, so a
numpy release that changed any of these steps makes it fall back to numpy instead of drifting.
Rows the replica does not cover (a Lemire rejection, a seed outside 0..2**64-1) use numpy too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Below this many rows, numpy's own generators are cheaper than the fixed cost of the arrays.
MIN_ROWS = 12

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1
# numpy/random/bit_generator.pyx (SeedSequence)
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
# PCG64's 128-bit LCG multiplier
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341


def _hash_consts(init: int, mult: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The constants of `count` successive SeedSequence hash steps: what each XORs in, then
    multiplies by (the hash constant before and after its update), as [count, 1] uint32."""
    xor, mul = [], []
    for _ in range(count):
        xor.append(init)
        init = (init * mult) & _M32
        mul.append(init)
    return np.array(xor, dtype=np.uint32)[:, None], np.array(mul, dtype=np.uint32)[:, None]


# mix_entropy makes 16 hashmix calls (4 to fill the pool, then 3 per source word), in this order.
_MIX_XOR, _MIX_MUL = _hash_consts(_INIT_A, _MULT_A, 16)
_GEN_XOR, _GEN_MUL = _hash_consts(_INIT_B, _MULT_B, 8)
_OTHERS = [[d for d in range(4) if d != src] for src in range(4)]

_verified: dict[tuple[int, int, int], bool] = {}


def seeded_integers(seeds: Sequence[int], low: int, high: int, n: int) -> np.ndarray:
    """Row b is `np.random.default_rng(seeds[b]).integers(low, high, size=n)`, exactly.

    Args:
        seeds: B seeds, as `default_rng` takes them (non-negative ints).
        low: Lowest value drawn.
        high: One past the highest value drawn.
        n: Draws per seed.

    Returns:
        [B, n] int64.
    """
    out = np.empty((len(seeds), n), dtype=np.int64)
    todo: Sequence[int] = range(len(seeds))
    if len(seeds) >= MIN_ROWS and n > 0 and _covered(low, high) and _trusted(low, high, n):
        s = _as_uint64(seeds)
        if s is not None:
            draws, ok = _replica(s, low, high, n)
            out[ok] = draws[ok]
            todo = np.flatnonzero(~ok).tolist()
    for b in todo:
        out[b] = np.random.default_rng(seeds[b]).integers(low, high, size=n)
    return out


def _as_uint64(seeds: Sequence[int]) -> np.ndarray | None:
    """The seeds as [B] uint64, or None unless all are integers in 0..2**64-1 (anything else, a
    float, a negative or a longer int, is left to numpy to take or reject)."""
    if not all(isinstance(x, (int, np.integer)) for x in seeds) or min(seeds) < 0 or max(seeds) > _M64:
        return None
    # Python ints first: a list mixing ints above and below 2**63 has no common numpy int type.
    return np.array([int(x) for x in seeds], dtype=np.uint64)


def _covered(low: int, high: int) -> bool:
    """Ranges that numpy draws with 32-bit Lemire (neither a constant nor the full 32 bits)."""
    return 1 <= high - 1 - low < _M32


def _trusted(low: int, high: int, n: int) -> bool:
    """Whether the replica matches numpy for this range and count (checked once per process)."""
    key = (low, high, n)
    if key not in _verified:
        seeds = [0, 1, 7, _M32, _M32 + 1, _M64, *range(123456789, 123456789 + 2 * MIN_ROWS)]
        draws, ok = _replica(np.array(seeds, dtype=np.uint64), low, high, n)
        want = np.stack([np.random.default_rng(s).integers(low, high, size=n) for s in seeds])
        _verified[key] = bool(np.array_equal(draws[ok], want[ok]))
        if not _verified[key]:
            log.warning("numpy's seeded integers differ from the replica; using numpy generators")
    return _verified[key]


def _replica(seeds: np.ndarray, low: int, high: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws for seeds [B] uint64 in 0..2**64-1.

    Returns:
        (draws [B, n] int64, ok [B] bool): rows where Lemire rejected a draw (numpy then draws
        again, with probability under (high - low) / 2**32 per draw) are not ok.
    """
    pool = _seed_pool(seeds)
    state = _generate_state(pool)  # [4, B] uint64, as `generate_state(4, np.uint64)`
    # pcg64_set_seed: the 128-bit seed is (state[0] high, state[1] low), the sequence is
    # (state[2], state[3]); srandom sets inc = seq << 1 | 1, then state = (seed + inc) * M + inc.
    inc_hi = (state[2] << np.uint64(1)) | (state[3] >> np.uint64(63))
    inc_lo = (state[3] << np.uint64(1)) | np.uint64(1)
    x_hi, x_lo = _add128(state[0], state[1], inc_hi, inc_lo)
    # Output k (1-based) is taken after the k-th step: state_k = M^(k+1) x + inc (1 + M + .. + M^k).
    k_out = (n + 1) // 2
    a_hi, a_lo, c_hi, c_lo = _lcg_consts(k_out)
    p_hi, p_lo = _mul128(x_hi[:, None], x_lo[:, None], a_hi, a_lo)
    q_hi, q_lo = _mul128(inc_hi[:, None], inc_lo[:, None], c_hi, c_lo)
    s_hi, s_lo = _add128(p_hi, p_lo, q_hi, q_lo)  # [B, k_out]
    # XSL-RR: rotate (high ^ low) right by the top 6 bits.
    rot = s_hi >> np.uint64(58)
    v = s_hi ^ s_lo
    raw = (v >> rot) | (v << ((np.uint64(64) - rot) & np.uint64(63)))
    # next_uint32 hands out the low half of each 64-bit output first, then the high half.
    u32 = np.stack([raw & np.uint64(_M32), raw >> np.uint64(32)], axis=2).reshape(len(seeds), -1)[:, :n]
    span = np.uint64(high - low)  # rng + 1 in numpy's terms
    m = u32 * span
    leftover = m & np.uint64(_M32)
    threshold = np.uint64(((1 << 32) - (high - low)) % (high - low))
    ok = ~(leftover < threshold).any(axis=1)
    return (m >> np.uint64(32)).astype(np.int64) + low, np.asarray(ok)


def _seed_pool(seeds: np.ndarray) -> np.ndarray:
    """SeedSequence(seed).pool for each seed: [4, B] uint32 (a seed is at most two entropy words,
    and missing words hash like zeros, so every seed mixes as four words)."""
    s16 = np.uint32(16)
    pool = np.zeros((4, seeds.size), dtype=np.uint32)
    pool[0] = seeds & np.uint64(_M32)
    pool[1] = seeds >> np.uint64(32)
    pool ^= _MIX_XOR[:4]
    pool *= _MIX_MUL[:4]
    pool ^= pool >> s16
    for src, dst in enumerate(_OTHERS):
        k = slice(4 + 3 * src, 7 + 3 * src)
        hashed = (pool[src] ^ _MIX_XOR[k]) * _MIX_MUL[k]
        hashed ^= hashed >> s16
        mixed = np.uint32(_MIX_MULT_L) * pool[dst] - np.uint32(_MIX_MULT_R) * hashed
        mixed ^= mixed >> s16
        pool[dst] = mixed
    return pool


def _generate_state(pool: np.ndarray) -> np.ndarray:
    """SeedSequence.generate_state(4, np.uint64) from pools [4, B] uint32: [4, B] uint64."""
    data = (np.concatenate([pool, pool]) ^ _GEN_XOR) * _GEN_MUL
    data ^= data >> np.uint32(16)
    data = data.astype(np.uint64)
    # uint32 words, little-endian pairs -> uint64
    return data[0::2] | (data[1::2] << np.uint64(32))


@functools.lru_cache(maxsize=8)
def _lcg_consts(k_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """M^(k+1) and 1 + M + .. + M^k for k = 1..k_out, as (high, low) [k_out] uint64 pairs."""
    powers = [pow(_PCG_MULT, j, 1 << 128) for j in range(k_out + 2)]
    a = powers[2:]
    c = [sum(powers[: k + 1]) & _M128 for k in range(1, k_out + 1)]
    return (*_consts(a), *_consts(c))


def _consts(values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """128-bit constants as (high [K], low [K]) uint64."""
    return (np.array([v >> 64 for v in values], dtype=np.uint64), np.array([v & _M64 for v in values], dtype=np.uint64))


def _mul64(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full 64 x 64 -> 128-bit products, as (high, low) uint64, from 32-bit halves."""
    m32, s32 = np.uint64(_M32), np.uint64(32)
    a0, a1, b0, b1 = a & m32, a >> s32, b & m32, b >> s32
    p01, p10 = a0 * b1, a1 * b0
    mid = ((a0 * b0) >> s32) + (p01 & m32) + (p10 & m32)
    return a1 * b1 + (p01 >> s32) + (p10 >> s32) + (mid >> s32), a * b


def _mul128(a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """128-bit products modulo 2**128."""
    hi, lo = _mul64(a_lo, b_lo)
    return hi + a_hi * b_lo + a_lo * b_hi, lo


def _add128(a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """128-bit sums modulo 2**128."""
    lo = a_lo + b_lo
    return a_hi + b_hi + (lo < a_lo).astype(np.uint64), lo
