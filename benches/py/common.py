"""Shared helpers for the benchmarks: real images, timing."""

from __future__ import annotations

import os
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "bench-out"


def fruits_root() -> Path:
    """shared/fruits-360 beside the checkout, else the committed sample."""
    env = os.environ.get("BOVW_FRUITS360")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "fruits-360", REPO / "shared" / "fruits-360"]:
        if (c / "Test").is_dir():
            return c.resolve()
    import bovw

    return bovw.sample_data_path()


def image_files(split: str = "Training", limit: int | None = None) -> list[Path]:
    """Sorted image files of a split, spread over classes when limited."""
    root = fruits_root() / split
    per_class = [sorted(c.glob("*.jpg")) for c in sorted(root.iterdir()) if c.is_dir()]
    files = [f for fs in per_class for f in fs]
    if limit is not None and limit < len(files):
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


#: Seconds to wait before timing a side: OpenBLAS's worker threads keep
#: spinning for about 2^28 cycles (~0.1 s) after each BLAS call, and libgomp's
#: and rayon's for shorter; without a pause the side timed next shares the
#: cores with the previous side's spinning threads.
# Source of ``peak_rss_kib()`` for the fresh processes that measure memory.
# It reads VmHWM, not getrusage's ru_maxrss: Linux carries a parent's peak into
# the child's ru_maxrss across fork + exec, so a child of a large benchmark
# process would report its parent's peak. VmHWM is the peak of the child's own
# address space.
PEAK_RSS_SOURCE = """
def peak_rss_kib():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
"""

SETTLE_S = 0.3


def settle() -> None:
    """Let the worker threads of the previously timed library go idle."""
    time.sleep(SETTLE_S)


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, in seconds, after :func:`settle`."""
    settle()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_of_pair(ours, ref, repeat: int = 3) -> tuple[float, float]:
    """Best wall times of ``ours`` and ``ref``, called in turn ``repeat``
    times each (each call after :func:`settle`), so that a slow spell of the
    machine falls on both sides rather than on one."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((ours, ref)):
            settle()
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1]


def row(stage, case, reference, ours_s, ref_s, notes=""):
    return {
        "stage": stage,
        "case": case,
        "reference": reference,
        "ours_s": ours_s,
        "ref_s": ref_s,
        "speedup": (ref_s / ours_s) if ours_s and ref_s else None,
        "notes": notes,
    }
