"""Measure this machine's memory read bandwidth and print the floor per training epoch.

One epoch must at least read the 20000 x 2048 float32 feature matrix (164 MB)
once.  Run: ``python tools/floor.py``.
"""

import time

import numpy as np

N, D = 20000, 2048


def read_bandwidth(nbytes: int = N * D * 4, repeats: int = 15) -> float:
    """Best-of-``repeats`` bytes per second for one pass that reads every byte (a sum)."""
    a = np.ones(nbytes // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


if __name__ == "__main__":
    bw = read_bandwidth()
    size = N * D * 4
    print(f"memory read bandwidth: {bw / 1e9:.1f} GB/s")
    print(f"feature matrix: {N} x {D} float32 = {size / 1e6:.0f} MB")
    print(f"floor per epoch (read it once): {1e3 * size / bw:.1f} ms")
