"""How close PCA's kernels run to the machine's limits (not a bench_* stage:
``benches/run.py`` does not run it).

Prints, for (n, d) = (30k, 1000) on random data:

- the projection onto 324 components (``PCA.transform``) against numpy's
  ``X @ C.T`` (OpenBLAS) in GFLOP/s, float64 and float32;
- the scatter ``pca_partial_sums`` against numpy's ``X.T @ X``;
- the eigendecomposition (``PCA.fit_partial_sums``, which computes only the
  kept eigenpairs: 0.95 of the variance, or 50) against ``numpy.linalg.eigh``
  of the same covariance (all of them, as scikit-learn's ``covariance_eigh``).

Run: ``python benches/py/floor_pca.py`` (all cores) and
``RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benches/py/floor_pca.py``
(one thread).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_of_pair  # noqa: E402


def main() -> None:
    import bovw

    n, d, k = 30_000, 1000, 324
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        X = rng.standard_normal((n, d)).astype(dtype)
        pca = bovw.PCA(k).fit(X)
        C = pca.components_.astype(dtype)
        t_ours, t_np = best_of_pair(lambda: pca.transform(X), lambda: X @ C.T, 5)
        flop = 2 * n * d * k / 1e9
        print(f"{np.dtype(dtype).name} projection {n}x{d} -> {k}: bovw {flop / t_ours:.1f} GFLOP/s, "
              f"numpy {flop / t_np:.1f} GFLOP/s", flush=True)
        s_ours, s_np = best_of_pair(lambda: bovw.pca_partial_sums(X), lambda: X.T @ X, 5)
        flop = n * d * (d + 1) / 1e9
        print(f"{np.dtype(dtype).name} scatter: bovw {s_ours:.3f} s ({flop / s_ours:.0f} GFLOP/s), "
              f"numpy X.T @ X {s_np:.3f} s ({flop / s_np:.0f} GFLOP/s)", flush=True)
    sums = bovw.pca_partial_sums(X)
    cov = np.cov(X.T.astype(np.float64))
    for nc in (0.95, 50):
        kept = bovw.PCA(nc).fit_partial_sums(*sums).n_components_
        e_ours, e_np = best_of_pair(lambda: bovw.PCA(nc).fit_partial_sums(*sums), lambda: np.linalg.eigh(cov), 7)
        print(f"eigendecomposition d={d}, n_components={nc} ({kept} kept): bovw fit_partial_sums {e_ours:.3f} s, "
              f"numpy eigh {e_np:.3f} s", flush=True)


if __name__ == "__main__":
    main()
