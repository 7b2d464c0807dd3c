"""bovw on Apache Spark: the drop-in path for the seed notebooks.

Every stage runs inside ``DataFrame.mapInArrow`` (Spark >= 3.3), so Spark
hands each Python worker whole Arrow record batches and bovw's Rust kernels
process a batch per call: no row-by-row UDF, no pandas in between, no cv2 in
the executors.

=====================  =====================================================
Stage                  bovw.spark
=====================  =====================================================
images                 :func:`read_images` (``binaryFile`` locally or on EMR;
                       driver-side listing + executor-side fetch for any
                       S3-compatible endpoint, no extra JVM jars)
descriptors            :func:`extract_descriptors` (any extractor of
                       :data:`bovw.EXTRACTORS`)
vocabulary             :func:`fit_vocabulary`: a seeded sample collected to the
                       driver and :class:`bovw.KMeans` (``algorithm="sample"``),
                       or a distributed Lloyd where each iteration is one
                       Rust call per partition (``algorithm="lloyd"``)
bag of visual words    :func:`bow_histograms` (from images, fused, or from a
                       descriptors column); :func:`encode_images` (any
                       fitted encodings, fused with extraction)
encodings              :func:`encode_descriptors` (VLAD, Fisher vectors,
                       spatial-pyramid / soft bag of words: any fitted
                       :mod:`bovw.encoding` encoder); :func:`fit_gmm` (the
                       Fisher vectors' mixture: a driver sample, or
                       distributed EM with one Rust call per partition)
PCA                    :func:`fit_pca` (per-partition partial sums) and
                       :func:`pca_transform`
Spark ML interop       :func:`to_ml_vectors` / :func:`from_ml_vectors`
output                 :func:`write_parquet` (local, HDFS, ``s3://``)
whole job              :class:`SparkEngine` / :func:`run_job` (``bovw run
                       --engine spark``)
=====================  =====================================================

The package's modules follow the stages: :mod:`bovw.spark.io` (session,
reading, S3, Parquet), :mod:`bovw.spark.stages` (the ``mapInArrow``
stages), :mod:`bovw.spark.vocabulary`, :mod:`bovw.spark.encoding` (encoders
and the distributed GMM), :mod:`bovw.spark.decomposition`
(PCA) and :mod:`bovw.spark.engine` (the main job). Arrow descriptor columns
are converted by :mod:`bovw.columns`, shared with the local engine.

Rows keep ``path``, ``label`` (the parent folder of the file, URL-decoded:
Spark's ``binaryFile`` gives ``file:/.../Apple%20Braeburn/0_100.jpg``) and
``split`` (``Training``/``Test`` when the grandparent folder is one, else
null), and carry ``error`` and ``error_stage`` columns (null when fine) instead of
failing the task on an image that cannot be decoded.

Threads
-------
Each Spark task is one Python worker; kernels run with ``n_threads`` threads
per task, by default the task's CPUs (``spark.task.cpus``, normally 1), so an
executor with ``c`` cores runs ``c`` single-threaded tasks and is not
oversubscribed. ``RAYON_NUM_THREADS`` is not needed on executors.

Batch sizes
-----------
``mapInArrow`` receives batches of at most
``spark.sql.execution.arrow.maxRecordsPerBatch`` rows (default 10,000). A
batch holds the encoded files of its rows, plus their descriptors once
extracted: with 5 MB photos that is 50 GB for the default. Call
:func:`configure_arrow_batches` (or set the option yourself) so that
``records x average file size`` stays around 64 MB per task; the functions
here also slice every incoming batch into chunks of ``batch_size`` rows
(default 256) before calling a kernel, which bounds the descriptor and output
memory. Decoding and SIFT work on one image at a time per thread, so their
peak memory depends on the image size, not the batch size.
"""

from __future__ import annotations

from bovw.spark.decomposition import fit_pca, pca_partial_sums
from bovw.spark.encoding import encode_descriptors, fit_gmm, gmm_em
from bovw.spark.engine import SparkEngine, run_job
from bovw.spark.io import (
    BINARY_FILE_SCHEMA,
    DEFAULT_TARGET_BATCH_BYTES,
    configure_arrow_batches,
    label_from_path,
    list_s3_images,
    read_images,
    recommended_records_per_batch,
    s3_filesystem,
    session,
    split_from_path,
    write_parquet,
)
from bovw.spark.stages import (
    BOW_SCHEMA,
    DEFAULT_BATCH_SIZE,
    bow_histograms,
    descriptor_layout,
    descriptors_schema,
    encode_images,
    extract_descriptors,
    from_ml_vectors,
    nested_descriptors,
    pca_transform,
    to_ml_vectors,
)
from bovw.spark.vocabulary import DEFAULT_MAX_DRIVER_BYTES, fit_vocabulary, kmeans_lloyd, sample_descriptors

__all__ = [
    "BINARY_FILE_SCHEMA",
    "BOW_SCHEMA",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_DRIVER_BYTES",
    "DEFAULT_TARGET_BATCH_BYTES",
    "SparkEngine",
    "bow_histograms",
    "configure_arrow_batches",
    "descriptor_layout",
    "descriptors_schema",
    "encode_descriptors",
    "encode_images",
    "extract_descriptors",
    "fit_gmm",
    "fit_pca",
    "fit_vocabulary",
    "from_ml_vectors",
    "gmm_em",
    "kmeans_lloyd",
    "label_from_path",
    "list_s3_images",
    "nested_descriptors",
    "pca_partial_sums",
    "pca_transform",
    "read_images",
    "recommended_records_per_batch",
    "run_job",
    "s3_filesystem",
    "sample_descriptors",
    "session",
    "split_from_path",
    "to_ml_vectors",
    "write_parquet",
]
