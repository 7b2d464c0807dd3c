"""The main job, one module for both engines.

``bovw run`` lists a folder of images, describes every image, fits a
vocabulary on training descriptors, encodes each image as one vector, reduces
with PCA, trains a classifier and writes the results. :func:`run` owns all of
that; an *engine* only reads the images and runs the per-image stages:

- :class:`bovw.engine.LocalEngine` (``--engine local``): in this process,
  Rust kernels over all cores;
- :class:`bovw.spark.SparkEngine` (``--engine spark``): ``mapInArrow`` stages
  on a Spark cluster.

Both get the same listing (:func:`bovw.image.list_images`, or the S3 listing),
the same vocabulary sample, the same encodings, so their outputs are equal.

The flow (see ``docs/architecture.md``)::

    engine.list_images        -> Listing: path, label, split (+ read errors)
    engine.sample_descriptors -> training descriptors (a seeded sample)
    channel.encoding.fit      -> the vocabulary              (driver)
    engine.encode             -> one vector per image, status (decode + describe + encode, fused):
                                 Training + Validation images first, then the others
    ModelFit: PCA, classifier -> on the driver, on a thread beside the second encoding pass
    bovw.report.evaluate      -> accuracy, macro-F1, confused pairs per split (run.json)
    write_outputs             -> features.parquet, errors.csv, model.joblib, run.json, report.html, ...

Outputs (``<out>/``):

``features.parquet``
    One row per usable image: ``path``, ``label``, ``split``,
    ``n_keypoints`` (int32), ``features`` (list<float32>: the encoded vector,
    the recipe's channels concatenated), ``pca_features`` (list<float32>: its
    PCA projection; only when the recipe has a PCA),
    ``prediction`` (string, every split), ``image_scale`` (float32).
``vocabulary.npy``
    The visual vocabulary, (k, descriptor width): float32 (K-Means) or uint8 (k-majority).
``model.joblib``
    The fitted :class:`bovw.model.BovwModel` (:func:`bovw.model.load_model`).
``pca.npz``
    ``components``, ``mean``, ``explained_variance``, ``explained_variance_ratio``.
``errors.csv``
    ``path, split, label, stage, reason`` for every image that could not be used.
``confusion_matrix.csv``
    Test-split confusion matrix, rows = true label, columns = predicted.
``run.json``
    Parameters, software versions, input fingerprint, per-stage wall times, counts, accuracy and
    ``evaluation`` (per split: accuracy, macro-F1, per-class scores, most confused pairs;
    :func:`bovw.report.evaluate`).
``report.html``
    The evaluation as one self-contained page (:func:`bovw.report.write_report`).

Every listed image is either a row of ``features.parquet`` or a row of
``errors.csv``: nothing is dropped silently.

The outputs are safe (:class:`OutputFolder`, ``docs/reliability-job.md``):
``--out`` is checked and locked before any work (a second run into it fails
at once), the files are written to a staging folder beside it and swapped in
at the end, ``run.json`` last, listing every other file with its SHA-256
(:func:`verify_outputs`). An interrupted or failed run leaves the previous
run's complete set; no file of an earlier run stays beside the new ones.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, Union

import numpy as np
import pyarrow as pa

__all__ = [
    "Engine",
    "Extraction",
    "Listing",
    "OutputError",
    "OutputFolder",
    "RunConfig",
    "RunResult",
    "StageTimer",
    "build_channels",
    "check_input",
    "format_stage_table",
    "rename_exchange",
    "run",
    "validate_config",
    "verify_outputs",
]

TRAINING = "Training"
VALIDATION = "Validation"
#: Descriptors the Fisher / VLAD vocabularies are fitted on when ``max_descriptors`` is not given.
MIXTURE_SAMPLE = 100_000


@dataclass
class RunConfig:
    """Parameters of the main job (the ``bovw run`` flags)."""

    root: Optional[str] = None
    """Image folder or ``s3://`` URI: ``<root>/<split>/<class>/*`` or ``<root>/<class>/*``; None = the shipped sample."""
    out: str = "bovw-out"
    recipe: Optional[str] = None
    """A recipe of :data:`bovw.recipes.RECIPES`; None: ``bow`` when ``method`` is given, else
    :data:`bovw.recipes.DEFAULT_RECIPE` (``cnn+color``)."""
    method: Optional[str] = None
    """Extractor of the ``bow`` recipe (:data:`bovw.EXTRACTORS`: ``sift``, ``orb``, ...); None = ``sift``."""
    k: int = 100
    """Vocabulary size (number of visual words)."""
    seed: int = 0
    pca: Union[int, float, str, None] = "auto"
    """PCA components: an int count, a float variance fraction in (0, 1], None for no PCA, or
    ``"auto"``: the recipe's choice (0.95 for ``bow``, none for the others)."""
    max_iter: int = 100
    """K-Means iterations at most."""
    n_init: int = 1
    max_descriptors: Optional[int] = None
    """Fit the vocabulary on at most this many training descriptors (seeded sample); None = all."""
    vocabulary: str = "kmeans"
    """``kmeans`` (float K-Means) or ``kmajority`` (Hamming; binary descriptors such as ORB's)."""
    classifier: str = "logreg"
    """``logreg``, ``svm`` or ``rf`` (:func:`bovw.model.make_classifier`)."""
    test_size: float = 0.25
    """Test fraction for a flat ``<root>/<class>/`` layout."""
    n_threads: Optional[int] = None
    batch_size: int = 512
    """Images per kernel call."""
    extractor_params: Optional[dict] = None
    """Keyword arguments of the extractor class (OpenCV's defaults for SIFT/ORB when empty)."""
    limits: Optional[dict] = None
    """Resource limits of every extractor (:data:`bovw.RESOURCE_LIMITS` names: ``max_pixels``,
    ``max_side``, ``max_image_memory``, ``oversize``); None = the defaults."""
    progress: bool = True
    engine: str = "local"
    master: Optional[str] = None
    """Spark master URL for ``engine='spark'``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe_name(self) -> str:
        """The recipe this configuration runs (see :attr:`recipe`)."""
        from bovw.recipes import DEFAULT_RECIPE

        if self.recipe is not None:
            return str(self.recipe)
        return "bow" if self.method is not None else DEFAULT_RECIPE

    def bow_method(self) -> str:
        """The extractor of the ``bow`` recipe."""
        return str(self.method or "sift").lower()

    def pca_components(self) -> Union[int, float, None]:
        """``pca`` with ``"auto"`` resolved from the recipe."""
        from bovw.recipes import get_recipe

        if isinstance(self.pca, str):
            auto: Union[int, float, None] = get_recipe(self.recipe_name()).pca
            return auto
        return self.pca


class StageTimer:
    """Collects (stage, wall seconds, item count, item unit) rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, unit: str = "images") -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"stage": name, "seconds": 0.0, "items": 0, "unit": unit}
        t0 = time.perf_counter()
        try:
            yield row
        finally:
            row["seconds"] = time.perf_counter() - t0
            self.rows.append(row)


def format_stage_table(rows: list[dict[str, Any]]) -> str:
    """The stage timing table ("Durée des opérations"): stage, seconds, throughput.

    A row with ``beside`` (a stage that ran on another thread alongside the
    stage of that name, e.g. the model fit beside the encoding of the Test
    images) is shown indented under it and left out of the total, which is
    the run's wall time."""
    names = [("    beside: " if r.get("beside") else "") + r["stage"] for r in rows]
    w = max([30] + [len(s) + 2 for s in names])
    lines = [f"{'stage':<{w}}{'wall s':>10}{'items':>12}  {'per second':<24}", "-" * (w + 48)]
    total = 0.0
    for name, r in zip(names, rows):
        if not r.get("beside"):
            total += r["seconds"]
        rate = f"{r['items'] / r['seconds']:,.0f} {r['unit']}/s" if r["items"] and r["seconds"] > 0 else ""
        lines.append(f"{name:<{w}}{r['seconds']:>10.2f}{r['items']:>12,}  {rate:<24}")
    lines.append("-" * (w + 48))
    lines.append(f"{'total':<{w}}{total:>10.2f}")
    return "\n".join(lines)


@dataclass
class RunResult:
    """What :func:`run` returns (and writes to ``run.json``)."""

    out: Any
    accuracy: Optional[float]
    n_images: int
    n_errors: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Listing:
    """The images of a run, in path order (the order of every output).

    ``paths`` are what the outputs show: absolute local paths (symbolic links
    not resolved) or ``s3://`` URIs.
    """

    paths: list[str]
    labels: list[str]
    splits: list[str]
    root: str

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Extraction:
    """Per-image results of the fused decode + describe + encode pass, in listing order (or in
    the order of the rows asked of :meth:`Engine.encode`)."""

    features: list[np.ndarray]
    """One (n_images, d_c) float32 matrix per channel; zeros on failed rows."""
    n_keypoints: np.ndarray
    """(n_images,) int32: descriptors of the first channel (0 on failed rows)."""
    errors: list[Optional[str]]
    stages: list[Optional[str]]
    sha256: list[str]
    """Hex SHA-256 of each file's bytes ("" when it could not be read)."""
    n_bytes: int
    image_scale: Optional[np.ndarray] = None
    """(n_images,) float32: 1, or the smallest factor a channel downscaled the image by to fit its
    memory budget (``oversize="downscale"``); None = all 1."""


class Engine(Protocol):
    """How a run reads images and runs the per-image stages (local or Spark)."""

    name: str

    def list_images(self, root: str, *, test_size: float, seed: int) -> Listing:
        """Every image under ``root`` with its label and split (:func:`bovw.image.list_images`'s rules)."""

    def sample_descriptors(self, listing: Listing, rows: np.ndarray, extractor: Any,
                           sample: "DescriptorSample") -> np.ndarray:
        """The vocabulary's training descriptors: every descriptor of images ``rows`` (sorted listing
        indices) offered to ``sample`` under its image's listing index (images that fail give none),
        then ``sample.matrix()``."""

    def encode(self, listing: Listing, channels: Sequence[Any], rows: Optional[np.ndarray] = None) -> Extraction:
        """Decode, describe and encode the images ``rows`` (listing indices; default every image),
        with each channel: an :class:`Extraction` of ``len(rows)`` images in that order."""

    def info(self) -> dict[str, Any]:
        """What run.json records about the engine."""


def validate_config(config: RunConfig) -> None:
    """Check the parameters before any work.

    Raises
    ------
    ValueError
        With the parameter's name and what it accepts.
    """
    from bovw.extractors import EXTRACTORS, get_extractor
    from bovw.model import CLASSIFIERS
    from bovw.recipes import get_recipe

    recipe = get_recipe(config.recipe_name())
    if recipe.name == "bow":
        if config.bow_method() not in EXTRACTORS:
            raise ValueError(f"method: expected one of {sorted(EXTRACTORS)}, got {config.method!r}")
        extractor = get_extractor(config.bow_method(), **(config.extractor_params or {}))
        if extractor.kind == "local" and config.vocabulary not in extractor.vocabularies:
            raise ValueError(
                f"vocabulary: {config.bow_method()} descriptors support {list(extractor.vocabularies)}, "
                f"got {config.vocabulary!r}"
            )
    else:
        if config.method is not None:
            raise ValueError(f"method: only the 'bow' recipe takes a method; recipe {recipe.name!r} names its own "
                             f"descriptors ({', '.join(c.method for c in recipe.channels)})")
        if config.extractor_params:
            raise ValueError(f"extractor_params: only the 'bow' recipe takes extractor parameters, "
                             f"not {recipe.name!r}")
    if config.k < 1:
        raise ValueError(f"k: the vocabulary needs at least 1 visual word, got {config.k}")
    from bovw.features import RESOURCE_LIMITS

    unknown = sorted(set(config.limits or {}) - set(RESOURCE_LIMITS))
    if unknown:
        raise ValueError(f"limits: unknown {unknown}; expected names of {sorted(RESOURCE_LIMITS)}")
    if isinstance(config.pca, str) and config.pca != "auto":
        raise ValueError(f"pca: expected a count, a variance fraction, None or 'auto', got {config.pca!r}")
    if config.classifier not in CLASSIFIERS:
        raise ValueError(f"classifier: expected one of {CLASSIFIERS}, got {config.classifier!r}")
    if isinstance(config.pca, float) and not (0.0 < config.pca <= 1.0):
        raise ValueError(f"pca: a variance fraction must be in (0, 1], got {config.pca}")
    if isinstance(config.pca, int) and config.pca < 0:
        raise ValueError(f"pca: a component count must be positive, got {config.pca}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {config.batch_size}")
    if not 0.0 < config.test_size < 1.0:
        raise ValueError(f"test_size: must be in (0, 1), got {config.test_size}")
    if config.max_descriptors is not None and config.max_descriptors < 1:
        raise ValueError(f"max_descriptors: must be at least 1, got {config.max_descriptors}")
    if config.engine not in ("local", "spark"):
        raise ValueError(f"engine: expected 'local' or 'spark', got {config.engine!r}")


def build_channels(config: RunConfig, image_sizes: Optional[list[tuple[int, int]]] = None) -> list[Any]:
    """The job's channels, unfitted: each extractor and its encoding, from the recipe.

    ``image_sizes``: (width, height) of some training images, from which a
    CNN channel with ``input_size="auto"`` takes its input size
    (:func:`bovw.recipes.cnn_input_size`; 224 when not given).
    """
    from bovw.encoding import VLAD, FisherVector
    from bovw.extractors import get_extractor
    from bovw.model import BagOfWordsEncoding, Channel, EncoderEncoding, GlobalDescriptor
    from bovw.recipes import ChannelSpec, cnn_input_size, get_recipe

    recipe = get_recipe(config.recipe_name())
    specs = list(recipe.channels)
    if recipe.name == "bow":
        specs = [ChannelSpec(config.bow_method(), dict(config.extractor_params or {}), "bow", {}, None)]
    channels = []
    for spec in specs:
        params = dict(spec.params)
        if params.get("input_size") == "auto":
            params["input_size"] = cnn_input_size(image_sizes or [])
        extractor = get_extractor(spec.method, **params)
        if config.limits:
            extractor.set_params(**config.limits)
        if extractor.kind == "global":
            encoding: Any = GlobalDescriptor(extractor.descriptor_width)
        elif spec.encoding in ("fisher", "vlad"):
            eparams = dict(spec.encoding_params)
            dpca = eparams.pop("descriptor_pca", None)
            cls = FisherVector if spec.encoding == "fisher" else VLAD
            encoding = EncoderEncoding(cls(random_state=config.seed, n_threads=config.n_threads, **eparams), dpca)
        else:
            encoding = BagOfWordsEncoding(config.k, config.vocabulary, max_iter=config.max_iter, n_init=config.n_init,
                                          random_state=config.seed, n_threads=config.n_threads)
        channels.append(Channel(extractor, encoding, spec.normalize, spec.weight))
    return channels


#: The regularisation strengths tried on a Validation split (:func:`select_c`).
C_GRID = (1.0, 10.0, 100.0, 1000.0)


def select_c(classifier: str, seed: int, params: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray,
             X_val: np.ndarray, y_val: np.ndarray, grid: Sequence[float] = C_GRID) -> dict[str, Any]:
    """The classifier's ``C`` with the best accuracy on the Validation rows.

    Each value of ``grid`` (and the recipe's own ``C``) is fitted on the
    Training rows and scored on the Validation rows; ties go to the smaller
    ``C`` (the stronger regularisation). The Test split is never read.

    Returns
    -------
    dict
        ``{"C": best, "scores": {str(C): validation accuracy}}``.
    """
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import Pipeline

    from bovw.model import make_classifier

    values = sorted({float(c) for c in grid} | ({float(params["C"])} if "C" in params else set()))
    # The steps before the final estimator (standardisation, RowSpace) do not
    # depend on C: fitted once, not once per value of the grid.
    pipe = make_classifier(classifier, seed, **{**params, "C": values[0]})
    if isinstance(pipe, Pipeline):
        pre = Pipeline(pipe.steps[:-1]).fit(X_train)
        X_train, X_val, last = pre.transform(X_train), pre.transform(X_val), pipe.steps[-1][1]
    else:
        last = pipe
    scores: dict[str, float] = {}
    for c in values:
        clf = clone(last).set_params(C=c).fit(X_train, y_train)
        scores[str(c)] = float(accuracy_score(y_val, clf.predict(X_val)))
    best = max(values, key=lambda c: (scores[str(c)], -c))
    return {"C": best, "scores": scores}


def training_image_sizes(paths: Sequence[str], n: int = 32) -> list[tuple[int, int]]:
    """(width, height) of the first ``n`` of ``paths`` that decode (read on
    the driver with the engines' reader; unreadable ones are skipped here
    and reported by the extraction)."""
    from bovw.image import decode_rgb
    from bovw.spark.io import ImageReader

    sizes = []
    for data, _err in ImageReader().read_many(list(paths[:n])):
        if data is None:
            continue
        try:
            h, w = decode_rgb(data).shape[:2]
        except (ValueError, MemoryError):
            continue
        sizes.append((int(w), int(h)))
    return sizes


class DescriptorSample:
    """A seeded uniform sample of at most ``max_descriptors`` descriptors,
    drawn while the images stream by (bottom-k sampling).

    Descriptor ``j`` of the image at listing index ``i`` gets the key
    ``default_rng([seed, i]).random(n_i)[j]``; the ``max_descriptors``
    smallest keys are kept (ties by image, then position). The sample is a
    uniform subset without replacement, the same whatever the batches, the
    order of the images or the Spark partitions, and never holds more than
    about twice ``max_descriptors`` rows, so a dense extractor on thousands
    of photos (tens of millions of descriptors) cannot exhaust the memory.
    ``max_descriptors=None`` keeps every descriptor.

    Parameters
    ----------
    max_descriptors : int or None
    seed : int
    width : int
        Descriptor length.
    dtype : numpy dtype
        The extractor's descriptor dtype (float32 or uint8).
    """

    def __init__(self, max_descriptors: Optional[int], seed: int, width: int, dtype: Any) -> None:
        self.max_descriptors = None if max_descriptors is None else int(max_descriptors)
        self.seed = int(seed)
        self.width = int(width)
        self.dtype = np.dtype(dtype)
        self.n_offered = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._held = 0

    def keys(self, image: int, n: int) -> np.ndarray:
        """The keys of an image's ``n`` descriptors, (n,) float64."""
        return np.random.default_rng([self.seed, int(image)]).random(n)

    def add(self, image: int, X: np.ndarray) -> None:
        """Offer image ``image``'s descriptors ``X`` (n, width)."""
        n = len(X)
        self.n_offered += n
        if n == 0:
            return
        keys = self.keys(image, n) if self.max_descriptors is not None else np.zeros(n)
        self.add_keyed(keys, np.full(n, int(image), np.int64), np.arange(n, dtype=np.int64), X, offered=0)

    def add_keyed(self, keys: np.ndarray, images: np.ndarray, positions: np.ndarray, X: np.ndarray,
                  offered: Optional[int] = None) -> None:
        """Offer rows already keyed (another sample's :meth:`parts`, e.g. a
        Spark partition's); ``offered`` adds to :attr:`n_offered` (default
        ``len(X)``)."""
        self.n_offered += len(X) if offered is None else int(offered)
        if len(X) == 0:
            return
        self._parts.append((np.asarray(keys, np.float64), np.asarray(images, np.int64),
                            np.asarray(positions, np.int64), np.asarray(X, self.dtype).reshape(-1, self.width)))
        self._held += len(X)
        if self.max_descriptors is not None and self._held > 2 * self.max_descriptors:
            self._shrink()

    def _merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._parts:
            return (np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64),
                    np.zeros((0, self.width), self.dtype))
        if len(self._parts) > 1:
            keys, images, positions, X = (np.concatenate([p[c] for p in self._parts]) for c in range(4))
            self._parts = [(keys, images, positions, X)]
        return self._parts[0]

    def _shrink(self) -> None:
        keys, images, positions, X = self._merged()
        if self.max_descriptors is not None and len(keys) > self.max_descriptors:
            keep = np.lexsort((positions, images, keys))[: self.max_descriptors]
            self._parts = [(keys[keep], images[keep], positions[keep], X[keep])]
        self._held = len(self._parts[0][0]) if self._parts else 0

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The kept rows: keys, image indices, positions, descriptors."""
        self._shrink()
        return self._merged()

    def matrix(self) -> np.ndarray:
        """The sample, (n, width) in the descriptor dtype, in listing order
        (by image, then position in the image)."""
        _, images, positions, X = self.parts()
        out: np.ndarray = X[np.lexsort((positions, images))]
        return out


def input_fingerprint(paths: Sequence[str], sha256: Sequence[str]) -> dict[str, Any]:
    """Count and SHA-256 of the inputs: the hash of each file's SHA-256 digest
    in sorted order of its last three path parts, so it does not depend on
    where the folder lives, nor on the engine."""
    named = sorted(("/".join(p.replace("\\", "/").rsplit("/", 3)[-3:]), d) for p, d in zip(paths, sha256))
    h = hashlib.sha256()
    for name, d in named:
        h.update(name.encode("utf-8", "surrogateescape"))
        h.update(d.encode())
    return {"n_files": len(named), "sha256": h.hexdigest()}


def make_engine(config: RunConfig) -> Any:
    """The engine ``config.engine`` names."""
    if config.engine == "spark":
        from bovw.spark import SparkEngine

        return SparkEngine(master=config.master, batch_size=config.batch_size, progress=config.progress)
    from bovw.engine import LocalEngine

    return LocalEngine(n_threads=config.n_threads, batch_size=config.batch_size, progress=config.progress)


def run(config: RunConfig, engine: Any = None) -> RunResult:
    """Run the main job.

    Parameters
    ----------
    config : RunConfig
    engine : Engine, optional
        Default: the one ``config.engine`` names.

    Returns
    -------
    RunResult
        Accuracy on the Test split (None when there is no Test image), counts,
        stage timings; the files listed in the module docstring are written to
        ``config.out``.

    Raises
    ------
    FileNotFoundError
        If the image folder does not exist.
    PermissionError
        If the image folder or one of its split or class folders cannot be
        listed (checked before any work; the message names the folder).
    OutputError
        If ``config.out`` cannot be used (a file, not writable, holding files
        bovw did not write) or another run holds its lock (checked before any
        work).
    ValueError
        If it holds no image, a parameter is invalid, or no training image
        yields a descriptor.

    Notes
    -----
    The outputs appear all at once: they are written to a temporary folder
    beside ``config.out`` and swapped into place at the end
    (:class:`OutputFolder`), so an interrupted or failed run leaves the
    previous run's files as they were.
    """
    validate_config(config)
    check_input(_root_of(config))  # start-up checks (bovw.job's output section), before any work
    with OutputFolder(config.out) as output:  # --out usable, the lock held until the outputs are in place
        return _run(config, engine, output)


def _run(config: RunConfig, engine: Any, output: "OutputFolder") -> RunResult:
    """:func:`run`'s body, under the output lock."""
    import bovw

    engine = engine if engine is not None else make_engine(config)
    root = str(config.root) if config.root else str(bovw.sample_data_path())
    timer = StageTimer()
    say = print if config.progress else (lambda *a, **k: None)
    from bovw.recipes import get_recipe

    recipe = get_recipe(config.recipe_name())

    with timer.stage("list files") as st:
        listing = engine.list_images(root, test_size=config.test_size, seed=config.seed)
        st["items"] = len(listing)
    splits = np.array(listing.splits, dtype=object)
    n = len(listing)
    say(f"bovw: {n} images under {root} ({int((splits == TRAINING).sum())} Training, "
        f"{int((splits != TRAINING).sum())} other) on the {engine.name} engine")

    train_rows = np.flatnonzero(splits == TRAINING)
    if len(train_rows) == 0:
        raise ValueError("no Training image: cannot fit the vocabulary")
    auto_size = any(c.params.get("input_size") == "auto" for c in recipe.channels)
    sizes = training_image_sizes([listing.paths[i] for i in train_rows]) if auto_size else None
    channels = build_channels(config, sizes)
    say(f"bovw: recipe {recipe.name}: " + " + ".join(
        f"{c.name}" + (f" ({type(getattr(c.encoding, 'encoder', c.encoding)).__name__})"
                       if c.extractor.kind == "local" else "")
        for c in channels))
    vocab_info: dict[str, Any] = {}
    from bovw.model import BagOfWordsEncoding

    for ch in channels:
        if ch.extractor.kind != "local":
            continue
        with timer.stage(f"vocabulary sample ({ch.name})") as st:
            cap = config.max_descriptors
            if cap is None and not isinstance(ch.encoding, BagOfWordsEncoding):
                cap = MIXTURE_SAMPLE  # a GMM / VLAD vocabulary on a seeded sample, as VLFeat's recipes do
            sample = DescriptorSample(cap, config.seed, ch.extractor.descriptor_width, ch.extractor.descriptor_dtype)
            X = engine.sample_descriptors(listing, train_rows, ch.extractor, sample)
            st["items"] = len(train_rows)
        if len(X) == 0:
            raise ValueError("no descriptor in any Training image: cannot fit the vocabulary")
        what = (f"{config.vocabulary}, k={min(config.k, len(X))}" if isinstance(ch.encoding, BagOfWordsEncoding)
                else type(ch.encoding.encoder).__name__)
        with timer.stage(f"vocabulary ({what})", unit="descriptors") as st:
            ch.encoding.fit(X)
            st["items"] = len(X)
        vocab_info = {**ch.encoding.summary(), "descriptors": int(len(X)),
                      "descriptors_described": int(sample.n_offered)}
        say(f"bovw: {ch.name} encoding of width {ch.encoding.n_features_out_} fitted on {len(X):,} descriptors")

    # -- decode + describe + encode, in two passes: the images the model is fitted on (Training,
    # Validation) first, then the others, with the model fitted beside that second pass (ModelFit) --
    encode_name = f"decode + {'/'.join(c.name for c in channels)} + encode"
    fit_rows = np.flatnonzero(np.isin(splits, (TRAINING, VALIDATION)))
    other_rows = np.flatnonzero(~np.isin(splits, (TRAINING, VALIDATION)))
    y = np.array(listing.labels, dtype=object)
    with timer.stage(f"{encode_name} ({_split_names(splits[fit_rows])})") as st:
        ex_fit = engine.encode(listing, channels, rows=fit_rows)
        st["items"] = len(fit_rows)
    fitter = ModelFit(config, recipe, ex_fit, y[fit_rows], splits[fit_rows])
    ex_other: Optional[Extraction] = None
    if len(other_rows):
        other_stage = f"{encode_name} ({_split_names(splits[other_rows])})"
        fitter.start(beside=other_stage)  # a daemon thread: an error below does not wait for it
        with timer.stage(other_stage) as st:
            ex_other = engine.encode(listing, channels, rows=other_rows)
            st["items"] = len(other_rows)
        with timer.stage("waiting for the model fit"):
            fitter.join()
    else:
        fitter.run()
    for row in fitter.rows:
        timer.rows.insert(-1 if len(other_rows) else len(timer.rows), row)
    for line in fitter.messages:
        say(line)
    ex, H = _merge_extractions(n, [(fit_rows, ex_fit)] + ([(other_rows, ex_other)] if ex_other is not None else []))
    del ex_fit, ex_other
    ok = np.array([e is None for e in ex.errors], dtype=bool)
    say(f"bovw: {int(ok.sum())} images usable, {int((~ok).sum())} errors, "
        f"{int(ex.n_keypoints[ok].sum()):,} descriptors")
    train = ok & (splits == TRAINING)
    test = ok & (splits == "Test")
    pca, clf, selection, clf_params = fitter.pca, fitter.classifier, fitter.selection, fitter.classifier_params
    classes = fitter.classes

    from sklearn.metrics import accuracy_score

    from bovw.model import BovwModel

    predictions = np.full(n, None, dtype=object)
    accuracy: Optional[float] = None
    F = H
    if pca is not None:
        with timer.stage("PCA (transform)") as st:
            F = np.zeros((n, pca.n_components_), np.float32)
            F[ok] = np.asarray(pca.transform(H[ok]), np.float32)
            st["items"] = int(ok.sum())
    with timer.stage(f"classifier ({config.classifier}, predict)") as st:
        if clf is not None:
            predictions[ok] = [str(p) for p in clf.predict(F if ok.all() else F[ok])]
            if test.any():
                accuracy = float(accuracy_score(y[test], predictions[test]))
        st["items"] = int(ok.sum())
    model = BovwModel(channels, pca, clf)

    counts = {
        "images": n,
        "usable": int(ok.sum()),
        "errors": int((~ok).sum()),
        "training": int(train.sum()),
        "test": int(test.sum()),
        "descriptors": int(ex.n_keypoints[ok].sum()),
        "vocabulary_descriptors": int(vocab_info.get("descriptors", 0)),
        "images_without_keypoints": int(((ex.n_keypoints == 0) & ok).sum()),
        "downscaled": int(((_scales(ex) < 1.0) & ok).sum()),
    }
    info = {
        "parameters": {**config.to_dict(), "root": root},
        "recipe": {
            "name": recipe.name,
            "channels": [{"method": c.name, "params": c.extractor.get_params(), "encoding": c.encoding.summary(),
                          "normalize": c.normalize, "weight": c.weight} for c in channels],
            "pca": config.pca_components(),
            "classifier": {"name": config.classifier, **clf_params},
            "model_selection": selection,
        },
        "extractor_params": channels[0].extractor.get_params(),
        "engine": engine.info(),
        "versions": versions(),
        "input": {**input_fingerprint(listing.paths, ex.sha256), "bytes": int(ex.n_bytes), "root": root},
        "counts": counts,
        "vocabulary": vocab_info or None,
        "pca": None if pca is None else {
            "n_components": int(pca.n_components_),
            "explained_variance": float(np.sum(pca.explained_variance_ratio_)),
        },
        "accuracy": accuracy,
        "stages": timer.rows,
    }
    # -- evaluation (bovw.report): per-split metrics in run.json, read by report.html and the CLI summary --
    from bovw.report import evaluate_splits

    counts["training_classes"] = len(classes)
    with timer.stage("evaluation") as st:
        info["evaluation"] = evaluate_splits(y[ok], predictions[ok], splits[ok], labels=classes)
        st["items"] = int(ok.sum())
    with timer.stage("write outputs") as st:
        out = write_outputs(output, listing, ex, ok, H, F, predictions, model, test, info)
        st["items"] = int(ok.sum())
    info["stages"] = timer.rows
    return RunResult(out=out, accuracy=accuracy, n_images=int(ok.sum()), n_errors=int((~ok).sum()),
                     stages=timer.rows, info=info)


def _split_names(splits: np.ndarray) -> str:
    """"Training/Validation": the split names of these rows, in first-seen order."""
    names = list(dict.fromkeys(splits.tolist()))
    return "/".join(names) if names else "no image"


def _merge_extractions(n: int, parts: Sequence[tuple[np.ndarray, Extraction]]) -> tuple[Extraction, np.ndarray]:
    """One :class:`Extraction` of ``n`` listed images from the engine's passes over
    disjoint ``rows`` (each part in its rows' order; every row covered), and its
    channels concatenated, (n, sum of widths) float32: the Extraction's
    ``features`` are column views of that matrix (no second copy)."""
    if sum(len(r) for r, _ in parts) != n:
        raise ValueError(f"the encoding passes cover {sum(len(r) for r, _ in parts)} of {n} images")
    widths = [f.shape[1] for f in parts[0][1].features]
    H = np.empty((n, sum(widths)), np.float32)
    ends = np.cumsum([0] + widths)
    feats = [H[:, a:b] for a, b in zip(ends[:-1], ends[1:])]
    n_kp = np.zeros(n, np.int32)
    scales = np.ones(n, np.float32)
    errors: list[Optional[str]] = [None] * n
    stages: list[Optional[str]] = [None] * n
    sha = [""] * n
    for rows, ex in parts:
        for c, f in enumerate(ex.features):
            feats[c][rows] = f
        n_kp[rows] = ex.n_keypoints
        scales[rows] = _scales(ex)
        for j, i in enumerate(rows.tolist()):
            errors[i], stages[i], sha[i] = ex.errors[j], ex.stages[j], ex.sha256[j]
    return Extraction(feats, n_kp, errors, stages, sha, sum(ex.n_bytes for _, ex in parts),
                      None if all(ex.image_scale is None for _, ex in parts) else scales), H


class ModelFit:
    """PCA, model selection and classifier, fitted on the Training (and
    Validation) images of a run, in this thread (:meth:`run`) or on a
    background one (:meth:`start` / :meth:`join`).

    :func:`run` encodes the Training and Validation images first and fits
    the model on a background thread while the engine encodes the other
    images: the kernels release the GIL, and the fit (mostly serial: the
    L-BFGS updates, Python) then uses the CPU the encoding leaves idle. On
    the background thread, BLAS and OpenMP are limited to one thread
    (``threadpoolctl``) so that their spinning workers do not take the
    encoding's cores. Its stage rows carry ``beside``: the stage they ran
    alongside (not counted in the total, see :func:`format_stage_table`).

    Parameters
    ----------
    config : RunConfig
    recipe : bovw.recipes.Recipe
    ex : Extraction
        The encoded Training and Validation images (the first pass).
    y, splits : ndarray of str, shape (len(ex.errors),)
        Their labels and splits.

    Raises
    ------
    ValueError
        If no image of ``ex`` is a usable Training image (at construction).

    Attributes (after the fit)
    --------------------------
    pca : bovw.PCA or None
    classifier : scikit-learn estimator or None (fewer than two classes)
    selection : dict or None
        :func:`select_c`'s result when there is a Validation split.
    classifier_params : dict
        The recipe's classifier parameters, ``C`` as chosen.
    classes : list of str
        The Training labels.
    rows : list of dict
        Stage rows (``stage``, ``seconds``, ``items``, ``unit``, and ``beside``).
    messages : list of str
        Progress lines for the caller to print (a background thread does not print).
    """

    def __init__(self, config: RunConfig, recipe: Any, ex: Extraction, y: np.ndarray, splits: np.ndarray) -> None:
        self.config, self.y, self.splits = config, y, splits
        self._features = ex.features  # released at the end of the fit
        ok = np.array([e is None for e in ex.errors], dtype=bool)
        self._train, self._validation = ok & (splits == TRAINING), ok & (splits == VALIDATION)
        if not self._train.any():
            raise ValueError("no usable Training image")
        self.pca: Any = None
        self.classifier: Any = None
        self.selection: Optional[dict[str, Any]] = None
        self.classifier_params = dict(recipe.classifier_params)
        self.classes: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self._beside: Optional[str] = None
        self._thread: Any = None
        self._error: Optional[BaseException] = None

    def run(self) -> None:
        """Fit in this thread."""
        import bovw

        train, validation = self._train, self._validation
        H = np.concatenate(self._features, axis=1) if len(self._features) > 1 else self._features[0]
        self._features = []
        timer = StageTimer()
        config = self.config
        F = H
        n_comp = config.pca_components()
        if n_comp is not None and n_comp != 0:
            with timer.stage("PCA (fit)") as st:
                if isinstance(n_comp, int):
                    n_comp = min(n_comp, H.shape[1], int(train.sum()))
                self.pca = bovw.PCA(n_components=n_comp, random_state=config.seed).fit(H[train])
                F = np.zeros((len(H), self.pca.n_components_), np.float32)
                F[train | validation] = np.asarray(self.pca.transform(H[train | validation]), np.float32)
                st["items"] = int(train.sum())
            self.messages.append(f"bovw: PCA keeps {self.pca.n_components_} components "
                                 f"({float(np.sum(self.pca.explained_variance_ratio_)):.1%} of the variance)")
        y = self.y
        self.classes = sorted(set(y[train]))
        if len(self.classes) >= 2 and validation.any() and config.classifier in ("logreg", "svm"):
            with timer.stage(f"model selection (C on {int(validation.sum())} Validation images)") as st:
                self.selection = select_c(config.classifier, config.seed, self.classifier_params, F[train],
                                          y[train], F[validation], y[validation])
                self.classifier_params["C"] = self.selection["C"]
                st["items"] = len(self.selection["scores"])
            self.messages.append(f"bovw: C = {self.selection['C']:g} chosen on the Validation split "
                                 f"({self.selection['scores'][str(self.selection['C'])]:.1%})")
        with timer.stage(f"classifier ({config.classifier}, fit)") as st:
            if len(self.classes) >= 2:
                from bovw.model import make_classifier

                self.classifier = make_classifier(config.classifier, config.seed, **self.classifier_params)
                self.classifier.fit(F[train], y[train])
            st["items"] = int(train.sum())
        if self._beside is not None:
            for row in timer.rows:
                row["beside"] = self._beside
        self.rows = timer.rows

    def _run_limited(self) -> None:
        from threadpoolctl import threadpool_limits

        try:
            with threadpool_limits(limits=1):
                self.run()
        except BaseException as e:  # re-raised by join()
            self._error = e

    def start(self, beside: str) -> None:
        """Fit on a background thread (BLAS / OpenMP on one thread), its stage rows marked as
        running beside the stage ``beside``."""
        import threading

        self._beside = beside
        self._thread = threading.Thread(target=self._run_limited, name="bovw-model-fit", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for :meth:`start`'s fit; raise its error, if any."""
        self._thread.join()
        if self._error is not None:
            raise self._error


def versions() -> dict[str, str]:
    """Versions of bovw, Python and the libraries that decide the results."""
    import sklearn

    import bovw

    return {
        "bovw": bovw.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _scales(ex: Extraction) -> np.ndarray:
    n = len(ex.errors)
    return np.ones(n, np.float32) if ex.image_scale is None else np.asarray(ex.image_scale, np.float32)


def _list_column(a: np.ndarray) -> pa.Array:
    from bovw.columns import float_lists

    return float_lists(a, dtype=np.float32)


def write_outputs(out: Union[str, "OutputFolder"], listing: Listing, ex: Extraction, ok: np.ndarray, H: np.ndarray,
                  F: np.ndarray, predictions: np.ndarray, model: Any, test: np.ndarray, info: dict[str, Any]) -> Any:
    """Write every output file of a run and publish them together.

    Parameters
    ----------
    out : str or OutputFolder
        A folder or ``s3://`` URI (then opened, locked and closed here), or
        the :class:`OutputFolder` that :func:`run` opened before the work.

    Returns
    -------
    Path or bovw.spark.io.S3Path
        The output location.
    """
    if not isinstance(out, OutputFolder):
        with OutputFolder(out) as folder:
            return write_outputs(folder, listing, ex, ok, H, F, predictions, model, test, info)
    if out.staging is None:
        raise OutputError(f"{out.uri}: the output folder is not open")
    _write_files(out.staging, listing, ex, ok, H, F, predictions, model, test, info)
    out.commit()
    return out.location


def _write_files(out: Path, listing: Listing, ex: Extraction, ok: np.ndarray, H: np.ndarray, F: np.ndarray,
                 predictions: np.ndarray, model: Any, test: np.ndarray, info: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    from bovw.image import display_path

    idx = np.flatnonzero(ok)
    every = len(idx) == len(ok)  # no error row: the matrices as they are, not a 190 MB copy each
    columns = {
        "path": pa.array([display_path(listing.paths[i]) for i in idx], pa.string()),
        "label": pa.array([listing.labels[i] for i in idx], pa.string()),
        "split": pa.array([listing.splits[i] for i in idx], pa.string()),
        "n_keypoints": pa.array(ex.n_keypoints[idx], pa.int32()),
        "features": _list_column(H if every else H[idx]),
    }
    if model.pca is not None:  # without a PCA, F is H: not written twice
        columns["pca_features"] = _list_column(F if every else F[idx])
    columns["prediction"] = pa.array(list(predictions[idx]), pa.string())
    columns["image_scale"] = pa.array(_scales(ex)[idx], pa.float32())
    table = pa.table(columns)
    # dictionary pages only for the repeated strings: the float lists and the
    # (unique) paths would fill a dictionary page and fall back anyway. The
    # file is written on a second thread (Arrow releases the GIL) while the
    # other outputs are; its errors are raised below, before run.json.
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="bovw-parquet")
    parquet = pool.submit(pq.write_table, table, out / "features.parquet",
                          use_dictionary=["label", "split", "prediction"])
    try:
        _write_other_files(out, listing, ex, ok, idx, predictions, model, test, info)
    finally:
        pool.shutdown(wait=True)
    parquet.result()
    # -- run.json last: the commit marker, listing every other file with its size and SHA-256 --
    info["outputs"] = file_manifest(out)
    with open(out / COMMIT_MARKER, "w") as f:
        json.dump(info, f, indent=2, default=_json_default)


def _write_other_files(out: Path, listing: Listing, ex: Extraction, ok: np.ndarray, idx: np.ndarray,
                       predictions: np.ndarray, model: Any, test: np.ndarray, info: dict[str, Any]) -> None:
    """:func:`_write_files` but features.parquet and run.json."""
    import joblib
    from sklearn.metrics import confusion_matrix

    from bovw.image import display_path

    vocab = model.vocabulary
    if vocab is not None:
        np.save(out / "vocabulary.npy", vocab)
    if model.pca is not None:
        np.savez(out / "pca.npz", components=model.pca.components_, mean=model.pca.mean_,
                 explained_variance=model.pca.explained_variance_,
                 explained_variance_ratio=model.pca.explained_variance_ratio_)
    joblib.dump(model, out / "model.joblib")
    with open(out / "errors.csv", "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "label", "stage", "reason"])
        for i in np.flatnonzero(~ok):
            w.writerow([display_path(listing.paths[i]), listing.splits[i], listing.labels[i], ex.stages[i],
                        ex.errors[i]])
    y = np.array(listing.labels, dtype=object)
    if test.any() and model.classifier is not None:
        labels = sorted(set(y[test]) | set(y[ok & (np.array(listing.splits) == TRAINING)]))
        cm = confusion_matrix(y[test], predictions[test], labels=labels)
        with open(out / "confusion_matrix.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted"] + list(labels))
            for lab, r in zip(labels, cm):
                w.writerow([lab] + [int(v) for v in r])
    # -- report.html (bovw.report): metrics, charts and thumbnails of the most confused pairs --
    from bovw.report import write_run_report

    write_run_report(out, [listing.paths[i] for i in idx], [listing.labels[i] for i in idx], list(predictions[idx]),
                     [listing.splits[i] for i in idx], info, seed=int(info["parameters"]["seed"]))


# ---------------------------------------------------------------------------------------------
# Outputs that are safe: start-up checks, the lock, and the output folder swapped in at the end.
# (docs/reliability-job.md)
# ---------------------------------------------------------------------------------------------

#: The output folder's commit marker (:data:`bovw.spark.io.COMMIT_MARKER`): written last.
COMMIT_MARKER = "run.json"


class OutputError(OSError):
    """``--out`` cannot be used: a file, not writable, holding files bovw did
    not write, or locked by another run. The message is one line; ``bovw run``
    prints it and exits with code 2."""


def _root_of(config: RunConfig) -> str:
    import bovw

    return str(config.root) if config.root else str(bovw.sample_data_path())


def _is_dir(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def check_input(root: str) -> None:
    """Start-up check of a local image folder, before any work: it exists and
    it, its split folders and its class folders can be listed (what
    :func:`bovw.image.list_images` will do). ``s3://`` roots are checked by
    their listing, which comes first too.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or is not a folder.
    PermissionError
        If a folder cannot be listed; the message names it.
    """
    from bovw.spark.io import is_s3

    if is_s3(root) or ("://" in root and not root.startswith("file:")):
        return
    base = os.path.abspath(root[len("file:"):] if root.startswith("file:") else root)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"image folder not found: {root!r}")

    def folders(folder: str, depth: int) -> None:
        try:
            with os.scandir(folder) as it:
                subs = [e.path for e in it if depth < 2 and not e.name.startswith(".") and _is_dir(e)]
        except PermissionError as e:
            raise PermissionError(f"cannot list folder {folder!r}: {e.strerror}") from None
        for sub in subs:
            folders(sub, depth + 1)

    folders(base, 0)


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex digest}}`` of the files of
    ``folder`` except ``run.json``: what ``run.json`` lists under ``outputs``."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(os.listdir(folder)):
        p = Path(folder) / name
        if name == COMMIT_MARKER or not p.is_file():
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = {"bytes": p.stat().st_size, "sha256": h.hexdigest()}
    return out


def verify_outputs(out: str) -> list[str]:
    """Check that an output folder (or ``s3://`` prefix) holds one complete
    run: ``run.json`` is there, and every file it lists under ``outputs`` is
    there with that size and SHA-256, and no other output file.

    Returns
    -------
    list of str
        The problems found; empty when the folder holds one complete run.
    """
    from pyarrow import fs as pafs

    from bovw.spark.io import ImageReader, is_s3, previous_outputs, s3_bucket_key

    reader = ImageReader()  # reads local files, and S3 objects with retries
    if is_s3(out):
        filesystem, base, scheme = reader.filesystem, s3_bucket_key(out).rstrip("/"), out.split("://", 1)[0] + "://"
    else:
        filesystem, base, scheme = pafs.LocalFileSystem(), os.path.abspath(out), ""
    infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = {i.base_name for i in infos if i.type == pafs.FileType.File}
    if COMMIT_MARKER not in names:
        return [f"no {COMMIT_MARKER}: not a complete run"]

    def read(name: str) -> bytes:
        data, err = reader.read(f"{scheme}{base}/{name}")
        if data is None:
            raise OSError(err)
        return data

    try:
        info = json.loads(read(COMMIT_MARKER))
    except (OSError, ValueError) as e:
        return [f"{COMMIT_MARKER} cannot be read: {e}"]
    listed = info.get("outputs")
    if not isinstance(listed, dict):
        return [f"{COMMIT_MARKER} lists no outputs"]
    problems = []
    for name, meta in sorted(listed.items()):
        if name not in names:
            problems.append(f"{name}: missing")
            continue
        try:
            data = read(name)
        except OSError as e:
            problems.append(f"{name}: {e}")
            continue
        if len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            problems.append(f"{name}: not the file {COMMIT_MARKER} lists (size or SHA-256 differs)")
    for name in sorted(set(previous_outputs(sorted(names), None)) - set(listed) - {COMMIT_MARKER}):
        problems.append(f"{name}: an output file that {COMMIT_MARKER} does not list (from another run)")
    return problems


#: ``renameat2``'s flag that swaps two paths atomically (Linux 3.15+, <linux/fs.h>).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def rename_exchange(a: Union[str, Path], b: Union[str, Path]) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``.

    Returns
    -------
    bool
        True when swapped; False when this system or file system cannot
        (not Linux, glibc without ``renameat2``, ``EINVAL``/``ENOSYS``/``EOPNOTSUPP``).

    Raises
    ------
    OSError
        For any other failure (missing path, permission...).
    """
    import ctypes
    import errno

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_path(path: Union[str, Path]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


class OutputFolder:
    """Where a run's outputs go: checked before the work, locked during it,
    published all at once at the end.

    Local folder (``--out out``):

    - **start-up checks** (:meth:`open`): ``out`` is not a file; its parent
      exists (it is created when missing) and is writable; an existing
      ``out`` is writable and holds only files a bovw run writes
      (:data:`bovw.spark.io.RUN_OUTPUT_PATTERNS` or what its ``run.json``
      lists), so that no other file is ever deleted;
    - **lock**: ``fcntl.flock`` on ``.<out>.bovw-lock`` beside ``out``, taken
      without waiting (a second run into ``out`` fails at once with
      :class:`OutputError`). The kernel releases it when the process dies;
      the file is removed at the end;
    - **staging**: the run writes into ``.<out>.bovw-tmp-<pid>-<hex>`` beside
      ``out`` (same file system), ``run.json`` last;
    - **commit** (:meth:`commit`): files and folder fsynced, then the staging
      folder and ``out`` are swapped in one step with
      ``renameat2(RENAME_EXCHANGE)`` (:func:`rename_exchange`) and the
      previous run's folder is removed. Where the swap is not available, two
      renames (``out`` -> ``.<out>.bovw-old-*``, staging -> ``out``); a
      crash between them is repaired at the next start (the old folder is
      renamed back) or in :meth:`close`;
    - **recovery**: at each start (under the lock), staging and old folders
      that a killed run left are removed, or renamed back as above.

    So ``out`` always holds one complete run (the previous one until the
    commit, this one after), never a mix, and no file of an earlier run
    stays beside the new ones. Ctrl-C at any point, or a crash, leaves the
    previous run's files.

    ``s3://`` prefixes: checks (not an object, the bucket exists, a probe
    object can be written and deleted), files written to a local temporary
    folder, then published by :func:`bovw.spark.io.upload_folder` (old
    ``run.json`` deleted first, new ``run.json`` last, then stale objects
    deleted). S3 offers no lock and no multi-object swap: see
    ``docs/reliability-job.md`` for what is and is not guaranteed there.

    Parameters
    ----------
    uri : str
        Folder path or ``s3://bucket/prefix``.
    exchange : bool, default True
        Use ``renameat2(RENAME_EXCHANGE)`` when available (False: always the
        two-rename fallback; for tests).

    Attributes
    ----------
    staging : Path
        The folder to write into, after :meth:`open`.
    location : Path or bovw.spark.io.S3Path
        ``uri`` as given (for messages and :class:`RunResult`).
    """

    def __init__(self, uri: Union[str, os.PathLike], *, exchange: bool = True) -> None:
        self.uri = os.fspath(uri)
        self.exchange = exchange
        self.staging: Optional[Path] = None
        self._path: Optional[Path] = None
        self._lock_fd: Optional[int] = None
        self._lock_path: Optional[Path] = None
        self._committed = False

    @property
    def location(self) -> Any:
        from bovw.spark.io import S3Path, is_s3

        return S3Path(self.uri) if is_s3(self.uri) else Path(self.uri)

    def __enter__(self) -> "OutputFolder":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- start ---------------------------------------------------------------------------------

    def open(self) -> "OutputFolder":
        """Check ``uri``, take the lock, repair what a killed run left, and
        create the staging folder.

        Raises
        ------
        OutputError
            With one line saying what is wrong with ``uri``.
        """
        from bovw.spark.io import is_s3

        try:
            if is_s3(self.uri):
                self._open_s3()
            else:
                self._open_local()
        except BaseException:
            self.close()
            raise
        return self

    def _open_local(self) -> None:
        given = self.uri
        out = Path(os.path.realpath(os.path.abspath(given)))
        if out.name in ("", ".", "..") or out == out.parent:
            raise OutputError(f"out: {given!r} is not a folder bovw can replace (a file system root)")
        if out.exists() and not out.is_dir():
            raise OutputError(f"out: {given!r} is a file, not a folder")
        if out.is_dir() and os.path.ismount(out):
            raise OutputError(f"out: {given!r} is a mount point, which cannot be swapped; use a folder inside it")
        parent = out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OutputError(f"out: cannot create {given!r}: a file is in the way ({str(parent)!r} "
                              "or one of its parents is not a folder)") from None
        except OSError as e:
            raise OutputError(f"out: cannot create folder {str(parent)!r}: {e.strerror or e}") from None
        self._path = out
        self._lock(parent, out.name)
        self._recover()
        if out.is_dir():
            if not os.access(out, os.W_OK | os.X_OK):
                raise OutputError(f"out: {given!r} is not writable")
            names = sorted(os.listdir(out))
            from bovw.spark.io import previous_outputs

            manifest = None
            try:
                with open(out / COMMIT_MARKER, "rb") as f:
                    manifest = json.loads(f.read())
            except (OSError, ValueError):
                pass
            ours = set(previous_outputs(names, manifest if isinstance(manifest, dict) else None))
            foreign = [n for n in names if n not in ours]
            if foreign:
                shown = ", ".join(repr(n) for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise OutputError(f"out: {given!r} holds files that bovw run did not write ({shown}); "
                                  "choose a new or empty folder")
        staging = parent / f".{out.name}.bovw-tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.mkdir(staging)
        except OSError as e:
            raise OutputError(f"out: cannot write in {str(parent)!r}: {e.strerror or e}") from None
        self.staging = staging

    def _lock(self, parent: Path, name: str) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: runs are not made exclusive
            return
        import socket

        lock_path = parent / f".{name}.bovw-lock"
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError as e:
                try:  # a lock file another user's killed run left: flock works on a read-only descriptor
                    fd = os.open(lock_path, os.O_RDONLY)
                except OSError:
                    raise OutputError(f"out: cannot write in {str(parent)!r}: {e.strerror or e}") from None
            except OSError as e:
                raise OutputError(f"out: cannot write in {str(parent)!r}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 256).decode("utf-8", "replace").strip()
                os.close(fd)
                raise OutputError(f"out: another bovw run ({holder or 'unknown process'}) is writing to "
                                  f"{self.uri!r}; wait for it to end or choose another --out") from None
            # the run that held the lock may have removed the file meanwhile: hold the one at the path
            try:
                st, fst = os.stat(lock_path), os.fstat(fd)
                same = (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     .encode())
        except OSError:  # read-only descriptor: the lock holds without the note
            pass
        self._lock_fd, self._lock_path = fd, lock_path

    def _leftovers(self) -> list[tuple[str, Path]]:
        import re

        assert self._path is not None
        pattern = re.compile(r"\." + re.escape(self._path.name) + r"\.bovw-(tmp|old)-\d+-[0-9a-f]+")
        found = []
        for name in sorted(os.listdir(self._path.parent)):
            m = pattern.fullmatch(name)
            if m:
                found.append((m.group(1), self._path.parent / name))
        return found

    def _recover(self) -> None:
        """Under the lock: put back a previous run's folder that a killed swap
        left renamed, and remove staging folders of killed runs."""
        assert self._path is not None
        out = self._path
        for kind, path in self._leftovers():
            if path == self.staging:
                continue
            if kind == "old" and not os.path.lexists(out):
                os.rename(path, out)
            else:
                _remove_tree(path)

    def _open_s3(self) -> None:
        import tempfile

        from pyarrow import fs as pafs

        from bovw.spark.io import s3_bucket_key, s3_filesystem

        filesystem = s3_filesystem()
        base = s3_bucket_key(self.uri).rstrip("/")
        bucket = base.split("/", 1)[0]
        try:
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise OutputError(f"out: bucket {bucket!r} of {self.uri!r} does not exist")
            if "/" in base and filesystem.get_file_info(base).type == pafs.FileType.File:
                raise OutputError(f"out: {self.uri!r} is an object, not a prefix")
            probe = f"{base}/.bovw-probe-{os.getpid()}-{os.urandom(4).hex()}"
            with filesystem.open_output_stream(probe) as f:
                f.write(b"")
            filesystem.delete_file(probe)
        except OutputError:
            raise
        except OSError as e:
            raise OutputError(f"out: cannot write to {self.uri!r}: {e}") from None
        self._filesystem = filesystem
        self.staging = Path(tempfile.mkdtemp(prefix="bovw-out-"))

    # -- end -----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Publish the staging folder as ``uri`` (see the class notes)."""
        from bovw.spark.io import is_s3, upload_folder

        if self.staging is None:
            raise RuntimeError("OutputFolder.commit: not open")
        if is_s3(self.uri):
            upload_folder(self.staging, self.uri, filesystem=self._filesystem)
            self._committed = True
            _remove_tree(self.staging)
            self.staging = None
            return
        assert self._path is not None
        out, staging = self._path, self.staging
        for name in os.listdir(staging):
            _fsync_path(staging / name)
        _fsync_path(staging)
        if os.path.lexists(out):
            if self.exchange and rename_exchange(staging, out):
                old = staging  # now holds the previous run's files
            else:
                old = out.parent / f".{out.name}.bovw-old-{os.getpid()}-{os.urandom(4).hex()}"
                os.rename(out, old)
                os.rename(staging, out)
        else:
            os.rename(staging, out)
            old = None
        self._committed = True
        _fsync_path(out.parent)
        self.staging = None
        if old is not None:
            _remove_tree(old)

    def close(self) -> None:
        """Remove what an unfinished run wrote (the previous run's files stay)
        and release the lock. Safe to call twice."""
        try:
            if self.staging is not None:
                _remove_tree(self.staging)
                self.staging = None
            if self._path is not None and self._lock_fd is not None:
                self._recover()
        finally:
            if self._lock_fd is not None:
                try:
                    if self._lock_path is not None:
                        os.unlink(self._lock_path)  # while held: the next run creates a new one
                except OSError:
                    pass
                os.close(self._lock_fd)
                self._lock_fd = None
