"""Colour histograms (global descriptors) and OpenCV's 8-bit HSV, in Rust.

:class:`ColorHistogram` is a joint histogram over HSV, RGB or opponent
colour with ``cv2.calcHist``'s bins, an optional near-white background rule
or mask, an optional spatial grid, normalised and square-rooted by default:
one vector per image. :func:`rgb_to_hsv` is ``cv2.cvtColor(img,
cv2.COLOR_RGB2HSV)`` byte for byte.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bovw import _bovw
from bovw.dense import _CachedRust, _check_color_image, _int_param
from bovw.features import Extractor

__all__ = ["ColorHistogram", "rgb_to_hsv"]

def rgb_to_hsv(image: Any) -> np.ndarray:
    """OpenCV's 8-bit RGB to HSV conversion.

    The same bytes as ``cv2.cvtColor(image, cv2.COLOR_RGB2HSV)`` for every
    one of the 2**24 colours: ``V = max(R, G, B)``, ``S = round(255 (V -
    min) / V)``, ``H`` in [0, 180) (degrees halved), in OpenCV's 12-bit fixed
    point.

    Parameters
    ----------
    image : ndarray of shape (height, width, 3), dtype uint8
        R, G, B order (:func:`bovw.decode_rgb`).

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8
        H, S, V.

    Raises
    ------
    TypeError
        If ``image`` is not uint8.
    ValueError
        If ``image`` is not (height, width, 3).

    References
    ----------
    .. [1] OpenCV 4.x, ``modules/imgproc/src/color_hsv.simd.hpp`` (``RGB2HSV_b``).
    """
    arr = _check_color_image(image)
    if arr.ndim != 3:
        raise ValueError(f"image: expected shape (height, width, 3), got {arr.shape}")
    return _bovw.rgb_to_hsv_image(arr)


def _channel_triple(name: str, value: Any) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return [int(value)] * 3
    vals = list(value)
    if len(vals) != 3:
        raise ValueError(f"{name}: expected an int or 3 ints (one per channel), got {value!r}")
    return [_int_param(name, v) for v in vals]


class ColorHistogram(_CachedRust, Extractor):
    """Joint colour histogram of an image: one global descriptor.

    Pixels are converted to the colour ``space`` with OpenCV's 8-bit
    definitions and counted in ``bins[0] x bins[1] x bins[2]`` uniform joint
    bins over each channel's full range, with ``cv2.calcHist``'s binning
    (equal counts on the same channels, mask and bins), optionally per cell
    of spatial grids, then normalised and square-rooted per cell.

    The defaults are the Fruits-360 recipe that reaches 99.2 % on the
    131-class Test split with a logistic regression: HSV, 18 x 4 x 4 bins,
    near-white background left out, L1-normalised and square-rooted
    (the Hellinger map).

    Parameters
    ----------
    space : {"hsv", "rgb", "opponent"}, default "hsv"
        ``hsv``: OpenCV's 8-bit HSV, H in [0, 180), S and V in [0, 256)
        (:func:`rgb_to_hsv`); ``rgb``: the R, G, B bytes; ``opponent``:
        ``(R - G) / sqrt 2``, ``(R + G - 2 B) / sqrt 6``, ``(R + G + B) / sqrt 3``
        (van de Sande et al.), binned uniformly over their full ranges, i.e.
        over the integers ``R - G`` in [-255, 256), ``R + G - 2 B`` in
        [-510, 511), ``R + G + B`` in [0, 766).
    bins : int or tuple of 3 int, default (18, 4, 4)
        Bins per channel, in channel order (H, S, V for ``hsv``).
    mask : {"white", None} or ndarray, default "white"
        ``"white"``: leave out near-white pixels, OpenCV HSV ``V > 230`` and
        ``S < 30`` (a white studio background); works in batches.
        ``None``: count every pixel. An (H, W) uint8 array: count only its
        non-zero pixels, like ``cv2.calcHist``'s mask (:meth:`compute` only;
        a batch raises ``ValueError``); :meth:`compute` also takes a
        per-call ``mask``.
    grid : int or sequence of int, default 1
        Spatial grids, concatenated in order: ``2`` gives 2 x 2 cells,
        ``(1, 2)`` the whole image then 2 x 2 cells (a spatial pyramid).
        Cell ``(i, j)`` of grid ``g`` covers rows ``floor(i H / g)`` to
        ``floor((i + 1) H / g) - 1`` (same for columns); cells are row-major.
    normalize : {"l1", "l2", None}, default "l1"
        Per cell: divide by the count (``l1``, sums to 1) or the Euclidean
        norm (``l2``); ``None`` keeps pixel counts. A cell with no counted
        pixel stays zero (never NaN).
    sqrt : bool, default True
        Square root of every value after normalisation.

    Notes
    -----
    The descriptor has ``prod(bins) * sum(g * g for g in grid)`` float32
    values. In a batch (:func:`bovw.extract_descriptors` with
    ``method="color"``) each image gives one row whose keypoint is the image
    centre (``x = (w - 1) / 2``, ``y = (h - 1) / 2``, ``size = max(w, h)``).
    A gray image has its level replicated in R, G and B (as
    ``cv2.imread(..., IMREAD_COLOR)`` does): in HSV every pixel has H = S = 0.
    Counts are exact integers in float32 up to 2**24 pixels per bin.

    References
    ----------
    .. [1] M. J. Swain and D. H. Ballard, "Color indexing", IJCV 7(1), 1991.
    .. [2] K. E. A. van de Sande, T. Gevers and C. G. M. Snoek, "Evaluating
       color descriptors for object and scene recognition", PAMI 32(9), 2010.
    .. [3] OpenCV 4.x ``cv2.calcHist`` (``modules/imgproc/src/histogram.cpp``)
       and ``cv2.cvtColor`` (``color_hsv.simd.hpp``).

    Examples
    --------
    >>> import numpy as np, bovw
    >>> red = np.zeros((10, 10, 3), np.uint8); red[..., 0] = 255
    >>> h = bovw.ColorHistogram().compute(red)
    >>> h.shape, float(h.max()), int(h.argmax())
    ((288,), 1.0, 15)
    """

    name = "color"
    vocabularies = ()
    _rust_class = _bovw.ColorHistogram
    _param_names = ("space", "bins", "mask", "grid", "normalize", "sqrt")
    _aliases: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        space: str = "hsv",
        bins: Any = (18, 4, 4),
        mask: Any = "white",
        grid: Any = 1,
        normalize: str | None = "l1",
        sqrt: bool = True,
    ) -> None:
        self.space = space
        self.bins = bins
        self.mask = mask
        self.grid = grid
        self.normalize = normalize
        self.sqrt = sqrt

    def _mask_array(self) -> np.ndarray | None:
        return self.mask if isinstance(self.mask, np.ndarray) else None

    def _rust_params(self) -> dict[str, Any]:
        p = super()._rust_params()
        if not isinstance(p["space"], str):
            raise ValueError(f"space: expected 'hsv', 'rgb' or 'opponent', got {p['space']!r}")
        p["bins"] = _channel_triple("bins", p["bins"])
        grid = p["grid"]
        p["grid"] = [_int_param("grid", grid)] if isinstance(grid, (int, np.integer)) else [
            _int_param("grid", g) for g in grid
        ]
        mask = p["mask"]
        if isinstance(mask, np.ndarray):
            p["mask"] = None  # applied per call by compute()
        elif mask is not None and not isinstance(mask, str):
            raise ValueError(f"mask: expected None, 'white' or a uint8 array, got {type(mask).__name__}")
        if p["normalize"] is not None and not isinstance(p["normalize"], str):
            raise ValueError(f"normalize: expected 'l1', 'l2' or None, got {p['normalize']!r}")
        p["sqrt"] = bool(p["sqrt"])
        return p

    def compute(self, image: Any, mask: Any = None) -> np.ndarray:
        """The colour histogram of one image.

        Parameters
        ----------
        image : ndarray of shape (height, width, 3) or (height, width), dtype uint8
            RGB (R, G, B order, as :func:`bovw.decode_rgb` gives), or gray
            (replicated).
        mask : ndarray of shape (height, width), dtype uint8 or bool, optional
            Count only the non-zero pixels (besides the ``mask`` parameter's rule
            or array, which must hold too).

        Returns
        -------
        ndarray of shape (descriptor_width,), dtype float32

        Raises
        ------
        TypeError
            If ``image`` or ``mask`` is not uint8/bool.
        ValueError
            If a shape does not match, or a parameter is invalid (the message names it).
        """
        img = _check_color_image(image)
        if mask is None and not isinstance(self.mask, np.ndarray):
            hist: np.ndarray = self._rust.compute(img, None)
            return hist
        masks = [m for m in (self._mask_array(), mask) if m is not None]
        m = None
        for mm in masks:
            arr = np.asarray(mm)
            if arr.dtype == np.bool_:
                arr = arr.astype(np.uint8)
            if arr.dtype != np.uint8:
                raise TypeError(f"mask: expected dtype uint8 or bool, got {arr.dtype}")
            if arr.shape != img.shape[:2]:
                raise ValueError(f"mask: expected shape {img.shape[:2]} like the image, got {arr.shape}")
            m = arr if m is None else np.minimum(m, arr)
        out: np.ndarray = self._rust.compute(img, None if m is None else np.ascontiguousarray(m))
        return out

    def _check_batch_params(self) -> None:
        if self._mask_array() is not None:
            raise ValueError(
                "mask: a mask array applies to one image (ColorHistogram.compute); "
                "batches take a rule: mask='white' or None"
            )
