"""K-Means benchmark: bovw.KMeans against scikit-learn and faiss-cpu on real
SIFT descriptors (OpenCV SIFT on every Fruits-360 training image, cached as
``bench-out/sift_training.npy``).

``run(quick=False)`` returns rows with keys stage, case, reference, ours_s,
ref_s, speedup (= ref_s / ours_s), notes. Every fit starts from the same
initial centers (greedy k-means++ by scikit-learn, seed 0) with the same
``max_iter`` and ``tol``; inertias are reported in the notes.

Run alone: ``PYTHONPATH=python python benches/py/bench_kmeans.py [--quick]``.
``--defaults`` runs only :func:`defaults_rows`: both libraries at their
defaults (bovw ``algorithm="elkan"``, scikit-learn ``"lloyd"``; tol 1e-4,
max_iter 300) to convergence from the same init, on 72k SIFT descriptors of
Fruits-360 *Test* images (unseen by any vocabulary), K = 100 and 200.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench-out"
N_CORES = os.cpu_count() or 1
os.environ.setdefault("OMP_NUM_THREADS", str(N_CORES))


def _fruits_root() -> Path:
    env = os.environ.get("BOVW_FRUITS360")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "fruits-360", Path("/work/shared/fruits-360")]:
        if (c / "Training").is_dir():
            return c
    import bovw

    return Path(bovw.sample_data_path())


def sift_descriptors(quick: bool = False) -> np.ndarray:
    """OpenCV SIFT descriptors of the training images (cached)."""
    OUT.mkdir(exist_ok=True)
    path = OUT / ("sift_training_quick.npy" if quick else "sift_training.npy")
    if path.exists():
        return np.load(path)
    import cv2

    files = sorted(glob.glob(str(_fruits_root() / "Training" / "*" / "*.jpg")))
    if quick:
        files = files[::20]
    sift = cv2.SIFT_create()
    out = []
    for f in files:
        g = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        _, d = sift.detectAndCompute(g, None)
        if d is not None:
            out.append(d)
    X = np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
    np.save(path, X)
    return X


def sift_test_descriptors(n_max: int = 72_000) -> np.ndarray:
    """OpenCV SIFT descriptors of Fruits-360 Test images (every 8th file, so
    every class is represented), the first ``n_max`` rows (cached)."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"sift_test_{n_max}.npy"
    if path.exists():
        return np.load(path)
    import cv2

    files = sorted(glob.glob(str(_fruits_root() / "Test" / "*" / "*.jpg")))[::8]
    sift = cv2.SIFT_create()
    out, n = [], 0
    for f in files:
        _, d = sift.detectAndCompute(cv2.imread(f, cv2.IMREAD_GRAYSCALE), None)
        if d is not None:
            out.append(d)
            n += len(d)
        if n >= n_max:
            break
    X = np.ascontiguousarray(np.concatenate(out)[:n_max], dtype=np.float32)
    np.save(path, X)
    return X


def _timeit(f, repeat: int = 1):
    from common import settle

    settle()
    best, res = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        res = f()
        best = min(best, time.perf_counter() - t)
    return best, res


def _inertia(X: np.ndarray, C: np.ndarray) -> float:
    from bovw import cluster

    return float(cluster.partial_sums(X, np.ascontiguousarray(C, dtype=X.dtype))[2])


def _row(case, reference, ours, ref, notes):
    return {
        "stage": "kmeans",
        "case": case,
        "reference": reference,
        "ours_s": round(ours, 4),
        "ref_s": round(ref, 4) if ref is not None else None,
        "speedup": round(ref / ours, 2) if ref is not None and ours > 0 else None,
        "notes": notes,
    }


class _ProgressRows(list):
    """A list that reports each row on stderr as it is added (long runs)."""

    def append(self, row: dict) -> None:  # type: ignore[override]
        print(f"[bench_kmeans] {row['case']}: ours {row['ours_s']} s, ref {row['ref_s']} s", file=sys.stderr, flush=True)
        super().append(row)


def _memory_probe(npy: str, k: int, max_iter: int, algorithm: str) -> dict:
    """Fit in a fresh process; report the peak-RSS (VmHWM) growth during fit and the
    peak of Python-tracked allocations (tracemalloc sees NumPy buffers)."""
    from common import PEAK_RSS_SOURCE

    code = PEAK_RSS_SOURCE + f"""
import json, tracemalloc, numpy as np, bovw
X = np.load({npy!r})
init = np.ascontiguousarray(X[:{k}])
before = peak_rss_kib()
tracemalloc.start()
km = bovw.KMeans({k}, init=init, n_init=1, max_iter={max_iter}, tol=0.0, algorithm={algorithm!r}).fit(X)
_, peak = tracemalloc.get_traced_memory()
after = peak_rss_kib()
print(json.dumps(dict(data_mb=X.nbytes / 2**20, rss_growth_mb=(after - before) / 1024, py_peak_mb=peak / 2**20)))
"""
    import bovw

    # The same bovw as the caller's.
    env = dict(os.environ, PYTHONPATH=str(Path(bovw.__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def defaults_rows(ks: tuple[int, ...] = (100, 200), n_max: int = 72_000) -> list[dict]:
    """What a user who changes nothing gets: ``bovw.KMeans(k)`` against
    ``sklearn.cluster.KMeans(k)``, both at their defaults (tol=1e-4,
    max_iter=300; bovw's default algorithm is the exact Yinyang path
    "elkan", scikit-learn's is "lloyd"), from the same k-means++ init
    (scikit-learn's, seed 0) to convergence, plus bovw with
    ``algorithm="lloyd"`` for the gain of the default."""
    import bovw
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.cluster import kmeans_plusplus

    X = sift_test_descriptors(n_max)
    n = len(X)
    rows: list[dict] = _ProgressRows()
    for k in ks:
        init, _ = kmeans_plusplus(X, k, random_state=0)
        init = np.ascontiguousarray(init, dtype=np.float32)
        t_sk, sk = _timeit(lambda: SKKMeans(k, init=init, n_init=1).fit(X))
        default = bovw.KMeans(k, init=init, n_init=1)
        assert default.algorithm == "elkan"
        t_def, ours = _timeit(lambda: default.fit(X))
        t_ll, ll = _timeit(lambda: bovw.KMeans(k, init=init, n_init=1, algorithm="lloyd").fit(X))
        for case, t, fit in ((f"defaults, to convergence n={n} K={k} (bovw default: elkan)", t_def, ours),
                             (f"defaults, to convergence n={n} K={k} (bovw algorithm='lloyd')", t_ll, ll)):
            rows.append(
                _row(
                    case,
                    "sklearn KMeans() default (lloyd)",
                    t,
                    t_sk,
                    f"Fruits-360 Test SIFT; same init; tol=1e-4, max_iter=300; iterations ours {fit.n_iter_} "
                    f"sklearn {sk.n_iter_}; inertia ours {fit.inertia_:.6e} sklearn {sk.inertia_:.6e} "
                    f"(rel diff {fit.inertia_ / sk.inertia_ - 1:+.1e}); labels agree "
                    f"{np.mean(fit.labels_ == sk.labels_):.4f}; {N_CORES} threads",
                )
            )
    return list(rows)


def run(quick: bool = False) -> list[dict]:
    import bovw
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.cluster import MiniBatchKMeans as SKMiniBatchKMeans
    from sklearn.cluster import kmeans_plusplus

    X = sift_descriptors(quick)
    n, d = X.shape
    rows: list[dict] = _ProgressRows()
    ks = (20, 50) if quick else (100, 500, 1000)
    max_iter = 10 if quick else 20
    try:
        import faiss  # type: ignore

        faiss.omp_set_num_threads(N_CORES)
    except ImportError:  # pragma: no cover
        faiss = None

    for k in ks:
        init, _ = kmeans_plusplus(X[: min(n, 50_000)], k, random_state=0)
        init = np.ascontiguousarray(init, dtype=np.float32)
        common = dict(init=init, n_init=1, max_iter=max_iter, tol=0.0)
        t_sk, sk = _timeit(lambda: SKKMeans(k, **common).fit(X))
        for alg in ("lloyd", "elkan"):
            t_ours, ours = _timeit(lambda: bovw.KMeans(k, algorithm=alg, **common).fit(X))
            agree = float(np.mean(ours.labels_ == sk.labels_))
            rows.append(
                _row(
                    f"fit n={n} d={d} K={k} {max_iter} iterations ({alg})",
                    "sklearn KMeans (lloyd)",
                    t_ours,
                    t_sk,
                    f"same init, max_iter={max_iter}, tol=0; inertia ours {ours.inertia_:.6e} "
                    f"sklearn {sk.inertia_:.6e} (rel diff {ours.inertia_ / sk.inertia_ - 1:+.1e}); "
                    f"labels agree {agree:.4f}; {N_CORES} threads",
                )
            )
        if faiss is not None:
            def _faiss():
                km = faiss.Kmeans(d, k, niter=max_iter, seed=0, max_points_per_centroid=10**9, min_points_per_centroid=1)
                km.train(X, init_centroids=init)
                return km

            t_f, fk = _timeit(_faiss)
            t_ours, ours = _timeit(lambda: bovw.KMeans(k, algorithm="elkan", **common).fit(X))
            rows.append(
                _row(
                    f"fit n={n} d={d} K={k} {max_iter} iterations (elkan)",
                    "faiss-cpu Kmeans",
                    t_ours,
                    t_f,
                    f"same init and iterations, no subsampling; inertia ours {ours.inertia_:.6e} "
                    f"faiss {_inertia(X, fk.centroids):.6e}; {N_CORES} threads",
                )
            )
        # predict throughput on all descriptors
        C = sk.cluster_centers_.astype(np.float32)
        ours_km = bovw.KMeans(k, init=C, n_init=1, max_iter=1).fit(C)  # fitted on the centers
        ours_km.cluster_centers_ = C
        t_p, lab = _timeit(lambda: ours_km.predict(X), repeat=2)
        t_sp, lab_sk = _timeit(lambda: sk.predict(X), repeat=2)
        rows.append(
            _row(
                f"predict n={n} K={k}",
                "sklearn KMeans.predict",
                t_p,
                t_sp,
                f"{n / t_p / 1e6:.2f} M descriptors/s vs {n / t_sp / 1e6:.2f} M/s; "
                f"labels agree {np.mean(lab == lab_sk):.5f}",
            )
        )

    # Convergence runs at scikit-learn's defaults (tol=1e-4, max_iter=300):
    # equal inertia, time to converge. K=1000 is left to the fixed-iteration
    # rows above (scikit-learn needs several minutes per run there).
    for k in ks[:1] if quick else ks[:2]:
        init, _ = kmeans_plusplus(X[: min(n, 50_000)], k, random_state=0)
        common = dict(init=init.astype(np.float32), n_init=1, max_iter=300 if not quick else 50)
        t_sk, sk = _timeit(lambda: SKKMeans(k, **common).fit(X))
        for alg in ("elkan", "lloyd"):
            t_ours, ours = _timeit(lambda: bovw.KMeans(k, algorithm=alg, **common).fit(X))
            rows.append(
                _row(
                    f"fit to convergence n={n} K={k} ({alg})",
                    "sklearn KMeans (lloyd)",
                    t_ours,
                    t_sk,
                    f"tol=1e-4; iterations ours {ours.n_iter_} sklearn {sk.n_iter_}; inertia ours "
                    f"{ours.inertia_:.6e} sklearn {sk.inertia_:.6e} (rel diff {ours.inertia_ / sk.inertia_ - 1:+.1e}); "
                    f"labels agree {np.mean(ours.labels_ == sk.labels_):.4f}",
                )
            )

    # k-means++ seeding and mini-batch
    kk = ks[-1] if quick else 500
    Xs = X[: min(n, 50_000)]  # scikit-learn's seeding is slow: a subset for both
    t_pp, _ = _timeit(lambda: bovw.cluster.kmeans_plusplus(Xs, kk, random_state=0))
    t_spp, _ = _timeit(lambda: kmeans_plusplus(Xs, kk, random_state=0))
    rows.append(
        _row(f"k-means++ seeding n={len(Xs)} K={kk}", "sklearn kmeans_plusplus", t_pp, t_spp, "greedy, 2+log(K) trials")
    )
    t_mb, mb = _timeit(lambda: bovw.MiniBatchKMeans(kk, random_state=0).fit(X))
    t_smb, smb = _timeit(lambda: SKMiniBatchKMeans(kk, random_state=0).fit(X))
    rows.append(
        _row(
            f"MiniBatchKMeans n={n} K={kk}",
            "sklearn MiniBatchKMeans",
            t_mb,
            t_smb,
            f"batch_size=1024; inertia ours {mb.inertia_:.6e} ({mb.n_steps_} steps) sklearn "
            f"{smb.inertia_:.6e} ({smb.n_steps_} steps)",
        )
    )

    # Scaling with n and K: seconds per iteration (lloyd, no pruning).
    for frac in (0.25, 0.5, 1.0):
        m = int(n * frac)
        kk = ks[-1]
        Xm = X[:m]
        init = np.ascontiguousarray(Xm[:kk])
        t, _ = _timeit(lambda: bovw.KMeans(kk, init=init, n_init=1, max_iter=5, tol=0.0, algorithm="lloyd").fit(Xm))
        rows.append(_row(f"scaling n={m} K={kk}", "", t / 5, None, "seconds per lloyd iteration (5 iterations, from the first K rows)"))

    # Peak memory in a fresh process.
    npy = str(OUT / ("sift_training_quick.npy" if quick else "sift_training.npy"))
    kk = ks[-1]
    for alg in ("lloyd",) if quick else ("lloyd", "elkan"):
        t0 = time.perf_counter()
        mem = _memory_probe(npy, kk, 3, alg)
        rows.append(
            _row(
                f"memory fit n={n} K={kk} ({alg})",
                "",
                time.perf_counter() - t0,
                None,
                f"data {mem['data_mb']:.1f} MiB; maxrss growth during fit {mem['rss_growth_mb']:.1f} MiB; "
                f"Python-tracked peak {mem['py_peak_mb']:.1f} MiB (no copy of X)",
            )
        )
    if not quick:
        rows.extend(defaults_rows())
    return list(rows)


if __name__ == "__main__":
    for r in defaults_rows() if "--defaults" in sys.argv else run(quick="--quick" in sys.argv):
        print(json.dumps(r), flush=True)
