"""Keypoints and local descriptors: SIFT and ORB, in Rust.

Both classes follow OpenCV's ``Feature2D`` API (``detect``, ``compute``,
``detect_and_compute``) on one 8-bit grayscale NumPy image, and
:func:`extract_descriptors` runs them over a batch of encoded images (an Arrow
``content`` column, as Spark's ``binaryFile`` source gives it) in parallel.

Keypoints are returned as a NumPy structured array of dtype
:data:`KEYPOINT_DTYPE`, one record per keypoint, in OpenCV's conventions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import pyarrow as pa

from bovw import _bovw
from bovw.image import _iter_batches

__all__ = ["FEATURE_COLUMNS", "KEYPOINT_DTYPE", "RESOURCE_LIMITS", "Extractor", "SIFT", "ORB", "extract_many",
           "keypoints_from_cv2"]

#: Keypoint record: position ``x``, ``y`` (pixels, origin at the centre of the
#: top-left pixel), ``size`` (diameter in pixels), ``angle`` (degrees, in
#: [0, 360) as OpenCV reports it, -1 when not computed), ``response``
#: (detector strength), ``octave`` (OpenCV's encoding: for SIFT
#: ``octave & 255`` is the octave, with -1 for the doubled image, ``(octave >> 8) & 255``
#: the layer; for ORB the pyramid level) and ``class_id``.
KEYPOINT_DTYPE = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("size", "<f4"),
        ("angle", "<f4"),
        ("response", "<f4"),
        ("octave", "<i4"),
        ("class_id", "<i4"),
    ]
)


_KEYPOINT_FIELDS: tuple[str, ...] = ("x", "y", "size", "angle", "response", "octave", "class_id")

#: The per-image columns every extractor's batch output has, in order.
FEATURE_COLUMNS = (
    "n_keypoints",
    "image_width",
    "image_height",
    "keypoints",
    "descriptors",
    "error",
    "error_stage",
    "image_scale",
)

#: Default resource limits of every extractor's batch path (see
#: ``docs/reliability.md``): decode at most 50 megapixels and 16384 pixels a
#: side, describe an image only when its estimated peak memory is at most
#: 1 GiB, else refuse it (an error row).
RESOURCE_LIMITS = {
    "max_pixels": 50_000_000,
    "max_side": 16_384,
    "max_image_memory": 1 << 30,
    "oversize": "refuse",
}


def _to_records(table: np.ndarray) -> np.ndarray:
    out = np.empty(table.shape[0], dtype=KEYPOINT_DTYPE)
    for i, name in enumerate(_KEYPOINT_FIELDS):
        out[name] = table[:, i]
    return out


def _from_records(keypoints: Any) -> np.ndarray:
    if isinstance(keypoints, np.ndarray) and keypoints.dtype.names:
        kp = keypoints
    elif isinstance(keypoints, (list, tuple)) and keypoints and hasattr(keypoints[0], "pt"):
        kp = keypoints_from_cv2(keypoints)
    else:
        arr = np.asarray(keypoints, dtype=np.float64)
        if arr.size == 0:
            return np.zeros((0, 7), dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 7:
            raise ValueError(f"keypoints: expected a KEYPOINT_DTYPE array or shape (n, 7), got shape {arr.shape}")
        return np.ascontiguousarray(arr)
    return np.stack([kp[name].astype(np.float64) for name in _KEYPOINT_FIELDS], axis=1).reshape(-1, 7)


def keypoints_from_cv2(keypoints: Any) -> np.ndarray:
    """Convert a sequence of ``cv2.KeyPoint`` to a :data:`KEYPOINT_DTYPE` array."""
    out = np.zeros(len(keypoints), dtype=KEYPOINT_DTYPE)
    for i, k in enumerate(keypoints):
        out[i] = (k.pt[0], k.pt[1], k.size, k.angle, k.response, k.octave, k.class_id)
    return out


def _check_image(image: Any, what: str = "image") -> np.ndarray:
    if image is None:
        raise TypeError(f"{what}: expected a 2-D uint8 array, got None")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        else:
            raise TypeError(
                f"{what}: expected dtype uint8, got {arr.dtype}; convert with "
                "np.clip(img, 0, 255).astype(np.uint8) (or scale 16-bit images by 1/257 first)"
            )
    if arr.ndim != 2:
        raise ValueError(
            f"{what}: expected a 2-D grayscale array of shape (height, width), got shape {arr.shape}; "
            "convert color images with bovw.decode_gray or cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)"
        )
    if arr.size == 0:
        raise ValueError(f"{what}: empty array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


class Extractor:
    """Base of every bovw extractor (SIFT, ORB, dense and colour descriptors, ...).

    Subclasses are scikit-learn-style parameter holders: ``__init__`` stores
    the parameters, :meth:`get_params`/:meth:`set_params` read and change
    them, and the Rust extractor (a ``bovw._bovw`` class) is built from them
    on first use and rebuilt when they change. Each subclass states its facts,
    so that no caller branches on a method name:

    ``name`` (class attribute)
        The ``method`` string of :func:`extract_descriptors` and ``bovw run``.
    ``vocabularies`` (class attribute)
        Vocabulary kinds its descriptors can be quantised with (``"kmeans"``,
        ``"kmajority"``, ...); empty for global descriptors.
    :attr:`descriptor_width`, :attr:`descriptor_dtype`, :attr:`kind`, :attr:`needs_color`
        From the Rust extractor.

    Every extractor also takes the resource limits of its batch path
    (:meth:`extract`), as keyword parameters with the defaults of
    :data:`RESOURCE_LIMITS`:

    ``max_pixels`` : int, default 50_000_000
        Largest ``width * height`` decoded; checked from the file's header
        before any pixel is allocated. A larger image is an error row with
        stage ``"decode"`` giving its size and the limit.
    ``max_side`` : int, default 16384
        Largest width or height decoded (same check).
    ``max_image_memory`` : int, default 1 GiB (``2**30``)
        Largest estimated peak memory, in bytes, of describing one image
        (SIFT about 300 bytes per pixel at OpenCV's defaults, ORB about 20,
        dense SIFT about 780 at step 1, PHOW about 400 at its defaults; the
        colour histograms and the CNN have no estimate: the decode limits
        bound them); also checked from the header. Each thread describes one image at a
        time, so a batch needs up to ``n_threads`` times this.
    ``oversize`` : {"refuse", "downscale"}, default "refuse"
        Above ``max_image_memory``: ``"refuse"`` gives an error row (stage
        ``"decode"``); ``"downscale"`` area-averages the image down to the
        largest size that fits and describes that, with keypoints given in the
        file's pixels and the factor in the row's ``image_scale`` column.

    Instances pickle as their parameters (Spark ships them to executors).
    """

    name: ClassVar[str] = ""
    vocabularies: ClassVar[tuple[str, ...]] = ()
    _rust_class: ClassVar[Any] = None
    _param_names: ClassVar[tuple[str, ...]] = ()
    _aliases: ClassVar[dict[str, str]] = {}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters as a dict (scikit-learn convention), resource limits included."""
        out = {name: getattr(self, name) for name in self._param_names}
        out.update(self._limits())
        return out

    def _limits(self) -> dict[str, Any]:
        return {name: self.__dict__.get(name, default) for name, default in RESOURCE_LIMITS.items()}

    def set_params(self, **params: Any) -> "Extractor":
        """Set parameters (OpenCV's names accepted); returns ``self``."""
        for k, v in _resolve_aliases(type(self), params).items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __getstate__(self) -> dict[str, Any]:
        return self.get_params()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _rust_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names}

    @property
    def _rust(self) -> Any:
        params = self._rust_params()
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        cached = self.__dict__.get("_rust_cache")
        if cached is None or cached[0] != key:
            cached = (key, type(self)._rust_class(**params))
            self.__dict__["_rust_cache"] = cached
        return cached[1]

    @property
    def descriptor_width(self) -> int:
        """Values (float32) or bytes (uint8) per descriptor."""
        return int(self._rust.descriptor_width)

    @property
    def descriptor_dtype(self) -> np.dtype:
        """``float32`` or ``uint8``."""
        return np.dtype(str(self._rust.descriptor_dtype))

    @property
    def kind(self) -> str:
        """``"local"`` (many descriptors per image, at keypoints) or ``"global"`` (one per image)."""
        return str(self._rust.kind)

    @property
    def needs_color(self) -> bool:
        """True when the extractor reads the image's colours (RGB)."""
        return bool(self._rust.needs_color)

    def extract(
        self,
        batch: Any,
        *,
        content_column: str = "content",
        keep_columns: Any = None,
        n_threads: int | None = None,
    ) -> pa.RecordBatch:
        """Decode encoded images and describe them, one row per image.

        Parameters
        ----------
        batch : pyarrow.RecordBatch or pyarrow.Table
            Must have a binary column ``content_column`` of JPEG/PNG bytes (as
            Spark's ``binaryFile`` source or :func:`bovw.read_images` gives);
            any object with ``__arrow_c_array__`` or ``__arrow_c_stream__`` works.
        content_column : str, default "content"
        keep_columns : list of str, optional
            Input columns copied to the output (zero-copy); default every column
            except ``content_column`` and ``modificationTime``/``length``.
        n_threads : int, optional
            Threads for this call, 1 to 256; default all cores (or
            ``RAYON_NUM_THREADS``). On Spark executors pass 1 per task.

        Returns
        -------
        pyarrow.RecordBatch with one row per input row
            The kept columns, then (:data:`FEATURE_COLUMNS`) ``n_keypoints``
            (int32), ``image_width``, ``image_height`` (int32, pixels),
            ``keypoints`` (``list<fixed_size_list<float32, 4>>``: x, y, size,
            angle of each descriptor, pixels and degrees), ``descriptors``
            (``list<fixed_size_list<float32, w>>``, or
            ``list<fixed_size_binary(w)>`` for uint8 descriptors), ``error``
            (string: null when fine, else why the image could not be used) and
            ``error_stage`` (``"decode"``: the bytes are not a usable image;
            ``"descriptors"``: the extractor refused the pixels) and
            ``image_scale`` (float32: 1, or the factor of a downscaled image,
            see ``oversize``). A failed row has null counts, sizes and scale
            and empty lists.

        Raises
        ------
        KeyError
            If the content column is missing.
        TypeError
            If the content column is not binary.
        ValueError
            If a parameter (or a resource limit) is invalid; the message names it
            and its range.
        """
        self._check_batch_params()
        rust = self._rust
        limits = self._limits()
        outs = []
        for rb in _iter_batches(batch):
            if content_column not in rb.schema.names:
                raise KeyError(f"no column {content_column!r} in the batch (columns: {rb.schema.names})")
            res = rust.extract(rb.column(content_column), n_threads=n_threads, **limits)
            if keep_columns is None:
                keep = [n for n in rb.schema.names if n not in (content_column, "modificationTime", "length")]
            else:
                keep = list(keep_columns)
            cols = [rb.column(n) for n in keep] + [res.column(i) for i in range(res.num_columns)]
            outs.append(pa.RecordBatch.from_arrays(cols, names=keep + res.schema.names))
        if not outs:
            return self._empty_batch(batch, content_column, keep_columns)
        if len(outs) == 1:
            return outs[0]
        return pa.Table.from_batches(outs).combine_chunks().to_batches()[0]

    def _check_batch_params(self) -> None:
        """Raise ``ValueError`` when a parameter cannot apply to a batch (one
        that only :meth:`compute` on a single image takes); nothing by default.
        Called by :meth:`extract` and :func:`extract_many`."""

    def _empty_batch(self, batch: Any, content_column: str, keep_columns: Any) -> pa.RecordBatch:
        schema = batch.schema if hasattr(batch, "schema") else pa.schema([(content_column, pa.binary())])
        res = self._rust.extract(pa.array([], pa.binary()), **self._limits())
        keep = [n for n in schema.names if n not in (content_column, "modificationTime", "length")] \
            if keep_columns is None else list(keep_columns)
        cols = [pa.array([], schema.field(n).type) for n in keep] + list(res.columns)
        return pa.RecordBatch.from_arrays(cols, names=keep + res.schema.names)


def extract_many(batch: Any, extractors: Sequence[Extractor], *, content_column: str = "content",
                 n_threads: int | None = None) -> list[pa.RecordBatch]:
    """Describe the same encoded images with several extractors, decoding
    each image once for the extractors that read the same pixels.

    ``extract_many(batch, [a, b])`` equals ``[a.extract(batch,
    keep_columns=[]), b.extract(batch, keep_columns=[])]``, values, error
    rows and messages included. Extractors that read the same layout (RGB:
    the CNN and the colour histograms; gray: SIFT, ORB, gray dense SIFT)
    share one decode of each image, which is what the main job's recipes
    with several channels (``cnn+color``) do per batch. Extractors with
    different resource limits, or whose class overrides :meth:`Extractor.extract`,
    are run one after the other.

    Parameters
    ----------
    batch : pyarrow.RecordBatch or pyarrow.Table
        With a binary column ``content_column`` of JPEG/PNG bytes.
    extractors : sequence of Extractor
    content_column : str, default "content"
    n_threads : int, optional
        As in :meth:`Extractor.extract`.

    Returns
    -------
    list of pyarrow.RecordBatch
        One per extractor, in order, with the columns :data:`FEATURE_COLUMNS`
        and one row per input row.

    Raises
    ------
    KeyError
        If the content column is missing.
    TypeError, ValueError
        As :meth:`Extractor.extract`.
    """
    extractors = list(extractors)
    for x in extractors:
        x._check_batch_params()
    limits = [x._limits() for x in extractors]
    shared = len(extractors) > 1 and all(lim == limits[0] for lim in limits) and all(
        type(x).extract is Extractor.extract and x._rust_class is not None for x in extractors)
    if not shared:
        return [x.extract(batch, content_column=content_column, keep_columns=[], n_threads=n_threads)
                for x in extractors]
    rust = [x._rust for x in extractors]
    parts: list[list[pa.RecordBatch]] = [[] for _ in extractors]
    for rb in _iter_batches(batch):
        if content_column not in rb.schema.names:
            raise KeyError(f"no column {content_column!r} in the batch (columns: {rb.schema.names})")
        for e, res in enumerate(_bovw.extract_many(rb.column(content_column), rust, n_threads=n_threads,
                                                   **limits[0])):
            parts[e].append(res)
    out = []
    for x, p in zip(extractors, parts):
        if not p:
            out.append(x._empty_batch(batch, content_column, []))
        elif len(p) == 1:
            out.append(p[0])
        else:
            out.append(pa.Table.from_batches(p).combine_chunks().to_batches()[0])
    return out


class _Feature2D(Extractor):
    """OpenCV's ``Feature2D`` API on one gray image (SIFT, ORB)."""

    def detect(self, image: Any, mask: Any = None) -> np.ndarray:
        """Detect keypoints.

        Parameters
        ----------
        image : ndarray of shape (height, width), dtype uint8
            Grayscale image.
        mask : ndarray of shape (height, width), dtype uint8, optional
            Keypoints are kept only where ``mask`` is non-zero.

        Returns
        -------
        keypoints : ndarray of shape (n_keypoints,), dtype KEYPOINT_DTYPE

        Raises
        ------
        TypeError
            If ``image`` or ``mask`` is not uint8.
        ValueError
            If ``image`` is not 2-D, is empty or too small, or ``mask`` has another shape.
        """
        img = _check_image(image)
        m = None if mask is None else _check_image(mask, "mask")
        return _to_records(self._rust.detect(img, m))

    def compute(self, image: Any, keypoints: Any) -> tuple[np.ndarray, np.ndarray]:
        """Compute descriptors at given keypoints.

        Parameters
        ----------
        image : ndarray of shape (height, width), dtype uint8
        keypoints : ndarray of dtype KEYPOINT_DTYPE, (n, 7) array, or list of cv2.KeyPoint

        Returns
        -------
        keypoints : ndarray of dtype KEYPOINT_DTYPE
            The keypoints that have a descriptor (some may be dropped, as OpenCV does).
        descriptors : ndarray of shape (n_keypoints, descriptor_width)
        """
        img = _check_image(image)
        kp, desc = self._rust.compute(img, _from_records(keypoints))
        return _to_records(kp), desc

    def detect_and_compute(self, image: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Detect keypoints and compute their descriptors in one pass.

        Parameters
        ----------
        image : ndarray of shape (height, width), dtype uint8
            Grayscale image (``bovw.decode_gray`` or ``cv2.cvtColor(..., COLOR_BGR2GRAY)``).
        mask : ndarray of shape (height, width), dtype uint8, optional

        Returns
        -------
        keypoints : ndarray of shape (n_keypoints,), dtype KEYPOINT_DTYPE
        descriptors : ndarray of shape (n_keypoints, descriptor_width)
            Never None: an image without keypoints gives shape (0, descriptor_width).

        Raises
        ------
        TypeError
            If ``image`` is not uint8.
        ValueError
            If ``image`` is not 2-D, is empty or too small for the detector,
            or ``mask`` has another shape.
        """
        img = _check_image(image)
        m = None if mask is None else _check_image(mask, "mask")
        kp, desc = self._rust.detect_and_compute(img, m)
        return _to_records(kp), desc

    # OpenCV spelling, so cv2 code ports by renaming the object.
    def detectAndCompute(self, image: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
        """Alias of :meth:`detect_and_compute` (OpenCV's name)."""
        return self.detect_and_compute(image, mask)


def _resolve_aliases(cls: type[Extractor], kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        name = cls._aliases.get(k, k)
        if name not in cls._param_names and name not in RESOURCE_LIMITS:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {k!r}")
        out[name] = v
    return out


class SIFT(_Feature2D):
    """Scale-invariant feature transform: keypoints and 128-D descriptors.

    A Rust port of OpenCV 4.x's SIFT (``cv2.SIFT_create``), with the same
    parameters, defaults and outputs: the image is doubled (bilinear, OpenCV's
    default ``enable_precise_upscale=False``), a Gaussian pyramid and its
    difference of Gaussians are built, scale-space extrema are refined and
    filtered by contrast and edge response, each keypoint gets one or more
    orientations from a 36-bin gradient histogram, and its descriptor is a
    4x4x8 histogram of gradients, normalised, clamped at 0.2, scaled by 512 and
    saturated to 0..255 (whole numbers stored as float32).

    Parameters
    ----------
    n_features : int, default 0
        Keep the best ``n_features`` keypoints by response; 0 keeps all.
        (OpenCV ``nfeatures``.)
    n_octave_layers : int, default 3
        Layers per octave (``nOctaveLayers``).
    contrast_threshold : float, default 0.04
        Contrast threshold on the DoG, divided by ``n_octave_layers`` as in
        OpenCV (``contrastThreshold``).
    edge_threshold : float, default 10
        Principal-curvature ratio above which edge-like points are rejected
        (``edgeThreshold``).
    sigma : float, default 1.6
        Gaussian sigma of the octave-0 base image (``sigma``).

    max_pixels, max_side, max_image_memory, oversize
        Resource limits of :meth:`extract` (see :class:`Extractor`). SIFT
        needs about 280 bytes per pixel at the defaults (``64 (2 L + 5) / 3 +
        64`` with ``L = n_octave_layers`` is the estimate held against
        ``max_image_memory``), so the default 1 GiB describes images up to
        about 3.5 megapixels.

    OpenCV's camelCase names (``nfeatures``, ``nOctaveLayers``, ...) are
    accepted as keyword aliases. ``n_octave_layers`` must be in 1..32 and
    ``sigma`` in (0, 16]: time and memory grow with both.

    Notes
    -----
    Descriptors are float32 arrays of shape (n_keypoints, 128). Results are
    not bit-identical to OpenCV's: OpenCV's blur (IPP/FMA), ``exp``, ``atan2``
    and magnitude are SIMD approximations whose rounding differs between
    CPUs. On real Fruits-360 images keypoint recall and precision against
    ``cv2.SIFT_create()`` are above 0.999 and matched descriptors are within
    5 % of OpenCV's norm (see ``tests/test_sift.py``). bovw's own results are
    the same on every CPU and for any thread count (its AVX2 paths perform
    the portable code's float operations in the same order, without FMA).

    Images must be at least 6 x 6 pixels (``ValueError`` otherwise; OpenCV
    returns no keypoints for them), so that a corrupt thumbnail in a batch is
    reported rather than silently giving an empty histogram.

    References
    ----------
    .. [1] D. G. Lowe, "Distinctive Image Features from Scale-Invariant
       Keypoints", IJCV 60(2), 91-110, 2004.
    .. [2] OpenCV, ``modules/features2d/src/sift.dispatch.cpp`` and
       ``sift.simd.hpp`` (4.x).

    Examples
    --------
    >>> import numpy as np, bovw
    >>> img = np.zeros((64, 64), np.uint8)
    >>> kp, desc = bovw.SIFT().detect_and_compute(img)
    >>> desc.shape
    (0, 128)
    """

    name = "sift"
    vocabularies = ("kmeans",)
    _rust_class = _bovw.Sift
    _param_names = ("n_features", "n_octave_layers", "contrast_threshold", "edge_threshold", "sigma")
    _aliases = {
        "nfeatures": "n_features",
        "nOctaveLayers": "n_octave_layers",
        "contrastThreshold": "contrast_threshold",
        "edgeThreshold": "edge_threshold",
    }

    def __init__(
        self,
        n_features: int = 0,
        n_octave_layers: int = 3,
        contrast_threshold: float = 0.04,
        edge_threshold: float = 10.0,
        sigma: float = 1.6,
        **opencv_names: Any,
    ) -> None:
        self.n_features = n_features
        self.n_octave_layers = n_octave_layers
        self.contrast_threshold = contrast_threshold
        self.edge_threshold = edge_threshold
        self.sigma = sigma
        self.set_params(**opencv_names)


def _score_name(score_type: Any) -> Any:
    """OpenCV's score constants (``cv2.ORB_HARRIS_SCORE == 0``, ``cv2.ORB_FAST_SCORE == 1``) as names."""
    if isinstance(score_type, int) and not isinstance(score_type, bool):
        return "fast" if score_type == 1 else "harris"
    return score_type


class ORB(_Feature2D):
    """Oriented FAST and rotated BRIEF: keypoints and 256-bit binary descriptors.

    A Rust port of OpenCV 4.x's ORB (``cv2.ORB_create``), with the same
    parameters, defaults and outputs: a scale pyramid, FAST-9 corners ranked by
    the Harris (or FAST) score with a per-level budget, orientation by the
    intensity centroid, and rBRIEF over OpenCV's learned 256-pair pattern on
    the Gaussian-smoothed level.

    Parameters
    ----------
    n_features : int, default 500
        Maximum number of keypoints (``nfeatures``).
    scale_factor : float, default 1.2
        Pyramid decimation ratio, > 1 (``scaleFactor``).
    n_levels : int, default 8
        Pyramid levels (``nlevels``).
    edge_threshold : int, default 31
        Border, in pixels, where no keypoint is detected (``edgeThreshold``).
    first_level : int, default 0
        Level of the source image (``firstLevel``).
    wta_k : int, default 2
        Points compared per descriptor element (``WTA_K``).
    score_type : {"harris", "fast"}, default "harris"
        Corner ranking (``scoreType``).
    patch_size : int, default 31
        Size of the patch used by the oriented BRIEF (``patchSize``).
    fast_threshold : int, default 20
        FAST threshold (``fastThreshold``), 0 to 255.
    max_pixels, max_side, max_image_memory, oversize
        Resource limits of :meth:`extract` (see :class:`Extractor`). ORB
        needs 5-10 bytes per pixel at the defaults (the estimate: 6 bytes per
        pyramid pixel plus 96 per kept keypoint).

    ``n_levels`` must be in 1..64 and ``first_level`` in 0..n_levels - 1.
    Descriptors are uint8 arrays of shape (n_keypoints, 32).

    References
    ----------
    .. [1] E. Rublee, V. Rabaud, K. Konolige, G. Bradski, "ORB: an efficient
       alternative to SIFT or SURF", ICCV 2011.
    .. [2] OpenCV, ``modules/features2d/src/orb.cpp`` and ``fast.cpp`` (4.x).
    """

    name = "orb"
    vocabularies = ("kmeans", "kmajority")
    _rust_class = _bovw.Orb
    _param_names = (
        "n_features",
        "scale_factor",
        "n_levels",
        "edge_threshold",
        "first_level",
        "wta_k",
        "score_type",
        "patch_size",
        "fast_threshold",
    )
    _aliases = {
        "nfeatures": "n_features",
        "scaleFactor": "scale_factor",
        "nlevels": "n_levels",
        "edgeThreshold": "edge_threshold",
        "firstLevel": "first_level",
        "WTA_K": "wta_k",
        "scoreType": "score_type",
        "patchSize": "patch_size",
        "fastThreshold": "fast_threshold",
    }

    def __init__(
        self,
        n_features: int = 500,
        scale_factor: float = 1.2,
        n_levels: int = 8,
        edge_threshold: int = 31,
        first_level: int = 0,
        wta_k: int = 2,
        score_type: str = "harris",
        patch_size: int = 31,
        fast_threshold: int = 20,
        **opencv_names: Any,
    ) -> None:
        self.n_features = n_features
        self.scale_factor = scale_factor
        self.n_levels = n_levels
        self.edge_threshold = edge_threshold
        self.first_level = first_level
        self.wta_k = wta_k
        self.score_type = score_type
        self.patch_size = patch_size
        self.fast_threshold = fast_threshold
        self.set_params(**opencv_names)
        self.score_type = _score_name(self.score_type)

    def _rust_params(self) -> dict[str, Any]:
        return {**super()._rust_params(), "score_type": _score_name(self.score_type)}
