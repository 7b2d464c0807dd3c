"""The in-process engine of the main job (``bovw run --engine local``).

:class:`LocalEngine` reads files in batches, runs the Rust kernels on all
cores and hands :func:`bovw.job.run` plain arrays; see :class:`bovw.job.Engine`
for the contract it shares with :class:`bovw.spark.SparkEngine`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from bovw.job import DescriptorSample, Extraction, Listing

__all__ = ["LocalEngine", "ExtractedBatch", "extracted_batch"]

#: The most bytes of descriptors kept between the vocabulary sample and the
#: encoding pass (beyond it, sampled images are described again).
CACHE_BYTES = 512 * 1024 * 1024


#: Descriptor bytes a batch of the local engine aims at: dense descriptors of
#: large photos (PHOW: about 10 MB per 348 x 348 photo) come fewer per batch.
BATCH_BYTES = 256 * 1024 * 1024


class _Batches:
    """Index ranges over ``n`` images: ``batch_size`` at most, and after each
    batch (:meth:`done`) sized so that the next one's descriptors take about
    :data:`BATCH_BYTES`, from the mean bytes per image so far; the first
    batch has 16 images. A tqdm bar counts images."""

    def __init__(self, n: int, batch_size: int, desc: str, progress: bool) -> None:
        self.n, self.max = n, batch_size
        self.size = min(16, batch_size)
        self.images = self.nbytes = 0
        self._stop = 0  # end of the range being yielded
        self._next: Optional[tuple[int, int]] = None  # the next range once peek() fixed it
        self.bar: Any = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc=desc, unit="image", leave=False, dynamic_ncols=True)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = 0
        self._stop = 0
        self._next = None
        try:
            while start < self.n:
                stop = self._end(start)
                self._stop = stop
                self._next = None
                yield start, stop
                if self.bar is not None:
                    self.bar.update(stop - start)
                start = stop
        finally:
            if self.bar is not None:
                self.bar.close()

    def _end(self, start: int) -> int:
        """End of the range starting at ``start``: the one :meth:`peek` fixed, else by the current size."""
        return self._next[1] if self._next is not None else min(self.n, start + self.size)

    def peek(self) -> Optional[tuple[int, int]]:
        """The range the next iteration will yield, fixed from now on (its
        size from the batches done so far); None after the last batch."""
        if self._next is None and self._stop < self.n:
            self._next = (self._stop, min(self.n, self._stop + self.size))
        return self._next

    def done(self, images: int, nbytes: int) -> None:
        """Record a batch's images and descriptor bytes."""
        self.images += images
        self.nbytes += nbytes
        per = self.nbytes / max(self.images, 1)
        self.size = int(max(1, min(self.max, BATCH_BYTES // max(per, 1.0))))


class ExtractedBatch:
    """An extractor's output batch as arrays: descriptors, offsets, keypoints,
    image sizes, errors and stages (one entry per image)."""

    def __init__(self, X: np.ndarray, offsets: np.ndarray, keypoints: np.ndarray, sizes: np.ndarray,
                 errors: list[Optional[str]], stages: list[Optional[str]],
                 scales: Optional[np.ndarray] = None) -> None:
        self.X, self.offsets, self.keypoints, self.sizes = X, offsets, keypoints, sizes
        self.errors, self.stages = errors, stages
        #: (n_images,) float32: 1, or the factor of an image downscaled to its memory budget
        self.scales = np.ones(len(errors), np.float32) if scales is None else scales

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.X[a:b], self.keypoints[a:b]

    @property
    def nbytes(self) -> int:
        return int(self.X.nbytes + self.keypoints.nbytes)


def extracted_batch(batch: pa.RecordBatch, extractor: Any) -> ExtractedBatch:
    """Read an extractor's output batch (:data:`bovw.FEATURE_COLUMNS`) into arrays."""
    from bovw.columns import descriptor_matrix

    w, dt = extractor.descriptor_width, extractor.descriptor_dtype
    X, offsets = descriptor_matrix(batch.column("descriptors"), width=w, dtype=dt)
    kps, _ = descriptor_matrix(batch.column("keypoints"), width=4, dtype=np.float32)
    sizes = np.stack([batch.column("image_width").fill_null(0).to_numpy(zero_copy_only=False),
                      batch.column("image_height").fill_null(0).to_numpy(zero_copy_only=False)], axis=1)
    names = batch.schema.names
    scales = (batch.column("image_scale").fill_null(1.0).to_numpy(zero_copy_only=False).astype(np.float32)
              if "image_scale" in names else None)
    return ExtractedBatch(X, offsets, kps, sizes.astype(np.int64), batch.column("error").to_pylist(),
                          batch.column("error_stage").to_pylist(), scales)


def gather(parts: Sequence[tuple[np.ndarray, np.ndarray]], width: int, dtype: Any) -> tuple[np.ndarray, ...]:
    """Per-image (descriptors, keypoints) pairs as one matrix, offsets and keypoints."""
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p[0]) for p in parts], out=offsets[1:])
    X = np.concatenate([p[0] for p in parts]) if offsets[-1] else np.zeros((0, width), dtype)
    K = np.concatenate([p[1] for p in parts]) if offsets[-1] else np.zeros((0, 4), np.float32)
    return X, offsets, K


class LocalEngine:
    """Run the job's per-image stages in this process.

    Parameters
    ----------
    n_threads : int, optional
        Kernel threads (default all cores).
    batch_size : int, default 512
        Images read and described per kernel call at most; batches hold
        fewer when the descriptors are large (about :data:`BATCH_BYTES` of
        descriptors per batch), which bounds memory.
    progress : bool, default True
        tqdm progress bars.
    """

    name = "local"

    def __init__(self, n_threads: Optional[int] = None, batch_size: int = 512, progress: bool = True) -> None:
        self.n_threads = n_threads
        self.batch_size = int(batch_size)
        self.progress = progress
        self._cache: dict[int, dict[int, tuple]] = {}
        self._cache_bytes = 0
        self._reader: Any = None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "n_threads": self.n_threads, "batch_size": self.batch_size}

    # -- listing and reading ---------------------------------------------------------------

    def list_images(self, root: str, *, test_size: float, seed: int) -> Listing:
        from bovw.image import list_images
        from bovw.spark.io import is_s3, list_s3_images, split_and_label_rows

        if is_s3(root):
            uris = [u for u, _, _ in list_s3_images(root)]
            rows = split_and_label_rows(uris, root=root, test_size=test_size, seed=seed)
        else:
            rows = list_images(root, test_size=test_size, random_state=seed)
        return Listing([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], root)

    def _read(self, paths: Sequence[str]) -> tuple[list[Optional[bytes]], list[Optional[str]], list[str]]:
        """Bytes, read error and SHA-256 of each path: local files and ``s3://``
        objects through the engines' one reader (:class:`bovw.spark.io.ImageReader`,
        retries with backoff on S3)."""
        if self._reader is None:
            from bovw.spark.io import ImageReader

            self._reader = ImageReader()
        contents, errors, digests = [], [], []
        for data, err in self._reader.read_many(paths):
            contents.append(data)
            errors.append(err)
            digests.append(hashlib.sha256(data).hexdigest() if data is not None else "")
        return contents, errors, digests

    def _read_ahead(self, batches: _Batches, rows_of: Any, paths: Sequence[str]) -> Iterator[tuple[int, int, list[int], Any]]:
        """Iterate ``batches`` with each range's rows to read (``rows_of(start,
        stop)``) and their :meth:`_read`: the next range's files are read on a
        background thread while the current range is described (the Rust
        kernels release the GIL), so that reading, hashing and describing
        overlap."""
        from concurrent.futures import ThreadPoolExecutor

        def fetch(rng: tuple[int, int]) -> tuple[list[int], Any]:
            rows = list(rows_of(*rng))
            return rows, pool.submit(self._read, [paths[i] for i in rows])

        with ThreadPoolExecutor(1, thread_name_prefix="bovw-read") as pool:
            ahead: Optional[tuple[tuple[int, int], tuple[list[int], Any]]] = None
            try:
                for start, stop in batches:
                    if ahead is not None and ahead[0] == (start, stop):
                        rows, future = ahead[1]
                    else:
                        rows, future = fetch((start, stop))
                    read = future.result()
                    nxt = batches.peek()
                    ahead = (nxt, fetch(nxt)) if nxt is not None else None
                    yield start, stop, rows, read
            finally:
                if ahead is not None:
                    ahead[1][1].cancel()

    def _describe(self, extractor: Any, contents: list[Optional[bytes]]) -> ExtractedBatch:
        return self._describe_many([extractor], contents)[0]

    def _describe_many(self, extractors: Sequence[Any], contents: list[Optional[bytes]]) -> list[ExtractedBatch]:
        """Each extractor's descriptors of the same images (decoded once per
        pixel layout: :func:`bovw.features.extract_many`)."""
        from bovw.features import extract_many

        batch = pa.record_batch({"content": pa.array(contents, pa.binary())})
        return [extracted_batch(res, x) for x, res in
                zip(extractors, extract_many(batch, extractors, n_threads=self.n_threads))]

    # -- the two passes -----------------------------------------------------------------------

    def sample_descriptors(self, listing: Listing, rows: np.ndarray, extractor: Any,
                           sample: DescriptorSample) -> np.ndarray:
        cache = self._cache.setdefault(id(extractor), {})
        batches = _Batches(len(rows), self.batch_size, f"{extractor.name} (vocabulary)", self.progress)
        for _, _, idx, read in self._read_ahead(batches, lambda a, b: rows[a:b], listing.paths):
            contents, read_errors, digests = read
            eb = self._describe(extractor, contents)
            for j, i in enumerate(idx):
                X, K = eb.rows(j)
                sample.add(int(i), X)
                if self._cache_bytes + X.nbytes + K.nbytes <= CACHE_BYTES:
                    err = read_errors[j] or eb.errors[j]
                    stage = "read" if read_errors[j] else eb.stages[j]
                    # copies: a view would keep the whole batch's matrix alive
                    cache[int(i)] = (X.copy(), K.copy(), eb.sizes[j], err, stage, digests[j],
                                     len(contents[j] or b""), float(eb.scales[j]))
                    self._cache_bytes += X.nbytes + K.nbytes
            batches.done(len(idx), eb.nbytes)
        return sample.matrix()

    def encode(self, listing: Listing, channels: Sequence[Any], rows: Optional[np.ndarray] = None) -> Extraction:
        order = np.arange(len(listing)) if rows is None else np.asarray(rows, np.int64)
        m = len(order)
        feats = [np.zeros((m, ch.encoding.n_features_out_), np.float32) for ch in channels]
        n_kp = np.zeros(m, np.int32)
        scales = np.ones(m, np.float32)
        errors: list[Optional[str]] = [None] * m
        stages: list[Optional[str]] = [None] * m
        sha: list[str] = [""] * m
        n_bytes = 0
        batches = _Batches(m, self.batch_size, "describe + encode", self.progress)
        caches = [self._cache.get(id(ch.extractor), {}) for ch in channels]

        def uncached(a: int, b: int) -> list[int]:
            return [i for i in order[a:b].tolist() if not all(i in c for c in caches)]

        for start, stop, todo, read in self._read_ahead(batches, uncached, listing.paths):
            ids = order[start:stop].tolist()
            batch_bytes = 0
            contents, read_errors, digests = read
            fresh = {int(i): j for j, i in enumerate(todo)}
            described = self._describe_many([ch.extractor for ch in channels], contents)
            for c, (ch, eb) in enumerate(zip(channels, described)):
                parts, sizes = [], []
                for p, i in enumerate(ids, start):
                    if i in fresh:
                        j = fresh[i]
                        X, K = eb.rows(j)
                        err = read_errors[j] or eb.errors[j]
                        stage = "read" if read_errors[j] else eb.stages[j]
                        size, digest, nb = eb.sizes[j], digests[j], len(contents[j] or b"")
                        scale = float(eb.scales[j])
                        stale = caches[c].pop(i, None)  # cached for this channel, described again for another
                        if stale is not None:
                            self._cache_bytes -= stale[0].nbytes + stale[1].nbytes
                    else:
                        X, K, size, err, stage, digest, nb, scale = caches[c].pop(i)
                        self._cache_bytes -= X.nbytes + K.nbytes
                    scales[p] = min(scales[p], scale)
                    parts.append((X, K))
                    sizes.append(size)
                    if err is not None and errors[p] is None:
                        errors[p], stages[p] = err, stage
                    if c == 0:
                        n_kp[p] = len(X) if err is None else 0
                        sha[p] = digest
                        n_bytes += nb
                X, offsets, K = gather(parts, ch.extractor.descriptor_width, ch.extractor.descriptor_dtype)
                batch_bytes += int(X.nbytes + K.nbytes)
                feats[c][start:stop] = ch.encode(X, offsets, K, np.asarray(sizes, np.int64).reshape(-1, 2),
                                                 n_threads=self.n_threads)
            batches.done(stop - start, batch_bytes)
        for f in feats:
            f[np.array([e is not None for e in errors], dtype=bool)] = 0.0
        if rows is None:  # the whole listing: nothing cached can be asked for again
            self._cache.clear()
            self._cache_bytes = 0
        return Extraction(feats, n_kp, errors, stages, sha, n_bytes, scales)
