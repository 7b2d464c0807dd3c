"""CNN embeddings: bovw.CNNEmbedding vs onnxruntime on the same network.

The reference is onnxruntime (CPU execution provider) running
EfficientNet-Lite0 built with ``onnx.helper`` from the same weights
(``bovw.cnn.efficientnet_lite0_onnx``: BatchNorm folded, ``SAME_UPPER``
padding, ``Clip(0, 6)``), with ``intra_op_num_threads`` = bovw's
``n_threads`` and ``inter_op_num_threads=1``. Both sides get the same real
Fruits-360 Test images: bovw the uint8 images (its time includes the
resize and normalisation), onnxruntime bovw's preprocessed NCHW float32
tensor of them (features checked equal to 1e-5).

Rows (``run(quick)`` -> list of dicts; times are seconds per image, the
median of 9 rounds (5 with ``--quick``), each round timing bovw then
onnxruntime after a pause, so a busy spell of the machine falls on both
sides; the notes give the range of the per-round ratios):

1. input 224 (the 100 x 100 images upsampled) and 100 (native size,
   ``crop_fraction=1``), batch 1 and 32, 1 and 2 threads; notes give the
   images/s of both and the CPU seconds per image (process CPU time, which
   other processes on a shared machine inflate less than wall time). The
   batch-1 rows time 8 calls right after a pause, so they include waking
   each runtime's idle threads; a second batch-1 row per size times a
   stream (32 calls after 4 untimed ones) on 2 threads;
2. the main job's case: input 96, ``crop_fraction=0.875`` (100 x 100 images
   resized to 110, centre 96 crop), batch 32, 2 threads (bovw runs a group
   of images per thread, its late layers stacked); the notes add the time
   of ``extract_descriptors`` on the same 32 JPEGs (decode included), as
   ``bovw run`` calls it;
3. peak resident memory of a fresh process that loads the model and runs 64
   images at 224 (one thread), for each side;
4. (full runs only) the CNN stage of a job on every Fruits-360 image:
   ``bovw.extract_descriptors(table, method="cnn", input_size=100,
   crop_fraction=1)`` on all Training + Test images (decode included), all cores.

Run: ``python benches/py/bench_cnn.py [--quick]`` or ``python benches/run.py --only cnn``.
Needs ``pip install 'bovw[cnn]' onnx onnxruntime``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PEAK_RSS_SOURCE, fruits_root as _fruits_root, image_files, row as _row, settle

#: Interleaved rounds per row (``--quick``: QUICK_ROUNDS). On a shared 2-core
#: virtual machine one call's time moves by up to 30 % from round to round,
#: on either side: each row gives the median of its rounds, not the best one,
#: and the range of the per-round ratios.
ROUNDS = 9
QUICK_ROUNDS = 5


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pair(ours, ref, rounds: int = ROUNDS, warmup=None) -> tuple[tuple[float, float], tuple[float, float], str]:
    """Median (wall, cpu) of ``ours`` and of ``ref`` over ``rounds`` rounds.

    Each round times ``ours`` then ``ref``, each after :func:`settle` (and
    ``warmup[i]()``, untimed, when given). Also returns the range of the
    per-round ratios ref / ours, as text for the row's notes.
    """
    times: list[list[tuple[float, float]]] = [[], []]
    for _ in range(rounds):
        for i, fn in enumerate((ours, ref)):
            settle()
            if warmup is not None:
                warmup[i]()
            c, t = _cpu(), time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - t, _cpu() - c))
    ratios = [r[0] / o[0] for o, r in zip(times[0], times[1])]
    med = [(float(np.median([w for w, _ in ts])), float(np.median([c for _, c in ts]))) for ts in times]
    spread = f"median of {rounds} interleaved rounds, per-round ratio {min(ratios):.2f}-{max(ratios):.2f}"
    return med[0], med[1], spread


_RSS_SCRIPT = PEAK_RSS_SOURCE + r"""
import json, sys, numpy as np
side, onnx_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
ims = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(8)]
if side == "bovw":
    import bovw
    cnn = bovw.CNNEmbedding()
    for _ in range(n // 8):
        cnn.transform(ims, n_threads=1)
else:
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    s = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    x = ((np.stack(ims).astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()
    for _ in range(n // 8):
        s.run(["features"], {"input": x})
print(json.dumps({"hwm_kib": peak_rss_kib()}))
"""


def _peak_rss_mib(side: str, onnx_path: str, n: int = 64) -> float:
    env = dict(os.environ)
    import bovw

    env["PYTHONPATH"] = os.pathsep.join([str(Path(bovw.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, side, onnx_path, str(n)], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["hwm_kib"] / 1024


def run(quick: bool = False) -> list[dict]:
    import onnxruntime as ort
    import pyarrow as pa

    import bovw
    from bovw.cnn import efficientnet_lite0_onnx

    rows: list[dict] = []
    model = efficientnet_lite0_onnx()
    tmp = tempfile.mkdtemp(prefix="bovw-bench-cnn-")
    onnx_path = os.path.join(tmp, "efficientnet_lite0.onnx")
    Path(onnx_path).write_bytes(model.SerializeToString())
    files = image_files("Test", limit=32)
    images = [bovw.decode_rgb(f.read_bytes()) for f in files]
    sessions = {}
    for threads in (1, 2):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sessions[threads] = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    for size in (224, 100):
        cnn = bovw.CNNEmbedding(input_size=size, crop_fraction=1.0)
        x = np.stack([cnn.preprocess(im) for im in images]).transpose(0, 3, 1, 2).copy()
        feats_ref = sessions[1].run(["features"], {"input": x})[0]
        feats = cnn.transform(images, n_threads=1)
        err = float(np.abs(feats - feats_ref).max() / np.abs(feats_ref).max())
        assert err < 1e-4, f"bovw and onnxruntime features differ by {err:.1e} at {size}"
        for batch in (1, 32):
            n_calls = 8 if batch == 1 else 1
            for threads in (1, 2):
                sess = sessions[threads]

                def ours(threads=threads, batch=batch, n_calls=n_calls):
                    for i in range(n_calls):
                        cnn.transform(images[i * batch:(i + 1) * batch], n_threads=threads)

                def ref(sess=sess, batch=batch, n_calls=n_calls):
                    for i in range(n_calls):
                        sess.run(["features"], {"input": x[i * batch:(i + 1) * batch]})

                n_img = batch * n_calls
                (ow, oc), (rw, rc), spread = _pair(ours, ref, QUICK_ROUNDS if quick else ROUNDS)
                rows.append(_row(
                    "cnn", f"{size}x{size}, batch {batch}, {threads} thread{'s' if threads > 1 else ''} (s/image)",
                    "onnxruntime", ow / n_img, rw / n_img,
                    f"bovw {n_img / ow:.1f} img/s, onnxruntime {n_img / rw:.1f} img/s; "
                    f"CPU s/image bovw {oc / n_img:.4f}, onnxruntime {rc / n_img:.4f}; features equal to {err:.0e}; "
                    f"{spread}",
                ))
        # a stream of single images on 2 threads: the rows above time 8 calls
        # right after a pause (settle), so they include each runtime's
        # wake-up of its idle threads; here 4 untimed calls wake them and 32
        # calls in a row are timed (the steady rate of a stream)
        sess = sessions[2]

        def ours_calls(k, cnn=cnn):
            return lambda: [cnn.transform(images[i:i + 1], n_threads=2) for i in range(k)]

        def ref_calls(k, sess=sess, x=x):
            return lambda: [sess.run(["features"], {"input": x[i:i + 1]}) for i in range(k)]

        (ow, oc), (rw, rc), spread = _pair(ours_calls(32), ref_calls(32), QUICK_ROUNDS if quick else ROUNDS,
                                           warmup=(ours_calls(4), ref_calls(4)))
        rows.append(_row(
            "cnn", f"{size}x{size}, batch 1, 2 threads, a stream of 32 calls after 4 untimed (s/image)",
            "onnxruntime", ow / 32, rw / 32,
            f"bovw {32 / ow:.1f} img/s, onnxruntime {32 / rw:.1f} img/s; "
            f"CPU s/image bovw {oc / 32:.4f}, onnxruntime {rc / 32:.4f}; {spread}",
        ))
    # the main job's case: 96 px, crop 0.875, batches of many images, one group of images per thread
    cnn96 = bovw.CNNEmbedding(input_size=96, crop_fraction=0.875)
    x96 = np.stack([cnn96.preprocess(im) for im in images]).transpose(0, 3, 1, 2).copy()
    err96 = float(np.abs(cnn96.transform(images, n_threads=1) - sessions[1].run(["features"], {"input": x96})[0]).max()
                  / np.abs(sessions[1].run(["features"], {"input": x96})[0]).max())
    assert err96 < 1e-4, f"bovw and onnxruntime features differ by {err96:.1e} at 96"
    (ow, oc), (rw, rc), spread = _pair(lambda: cnn96.transform(images, n_threads=2),
                                       lambda: sessions[2].run(["features"], {"input": x96}),
                                       QUICK_ROUNDS if quick else ROUNDS)
    n_img = len(images)
    jpegs = pa.record_batch({"content": pa.array([f.read_bytes() for f in files], pa.binary())})
    bovw.extract_descriptors(jpegs, method=cnn96, n_threads=2)
    settle()
    t = time.perf_counter()
    bovw.extract_descriptors(jpegs, method=cnn96, n_threads=2)
    ext = (time.perf_counter() - t) / n_img
    rows.append(_row(
        "cnn", f"96x96 crop 0.875, batch {n_img}, 2 threads: the main job's case (s/image)", "onnxruntime",
        ow / n_img, rw / n_img,
        f"bovw {n_img / ow:.1f} img/s, onnxruntime {n_img / rw:.1f} img/s; CPU s/image bovw {oc / n_img:.4f}, "
        f"onnxruntime {rc / n_img:.4f}; extract_descriptors on the JPEGs (decode included) {ext:.4f} s/image; "
        f"features equal to {err96:.0e}; {spread}",
    ))
    ours_rss, ref_rss = _peak_rss_mib("bovw", onnx_path), _peak_rss_mib("ort", onnx_path)
    rows.append(_row("cnn", "peak RSS of a worker process, 224, 64 images (MiB)", "onnxruntime", ours_rss, ref_rss,
                     "fresh process: Python + numpy + the model + 64 images in batches of 8; "
                     "'speedup' column = onnxruntime / bovw memory"))
    if not quick:
        root = _fruits_root()
        if (root / "Training").is_dir() and len(list((root / "Training").iterdir())) > 100:
            table = bovw.read_images(root)
            cnn = bovw.CNNEmbedding(input_size=100, crop_fraction=1.0)
            cnn.transform(images[:2])
            settle()
            t = time.perf_counter()
            for i in range(0, table.num_rows, 1024):
                bovw.extract_descriptors(table.slice(i, 1024), method=cnn)
            secs = time.perf_counter() - t
            rows.append(_row("cnn", f"CNN stage on all {table.num_rows} Fruits-360 images, 100 px, all cores (s)",
                             "", secs, None, f"decode + preprocess + EfficientNet-Lite0: {table.num_rows / secs:.0f} img/s"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
