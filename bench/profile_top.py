"""Summarise a py-spy raw (collapsed stacks) profile: where the samples are.

    python bench/profile_top.py var/bench/profile-....txt [--top 25] [--match streams/]

Prints the share of samples per leaf function (self time) and per function
anywhere on the stack (inclusive time), optionally only frames whose text
contains ``--match``.
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="")
    a = ap.parse_args()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(a.path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue  # the rare frame name with a line break in it
            n = int(count)
            total += n
            frames = stack.split(";")
            self_t[frames[-1]] += n
            for frame in set(frames):
                if a.match in frame:
                    incl[frame] += n
    print(f"{total} samples")
    print("\nself (leaf) time:")
    for frame, n in self_t.most_common(a.top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("\ninclusive time:")
    for frame, n in incl.most_common(a.top):
        print(f"  {100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
