"""PCA: bovw vs scikit-learn.

Rows (``run(quick)`` -> list of dicts: stage, case, reference, ours_s, ref_s,
speedup = ref_s / ours_s, notes):

- ``bovw.PCA(n_components).fit`` and ``.fit_transform`` vs
  ``sklearn.decomposition.PCA`` with the same arguments (both pick the
  ``covariance_eigh`` solver on these tall shapes), float64 and float32
  input, on (n, d) = (30k, 100), (30k, 1000), (400k, 128), plus (100k, 128)
  and (30k, 300) to show growth with n and d;
- bag-of-words shapes (:func:`bow_rows`): ``fit(X).transform(X)`` as the
  job runs it, float32, n in {10k, 100k}, d in {200, 1000, 2000}
  (histograms of up to 1000 words, or 2000 with two channels),
  ``svd_solver="covariance_eigh"`` on both sides, and default against
  default where "auto" picks another solver ("full" above d = 1000);
- the distributed path: ``bovw.pca_partial_sums`` over 8 batches +
  ``PCA.fit_partial_sums`` vs scikit-learn's fit on the whole array.

Data: Gaussian rows with a decaying spectrum (column scales geomspace(10,
0.1)), n_components = 0.95 (a variance fraction, the pipeline's choice) or 50.
The notes give the explained variance agreement and n_components_.

Timing: each side's time is the best of 5 calls (11 below d = 1000), the
two sides called in turn (``common.best_of_pair``) so that a slow spell of
the machine falls on both.

Run: ``python benches/py/bench_pca.py [--quick | --bow]`` (``--bow``: only
the bag-of-words rows). Set ``RAYON_NUM_THREADS`` and ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` to the same count to compare at equal threads.
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


#: Bag-of-words shapes: (n_images, histogram width), float32.
BOW_SHAPES = [(n, d) for n in (10_000, 100_000) for d in (200, 1000, 2000)]


def bow_rows(shapes=BOW_SHAPES, n_components=0.95, repeat: int = 3) -> list[dict]:
    """``fit(X).transform(X)`` as the job runs it, float32, on BoW shapes.

    For every shape, bovw and scikit-learn both with
    ``svd_solver="covariance_eigh"`` (the solver for ``n >> d``). Where
    the default ``svd_solver="auto"`` (what ``bovw.job`` uses; bovw's picks
    as scikit-learn 1.9's does) resolves to another solver (here "full"
    above d = 1000), also default against default, timed once (a thin SVD
    of a 100k x 2000 matrix takes minutes).
    """
    from sklearn.decomposition import PCA as SkPCA

    import bovw

    threads = os.cpu_count()
    out = []
    for n, d in shapes:
        X = _data(n, d, np.float32)
        runs = [("covariance_eigh", repeat)]
        # scikit-learn 1.9's "auto" (bovw's too): covariance_eigh iff d <= 1000 and n >= 10 d.
        if not (d <= 1000 and n >= 10 * d):
            runs.append(("auto", 1))
        for solver, reps in runs:
            kw = dict(svd_solver=solver)
            ours = bovw.PCA(n_components, **kw).fit(X)
            ref = SkPCA(n_components, **kw).fit(X)
            k = min(ours.n_components_, ref.n_components_)
            err = float(np.max(np.abs(ours.explained_variance_[:k] / ref.explained_variance_[:k] - 1)))
            notes = (
                f"n={n}, d={d}, float32, n_components={n_components} -> {ours.n_components_} "
                f"(sklearn {ref.n_components_}), solver {ours._fit_svd_solver}/{ref._fit_svd_solver}, "
                f"max rel. diff explained_variance {err:.1e}, best of {reps}, {threads} threads"
            )
            t, r = best_of_pair(
                lambda: bovw.PCA(n_components, **kw).fit(X).transform(X),
                lambda: SkPCA(n_components, **kw).fit(X).transform(X),
                reps,
            )
            out.append(_row(f"BoW fit+transform ({n}, {d}) float32 svd_solver={solver}", "sklearn PCA.fit+transform", t, r, notes))
        del X
    return out

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
    # bag-of-words shapes: the job's fit + transform
    if not quick:
        rows += bow_rows()
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
    # --bow: one shape at a time, each row printed as soon as it is measured.
    rows_ = (r for sh in BOW_SHAPES for r in bow_rows([sh])) if "--bow" in sys.argv else run(quick="--quick" in sys.argv)
    for r in rows_:
        print(f"{r['case']:<52} ours {r['ours_s']:.4f}s ref {r['ref_s']:.4f}s x{r['speedup']:.2f}  {r['notes']}", flush=True)
