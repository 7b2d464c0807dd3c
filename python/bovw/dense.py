"""Dense descriptors: VLFeat's dense SIFT and PHOW, in Rust.

:class:`DenseSIFT` is ``vl_dsift`` (VLFeat 0.9.21): SIFT descriptors on a
regular grid, without detection or orientation. :class:`PHOW` is ``vl_phow``:
dense SIFT at several bin sizes on a pre-smoothed image, in gray or in
colour (``rgb``, ``hsv``, ``opponent``; 3 x 128 values). Both are
:class:`bovw.features.Extractor` s: ``.compute(image)`` describes one NumPy
image, ``.extract(batch)`` / :func:`bovw.extract_descriptors` a batch of
encoded images (``method="dsift"`` or ``"phow"``).

Frames are returned as an (n, 4) float32 array: ``x``, ``y`` (the frame
centre in pixels, origin at the centre of the top-left pixel, x to the right,
y down), the norm ("contrast", VLFeat's descriptor mass) and the bin size in
pixels. In the Arrow batch output the ``keypoints`` column holds ``(x, y,
size, angle)`` with ``size`` the bin size and ``angle`` 0 (the norm is not
kept there).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bovw import _bovw
from bovw.features import Extractor

__all__ = ["DenseSIFT", "PHOW"]


def _check_color_image(image: Any, what: str = "image") -> np.ndarray:
    """A (H, W) or (H, W, 3) uint8 C-contiguous array, or a clear error."""
    if (
        type(image) is np.ndarray
        and image.dtype == np.uint8
        and image.flags.c_contiguous
        and image.size
        and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))
    ):
        return image
    if image is None:
        raise TypeError(f"{what}: expected a uint8 array of shape (height, width) or (height, width, 3), got None")
    arr = np.asarray(image)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"{what}: expected dtype uint8, got {arr.dtype}; convert with np.clip(img, 0, 255).astype(np.uint8)"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(
            f"{what}: expected shape (height, width) gray or (height, width, 3) RGB, got {arr.shape} "
            "(drop alpha with img[..., :3]; cv2.imread gives BGR: reverse with img[..., ::-1])"
        )
    if arr.size == 0:
        raise ValueError(f"{what}: empty array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


class _CachedRust(Extractor):
    """Build the Rust extractor once and again only after a parameter is
    set (directly or by ``set_params``): cheaper per call than the base
    class's ``repr`` key, which matters for 100 x 100 images."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self)._param_names:
            self.__dict__.pop("_rust_fast", None)
        super().__setattr__(name, value)

    @property
    def _rust(self) -> Any:
        cached = self.__dict__.get("_rust_fast")
        if cached is None:
            cached = self.__dict__["_rust_fast"] = type(self)._rust_class(**self._rust_params())
        return cached

    def __getstate__(self) -> dict[str, Any]:
        return self.get_params()


def _int_param(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer number of pixels, got {value!r}")
    return int(value)


class DenseSIFT(_CachedRust, Extractor):
    """Dense SIFT with VLFeat's semantics (``vl_dsift``).

    SIFT descriptors (4 x 4 spatial bins x 8 orientations) on a regular grid
    of the gray image scaled to [0, 1], with no detection, no orientation
    assignment and no scale space: smooth the image first for the scale you
    want (:class:`PHOW` does).

    Parameters
    ----------
    step : int, default 1
        Pixels between neighbouring frames, along x and y (``Step``).
    size : int, default 3
        Width in pixels of one spatial bin (``Size``); a descriptor covers
        ``3 * size + 1`` pixels between its outer bin centres.
    bounds : tuple of 4 int, optional
        ``(x_min, y_min, x_max, y_max)``, inclusive, 0-based pixels: frames
        are placed so that every bin centre lies inside (``Bounds``, in
        VLFeat's x-first order; cyvlfeat takes ``(y_min, x_min, y_max,
        x_max)``). Clipped to the image; default the whole image.
    fast : bool, default False
        Flat (piecewise-bilinear) spatial window instead of the Gaussian one
        (``Fast``): not exactly SIFT, much faster.
    window_size : float, default 2.0
        Standard deviation of the Gaussian window in bins (``WindowSize``).
    float_descriptors : bool, default False
        Return float32 descriptors instead of uint8 (``FloatDescriptors``).

    VLFeat's option names in lower case (``windowsize``, ``floatdescriptors``)
    are accepted as keyword aliases.

    Notes
    -----
    The frames start with the top-left bin centre at ``(x_min, y_min)``, so
    the first frame centre is ``(x_min + 1.5 size, y_min + 1.5 size)``; then
    every ``step`` pixels, rows outer, while the last bin centre stays inside
    the bounds. An image smaller than one descriptor gives zero frames (not
    an error). Each 128-vector (index ``t + 8 bx + 32 by``) is L2-normalised,
    clamped at 0.2, renormalised and scaled to ``min(512 v, 255)``, truncated
    for uint8, as VLFeat's wrappers do. The norm in the frames is the sum of
    the descriptor before normalisation divided by ``(3 size + 1) ** 2``.
    Orientation bins follow VLFeat: y points down, angles from +x towards
    +y. A constant image gives zero descriptors and norms (no NaN).

    Agreement with cyvlfeat 0.7.1 on VLFeat 0.9.21 (``tests/test_dense.py``,
    real Fruits-360 and grocery photos): the same frames, descriptors within
    1 % of their norm for at least 99 % of frames in both window modes
    (Gaussian window: within 1e-5; flat window: VLFeat's running sums round
    differently on near-flat patches).

    References
    ----------
    .. [1] A. Vedaldi and B. Fulkerson, "VLFeat: an open and portable library
       of computer vision algorithms", ACM Multimedia 2010; ``vl/dsift.c``
       and ``toolbox/sift/vl_dsift.m`` of VLFeat 0.9.21.
    .. [2] D. G. Lowe, "Distinctive Image Features from Scale-Invariant
       Keypoints", IJCV 60(2), 2004.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> img = (np.arange(100 * 100) % 251).astype(np.uint8).reshape(100, 100)
    >>> frames, desc = bovw.DenseSIFT(step=4, size=8, fast=True).compute(img)
    >>> frames.shape, desc.shape, desc.dtype
    ((361, 4), (361, 128), dtype('uint8'))
    >>> frames[0]  # x, y, norm, bin size
    array([12.        , 12.        ,  0.2275...,  8.        ], dtype=float32)
    """

    name = "dsift"
    vocabularies = ("kmeans",)
    _rust_class = _bovw.DenseSift
    _param_names = ("step", "size", "bounds", "fast", "window_size", "float_descriptors")
    _aliases: ClassVar[dict[str, str]] = {"windowsize": "window_size", "floatdescriptors": "float_descriptors"}

    def __init__(
        self,
        step: int = 1,
        size: int = 3,
        bounds: Any = None,
        fast: bool = False,
        window_size: float = 2.0,
        float_descriptors: bool = False,
        **vlfeat_names: Any,
    ) -> None:
        self.step = step
        self.size = size
        self.bounds = bounds
        self.fast = fast
        self.window_size = window_size
        self.float_descriptors = float_descriptors
        self.set_params(**vlfeat_names)

    def _rust_params(self) -> dict[str, Any]:
        p = super()._rust_params()
        p["step"] = _int_param("step", p["step"])
        p["size"] = _int_param("size", p["size"])
        if p["bounds"] is not None:
            b = list(p["bounds"])
            if len(b) != 4:
                raise ValueError(f"bounds: expected (x_min, y_min, x_max, y_max), got {p['bounds']!r}")
            p["bounds"] = [_int_param("bounds", v) for v in b]
        p["fast"] = bool(p["fast"])
        p["float_descriptors"] = bool(p["float_descriptors"])
        p["window_size"] = float(p["window_size"])
        return p

    def compute(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """Dense SIFT of one image.

        Parameters
        ----------
        image : ndarray of shape (height, width) or (height, width, 3), dtype uint8
            Gray, or RGB (reduced to gray with OpenCV's BT.601 weights, the
            gray levels :func:`bovw.decode_gray` gives).

        Returns
        -------
        frames : ndarray of shape (n_frames, 4), dtype float32
            ``x``, ``y`` (frame centre, pixels), norm, bin size (pixels).
        descriptors : ndarray of shape (n_frames, 128), dtype uint8 or float32

        Raises
        ------
        TypeError
            If ``image`` is not uint8.
        ValueError
            If ``image`` has another shape or is empty, or a parameter is invalid
            (the message names it).
        """
        out: tuple[np.ndarray, np.ndarray] = self._rust.compute(_check_color_image(image))
        return out


class PHOW(_CachedRust, Extractor):
    """Pyramid histogram of visual words features: VLFeat's ``vl_phow``.

    Dense SIFT (:class:`DenseSIFT`, flat window by default) at several bin
    sizes, each on the image smoothed by a Gaussian of standard deviation
    ``size / magnification``, with frames of every size sharing their
    centres; in gray or in a colour space (one 128-vector per channel,
    concatenated).

    Parameters
    ----------
    sizes : sequence of int, default (4, 6, 8, 10)
        Bin sizes in pixels (``Sizes``).
    step : int, default 2
        Grid step in pixels (``Step``).
    color : {"gray", "rgb", "hsv", "opponent"}, default "gray"
        ``gray``: bovw's gray image (OpenCV's weights); ``rgb``: R, G, B;
        ``hsv``: MATLAB's ``rgb2hsv`` (H, S, V in [0, 1]); ``opponent``:
        ``mu = 0.3 R + 0.59 G + 0.11 B``, ``(R - G) / sqrt(2) + 0.01 mu``,
        ``(R + G - 2 B) / sqrt(6) + 0.01 mu`` (all on [0, 1] values).
    fast : bool, default True
        Flat spatial window (``Fast``).
    magnification : float, default 6
        The image is smoothed by sigma = ``size / magnification`` (``Magnif``).
    window_size : float, default 1.5
        Gaussian window in bins (``WindowSize``).
    contrast_threshold : float, default 0.005
        Frames whose contrast (the norm of the first channel for gray and
        opponent, the mean norm for rgb, the V norm for hsv) is below it get
        all-zero descriptors (``ContrastThreshold``); frames are kept.
    float_descriptors : bool, default False
        float32 instead of uint8 descriptors (``FloatDescriptors``).

    VLFeat's option names in lower case (``magnif``, ``windowsize``,
    ``contrastthreshold``, ``floatdescriptors``) are accepted as keyword aliases.

    Notes
    -----
    For each size ``s`` the grid bounds are ``[o, o, W - 1, H - 1]`` with
    ``o = floor(1 + 1.5 (max(sizes) - s))`` (cyvlfeat's 0-based offset; the
    MATLAB ``vl_phow`` starts one pixel further). Frames are listed size by
    size in the order of ``sizes``, each size row-major. Smoothing follows
    cyvlfeat (``scipy.ndimage.gaussian_filter``: radius ``int(4 sigma + 0.5)``,
    mirrored border) applied to each channel alone, as ``vl_phow.m`` does
    (cyvlfeat 0.7.1 smooths the three colour channels together, across the
    channel axis too). cyvlfeat 0.7.1 also ignores ``window_size`` (its
    ``dsift`` calls keep VLFeat's 2.0) and computes the third opponent
    channel as ``R + G - 2 B / sqrt(6)``: bovw follows ``vl_phow.m`` in all
    three; ``tests/test_dense.py`` measures each difference.

    A gray image (2-D array, or a gray JPEG in a batch) asked for a colour
    variant has its level replicated in R, G and B (as ``cv2.imread`` does):
    ``hsv`` then has zero H and S channels, ``opponent`` nearly constant
    colour channels. Images smaller than one descriptor give zero frames.

    References
    ----------
    .. [1] A. Bosch, A. Zisserman and X. Muñoz, "Image classification using
       random forests and ferns", ICCV 2007.
    .. [2] VLFeat 0.9.21, ``toolbox/sift/vl_phow.m``, ``apps/phow_caltech101.m``.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    >>> frames, desc = bovw.PHOW(color="hsv", step=4).compute(rgb)
    >>> desc.shape[1], sorted(set(frames[:, 3].tolist()))
    (384, [4.0, 6.0, 8.0, 10.0])
    """

    name = "phow"
    vocabularies = ("kmeans",)
    _rust_class = _bovw.Phow
    _param_names = (
        "sizes",
        "step",
        "color",
        "fast",
        "magnification",
        "window_size",
        "contrast_threshold",
        "float_descriptors",
    )
    _aliases: ClassVar[dict[str, str]] = {
        "magnif": "magnification",
        "windowsize": "window_size",
        "contrastthreshold": "contrast_threshold",
        "floatdescriptors": "float_descriptors",
    }

    def __init__(
        self,
        sizes: Any = (4, 6, 8, 10),
        step: int = 2,
        color: str = "gray",
        fast: bool = True,
        magnification: float = 6.0,
        window_size: float = 1.5,
        contrast_threshold: float = 0.005,
        float_descriptors: bool = False,
        **vlfeat_names: Any,
    ) -> None:
        self.sizes = sizes
        self.step = step
        self.color = color
        self.fast = fast
        self.magnification = magnification
        self.window_size = window_size
        self.contrast_threshold = contrast_threshold
        self.float_descriptors = float_descriptors
        self.set_params(**vlfeat_names)

    def _rust_params(self) -> dict[str, Any]:
        p = super()._rust_params()
        sizes = p["sizes"]
        if isinstance(sizes, (int, np.integer)):
            sizes = [sizes]
        p["sizes"] = [_int_param("sizes", s) for s in sizes]
        p["step"] = _int_param("step", p["step"])
        if not isinstance(p["color"], str):
            raise ValueError(f"color: expected 'gray', 'rgb', 'hsv' or 'opponent', got {p['color']!r}")
        p["fast"] = bool(p["fast"])
        p["float_descriptors"] = bool(p["float_descriptors"])
        for k in ("magnification", "window_size", "contrast_threshold"):
            p[k] = float(p[k])
        return p

    def compute(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """PHOW features of one image.

        Parameters
        ----------
        image : ndarray of shape (height, width) or (height, width, 3), dtype uint8
            RGB (R, G, B order, as :func:`bovw.decode_rgb` gives), or gray.

        Returns
        -------
        frames : ndarray of shape (n_frames, 4), dtype float32
            ``x``, ``y`` (pixels), contrast (norm of the first channel), bin size.
        descriptors : ndarray of shape (n_frames, 128 * channels), dtype uint8 or float32
            Channels concatenated in order (H, S, V for ``hsv``).

        Raises
        ------
        TypeError
            If ``image`` is not uint8.
        ValueError
            If ``image`` has another shape or is empty, or a parameter is invalid.
        """
        out: tuple[np.ndarray, np.ndarray] = self._rust.compute(_check_color_image(image))
        return out
