"""Write the fuzzing seed corpus (fuzz/corpus/) from one committed Fruits-360 image.

    python fuzz/make_corpus.py

Small files (crops of about 64 x 48 pixels) in every JPEG and PNG layout the
decoder handles: baseline 4:2:0, 4:4:4, gray, progressive, with restart
markers, an odd size (partial MCUs), CMYK (Adobe APP14); PNG gray, gray +
alpha, RGB, RGBA, palette, 1-bit and 16-bit (refused: the error path). The
fuzz targets (tests/fuzz.rs) mutate these; the Rust unit tests of
src/image.rs use them as known-good inputs. Needs OpenCV and Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = REPO / "python" / "bovw" / "data" / "fruits-360-sample" / "Test" / "Banana"


def main() -> None:
    out = HERE / "corpus"
    out.mkdir(exist_ok=True)
    src = sorted(SOURCE.glob("*.jpg"))[0]
    bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)[20:68, 18:82]  # 64 x 48
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgb = bgr[:, :, ::-1].copy()

    def jpg(name: str, img: np.ndarray, *params: int) -> None:
        ok, enc = cv2.imencode(".jpg", img, list(params))
        assert ok
        (out / name).write_bytes(enc.tobytes())

    jpg("jpeg_baseline_420.jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 90)
    jpg("jpeg_444_q100.jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 100,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
    jpg("jpeg_gray.jpg", gray, cv2.IMWRITE_JPEG_QUALITY, 90)
    jpg("jpeg_progressive.jpg", bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    jpg("jpeg_restart.jpg", bgr, cv2.IMWRITE_JPEG_RST_INTERVAL, 3)
    jpg("jpeg_progressive_restart.jpg", bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 2)
    jpg("jpeg_odd_size.jpg", bgr[:23, :37], cv2.IMWRITE_JPEG_QUALITY, 80)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=90)
    (out / "jpeg_cmyk.jpg").write_bytes(buf.getvalue())

    def png(name: str, img: Image.Image, **kw: object) -> None:
        buf = io.BytesIO()
        img.save(buf, "PNG", **kw)
        (out / name).write_bytes(buf.getvalue())

    png("png_rgb.png", Image.fromarray(rgb))
    png("png_gray.png", Image.fromarray(gray))
    png("png_rgba.png", Image.fromarray(np.dstack([rgb, gray])))
    png("png_gray_alpha.png", Image.fromarray(np.dstack([gray, 255 - gray])).convert("LA"))
    png("png_palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32))
    png("png_1bit.png", Image.fromarray(gray).convert("1"))
    ok, enc = cv2.imencode(".png", gray.astype(np.uint16) * 257)
    assert ok
    (out / "png_gray16.png").write_bytes(enc.tobytes())
    for p in sorted(out.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
