# Type stubs for the Rust extension bovw._bovw (checked by mypy.stubtest in CI).
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

__all__: list[str]
__version__: str

# image
def decode_gray_image(data: bytes) -> npt.NDArray[np.uint8]: ...
def decode_gray_batch(
    content: Any, n_threads: Optional[int] = None
) -> tuple[list[Optional[npt.NDArray[np.uint8]]], list[Optional[str]]]: ...

# SIFT
def sift_detect_and_compute(
    image: npt.NDArray[np.uint8],
    mask: Optional[npt.NDArray[np.uint8]] = None,
    *,
    n_features: int = 0,
    n_octave_layers: int = 3,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    sigma: float = 1.6,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]: ...
def sift_detect(
    image: npt.NDArray[np.uint8],
    mask: Optional[npt.NDArray[np.uint8]] = None,
    *,
    n_features: int = 0,
    n_octave_layers: int = 3,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    sigma: float = 1.6,
) -> npt.NDArray[np.float64]: ...
def sift_compute(
    image: npt.NDArray[np.uint8],
    keypoints: npt.NDArray[np.float64],
    *,
    n_features: int = 0,
    n_octave_layers: int = 3,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    sigma: float = 1.6,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]: ...
def sift_extract(
    content: Any,
    *,
    n_threads: Optional[int] = None,
    n_features: int = 0,
    n_octave_layers: int = 3,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    sigma: float = 1.6,
) -> Any: ...

# ORB
def orb_detect_and_compute(
    image: npt.NDArray[np.uint8],
    mask: Optional[npt.NDArray[np.uint8]] = None,
    *,
    n_features: int = 500,
    scale_factor: float = 1.2,
    n_levels: int = 8,
    edge_threshold: int = 31,
    first_level: int = 0,
    wta_k: int = 2,
    score_type: str = "harris",
    patch_size: int = 31,
    fast_threshold: int = 20,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]: ...
def orb_detect(
    image: npt.NDArray[np.uint8],
    mask: Optional[npt.NDArray[np.uint8]] = None,
    *,
    n_features: int = 500,
    scale_factor: float = 1.2,
    n_levels: int = 8,
    edge_threshold: int = 31,
    first_level: int = 0,
    wta_k: int = 2,
    score_type: str = "harris",
    patch_size: int = 31,
    fast_threshold: int = 20,
) -> npt.NDArray[np.float64]: ...
def orb_compute(
    image: npt.NDArray[np.uint8],
    keypoints: npt.NDArray[np.float64],
    *,
    n_features: int = 500,
    scale_factor: float = 1.2,
    n_levels: int = 8,
    edge_threshold: int = 31,
    first_level: int = 0,
    wta_k: int = 2,
    score_type: str = "harris",
    patch_size: int = 31,
    fast_threshold: int = 20,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]: ...
def orb_extract(
    content: Any,
    *,
    n_threads: Optional[int] = None,
    n_features: int = 500,
    scale_factor: float = 1.2,
    n_levels: int = 8,
    edge_threshold: int = 31,
    first_level: int = 0,
    wta_k: int = 2,
    score_type: str = "harris",
    patch_size: int = 31,
    fast_threshold: int = 20,
) -> Any: ...
