"""Shared fixtures: where the real Fruits-360 images are.

``shared/fruits-360`` (next to the checkout, 131 classes) is used when it is
there; otherwise the sample shipped in the package (10 classes). Set
``BOVW_FRUITS360`` to point at another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import bovw

REPO = Path(__file__).resolve().parents[1]


def shared_fruits_root() -> Path | None:
    env = os.environ.get("BOVW_FRUITS360")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "fruits-360", REPO / "shared" / "fruits-360"]
    for c in candidates:
        if (c / "Test").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def fruits_root() -> Path:
    """The largest real Fruits-360 copy available (shared, else the sample)."""
    return shared_fruits_root() or bovw.sample_data_path()


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The committed 550-image sample."""
    return bovw.sample_data_path()


def pick_images(root: Path, split: str, n: int) -> list[Path]:
    """``n`` images of ``root/split`` spread evenly over all classes (round robin)."""
    classes = sorted(p for p in (root / split).iterdir() if p.is_dir())
    files = [sorted(c.glob("*.jpg")) for c in classes]
    out: list[Path] = []
    i = 0
    while len(out) < n and any(i < len(f) for f in files):
        for f in files:
            if i < len(f) and len(out) < n:
                # step through each class so frames are not all neighbours
                out.append(f[(i * 7) % len(f)] if len(f) > 7 else f[i])
        i += 1
    return out


@pytest.fixture(scope="session")
def spark():
    """The suite's one local Spark session (``local[2]``), shared by every Spark test."""
    import bovw.spark as bs

    s = bs.session(
        "local[2]",
        "bovw-tests",
        conf={
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.driver.memory": "1g",
        },
    )
    s.sparkContext.setLogLevel("ERROR")
    yield s


@pytest.fixture(scope="session")
def real_gray_images(fruits_root: Path) -> list[tuple[str, np.ndarray]]:
    """500 real Test images (all classes represented when shared/ is present) as
    (path, (100, 100) uint8 gray) decoded by OpenCV-compatible bovw.decode_gray."""
    paths = pick_images(fruits_root, "Test", 500)
    return [(str(p), bovw.decode_gray(p.read_bytes())) for p in paths]
