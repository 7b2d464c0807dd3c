"""Encodings: bovw's kernels vs their references, in the same run.

Rows (``run(quick)`` -> list of dicts: stage, case, reference, ours_s, ref_s,
speedup = ref_s / ours_s, notes):

1. GMM fit: ``bovw.GaussianMixture`` vs ``sklearn.mixture.GaussianMixture(
   covariance_type="diag")`` from the same initial weights, means and
   precisions (``tol=0``, a fixed number of EM iterations; scikit-learn with
   ``init_params="random_from_data"`` so that its unused initialisation is
   cheap), on float32 and float64 descriptors, for several ``n`` and ``K``;
2. Fisher vectors (improved): ``bovw.FisherVector.transform`` of a batch vs
   ``cyvlfeat.fisher.fisher(..., improved=True)`` called per image, and on
   one set of all descriptors (no per-call overhead);
3. VLAD (intra-normalised + L2, hard assignment): ``bovw.VLAD.transform``
   (assignment included) vs ``cyvlfeat.vlad.vlad`` per image given the
   assignment matrices (assignment *not* timed on its side: a bound that
   favours the reference, since bovw's VLAD cannot be given assignments),
   vs VLFeat's own whole job from the same descriptors and vocabulary
   (``cyvlfeat.kmeans.kmeans_quantize`` (exact Lloyd assignment) + one-hot
   + ``cyvlfeat.vlad.vlad``), and vs scikit-learn ``KMeans.predict`` +
   one-hot + ``cyvlfeat.vlad.vlad``;
4. χ² map: ``bovw.AdditiveChi2Sampler`` vs scikit-learn's on real 1x1 + 2x2
   + 4x4 pyramid histograms of 300 words (6,300 values per image), float32
   and float64;
5. spatial pyramid histograms (1x1, 2x2, 4x4) from word ids:
   ``bovw.bow_histograms(..., spatial_pyramid=(1, 2, 4))`` vs NumPy
   (``np.bincount`` per image and level; and one vectorised ``np.bincount``
   over the whole batch per level), on the first 1,000 images and on all
   4,000 (the output, 6,300 float32 per image, is most of the cost at both
   sizes), plus descriptors -> pyramid histograms
   fused (``bovw.BagOfWords``) vs ``KMeans.predict`` + the per-image NumPy
   reference.

Inputs: real SIFT descriptors and keypoints (``bovw.extract_descriptors``) of
real Fruits-360 Training images, cached in ``bench-out/``. Point
``BOVW_FRUITS360`` at the full data set (e.g. ``/work/shared/fruits-360``);
without it the committed 550-image sample is used (about 35k descriptors, so
the largest sizes are capped). Threads: every side uses all cores (bovw's
rayon pool, OpenBLAS, VLFeat's OpenMP).

Run: ``BOVW_FRUITS360=/path/to/fruits-360 python benches/run.py --only encoding``
or ``python benches/py/bench_encoding.py [--quick]``.
"""

from __future__ import annotations

import os
import sys
import warnings
from functools import partial

import numpy as np

from common import CACHE, best_of, best_of_pair, fruits_root, image_files, row

_row = partial(row, "encoding")


def sift_data(n_images: int) -> dict:
    """Real SIFT descriptors (N, 128) float32, offsets, keypoint x, y and
    image sizes of ``n_images`` Training images (cached)."""
    import pyarrow as pa

    import bovw

    CACHE.mkdir(exist_ok=True)
    root = fruits_root()
    cache = CACHE / f"encoding_sift_{root.name}_{n_images}.npz"
    if cache.exists():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    files = image_files("Training", n_images)
    out = {"desc": [], "xy": [], "n": [], "w": [], "h": []}
    for s in range(0, len(files), 500):
        t = pa.table({"content": [f.read_bytes() for f in files[s:s + 500]]})
        b = bovw.extract_descriptors(t, "sift")
        col = b.column("descriptors")
        out["desc"].append(np.asarray(col.values.flatten()).reshape(-1, 128))
        out["xy"].append(np.asarray(b.column("keypoints").values.flatten()).reshape(-1, 4)[:, :2])
        out["n"].append(np.diff(np.asarray(col.offsets)))
        out["w"].append(np.asarray(b.column("image_width").fill_null(0)))
        out["h"].append(np.asarray(b.column("image_height").fill_null(0)))
    data = {
        "desc": np.ascontiguousarray(np.concatenate(out["desc"]), dtype=np.float32),
        "xy": np.ascontiguousarray(np.concatenate(out["xy"]), dtype=np.float32),
        "offsets": np.concatenate([[0], np.cumsum(np.concatenate(out["n"]))]).astype(np.int64),
        "sizes": np.stack([np.concatenate(out["w"]), np.concatenate(out["h"])], axis=1).astype(np.int64),
    }
    np.savez(cache, **data)
    return data


def _first_images(data: dict, n_desc: int) -> dict:
    """The leading whole images holding about ``n_desc`` descriptors."""
    o = data["offsets"]
    m = int(np.searchsorted(o, min(n_desc, o[-1]), side="right")) - 1
    m = max(m, 1)
    return {"desc": data["desc"][: o[m]], "xy": data["xy"][: o[m]], "offsets": o[: m + 1], "sizes": data["sizes"][:m]}


def bench_gmm(data: dict, quick: bool) -> list[dict]:
    from sklearn.mixture import GaussianMixture as SkGMM

    import bovw

    rows = []
    cases = [(10_000, 64)] if quick else [(25_000, 64), (100_000, 64), (25_000, 256), (100_000, 256)]
    iters = 3 if quick else 5
    for n, k in cases:
        if n > len(data["desc"]):
            continue
        X = data["desc"][:n]
        rng = np.random.default_rng(k)
        means = X[rng.choice(len(X), k, replace=False)].astype(np.float64)
        cov = np.tile(X.astype(np.float64).var(0) + 1.0, (k, 1))
        init = dict(weights_init=np.full(k, 1.0 / k), means_init=means, precisions_init=1.0 / cov)
        for dtype in (np.float32, np.float64):
            Xd = X.astype(dtype)
            ours = bovw.GaussianMixture(k, max_iter=iters, tol=0.0, **init)
            ref = SkGMM(k, covariance_type="diag", max_iter=iters, tol=0.0, init_params="random_from_data", **init)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_o, t_r = best_of_pair(lambda: ours.fit(Xd), lambda: ref.fit(Xd), repeat=1 if not quick else 2)
            rel = float(np.max(np.abs(ours.means_ - ref.means_) / (np.abs(ref.means_) + 1e-3)))
            lb = abs(ours.lower_bound_ - ref.lower_bound_) / abs(ref.lower_bound_)
            rows.append(_row(
                f"GMM fit n={n} d=128 K={k} {np.dtype(dtype).name}",
                f"sklearn GaussianMixture(diag), same init, {iters} EM iterations",
                t_o, t_r,
                f"means agree to {rel:.1e} (rel., |mean|+1e-3), lower bound to {lb:.1e}; sklearn computes in {np.dtype(dtype).name}",
            ))
    return rows


def bench_fisher(data: dict, quick: bool) -> list[dict]:
    from cyvlfeat.fisher import fisher

    import bovw

    rows = []
    sample = data["desc"][::4][:20_000]
    for k in ([64] if quick else [64, 256]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = bovw.GaussianMixture(k, random_state=0, max_iter=10).fit(sample)
        w, m, c = (a.astype(np.float32) for a in (g.weights_, g.means_, g.covariances_))
        fv = bovw.FisherVector(g).fit()
        sizes = [2_000] if quick else [25_000, 100_000]
        for n in sizes:
            d = _first_images(data, n)
            X, o = d["desc"], d["offsets"]
            per = [np.ascontiguousarray(X[a:b]) for a, b in zip(o[:-1], o[1:])]

            def ref():
                return [fisher(x, m, c, w, improved=True) for x in per]

            ours = fv.transform(X, o)
            err = max(float(np.abs(ours[i] - r).max()) for i, r in enumerate(ref()[:50]))
            t_o, t_r = best_of_pair(lambda: fv.transform(X, o), ref, repeat=2)
            rows.append(_row(
                f"Fisher vectors {len(o) - 1} images ({o[-1]} desc) K={k}",
                "cyvlfeat.fisher(improved) per image (float32)", t_o, t_r,
                f"max |diff| {err:.1e} on 50 images (VLFeat computes in float32)",
            ))
        d = _first_images(data, 2_000 if quick else 100_000)
        X = d["desc"]
        t_o, t_r = best_of_pair(
            lambda: fv.transform(X, [0, len(X)]), lambda: fisher(X, m, c, w, improved=True), repeat=2
        )
        rows.append(_row(f"Fisher vector of one set of {len(X)} desc K={k}", "cyvlfeat.fisher(improved), one call", t_o, t_r))
    return rows


def bench_vlad(data: dict, quick: bool) -> list[dict]:
    from cyvlfeat.kmeans import kmeans_quantize
    from cyvlfeat.vlad import vlad
    from sklearn.cluster import KMeans as SkKMeans

    import bovw

    rows = []
    sample = data["desc"][::4][:20_000]
    for k in ([64] if quick else [64, 256]):
        vocab = bovw.KMeans(k, random_state=0, max_iter=20).fit(sample).cluster_centers_.astype(np.float32)
        sk = SkKMeans(k, init=vocab, n_init=1, max_iter=1).fit(vocab)
        sk.cluster_centers_ = vocab.copy()
        enc = bovw.VLAD(vocab).fit()
        for n in ([2_000] if quick else [25_000, 100_000]):
            d = _first_images(data, n)
            X, o = d["desc"], d["offsets"]
            words = bovw.encoding.soft_assign(X, vocab)[0][:, 0]
            per = [np.ascontiguousarray(X[a:b]) for a, b in zip(o[:-1], o[1:])]
            onehot = []
            for a, b in zip(o[:-1], o[1:]):
                h = np.zeros((b - a, k), np.float32)
                h[np.arange(b - a), words[a:b]] = 1
                onehot.append(h)

            def ref_given_assign():
                return [vlad(x, vocab, a, normalize_components=True) for x, a in zip(per, onehot)]

            def ref_from_labels(lab):
                out = []
                for i, (a, b) in enumerate(zip(o[:-1], o[1:])):
                    h = np.zeros((b - a, k), np.float32)
                    h[np.arange(b - a), lab[a:b]] = 1
                    out.append(vlad(per[i], vocab, h, normalize_components=True))
                return out

            def ref_vlfeat():
                return ref_from_labels(kmeans_quantize(X, vocab, algorithm="LLOYD"))

            def ref_whole():
                return ref_from_labels(sk.predict(X))

            ours = enc.transform(X, o)
            err = max(float(np.abs(ours[i] - r).max()) for i, r in enumerate(ref_given_assign()[:50]))
            t_o, t_r = best_of_pair(lambda: enc.transform(X, o), ref_given_assign, repeat=2)
            note = f"{len(o) - 1} images, {o[-1]} SIFT desc; max |diff| {err:.1e} on 50 images"
            rows.append(_row(f"VLAD K={k} n={o[-1]}", "cyvlfeat.vlad per image, assignments given (not timed)", t_o, t_r,
                             "bovw side includes the assignment; " + note))
            t_o3, t_r3 = best_of_pair(lambda: enc.transform(X, o), ref_vlfeat, repeat=2)
            rows.append(_row(f"VLAD K={k} n={o[-1]}", "cyvlfeat kmeans_quantize + one-hot + cyvlfeat.vlad", t_o3, t_r3,
                             "both sides assign (exact nearest word); " + note))
            t_r2 = best_of(ref_whole, 1 if not quick else 2)
            rows.append(_row(f"VLAD K={k} n={o[-1]}", "sklearn KMeans.predict + one-hot + cyvlfeat.vlad", t_o, t_r2, note))
    return rows


def _pyramid_hists(data: dict, quick: bool):
    import bovw

    d = _first_images(data, 20_000 if quick else 200_000)
    vocab = bovw.KMeans(300, random_state=0, max_iter=10).fit(d["desc"][::4]).cluster_centers_.astype(np.float32)
    words = bovw.encoding.soft_assign(d["desc"], vocab)[0][:, 0]
    return d, vocab, words


def bench_chi2(hist_data, quick: bool) -> list[dict]:
    from sklearn.kernel_approximation import AdditiveChi2Sampler as SkChi2

    import bovw

    d, vocab, words = hist_data
    H = bovw.bow_histograms(words, d["offsets"], n_words=300, spatial_pyramid=(1, 2, 4), keypoints=d["xy"],
                            image_sizes=d["sizes"], norm="l1")
    rows = []
    n_all = H.shape[0]
    for n in sorted({min(1000, n_all), n_all}):
        for dtype in (np.float32, np.float64):
            X = np.ascontiguousarray(H[:n], dtype=dtype)
            ours, ref = bovw.AdditiveChi2Sampler().fit(X), SkChi2().fit(X)
            diff = float(np.abs(ours.transform(X) - ref.transform(X)).max())
            t_o, t_r = best_of_pair(lambda: ours.transform(X), lambda: ref.transform(X), repeat=3)
            rows.append(_row(
                f"chi2 map {n} x {X.shape[1]} {np.dtype(dtype).name}", "sklearn AdditiveChi2Sampler(sample_steps=2)",
                t_o, t_r, f"{(X > 0).mean():.0%} non-zero; max |diff| {diff:.1e}",
            ))
    return rows


def bench_pyramid(hist_data, quick: bool) -> list[dict]:
    from sklearn.cluster import KMeans as SkKMeans

    import bovw

    d, vocab, words_all = hist_data
    k, grids = 300, (1, 2, 4)

    def cells(x, y, w, h, g):
        cx = np.clip(np.floor((x.astype(np.float64) + 0.5) * g / w), 0, g - 1)
        cy = np.clip(np.floor((y.astype(np.float64) + 0.5) * g / h), 0, g - 1)
        return (cy * g + cx).astype(np.int64)

    rows = []
    n_all = len(d["offsets"]) - 1
    for n_images in sorted({min(1000, n_all), n_all}):
        o = d["offsets"][: n_images + 1]
        xy, sizes, words = d["xy"][: o[-1]], d["sizes"][:n_images], words_all[: o[-1]]

        def ref_per_image(words=words, o=o, xy=xy, sizes=sizes, n_images=n_images):
            out = np.zeros((n_images, 21 * k))
            for i, (a, b) in enumerate(zip(o[:-1], o[1:])):
                parts = [np.bincount(cells(xy[a:b, 0], xy[a:b, 1], sizes[i, 0], sizes[i, 1], g) * k + words[a:b],
                                     minlength=g * g * k) for g in grids]
                out[i] = np.concatenate(parts)
            return out

        img = np.repeat(np.arange(n_images), np.diff(o))
        w_img, h_img = sizes[img, 0], sizes[img, 1]

        def ref_vectorised(words=words, xy=xy, img=img, w_img=w_img, h_img=h_img, n_images=n_images):
            parts = []
            for g in grids:
                c = cells(xy[:, 0], xy[:, 1], w_img, h_img, g)
                parts.append(np.bincount((img * g * g + c) * k + words, minlength=n_images * g * g * k).reshape(n_images, -1))
            return np.hstack(parts)

        def ours(words=words, o=o, xy=xy, sizes=sizes):
            return bovw.bow_histograms(words, o, n_words=k, spatial_pyramid=grids, keypoints=xy, image_sizes=sizes)

        same = bool(np.array_equal(ours(), ref_per_image()) and np.array_equal(ours(), ref_vectorised()))
        note = f"{n_images} images, {o[-1]} words, K={k}, 21 cells; equal to NumPy: {same}"
        case = f"pyramid 1x1+2x2+4x4 from words, {n_images} images"
        t_o, t_r = best_of_pair(ours, ref_per_image, repeat=3)
        rows.append(_row(case, "np.bincount per image and level", t_o, t_r, note))
        t_o, t_r = best_of_pair(ours, ref_vectorised, repeat=3)
        rows.append(_row(case, "one vectorised np.bincount per level", t_o, t_r, note))
    o, xy, sizes = d["offsets"], d["xy"], d["sizes"]
    sk = SkKMeans(k, init=vocab, n_init=1, max_iter=1).fit(vocab)
    sk.cluster_centers_ = vocab.copy()
    bow = bovw.BagOfWords(vocab, spatial_pyramid=grids).fit()
    t_o, t_r = best_of_pair(
        lambda: bow.transform(d["desc"], o, keypoints=xy, image_sizes=sizes),
        lambda: ref_per_image(sk.predict(d["desc"])),
        repeat=2,
    )
    note = f"{n_all} images, {o[-1]} descriptors, K={k}, 21 cells"
    rows.append(_row("descriptors->pyramid histograms", "KMeans.predict + np.bincount per image and level", t_o, t_r, note))
    return rows


def run(quick: bool = False) -> list[dict]:
    data = sift_data(400 if quick else 4_000)
    rows = []
    rows += bench_gmm(data, quick)
    rows += bench_fisher(data, quick)
    rows += bench_vlad(data, quick)
    hist_data = _pyramid_hists(data, quick)
    rows += bench_chi2(hist_data, quick)
    rows += bench_pyramid(hist_data, quick)
    threads = os.cpu_count()
    for r in rows:
        r["notes"] = (r["notes"] + "; " if r["notes"] else "") + f"{threads} threads"
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['case']:<48} vs {r['reference']:<52} ours {r['ours_s']:.4f}s ref {r['ref_s']:.4f}s "
              f"x{r['speedup']:.1f}  {r['notes']}")
