"""The extractors bovw knows, by name, and the one batch entry point.

:data:`EXTRACTORS` maps each ``method`` name (``bovw.extract_descriptors(...,
method=...)``, ``bovw run --method ...``) to its class. Every class is an
:class:`bovw.features.Extractor`: it states its descriptor width, dtype,
kind (local or global) and the vocabularies its descriptors support, so
callers never branch on a name.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from bovw.color import ColorHistogram
from bovw.dense import PHOW, DenseSIFT
from bovw.cnn import CNNEmbedding
from bovw.features import ORB, SIFT, Extractor

__all__ = ["EXTRACTORS", "extract_descriptors", "get_extractor"]

#: The extractors :func:`extract_descriptors` and ``bovw run --method`` know, by name.
EXTRACTORS: dict[str, type[Extractor]] = {cls.name: cls for cls in (SIFT, ORB, DenseSIFT, PHOW, ColorHistogram, CNNEmbedding)}


def get_extractor(method: str | Extractor, **params: Any) -> Extractor:
    """The extractor called ``method`` (see :data:`EXTRACTORS`) with ``params``.

    An :class:`Extractor` instance is returned as is (``params`` must then be empty).

    Raises
    ------
    ValueError
        If ``method`` is not a known name.
    TypeError
        If a parameter is not one of the extractor's.
    """
    if isinstance(method, Extractor):
        if params:
            raise TypeError("get_extractor: parameters given with an extractor instance")
        return method
    cls = EXTRACTORS.get(str(method).lower())
    if cls is None:
        raise ValueError(f"method: expected one of {sorted(EXTRACTORS)}, got {method!r}")
    return cls(**params)


def extract_descriptors(
    batch: Any,
    method: str | Extractor = "sift",
    *,
    content_column: str = "content",
    keep_columns: Any = None,
    n_threads: int | None = None,
    **params: Any,
) -> pa.RecordBatch:
    """Decode encoded images and extract their descriptors, one row per image.

    ``get_extractor(method, **params).extract(batch, ...)``: see
    :meth:`Extractor.extract` for the columns.

    Parameters
    ----------
    batch : pyarrow.RecordBatch or pyarrow.Table
        With a binary column ``content_column`` of JPEG/PNG bytes.
    method : str or Extractor, default "sift"
        A name of :data:`EXTRACTORS` (``"sift"``, ``"orb"``, ``"dsift"``,
        ``"phow"``, ``"color"``) or an extractor.
    content_column, keep_columns, n_threads
        As in :meth:`Extractor.extract`.
    **params
        Parameters of the extractor class (e.g. :class:`SIFT`'s; OpenCV's names too).

    Returns
    -------
    pyarrow.RecordBatch with one row per input row

    Raises
    ------
    ValueError
        If ``method`` is unknown or a parameter is invalid.
    KeyError
        If the content column is missing.
    TypeError
        If the content column is not binary.
    """
    extractor = get_extractor(method, **params)
    return extractor.extract(batch, content_column=content_column, keep_columns=keep_columns, n_threads=n_threads)
