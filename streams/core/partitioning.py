"""Which partition a key belongs to: Kafka's Java client partitioner, in pure Python.

faust (through aiokafka's DefaultPartitioner), the Java client and librdkafka's
``murmur2_random`` all place a keyed message on ``murmur2(key) & 0x7fffffff`` modulo the
partition count. The worker relies on it: a user's events and requests must sit on the
partition whose user state it owns. librdkafka's default partitioner (``consistent_random``,
CRC32: confluent-kafka, kcat, node-rdkafka, the Go client) does not, so the worker checks it.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka's ``Utils.murmur2`` computes it, as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


# The worker checks every message's key, and the same users' keys come again and again: the
# pure-Python hash took about 2% of its time per event before they were remembered.
@lru_cache(maxsize=1 << 16)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (the Java client's, faust's, ``murmur2_random``'s)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
