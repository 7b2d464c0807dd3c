"""Peak memory per pixel of each extractor, beyond decoding (docs/reliability.md).

    PYTHONPATH=python python benches/memory_per_pixel.py [WIDTH HEIGHT]

One process per extractor: a Fruits-360 sample image resized to WIDTH x HEIGHT
(default 2000 x 1500) with noise added, encoded as PNG, decoded once gray and
once RGB (so the baseline ``ru_maxrss`` holds the decode's own peak), then
described with one thread and ``max_image_memory=2**40`` (no budget). Prints
``ru_maxrss`` growth divided by the pixel count, next to the extractor's own
estimate (``Extractor::memory_bytes``, the figure ``max_image_memory`` is held
against, read back from the refusal message at a 1 MiB budget). A measured
figure of 0 means the extractor's peak stays under the decode's.
"""

from __future__ import annotations

import re
import subprocess
import sys

CHILD = r"""
import re, sys, resource, numpy as np, cv2, pyarrow as pa, bovw
method, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src = cv2.imread(str(sorted((bovw.sample_data_path() / "Test").rglob("*.jpg"))[0]))
big = cv2.resize(src, (w, h), interpolation=cv2.INTER_CUBIC)
big = np.clip(big.astype(int) + np.random.default_rng(0).integers(-20, 20, big.shape), 0, 255).astype(np.uint8)
b = cv2.imencode(".png", big)[1].tobytes()
table = pa.table({"content": [b]})
est = bovw.get_extractor(method).set_params(max_image_memory=1 << 20).extract(table).column("error")[0].as_py()
m = re.search(r"\((\d+) bytes\)", est or "")
ext = bovw.get_extractor(method).set_params(max_image_memory=2**40)
ext.extract(pa.table({"content": [cv2.imencode(".png", src)[1].tobytes()]}), n_threads=1)
bovw.decode_rgb(b); bovw.decode_gray(b)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = ext.extract(table, n_threads=1)
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert r.column("error")[0].as_py() is None, r.column("error")[0]
n = w * h
print(f"{method:6s} {w}x{h}: measured {(r1 - r0) * 1024 / n:6.1f} B/px, estimate "
      + (f"{int(m.group(1)) / n:6.1f} B/px" if m else "  none"))
"""


def main() -> None:
    w, h = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (2000, 1500)
    for method in ("sift", "orb", "dsift", "phow", "color", "cnn"):
        p = subprocess.run([sys.executable, "-c", CHILD, method, str(w), str(h)], capture_output=True, text=True)
        print(p.stdout.strip() or f"{method}: failed\n{p.stderr[-2000:]}")


if __name__ == "__main__":
    main()
