"""PCA: bovw vs scikit-learn.

Rows (``run(quick)`` -> list of dicts: stage, case, reference, ours_s, ref_s,
speedup = ref_s / ours_s, notes):

- ``bovw.PCA(n_components).fit`` and ``.fit_transform`` vs
  ``sklearn.decomposition.PCA`` with the same arguments (both pick the
  ``covariance_eigh`` solver on these tall shapes), float64 and float32
  input, on (n, d) = (30k, 100), (30k, 1000), (400k, 128), plus (100k, 128)
  and (30k, 300) to show growth with n and d;
- bag-of-words shapes at the top of the range the job uses, (100k, 1000)
  and (100k, 2000) float32 (histograms of up to 1000 words, or 2000 with
  two channels), with ``svd_solver="covariance_eigh"`` on both sides
  (scikit-learn's "auto" would pick "full" above d = 1000): the scatter
  and the eigendecomposition at their largest;
- the distributed path: ``bovw.pca_partial_sums`` over 8 batches +
  ``PCA.fit_partial_sums`` vs scikit-learn's fit on the whole array.

Data: Gaussian rows with a decaying spectrum (column scales geomspace(10,
0.1)), n_components = 0.95 (a variance fraction, the pipeline's choice) or 50.
The notes give the explained variance agreement and n_components_.

Timing: each side's time is the best of 5 calls (11 below d = 1000), the
two sides called in turn (``common.best_of_pair``) so that a slow spell of
the machine falls on both.

Run: ``python benches/py/bench_pca.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_of as _best  # noqa: E402
from common import best_of_pair  # noqa: E402


def _row(case, reference, ours_s, ref_s, notes):
    return {
        "stage": "pca",
        "case": case,
        "reference": reference,
        "ours_s": ours_s,
        "ref_s": ref_s,
        "speedup": ref_s / ours_s if ours_s else None,
        "notes": notes,
    }


def _data(n, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32) * np.geomspace(10, 0.1, d).astype(np.float32)
    return X.astype(dtype, copy=False)


def run(quick: bool = False) -> list[dict]:
    from sklearn.decomposition import PCA as SkPCA

    import bovw

    threads = os.cpu_count()
    if quick:
        shapes = [(30_000, 100), (10_000, 300)]
        dtypes = [np.float64]
        repeat = 2
    else:
        shapes = [(30_000, 100), (30_000, 300), (30_000, 1000), (100_000, 128), (400_000, 128)]
        dtypes = [np.float64, np.float32]
        repeat = 5
    rows = []
    for n, d in shapes:
        for dtype in dtypes:
            X = _data(n, d, dtype)
            # Short fits are noisier: more repeats below d = 1000.
            reps = repeat if d >= 1000 else 2 * repeat + 1
            for nc in (0.95, 50):
                ours = bovw.PCA(nc).fit(X)
                ref = SkPCA(nc).fit(X)
                k = min(ours.n_components_, ref.n_components_)
                err = float(np.max(np.abs(ours.explained_variance_[:k] / ref.explained_variance_[:k] - 1)))
                notes = (
                    f"n={n}, d={d}, {np.dtype(dtype).name}, n_components={nc} -> {ours.n_components_} "
                    f"(sklearn {ref.n_components_}), solver {ours._fit_svd_solver}/{ref._fit_svd_solver}, "
                    f"max rel. diff explained_variance {err:.1e}, {threads} threads"
                )
                t_fit, r_fit = best_of_pair(lambda: bovw.PCA(nc).fit(X), lambda: SkPCA(nc).fit(X), reps)
                rows.append(_row(f"fit ({n}, {d}) {np.dtype(dtype).name} n_components={nc}", "sklearn PCA.fit", t_fit, r_fit, notes))
                t_ft, r_ft = best_of_pair(lambda: bovw.PCA(nc).fit_transform(X), lambda: SkPCA(nc).fit_transform(X), reps)
                rows.append(
                    _row(f"fit_transform ({n}, {d}) {np.dtype(dtype).name} n_components={nc}", "sklearn PCA.fit_transform", t_ft, r_ft, notes)
                )
            del X
    # bag-of-words shapes at the top of the job's range, covariance_eigh forced
    if not quick:
        for n, d in ((100_000, 1000), (100_000, 2000)):
            X = _data(n, d, np.float32)
            nc = 0.95
            kw = dict(svd_solver="covariance_eigh")
            ours = bovw.PCA(nc, **kw).fit(X)
            ref = SkPCA(nc, **kw).fit(X)
            k = min(ours.n_components_, ref.n_components_)
            err = float(np.max(np.abs(ours.explained_variance_[:k] / ref.explained_variance_[:k] - 1)))
            notes = (
                f"n={n}, d={d}, float32, n_components={nc} -> {ours.n_components_} (sklearn {ref.n_components_}), "
                f"svd_solver='covariance_eigh' on both sides, max rel. diff explained_variance {err:.1e}, {threads} threads"
            )
            t_fit, r_fit = best_of_pair(lambda: bovw.PCA(nc, **kw).fit(X), lambda: SkPCA(nc, **kw).fit(X), 3)
            rows.append(_row(f"fit ({n}, {d}) float32 covariance_eigh n_components={nc}", "sklearn PCA.fit", t_fit, r_fit, notes))
            t_ft, r_ft = best_of_pair(lambda: bovw.PCA(nc, **kw).fit_transform(X), lambda: SkPCA(nc, **kw).fit_transform(X), 3)
            rows.append(
                _row(f"fit_transform ({n}, {d}) float32 covariance_eigh n_components={nc}", "sklearn PCA.fit_transform", t_ft, r_ft, notes)
            )
            del X
    # distributed path: per-batch partial sums + one fit
    n, d = (30_000, 100) if quick else (400_000, 128)
    X = _data(n, d, np.float32)
    batches = np.array_split(X, 8)

    def partial():
        c, s, g = 0, 0.0, 0.0
        for b in batches:
            bc, bs, bg = bovw.pca_partial_sums(b)
            c, s, g = c + bc, s + bs, g + bg
        return bovw.PCA(0.95).fit_partial_sums(c, s, g)

    t_p = _best(partial, repeat=2)
    r_p = _best(lambda: SkPCA(0.95).fit(X), repeat=2)
    rows.append(
        _row(f"partial sums x8 + fit ({n}, {d}) float32", "sklearn PCA.fit", t_p, r_p, f"8 batches, n_components=0.95 -> {partial().n_components_}")
    )
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['case']:<52} ours {r['ours_s']:.4f}s ref {r['ref_s']:.4f}s x{r['speedup']:.2f}  {r['notes']}", flush=True)
