"""Per-image times of ``bovw.CNNEmbedding.transform`` in the ways a caller
calls it, for comparing two builds of bovw (run this script under each
build, alternating, on a quiet machine) and for the after-a-pause
behaviour of one image split over threads.

Prints, for input sizes 224 (the 100 x 100 images upsampled) and 100
(native, ``crop_fraction=1``):

- ``batch32 tN``: one call of 32 Fruits-360 images, ``n_threads=N``, the
  best of 3 calls, seconds per image;
- ``stream tN``: the median of 200 (100 px) or 60 (224 px) calls of one
  image each, after 10 untimed calls;
- ``after pause tN``: 8 calls of one image each right after a 1 s sleep,
  each call's time (how long the idle threads take to help again).

This is not a comparison with a reference (``bench_cnn.py`` is); it times
bovw alone, so two builds are compared by running it under each.

Run: ``BOVW_FRUITS360=../shared/fruits-360 python benches/py/cnn_call_times.py``.
"""

from __future__ import annotations

import statistics
import sys
import time

from common import image_files


def main() -> None:
    import bovw

    images = [bovw.decode_rgb(f.read_bytes()) for f in image_files("Training", limit=32)]
    for size in (224, 100):
        cnn = bovw.CNNEmbedding(input_size=size, crop_fraction=1.0)
        cnn.transform(images[:4], n_threads=1)
        for threads in (1, 2):
            best = min(_timed(lambda: cnn.transform(images, n_threads=threads)) for _ in range(3))
            print(f"{size} px batch32 t{threads}: {best / len(images) * 1e3:.2f} ms/image")
        for threads in (1, 2):
            for i in range(10):
                cnn.transform(images[i:i + 1], n_threads=threads)
            calls = 200 if size == 100 else 60
            times = [_timed(lambda i=i: cnn.transform(images[i % 32:i % 32 + 1], n_threads=threads)) for i in range(calls)]
            print(f"{size} px stream t{threads}: median {statistics.median(times) * 1e3:.2f} ms/image")
        for threads in (1, 2):
            time.sleep(1.0)
            times = [_timed(lambda i=i: cnn.transform(images[i:i + 1], n_threads=threads)) for i in range(8)]
            print(f"{size} px after pause t{threads}: " + " ".join(f"{t * 1e3:.2f}" for t in times) + " ms")
    sys.stdout.flush()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
