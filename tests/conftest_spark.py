"""A session-scoped local Spark session for the histogram and PCA parity tests.

Imported explicitly by ``test_histogram.py`` and ``test_pca.py``
(``from conftest_spark import spark_local``) so that it does not clash with
other Spark fixtures in ``conftest.py``. ``getOrCreate`` reuses a session
another test module already started.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import bovw


@pytest.fixture(scope="session")
def spark_local():
    pyspark = pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    # Python workers: this interpreter, and this checkout's bovw importable.
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH")}
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    pkg_parent = str(Path(bovw.__file__).resolve().parents[1])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if pkg_parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in paths if p])
    try:
        spark = (
            SparkSession.builder.master("local[2]")
            .appName("bovw-bow-pca-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.driver.memory", "1g")
            .getOrCreate()
        )
    except Exception as exc:  # no Java, blocked ports...
        pytest.skip(f"cannot start local Spark {pyspark.__version__}: {exc}")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        for k, v in saved.items():  # leave the environment as found
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
